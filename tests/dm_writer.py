"""A small Gatan DigitalMicrograph writer (DM3 and DM4) for the tests: rosettasciio reads DM files but cannot write them.

Layout, as documented by C. Boothroyd ("Digital Micrograph file format") and G. Jefferis ("DM3 format"), and as
rosettasciio's reader (``rsciio.digitalmicrograph``) parses it:

* header, big-endian: version (i4: 3 or 4); root length (DM3: i4 = file size - 16, DM4: i8 = file size - 24);
  byte order of the tag data (i4: 1 little-endian, 0 big-endian);
* the root tag group: sorted flag (1 byte), open flag (1 byte), tag count (DM3: i4, DM4: i8), its tags;
* a tag: kind (1 byte: 20 group, 21 data), name length (i2), name (1-byte characters); DM4 only: the byte length
  of the rest of the tag (i8); then a group as above, or ``%%%%``, the length of its type description (DM3: i4,
  DM4: i8), the description (DM3: i4 each, DM4: i8 each) and the value in the file's byte order;
* the file ends with 8 zero bytes.

Everything but the tag values is big-endian. Type codes: 2 int16, 3 int32, 4 uint16, 5 uint32, 6 float32,
7 float64, 8 bool, 9 int8 (char), 10 uint8 (octet), 11 int64, 12 uint64 (11 and 12 new in DM4), 15 struct,
18 string, 20 array. Simple value: description ``[type]``; array of a simple type: ``[20, type, count]``;
struct: ``[15, 0, field count, (0, type) per field]``. Text (names, units) is stored as an array of uint16
(UTF-16 code units), as DigitalMicrograph does.

An image file holds ``ImageList``: image 0 is the RGB thumbnail, listed in ``Thumbnails`` (which readers skip),
image 1 the data: ``ImageData`` with ``Data`` (the pixels, X fastest), ``DataType``, ``PixelDepth``,
``Dimensions`` (X first) and ``Calibrations`` (``Brightness``; ``Dimension``, one group per axis, X first, with
``Origin``, ``Scale`` and ``Units``; a calibrated coordinate is ``(index - Origin) * Scale``).

Groups are written from Python dicts (named tags, in order) or lists (unnamed tags); values from ints (int32),
floats (float64), bools, str (uint16 text), numpy arrays (arrays of their type) and :class:`Struct`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIMPLE_TYPES = {2: "h", 3: "i", 4: "H", 5: "I", 6: "f", 7: "d", 8: "?", 9: "b", 10: "B", 11: "q", 12: "Q"}
ARRAY_TYPES = {"int16": 2, "int32": 3, "uint16": 4, "uint32": 5, "float32": 6, "float64": 7, "bool": 8}
ARRAY_TYPES |= {"int8": 9, "uint8": 10, "int64": 11, "uint64": 12}
# DigitalMicrograph image data types (ImageData.DataType) of the numpy types written here
IMAGE_TYPES = {"int16": 1, "float32": 2, "uint8": 6, "int32": 7, "int8": 9, "uint16": 10, "uint32": 11}
IMAGE_TYPES |= {"float64": 12, "bool": 14}
GROUP, DATA = 20, 21


@dataclass(frozen=True)
class Simple:
    """A value of an explicit simple type (e.g. ``Simple(5, 3)`` for a uint32 3)."""

    type: int
    value: int | float | bool


@dataclass(frozen=True)
class Struct:
    """A struct: its fields as (type code, value) pairs."""

    fields: tuple[tuple[int, int | float | bool], ...]


class _Encoder:
    def __init__(self, version: int, little_endian: bool):
        if version not in (3, 4):
            raise ValueError(f"DM version {version}: only 3 and 4 exist")
        self.version = version
        self.size = ">i" if version == 3 else ">q"  # counts, lengths and type descriptions
        self.order = "<" if little_endian else ">"

    def sizes(self, *values: int) -> bytes:
        return b"".join(struct.pack(self.size, v) for v in values)

    def group(self, tags: dict | list) -> bytes:
        items = tags.items() if isinstance(tags, dict) else (("", value) for value in tags)
        entries = [self.tag(name, value) for name, value in items]
        return b"\x01\x00" + self.sizes(len(entries)) + b"".join(entries)  # sorted, closed

    def tag(self, name: str, value) -> bytes:
        if isinstance(value, (dict, list)):
            kind, body = GROUP, self.group(value)
        else:
            kind, body = DATA, b"%%%%" + self.data(value)
        label = name.encode("latin-1")
        head = struct.pack(">BH", kind, len(label)) + label
        if self.version == 4:
            head += struct.pack(">Q", len(body))
        return head + body

    def data(self, value) -> bytes:
        """Type description (its length first) and value of one data tag."""
        if isinstance(value, bool):
            value = Simple(8, value)
        elif isinstance(value, int):
            value = Simple(3, value)
        elif isinstance(value, float):
            value = Simple(7, value)
        elif isinstance(value, str):
            value = np.frombuffer(value.encode("utf-16-be"), ">u2").astype(np.uint16)
        if isinstance(value, Simple):
            return self.sizes(1, value.type) + struct.pack(self.order + SIMPLE_TYPES[value.type], value.value)
        if isinstance(value, Struct):
            types = [t for t, _ in value.fields]
            description = [15, 0, len(types), *[x for t in types for x in (0, t)]]
            fmt = self.order + "".join(SIMPLE_TYPES[t] for t in types)
            return self.sizes(len(description), *description) + struct.pack(fmt, *[v for _, v in value.fields])
        if isinstance(value, np.ndarray):
            code = ARRAY_TYPES[value.dtype.name]
            if code in (11, 12) and self.version == 3:
                raise ValueError("64-bit integers need DM4")
            payload = value.astype(value.dtype.newbyteorder(self.order), copy=False).tobytes(order="C")
            return self.sizes(3, 20, code, value.size) + payload
        raise TypeError(f"cannot write {type(value).__name__} to a DM file")


def dm_bytes(root: dict, version: int = 3, little_endian: bool = True) -> bytes:
    """A complete DM3/DM4 file holding the tag tree ``root``."""
    encoder = _Encoder(version, little_endian)
    body = encoder.group(root) + bytes(8)  # root group, then the end-of-file marker
    header_size = 12 if version == 3 else 16
    root_length = header_size + len(body) - (16 if version == 3 else 24)  # file size - 16 (DM3) / 24 (DM4)
    header = struct.pack(">i" + ("I" if version == 3 else "Q") + "i", version, root_length, int(little_endian))
    return header + body


def calibration(scale: float = 1.0, units: str = "", origin: float = 0.0) -> dict:
    return {"Origin": Simple(6, origin), "Scale": Simple(6, scale), "Units": units}


def image_group(data: np.ndarray, name: str, calibrations: list[dict], tags: dict | None = None) -> dict:
    """One ``ImageList`` entry: ``data`` is (..., Y, X) as numpy sees it, ``calibrations`` X first."""
    data = np.asarray(data)
    if data.dtype.name not in IMAGE_TYPES and data.dtype.name != "uint32":
        raise ValueError(f"no DigitalMicrograph image type for {data.dtype}")
    return {
        "ImageData": {
            "Calibrations": {
                "Brightness": calibration(1.0, "Counts"),
                "Dimension": calibrations,
                "DisplayCalibratedUnits": True,
            },
            "Data": data,
            "DataType": IMAGE_TYPES.get(data.dtype.name, 23),  # uint32 here: packed RGB
            "Dimensions": [Simple(5, n) for n in data.shape[::-1]],
            "PixelDepth": data.dtype.itemsize,
        },
        "ImageTags": tags or {},
        "Name": name,
    }


def write_dm(
    path: str | Path,
    data: np.ndarray,
    scale: float | tuple[float, ...] = 1.0,
    units: str | tuple[str, ...] = "",
    origin: float = 0.0,
    version: int | None = None,
    little_endian: bool = True,
    tags: dict | None = None,
) -> Path:
    """Write ``data`` ((Y, X) or (Z, Y, X)) as DigitalMicrograph image with a thumbnail, like DM does.

    ``scale`` and ``units`` are one value for every axis, or one per axis in DM's order (X first). The version
    defaults to the suffix's (.dm3: 3, .dm4: 4)."""
    path = Path(path)
    version = version or (4 if path.suffix.lower() == ".dm4" else 3)
    data = np.asarray(data)
    n = data.ndim
    scales = scale if isinstance(scale, tuple) else (scale,) * n
    unit_names = units if isinstance(units, tuple) else (units,) * n
    thumbnail = np.full((min(data.shape[-2], 8), min(data.shape[-1], 8)), 0xFF808080, np.uint32)  # grey ARGB
    root = {
        "ApplicationBounds": Struct(((3, 0), (3, 0), (3, 600), (3, 800))),
        "DocumentObjectList": [],
        "DocumentTags": {},
        "HasWindowPosition": True,
        "ImageList": [
            image_group(thumbnail, "", [calibration(), calibration()]),
            image_group(data, path.stem, [calibration(s, u, origin) for s, u in zip(scales, unit_names)], tags),
        ],
        "ImageSourceList": [],
        "InImageMode": True,
        "NextDocumentObjectID": 2,
        "Thumbnails": [{"ImageIndex": 0, "SourceSize_Pixels": Struct(((3, data.shape[-1]), (3, data.shape[-2])))}],
    }
    path.write_bytes(dm_bytes(root, version, little_endian))
    return path
