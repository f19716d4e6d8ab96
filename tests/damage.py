"""Damage as a disk or a copy would do it: one flipped byte inside a tensor of a torch file."""

import zipfile
from pathlib import Path

import numpy as np


def flip_tensor_byte(path: Path, member: int = 0) -> None:
    """Flip one byte in the middle of the stored bytes of tensor ``member`` of a torch zip file."""
    with zipfile.ZipFile(path) as archive:
        info = [i for i in archive.infolist() if "/data/" in i.filename][member]
    with open(path, "r+b") as raw:
        raw.seek(info.header_offset + 26)
        name_length, extra_length = np.frombuffer(raw.read(4), "<u2")
        offset = info.header_offset + 30 + int(name_length) + int(extra_length) + info.file_size // 2
        raw.seek(offset)
        byte = raw.read(1)
        raw.seek(offset)
        raw.write(bytes([byte[0] ^ 0x40]))
