"""The inputs of a training call: dataset splits, their content digests and device tensors,
shared by every model of a batch inside :func:`shared_inputs` (read, hashed and moved once)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from contextvars import ContextVar

import numpy as np
import torch

from emsim import data


def digest(*arrays: np.ndarray) -> str:
    """sha256 over the dtype, shape and bytes of ``arrays``: the content identity of an input."""
    h = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype.str}{array.shape}".encode())
        h.update(memoryview(array).cast("B"))
    return h.hexdigest()


class SharedInputs:
    """What the models of one batch share: dataset splits (as read), their digests and their
    device tensors, keyed by file and split, or by the memory of the arrays they come from
    (the arrays are held here, so a key is never reused by another array)."""

    def __init__(self) -> None:
        self.splits: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self.digests: dict[tuple, str] = {}
        self.tensors: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


_SHARED: ContextVar[SharedInputs | None] = ContextVar("emsim_shared_inputs", default=None)


@contextlib.contextmanager
def shared_inputs() -> Iterator[SharedInputs]:
    """Within the block, training calls share their inputs and keep finished model files
    (:mod:`emsim.learning.train`)."""
    token = _SHARED.set(SharedInputs())
    try:
        yield _SHARED.get()
    finally:
        _SHARED.reset(token)


def _array_key(*arrays: np.ndarray) -> tuple:
    return tuple((a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str) for a in arrays)


def read_split(path, split: str) -> tuple[np.ndarray, np.ndarray]:
    shared = _SHARED.get()
    if shared is None:
        return data.read_split(path, split)
    key = (str(path), split)
    if key not in shared.splits:
        shared.splits[key] = data.read_split(path, split)
    return shared.splits[key]


def input_digest(*arrays: np.ndarray) -> str:
    shared = _SHARED.get()
    if shared is None:
        return digest(*arrays)
    key = _array_key(*arrays)
    if key not in shared.digests:
        shared.digests[key] = digest(*arrays)
    return shared.digests[key]


def first(images: np.ndarray, labels: np.ndarray, n: int | None, key: str, path) -> tuple[np.ndarray, np.ndarray]:
    if n is None:
        return images, labels
    if not 0 <= n <= len(images):
        raise ValueError(f"{key} = {n} is outside 0..{len(images)}, the size of the train split of {path}")
    return images[:n], labels[:n]


def concat(parts: list[tuple[np.ndarray, np.ndarray]], paths) -> tuple[np.ndarray, np.ndarray]:
    shapes = {p[0].shape[1:] for p in parts if len(p[0])}
    if len(shapes) > 1:
        raise ValueError(f"datasets {list(map(str, paths))} have different image shapes {shapes}")
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(2))


def to_device(
    images: np.ndarray, labels: np.ndarray, device: torch.device, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    shared = _SHARED.get()
    if shared is None or len(images) == 0:
        return _tensors(images, labels, device, what)
    key = (*_array_key(images, labels), str(device))
    if key not in shared.tensors:
        shared.tensors[key] = _tensors(images, labels, device, what)
    return shared.tensors[key]


def _tensors(
    images: np.ndarray, labels: np.ndarray, device: torch.device, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if len(images) == 0:
        raise ValueError(f"the {what} set is empty")
    h, w = images.shape[1:]
    if h != w:
        raise ValueError(f"{what} images are {h}x{w} px; dihedral augmentation needs square images")
    x = torch.from_numpy(data.standardize(images)).unsqueeze(1).to(device)
    return x, torch.from_numpy(np.ascontiguousarray(labels, np.uint8)).to(device)


def sharing() -> bool:
    """True inside :func:`shared_inputs`."""
    return _SHARED.get() is not None
