"""Segmentation of user micrographs with a trained model or a deep ensemble of them.

The ensemble's class probabilities are the mean of its members' softmax outputs; members must
share the architecture and the training pixel size. Each image (read by :mod:`emsim.readers`) is
resampled to the models' pixel size where it differs by more than ``PIXEL_TOLERANCE`` (the pixel
size comes from the file, else from the user; a model that records one needs one), standardised
per image (as in training), reflect-padded to a multiple of 32 px and, if larger than
``tile_px``, segmented in overlapping tiles (batched, each tile through every member once) whose
probabilities are blended with a tapered weight; maps are resampled back to the input's pixels.

Per image (``<stem>`` = file stem, ``-2``... for repeated stems, ``_<index>`` for stacks):
``<stem>_mask.png`` (0/255), ``<stem>_mask.npy`` (uint8 0/1), ``<stem>_probability.npy``
(float32 mean particle probability), ``<stem>_uncertainty.npy`` (float32 predictive entropy in
bits, 0 = certain, 1 = p of 0.5) and ``<stem>_uncertainty.png`` (0-1 bit as 0-255),
``<stem>_overlay.png``, ``<stem>_particles.csv`` (one row per particle, ``PARTICLE_FIELDS``).
Particles are the instances of the probability map (:func:`emsim.learning.particles.cut_particles`:
touching particles split by a distance-transform watershed, those under ``min_area_nm2`` dropped;
settings as the study block ``instances``). Per run: ``summary.csv`` (one row per image or failed
input, columns ``CSV_FIELDS``), ``size_distribution.png`` (equivalent diameters of all particles,
where the pixel size is known) and ``provenance.json``. Every file is written atomically.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from emsim import data
from emsim.io import atomic_path, provenance
from emsim.learning import ood, particles
from emsim.learning.architecture import DOWNSAMPLING
from emsim.learning.models import load_model, pad_to_multiple, resolve_device
from emsim.progress import bar
from emsim.readers import read_images
from emsim.rescale import resample
from emsim.study.settings import Instances

logger = logging.getLogger(__name__)

MIN_SIZE_PX = DOWNSAMPLING  # after resampling: the U-Net's bottleneck is 1 px
PIXEL_TOLERANCE = 0.02  # relative pixel-size mismatch tolerated without resampling
MAX_RESCALE = 4.0  # larger scale mismatches between an input and the models stop that input (--allow-rescale)
# Peak memory per pixel, measured as the arrays segment() holds: at the input's pixels (image, probability,
# uncertainty, mask, particle labels, maps resampled back) and at the models' pixels (resampled image,
# probability, tile weights)
BYTES_PER_INPUT_PX = 40
BYTES_PER_MODEL_PX = 24
MAX_MEMORY_GB = 8.0  # an image whose estimate is larger is refused (--max-memory-GB)
UNCERTAIN_BITS = 0.5  # entropy above which a pixel counts as uncertain (p in about 0.11-0.89)
OVERLAY_TINT = np.array([255, 140, 0], np.float32)  # orange tint inside particles
OUTLINE = np.array([0, 230, 255], np.uint8)  # cyan outline
TINT_ALPHA = 0.3
CSV_FIELDS = (
    "input",
    "index",
    "status",
    "message",
    "height_px",
    "width_px",
    "pixel_size_A",
    "resampled",
    "particle_fraction",
    "uncertain_fraction",
    "particle_count",
    "mean_particle_area_nm2",
    "mean_diameter_nm",
    "median_diameter_nm",
    "ood_score",
    "ood_threshold",
    "ood_flag",
    "mask_png",
)
PARTICLE_FIELDS = (
    "id",
    "centroid_y_px",
    "centroid_x_px",
    "area_px",
    "area_nm2",
    "diameter_nm",
    "mean_probability",
    "mean_uncertainty",
)

Forward = Callable[[np.ndarray], np.ndarray]


class Ensemble(torch.nn.Module):
    """Mean class probabilities (N, classes, H, W) of member U-Nets on standardised images."""

    def __init__(self, members: Sequence[torch.nn.Module]):
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).float().softmax(dim=1) for m in self.members]).mean(dim=0)


def expand_models(patterns: Sequence[str | os.PathLike]) -> list[Path]:
    """Model files named by paths or glob patterns (sorted matches); ValueError if a pattern
    matches nothing or a file is missing."""
    paths = []
    for pattern in map(str, patterns):
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise ValueError(f"model pattern {pattern!r} matches no file")
            paths += map(Path, matches)
        elif not Path(pattern).is_file():
            raise ValueError(f"model file {pattern} does not exist")
        else:
            paths.append(Path(pattern))
    return list(dict.fromkeys(paths))


def load_ensemble(
    patterns: Sequence[str | os.PathLike], device: str | torch.device = "cpu"
) -> tuple[Ensemble, list[dict], list[Path]]:
    """Load every model of ``patterns`` as one :class:`Ensemble` (eval mode) with their metas;
    ValueError naming the files if architectures or training pixel sizes differ."""
    paths = expand_models(patterns)
    loaded = [load_model(path, map_location=device) for path in paths]
    configs = {json.dumps(m.config, sort_keys=True) for m, _ in loaded}
    if len(configs) > 1:
        raise ValueError(
            "models of different architectures in one ensemble: "
            + "; ".join(f"{p}: {m.config}" for p, (m, _) in zip(paths, loaded))
        )
    sizes = [model_pixel_size(meta) for _, meta in loaded]
    known = [s for s in sizes if s is not None]
    if (known and len(known) < len(sizes)) or (known and not np.allclose(known, known[0], rtol=1e-6)):
        raise ValueError(
            "models of different pixel sizes in one ensemble: " + "; ".join(f"{p}: {s} Å" for p, s in zip(paths, sizes))
        )
    return Ensemble([m for m, _ in loaded]).eval(), [meta for _, meta in loaded], paths


def model_pixel_size(meta: dict) -> float | None:
    """Training pixel size (Å) recorded in a model's meta, None for older models."""
    return (meta.get("input_reference") or {}).get("pixel_size_A")


def torch_forward(model: torch.nn.Module) -> Forward:
    """Forward of a PyTorch ensemble: standardised tiles (B, 1, h, w) -> particle probability
    (B, h, w), on the model's device (bf16 autocast on cuda)."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            probability = model(torch.from_numpy(batch).to(device))
        return probability[:, 1].float().cpu().numpy()

    return forward


def predict_files(
    models: str | os.PathLike | Sequence[str | os.PathLike],
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    device: str = "auto",
    tile_px: int = 512,
    batch_tiles: int = 8,
    pixel_size_A: float | None = None,
    ood_threshold: float | None = None,
    progress: bool = False,
    allow_rescale: bool = False,
    colour: str = "luminance",
    instances: Instances | None = None,
    max_memory_GB: float = MAX_MEMORY_GB,
) -> list[dict]:
    """Segment every image of ``inputs`` with the ensemble of ``models`` (paths or globs).

    Returns one summary dict per image or failed input (keys ``CSV_FIELDS`` plus the output
    paths); ``status`` is ``ok`` or ``error`` with a ``message`` naming the file. A bad input is
    reported and skipped; bad models raise ValueError before any input is read.
    ``pixel_size_A`` replaces the pixel size the files record (and is needed where they record
    none); an input more than ``MAX_RESCALE`` times off the models' pixel size fails unless
    ``allow_rescale``; ``colour`` is the colour rule of :func:`emsim.readers.read_images`;
    ``ood_threshold`` replaces the models' own; ``instances`` sets how particles are cut (default:
    the schema's); an image whose estimated memory exceeds ``max_memory_GB`` is refused before it
    is resampled or segmented; ``progress`` shows a bar over the inputs when stderr is a terminal."""
    for name, value in (
        ("pixel_size_A", pixel_size_A),
        ("ood_threshold", ood_threshold),
        ("max_memory_GB", max_memory_GB),
    ):
        if value is not None and not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value}")
    instances = Instances.with_defaults() if instances is None else instances
    for name in ("min_area_nm2", "min_depth_px"):
        if not np.isfinite(getattr(instances, name)):
            raise ValueError(f"{name} must be finite, got {getattr(instances, name)}")
    if tile_px < DOWNSAMPLING or tile_px % DOWNSAMPLING:
        raise ValueError(f"tile_px must be a positive multiple of {DOWNSAMPLING}, got {tile_px}")
    if batch_tiles < 1:
        raise ValueError(f"batch_tiles must be >= 1, got {batch_tiles}")
    patterns = [models] if isinstance(models, (str, os.PathLike)) else list(models)
    ensemble, metas, paths = load_ensemble(patterns, resolve_device(device))
    references = [meta["input_reference"] for meta in metas if meta.get("input_reference")]
    if ood_threshold is None and references:
        ood_threshold = float(np.mean([r["threshold"] for r in references]))
    forward = torch_forward(ensemble)
    model_px = model_pixel_size(metas[0])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, used_stems, diameters = [], set(), []
    for source in bar(inputs, "predict", show=progress):
        try:
            images, file_px = read_images(source, colour)
        except ValueError as error:
            logger.error("%s", error)
            summary.append(_failure(source, None, str(error)))
            continue
        stem = _unique_stem(Path(source).stem, used_stems)
        for index, image in enumerate(images):
            where = str(source) if len(images) == 1 else f"{source} [image {index}]"
            name = stem if len(images) == 1 else f"{stem}_{index:03d}"
            try:
                row = segment(
                    forward,
                    image,
                    pixel_size_A or file_px,
                    model_px,
                    references,
                    tile_px,
                    batch_tiles,
                    where,
                    instances,
                    progress,
                    allow_rescale,
                    max_memory_GB,
                )
            except ValueError as error:
                logger.error("%s", error)
                summary.append(_failure(source, None if len(images) == 1 else index, str(error)))
                continue
            maps, table = row.pop("maps"), row.pop("particles")
            row.update(
                input=str(source),
                index=None if len(images) == 1 else index,
                status="ok",
                message=None,
                ood_threshold=ood_threshold,
                ood_flag=None
                if row["ood_score"] is None or ood_threshold is None
                else row["ood_score"] > ood_threshold,
            )
            if row["ood_flag"]:
                logger.warning(
                    "%s: out of distribution (score %.2f > threshold %.2f)", where, row["ood_score"], ood_threshold
                )
            row.update(write_outputs(out_dir / name, image, table, **maps))
            summary.append(row)
            diameters += [p["diameter_nm"] for p in table if p["diameter_nm"] is not None]
        logger.info("segmented %s (%d image(s))", source, len(images))
    write_summary(out_dir / "summary.csv", summary)
    if diameters:
        write_size_distribution(out_dir / "size_distribution.png", diameters)
    _write_json(
        out_dir / "provenance.json",
        {
            "models": [str(p) for p in paths],
            "model_pixel_size_A": model_px,
            "tile_px": tile_px,
            "pixel_size_A": pixel_size_A,
            "ood_threshold": ood_threshold,
            "instances": dataclasses.asdict(instances),
            "provenance": provenance(),
            "model_provenance": [m.get("provenance") for m in metas],
        },
    )
    return summary


def _failure(source, index, message: str) -> dict:
    return {"input": str(source), "index": index, "status": "error", "message": message}


def _unique_stem(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``, ... if an earlier input had the same stem."""
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate)
    return candidate


def segment(
    forward: Forward,
    image: np.ndarray,
    pixel_size_A: float | None,
    model_pixel_size_A: float | None,
    references: list[dict],
    tile_px: int,
    batch_tiles: int,
    where: str,
    instances: Instances,
    progress: bool = False,
    allow_rescale: bool = False,
    max_memory_GB: float = MAX_MEMORY_GB,
) -> dict:
    """Probability, uncertainty, mask, particles (``instances``) and OOD score of one raw image;
    ValueError naming ``where`` for a NaN, constant or too small image, a missing pixel size, a
    scale mismatch beyond ``MAX_RESCALE`` (unless ``allow_rescale``) or an estimated memory above
    ``max_memory_GB`` (``progress``: a bar over the tile batches, see :func:`tiled_probability`)."""
    if not np.isfinite(image).all():
        raise ValueError(f"{where}: image contains NaN or infinite values")
    if image.min() == image.max():
        raise ValueError(f"{where}: image is constant (nothing to segment)")
    if model_pixel_size_A is not None and pixel_size_A is None:
        raise ValueError(
            f"{where}: the file records no pixel size and none was given "
            f"(--pixel-size); the model was trained at {model_pixel_size_A:g} Å/px"
        )
    h, w = image.shape
    scaled, resampled = image, False
    if model_pixel_size_A is not None and not allow_rescale:
        factor = max(pixel_size_A / model_pixel_size_A, model_pixel_size_A / pixel_size_A)
        if factor > MAX_RESCALE:
            raise ValueError(
                f"{where}: pixel size {pixel_size_A:g} Å is {factor:.3g}x the models' {model_pixel_size_A:g} Å "
                f"(more than {MAX_RESCALE:g}x); if the file's calibration is wrong give --pixel-size, "
                "to resample anyway give --allow-rescale"
            )
    factor = 1.0 if model_pixel_size_A is None else pixel_size_A / model_pixel_size_A
    needed_GB = (BYTES_PER_INPUT_PX * h * w + BYTES_PER_MODEL_PX * round(h * factor) * round(w * factor)) / 1e9
    if needed_GB > max_memory_GB:
        raise ValueError(
            f"{where}: segmenting this {h}x{w} px image at the models' pixel size needs about {needed_GB:.1f} GB "
            f"(limit {max_memory_GB:g} GB); crop or bin it, or raise --max-memory-GB"
        )
    if model_pixel_size_A is not None and abs(factor - 1) > PIXEL_TOLERANCE:
        scaled, resampled = resample(image, (round(h * factor), round(w * factor))), True
    if min(scaled.shape) < MIN_SIZE_PX:
        raise ValueError(
            f"{where}: image of {scaled.shape[0]}x{scaled.shape[1]} px (at the "
            f"model's pixel size) is smaller than the model's minimum "
            f"{MIN_SIZE_PX} px"
        )
    probability = tiled_probability(forward, scaled, tile_px, batch_tiles, progress)
    if resampled:
        probability = np.clip(resample(probability, (h, w)), 0, 1)
    uncertainty = entropy_bits(probability)
    mask = (probability > 0.5).astype(np.uint8)
    found = particles.cut_particles(probability, pixel_size_A, instances)
    table = particles.particle_table(found, pixel_size_A, {"probability": probability, "uncertainty": uncertainty})
    diameters = [p["diameter_nm"] for p in table if p["diameter_nm"] is not None]
    scores = [ood.score(scaled, ref) for ref in references]
    return {
        "height_px": h,
        "width_px": w,
        "pixel_size_A": pixel_size_A,
        "resampled": resampled,
        "particle_fraction": float(mask.mean()),
        "uncertain_fraction": float((uncertainty > UNCERTAIN_BITS).mean()),
        "particle_count": len(table),
        "mean_particle_area_nm2": float(np.mean([p["area_nm2"] for p in table])) if diameters else None,
        "mean_diameter_nm": float(np.mean(diameters)) if diameters else None,
        "median_diameter_nm": float(np.median(diameters)) if diameters else None,
        "ood_score": float(np.mean(scores)) if scores else None,
        "maps": {"mask": mask, "probability": probability, "uncertainty": uncertainty},
        "particles": table,
    }


def segment_image(model: torch.nn.Module, image: np.ndarray, tile_px: int = 512) -> np.ndarray:
    """Particle mask (uint8 0/1, shape of ``image``) of one raw greyscale image by one U-Net."""
    probability = tiled_probability(torch_forward(Ensemble([model])), image, tile_px)
    return (probability > 0.5).astype(np.uint8)


def entropy_bits(probability: np.ndarray) -> np.ndarray:
    """Binary predictive entropy (bits) of a particle-probability map."""
    p = np.clip(probability, 1e-7, 1 - 1e-7)
    return (-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).astype(np.float32)


def tiled_probability(
    forward: Forward, image: np.ndarray, tile_px: int = 512, batch_tiles: int = 8, progress: bool = False
) -> np.ndarray:
    """Particle probability (float32, shape of ``image``) of one raw greyscale image, from
    overlapping tiles sent through ``forward`` in batches of ``batch_tiles`` (``progress``: a
    bar over the batches of a large image when stderr is a terminal)."""
    h, w = image.shape
    x = pad_to_multiple(data.standardize(image))
    ph, pw = x.shape
    th, tw = min(tile_px, ph), min(tile_px, pw)
    weight = _taper(th)[:, None] * _taper(tw)[None, :]
    corners = [(top, left) for top in _starts(ph, th) for left in _starts(pw, tw)]
    probability = np.zeros((ph, pw), np.float32)
    total = np.zeros((ph, pw), np.float32)
    starts = range(0, len(corners), batch_tiles)
    for start in bar(starts, "tiles", "batch", show=progress and len(starts) > 1, leave=False):
        chunk = corners[start : start + batch_tiles]
        batch = np.stack([x[top : top + th, left : left + tw] for top, left in chunk])[:, None]
        for (top, left), p in zip(chunk, forward(np.ascontiguousarray(batch))):
            probability[top : top + th, left : left + tw] += weight * p
            total[top : top + th, left : left + tw] += weight
    return (probability / total)[:h, :w]


def _starts(length: int, tile: int) -> list[int]:
    """Tile offsets covering ``length`` with about a quarter tile of overlap."""
    if length <= tile:
        return [0]
    step = tile - tile // 4
    n = -(-(length - tile) // step) + 1
    return [int(round(i * (length - tile) / (n - 1))) for i in range(n)]


def _taper(n: int) -> np.ndarray:
    """1D blending weight: highest in the middle of a tile, small but positive at its edges."""
    ramp = np.minimum(np.arange(n) + 1.0, np.arange(n, 0, -1))
    return np.clip(ramp / (n / 4), 0.05, 1.0).astype(np.float32)


def write_outputs(
    stem: Path,
    image: np.ndarray,
    table: list[dict],
    mask: np.ndarray,
    probability: np.ndarray,
    uncertainty: np.ndarray,
) -> dict[str, str]:
    """Write the per-image files (module docstring); returns their paths."""
    names = (
        "mask_png",
        "mask_npy",
        "probability_npy",
        "uncertainty_npy",
        "uncertainty_png",
        "overlay_png",
        "particles_csv",
    )
    paths = {name: f"{stem}_{name.replace('_', '.')}" for name in names}
    _write_csv(paths["particles_csv"], table, PARTICLE_FIELDS)
    _write_png(paths["mask_png"], mask * np.uint8(255))
    _write_npy(paths["mask_npy"], mask)
    _write_npy(paths["probability_npy"], probability.astype(np.float32))
    _write_npy(paths["uncertainty_npy"], uncertainty.astype(np.float32))
    _write_png(paths["uncertainty_png"], np.round(np.clip(uncertainty, 0, 1) * 255).astype(np.uint8))
    _write_png(paths["overlay_png"], overlay(image, mask))
    return paths


def write_summary(path: Path, rows: list[dict]) -> None:
    """One CSV row per image or failed input, columns ``CSV_FIELDS``."""
    _write_csv(path, rows, CSV_FIELDS)


def write_size_distribution(path: Path, diameters: list[float]) -> None:
    """Histogram of the particles' equivalent diameters [nm]."""
    fig = Figure(figsize=(4.5, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.hist(diameters, bins=min(40, max(5, len(diameters) // 5)), color="tab:orange", edgecolor="black", lw=0.5)
    ax.set(
        xlabel="equivalent diameter [nm]",
        ylabel="particles",
        title=f"{len(diameters)} particles, median {np.median(diameters):.2f} nm",
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buffer.getvalue())


def _write_csv(path: str | Path, rows: list[dict], fields: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(buffer.getvalue())


def _write_json(path: Path, document: dict) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(document, indent=1, default=str) + "\n")


def _write_npy(path: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buffer.getvalue())


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
    return padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
