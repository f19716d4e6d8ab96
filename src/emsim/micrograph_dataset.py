"""The dataset of a micrograph domain (:mod:`emsim.micrographs`), in the same HDF5 format as a
simulated domain's (:mod:`emsim.data`), built by :func:`build_dataset`:

- every file is read (:mod:`emsim.readers`; each frame of a stack is one image), resampled to the
  study's ``image.pixel_size_A`` (bilinear, antialiased when shrinking; masks re-binarised at 0.5),
  and cut into ``image.size_px`` tiles on a grid of stride ``size_px * (1 - tile_overlap)`` whose
  last row and column are moved to end at the image's edge, so every pixel is covered and no tile
  is padded;
- splits are by FILE: the files are shuffled with the domain seed and cut by the split fractions
  (largest remainder); a split's tiles are in a seeded random order (``size`` first tiles of a
  transfer run come from every file of the split);
- ``label_kind`` (attribute): ``mask`` (labels are the masks, or with ``box_masks`` the ellipses
  inscribed in the boxes), ``boxes`` (labels are zero and unused) or ``none``; ``boxes``, where
  given, holds each box as ``file, frame, x0, y0, x1, y1`` in resampled pixels;
- per tile metadata: ``file``, ``frame``, ``tile_y0``, ``tile_x0``; attribute ``files``: each file's
  path, sha256, pixel size, resampled shape and split.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from emsim import data, io, readers
from emsim.micrographs import file_splits
from emsim.rescale import resample

log = logging.getLogger(__name__)

BOX_TOLERANCE = 1e-3  # normalised YOLO coordinates may overshoot [0, 1] by this much (rounding)


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Tile offsets along one axis: stride ``tile * (1 - overlap)``, the last tile ending at ``length``."""
    if length < tile:
        raise ValueError(f"{length} px is less than one {tile} px tile")
    stride = max(1, int(round(tile * (1 - overlap))))
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def read_boxes(path: str | Path) -> np.ndarray:
    """YOLO boxes ``class cx cy w h`` (normalised) of one file as (n, 4) ``cx, cy, w, h``;
    ValueError naming the file and line for a malformed row or a box outside the image."""
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            values = []
        if len(values) != 5 or not np.isfinite(values).all():
            raise ValueError(f"{path}:{number}: expected 'class cx cy w h' (5 numbers), got {line.strip()!r}")
        cx, cy, w, h = values[1:]
        if (
            w <= 0
            or h <= 0
            or min(cx - w / 2, cy - h / 2) < -BOX_TOLERANCE
            or max(cx + w / 2, cy + h / 2) > 1 + BOX_TOLERANCE
        ):
            raise ValueError(f"{path}:{number}: box {cx:g} {cy:g} {w:g} {h:g} lies outside the image (normalised 0-1)")
        rows.append((cx, cy, w, h))
    return np.array(rows, np.float64).reshape(-1, 4)


def ellipse_mask(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The filled ellipses inscribed in YOLO boxes (n, 4: normalised ``cx, cy, w, h``) on a ``shape`` grid."""
    mask = np.zeros(shape, bool)
    y, x = (np.arange(n) + 0.5 for n in shape)
    for cx, cy, w, h in boxes:
        dy = (y[:, None] - cy * shape[0]) / (h * shape[0] / 2)
        dx = (x[None, :] - cx * shape[1]) / (w * shape[1] / 2)
        mask |= dy**2 + dx**2 <= 1
    return mask


def read_mask(path: str | Path, shape: tuple[int, ...]) -> list[np.ndarray]:
    """The binary mask(s) (uint8 0/1) of a label file whose images have ``shape`` (frames, H, W);
    ValueError naming the file for another shape or more than two grey levels."""
    masks, _ = readers.read_images(path)
    stack = np.stack(masks)
    if stack.shape != tuple(shape):
        raise ValueError(f"{path}: mask of shape {stack.shape} does not match its image's {tuple(shape)}")
    levels = np.unique(stack)
    if len(levels) > 2:
        raise ValueError(f"{path}: mask is not binary ({len(levels)} grey levels; a lossy format such as JPEG?)")
    return list(((stack == levels.max()) & (levels.max() > 0)).astype(np.uint8))


def build_dataset(params: dict, out: str | Path) -> None:
    """Read, resample and tile every file of a micrograph domain and write its dataset
    (``params``: :func:`emsim.study.config.domain_slice`, recorded in the file)."""
    spec, name, seed = params["micrographs"], params["name"], params["seed"]
    size_px, pixel_size_A = params["image"]["size_px"], params["image"]["pixel_size_A"]
    key = f"domains.{name}.micrographs"
    kind = spec["label_kind"]
    splits = file_splits(len(spec["files"]), spec["splits"], seed)
    images, labels, rows, boxes, files = [], [], [], [], []
    for index, entry in enumerate(spec["files"]):
        path = entry["image"]
        frames, file_pixel_A = readers.read_images(path)
        if spec["pixel_size_A"] != "auto":
            file_pixel_A = float(spec["pixel_size_A"])
        elif file_pixel_A is None:
            raise ValueError(f"{path}: records no pixel size and {key}.pixel_size_A is auto; give the pixel size in Å")
        factor = file_pixel_A / pixel_size_A
        if max(factor, 1 / factor) > spec["max_rescale"]:
            raise ValueError(
                f"{path}: its pixel size {file_pixel_A:g} Å is {max(factor, 1 / factor):.3g}x the study's "
                f"image.pixel_size_A = {pixel_size_A:g} Å, beyond {key}.max_rescale = {spec['max_rescale']:g}"
            )
        height, width = frames[0].shape
        shape = (round(height * factor), round(width * factor))
        if min(shape) < size_px:
            raise ValueError(
                f"{path}: {height}x{width} px at {file_pixel_A:g} Å is {shape[0]}x{shape[1]} px at the study's "
                f"{pixel_size_A:g} Å, less than one image.size_px = {size_px} tile"
            )
        masks = read_mask(entry["labels"], (len(frames), height, width)) if "labels" in entry else None
        file_boxes = read_boxes(entry["boxes"]) if "boxes" in entry else None
        if file_boxes is not None and len(frames) > 1:
            raise ValueError(f"{path}: a stack of {len(frames)} frames; YOLO boxes label single images")
        for frame, image in enumerate(frames):
            scaled = resample(image, shape)
            if masks is not None:
                mask = resample(masks[frame], shape) >= 0.5
            elif kind == "mask":  # box_masks
                mask = ellipse_mask(file_boxes, shape)
            else:
                mask = np.zeros(shape, bool)
            for y0 in tile_starts(shape[0], size_px, spec["tile_overlap"]):
                for x0 in tile_starts(shape[1], size_px, spec["tile_overlap"]):
                    images.append(scaled[y0 : y0 + size_px, x0 : x0 + size_px])
                    labels.append(mask[y0 : y0 + size_px, x0 : x0 + size_px])
                    rows.append((index, frame, y0, x0))
            if file_boxes is not None:
                cx, cy, w, h = file_boxes.T
                x0, x1 = (cx - w / 2) * shape[1], (cx + w / 2) * shape[1]
                y0, y1 = (cy - h / 2) * shape[0], (cy + h / 2) * shape[0]
                boxes += [(index, frame, *b) for b in zip(x0, y0, x1, y1)]
        files.append(
            {
                "path": path,
                "sha256": _sha256(path),
                "pixel_size_A": file_pixel_A,
                "shape": [len(frames), *shape],
                "split": splits[index],
            }
        )
        log.info("%s: %s, %d frame(s) -> %d tiles in all", name, path, len(frames), len(images))
    if not images:
        raise ValueError(f"{key}: no image read")
    rows = np.array(rows, np.int64)
    rng = np.random.default_rng([seed, 1])
    split_index = {
        split: rng.permutation(np.flatnonzero(np.isin(rows[:, 0], [i for i, s in enumerate(splits) if s == split])))
        for split in data.SPLITS
    }
    meta = {"file": rows[:, 0], "frame": rows[:, 1], "tile_y0": rows[:, 2], "tile_x0": rows[:, 3]}
    attrs = {
        "domain": name,
        "config": params,
        "sweep": {},
        "label_kind": kind,
        "files": files,
        "provenance": io.provenance(params | {"sha256": {f["path"]: f["sha256"] for f in files}}),
    }
    extra = {"boxes": np.array(boxes, np.float64).reshape(-1, 6)} if boxes else {}
    data.write_dataset(out, np.stack(images), np.stack(labels), meta, split_index, attrs, extra)


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
