"""Domain datasets: one HDF5 file per imaging domain.

Layout of a dataset file::

    images        (N, H, W) float32   raw detector counts (not standardised)
    labels        (N, H, W) uint8     1 = nanoparticle, 0 = substrate/vacuum
    meta/<field>  (N,)                per-image metadata (structure index, defocus, dose, seeds, ...)
    splits/train, splits/val, splits/test   int64 image indices
    instances     (N, H, W) uint16    simulated domains: each labelled pixel's particle (emsim.simulation.instances)
    particles/<field>  (P,)           simulated domains: one row per particle (image, instance, radius_A, ...)
    boxes         (M, 6) float64      micrograph domains with boxes (emsim.micrographs)
    attrs: domain (name), config (JSON of the domain's config slice), provenance (JSON),
           label_kind (mask, boxes or none: what the labels are; absent = mask), files (micrograph domains)

Every array carries HDF5 Fletcher-32 checksums (per chunk), verified by HDF5 on every read: a
damaged file raises ValueError naming it instead of giving NaN images.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from emsim.io import atomic_path, reading

SPLITS = ("train", "val", "test")


def write_dataset(
    path: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    meta: dict[str, np.ndarray],
    splits: dict[str, np.ndarray],
    attrs: dict,
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """Write a domain dataset atomically; ``attrs`` values that are not strings are stored as JSON;
    ``extra``: further arrays (``instances``, ``particles/<field>``, ``boxes``); per-image maps are
    chunked and compressed like the labels."""
    if images.shape != labels.shape:
        raise ValueError(f"{path}: images {images.shape} and labels {labels.shape} differ in shape")
    with atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=True) as f:
        chunks = (1, *images.shape[1:])
        f.create_dataset("images", data=images.astype(np.float32), chunks=chunks, fletcher32=True)
        f.create_dataset("labels", data=labels.astype(np.uint8), chunks=chunks, compression="gzip", fletcher32=True)
        for name, values in meta.items():
            f.create_dataset(f"meta/{name}", data=np.asarray(values), fletcher32=True)
        for name in SPLITS:
            f.create_dataset(f"splits/{name}", data=np.asarray(splits[name], dtype=np.int64), fletcher32=True)
        for name, values in (extra or {}).items():
            values = np.asarray(values)
            per_image = {"chunks": chunks, "compression": "gzip"} if values.shape[1:] == images.shape[1:] else {}
            f.create_dataset(name, data=values, fletcher32=values.size > 0, **per_image)  # no chunks when empty
        for key, value in attrs.items():
            f.attrs[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def split_indices(path: str | Path, split: str) -> np.ndarray:
    """Image indices of one split (``train``, ``val`` or ``test``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    with open_dataset(path) as f, reading(path, "dataset"):
        return f[f"splits/{split}"][()]


def read_split(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (float32, raw counts) and labels (uint8) of one split, in split order; non-finite
    pixels raise ValueError naming the file."""
    index = split_indices(path, split)
    with open_dataset(path) as f, reading(path, "dataset"):
        order = np.argsort(index)
        images = np.empty((len(index), *f["images"].shape[1:]), np.float32)
        labels = np.empty((len(index), *f["labels"].shape[1:]), np.uint8)
        images[order] = f["images"][np.sort(index)]
        labels[order] = f["labels"][np.sort(index)]
    if not np.isfinite(images).all():
        raise ValueError(f"{path}: the {split} split has non-finite pixels (NaN or infinity)")
    return images, labels


def read_meta(path: str | Path) -> dict[str, np.ndarray]:
    """Per-image metadata table as a dict of arrays."""
    with open_dataset(path) as f, reading(path, "dataset"):
        return {name: values[()] for name, values in f["meta"].items()}


def read_attrs(path: str | Path) -> dict:
    """File attributes, JSON values decoded."""
    with open_dataset(path) as f, reading(path, "dataset"):
        return {key: _decode(value) for key, value in f.attrs.items()}


def label_kind(path: str | Path) -> str:
    """What a dataset's labels are: ``mask`` (pixel labels), ``boxes`` or ``none`` (labels unused)."""
    with open_dataset(path) as f, reading(path, "dataset"):
        return str(f.attrs.get("label_kind", "mask"))


def read_instances(path: str | Path, split: str) -> np.ndarray | None:
    """The true instance maps of one split (in split order), or None for a dataset without them;
    ValueError naming the file where a map holds an id its particle table lacks."""
    index = split_indices(path, split)
    with open_dataset(path) as f, reading(path, "dataset"):
        if "instances" not in f:
            return None
        order = np.argsort(index)
        out = np.empty((len(index), *f["instances"].shape[1:]), np.uint16)
        out[order] = f["instances"][np.sort(index)]
        table = (f["particles/image"][:], f["particles/instance"][:]) if "particles/image" in f else None
    for i, instances in zip(index, out):
        ids = np.unique(instances[instances > 0])
        listed = table[1][table[0] == i] if table is not None else ()
        if not np.isin(ids, listed).all():
            raise ValueError(
                f"{path}: image {i}: instance ids {ids[~np.isin(ids, listed)].tolist()} are not in its particle table"
            )
    return out


def is_micrograph(path: str | Path) -> bool:
    """Whether a dataset was made of micrograph files (:mod:`emsim.micrographs`), not simulated."""
    with open_dataset(path) as f, reading(path, "dataset"):
        return "files" in f.attrs


def read_boxes(path: str | Path) -> np.ndarray:
    """The boxes of a box-labelled dataset: (M, 6) ``file, frame, x0, y0, x1, y1`` (resampled px)."""
    with open_dataset(path) as f, reading(path, "dataset"):
        return f["boxes"][()] if "boxes" in f else np.zeros((0, 6))


def domain_name(path: str | Path) -> str:
    """The domain a dataset file belongs to."""
    with open_dataset(path) as f, reading(path, "dataset"):
        return str(f.attrs["domain"])


def standardize(images: np.ndarray) -> np.ndarray:
    """Per-image standardisation to mean 0 and variance 1 (float32); flat images map to 0.

    Statistics are taken in float64, so images near the float32 limit standardise correctly;
    non-finite pixels raise ValueError.
    """
    images = np.asarray(images, np.float32)
    if not np.isfinite(images).all():
        raise ValueError("image has non-finite pixels (NaN or infinity)")
    axes = tuple(range(images.ndim - 2, images.ndim))
    mean = images.mean(axis=axes, keepdims=True, dtype=np.float64).astype(np.float32)
    std = images.std(axis=axes, keepdims=True, dtype=np.float64).astype(np.float32)
    return (images - mean) / np.where(std > 0, std, np.float32(1.0))


def verify(path: str | Path) -> int:
    """Read every array of the file once (HDF5 checks each chunk's Fletcher-32 checksum); ValueError
    naming the file and the array at the first damage. Returns the number of arrays read."""
    names: list[str] = []
    with reading(path, "dataset"), open_dataset(path) as f:
        f.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        for name in names:
            try:
                if f[name].chunks and f[name].ndim:  # chunk by chunk along the first axis
                    step = f[name].chunks[0]
                    for start in range(0, f[name].shape[0], step):
                        f[name][start : start + step]
                else:
                    f[name][()]
            except (OSError, ValueError) as error:
                raise ValueError(f"{path}: array {name!r} is damaged ({error})") from None
    return len(names)


def open_dataset(path: str | Path) -> h5py.File:
    """Open a dataset read-only with an error that names the file if it is not one."""
    try:
        f = h5py.File(path, "r")
    except (OSError, FileNotFoundError) as error:
        raise ValueError(f"{path}: not a readable emsim dataset ({error})") from None
    missing = [key for key in ("images", "labels", "meta", "splits") if key not in f]
    if missing:
        f.close()
        raise ValueError(f"{path}: not an emsim dataset (no {', '.join(repr(k) for k in missing)})")
    return f


def _decode(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "{[":
        return json.loads(value)
    return value
