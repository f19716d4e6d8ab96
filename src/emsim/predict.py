"""Segmentation of user micrographs with a trained model.

Inputs: TIFF (``.tif``/``.tiff``, pages or samples as a stack), PNG, ``.npy`` and HDF5
(``.h5``/``.hdf5``: dataset ``images``, else the only 2D/3D numeric dataset). A 2D array is one
image; a 3D array is a stack of images (N, H, W), unless its last axis has 2-4 entries and the
others are longer, which is read as colour channels (H, W, C). Colour images are accepted only if
their colour channels are identical (an alpha channel is dropped); otherwise they are an error.

Each image is standardised per image (as in training), reflect-padded to a multiple of 32 px and,
if larger than ``tile_px``, segmented in overlapping tiles whose class probabilities are blended
with a tapered weight. For every image ``<stem>_mask.png`` (0/255), ``<stem>_mask.npy`` (uint8
0/1) and ``<stem>_overlay.png`` are written, ``<stem>`` being the file stem, with ``_<index>``
(3 digits) for images of a stack.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import h5py
import numpy as np
import tifffile
import torch
from PIL import Image

from emsim import data
from emsim.evaluate import pad_to_multiple
from emsim.io import atomic_path
from emsim.models import DOWNSAMPLING, load_model, resolve_device

logger = logging.getLogger(__name__)

SUFFIXES = (".tif", ".tiff", ".png", ".npy", ".h5", ".hdf5")
MIN_SIZE_PX = 8
OVERLAY_TINT = np.array([255, 140, 0], np.float32)  # orange tint inside particles
OUTLINE = np.array([0, 230, 255], np.uint8)  # cyan outline
TINT_ALPHA = 0.3


def predict_files(model_path: str | os.PathLike, inputs: list[str | os.PathLike],
                  out_dir: str | os.PathLike, device: str = "auto",
                  tile_px: int = 512) -> list[dict]:
    """Segment every image of ``inputs``; returns one summary dict per image (or failed input).

    Summary keys: ``input``, ``index`` (position in a stack, None for single images and errors),
    ``status`` (``ok``/``error``), ``message``, and for ``ok`` also ``shape_px``,
    ``particle_fraction``, ``mask_png``, ``mask_npy``, ``overlay_png``.
    A bad input is reported and skipped; a file that is not an emsim model raises ValueError.
    """
    if tile_px < DOWNSAMPLING or tile_px % DOWNSAMPLING:
        raise ValueError(f"tile_px must be a positive multiple of {DOWNSAMPLING}, got {tile_px}")
    device = resolve_device(device)
    model, _ = load_model(model_path, map_location=device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, used_stems = [], set()
    for source in inputs:
        try:
            images = read_images(source)
        except ValueError as error:
            logger.error("%s", error)
            summary.append({"input": str(source), "index": None, "status": "error",
                            "message": str(error)})
            continue
        stem = _unique_stem(Path(source).stem, used_stems)
        for index, image in enumerate(images):
            mask = segment_image(model, image, tile_px)
            name = stem if len(images) == 1 else f"{stem}_{index:03d}"
            summary.append({"input": str(source), "index": None if len(images) == 1 else index,
                            "status": "ok", "message": None, "shape_px": list(image.shape),
                            "particle_fraction": float(mask.mean()),
                            **write_outputs(out_dir / name, image, mask)})
        logger.info("segmented %s (%d image(s))", source, len(images))
    return summary


def _unique_stem(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``, ... if an earlier input had the same stem."""
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate)
    return candidate


def read_images(path: str | os.PathLike) -> list[np.ndarray]:
    """Greyscale float32 images (H, W) of one file; ValueError naming the file if unusable."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; allowed: {', '.join(SUFFIXES)}")
    try:
        if suffix in (".tif", ".tiff"):
            array = _read_tiff(path)
        elif suffix == ".png":
            array = _read_png(path)
        elif suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            array = _read_hdf5(path)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    except Exception as error:  # corrupt files raise library-specific errors
        raise ValueError(f"{path}: cannot be read as {suffix} ({error})") from None
    try:
        return _as_images(array)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _read_tiff(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        array = series.asarray()
        if "S" in series.axes:  # colour samples: move them last
            array = np.moveaxis(array, series.axes.index("S"), -1)
    return array


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        if image.mode == "P":
            image = image.convert("RGBA")
        return np.asarray(image)


def _read_hdf5(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        if "images" in f:
            return f["images"][()]
        found = []
        f.visititems(lambda name, item: found.append(name)
                     if isinstance(item, h5py.Dataset) and item.ndim in (2, 3) else None)
        if len(found) != 1:
            raise ValueError(f"no 'images' dataset and {len(found)} 2D/3D datasets "
                             f"({', '.join(found) or 'none'}); name the image dataset 'images'")
        return f[found[0]][()]


def _as_images(array: np.ndarray) -> list[np.ndarray]:
    """Split a 2D/3D array into greyscale images, converting grey-valued colour images."""
    if array.dtype.kind not in "buif":
        raise ValueError(f"image data of type {array.dtype} is not real numbers")
    if array.ndim == 3 and 2 <= array.shape[-1] <= 4 and min(array.shape[:2]) > 4:
        array = _colour_to_grey(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"expected a 2D image or a 3D stack, got shape {array.shape}")
    if min(array.shape[1:]) < MIN_SIZE_PX:
        raise ValueError(f"images of {array.shape[1]}x{array.shape[2]} px are smaller than "
                         f"{MIN_SIZE_PX} px")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError("image contains NaN or infinite values")
    return list(array)


def _colour_to_grey(array: np.ndarray) -> np.ndarray:
    channels = array[..., :3] if array.shape[-1] in (3, 4) else array[..., :1]  # drop alpha
    if not (channels == channels[..., :1]).all():
        raise ValueError(f"colour image with {array.shape[-1]} differing channels; "
                         "convert it to greyscale (one channel) first")
    return channels[..., 0]


@torch.no_grad()
def segment_image(model: torch.nn.Module, image: np.ndarray, tile_px: int = 512) -> np.ndarray:
    """Particle mask (uint8 0/1, shape of ``image``) of one raw greyscale image."""
    device = next(model.parameters()).device
    h, w = image.shape
    x = torch.from_numpy(pad_to_multiple(data.standardize(image)).copy()).to(device)
    ph, pw = x.shape
    th, tw = min(tile_px, ph), min(tile_px, pw)
    weight = _taper(th, device)[:, None] * _taper(tw, device)[None, :]
    probability = torch.zeros(ph, pw, device=device)
    total = torch.zeros(ph, pw, device=device)
    for top in _starts(ph, th):
        for left in _starts(pw, tw):
            tile = x[top:top + th, left:left + tw][None, None]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(tile)
            p = logits.float().softmax(dim=1)[0, 1]
            probability[top:top + th, left:left + tw] += weight * p
            total[top:top + th, left:left + tw] += weight
    return (probability / total > 0.5)[:h, :w].to(torch.uint8).cpu().numpy()


def _starts(length: int, tile: int) -> list[int]:
    """Tile offsets covering ``length`` with about a quarter tile of overlap."""
    if length <= tile:
        return [0]
    step = tile - tile // 4
    n = -(-(length - tile) // step) + 1
    return [int(round(i * (length - tile) / (n - 1))) for i in range(n)]


def _taper(n: int, device: torch.device) -> torch.Tensor:
    """1D blending weight: highest in the middle of a tile, small but positive at its edges."""
    ramp = torch.minimum(torch.arange(n, device=device) + 1.0, torch.arange(n, 0, -1, device=device))
    return torch.clamp(ramp / (n / 4), 0.05, 1.0)


def write_outputs(stem: Path, image: np.ndarray, mask: np.ndarray) -> dict[str, str]:
    """Write mask PNG (0/255), mask NPY (0/1) and overlay PNG; returns their paths."""
    paths = {"mask_png": f"{stem}_mask.png", "mask_npy": f"{stem}_mask.npy",
             "overlay_png": f"{stem}_overlay.png"}
    _write_png(paths["mask_png"], mask * np.uint8(255))
    buffer = io.BytesIO()
    np.save(buffer, mask)
    with atomic_path(paths["mask_npy"]) as tmp:
        Path(tmp).write_bytes(buffer.getvalue())
    _write_png(paths["overlay_png"], overlay(image, mask))
    return paths


def _write_png(path: str, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB uint8: image in grey (1-99 % percentile stretch), particles tinted and outlined."""
    low, high = np.percentile(image, [1, 99])
    grey = np.clip((image - low) / (high - low if high > low else 1.0), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    inside = mask.astype(bool)
    rgb[inside] = (1 - TINT_ALPHA) * rgb[inside] + TINT_ALPHA * OVERLAY_TINT
    rgb = rgb.astype(np.uint8)
    rgb[inside & ~_erode(inside)] = OUTLINE
    return rgb


def _erode(mask: np.ndarray) -> np.ndarray:
    """Binary erosion with a 3x3 cross; pixels outside the image count as particle."""
    padded = np.pad(mask, 1, mode="edge")
    return (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1]
            & padded[1:-1, :-2] & padded[1:-1, 2:])
