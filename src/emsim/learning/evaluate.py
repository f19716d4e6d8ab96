"""Scoring of trained models on every domain of their series.

Each model is scored on the ``val`` split of every domain given, and on the ``train`` and
``test`` splits of its own target domain ``tags["target"]``: the transfer target for transfer
models, the pretraining domain for pretrained models, and the FIRST domain of the mixture for
single-stage baselines, whose mixture lists its target's images first (the workflow sets these
tags; see :mod:`emsim.study.experiments`).

Evaluation file (JSON, written by :func:`write_evaluation`)::

    {"format": "emsim-evaluation", "version": 1, "provenance": {...},
     "records": [{"path", "tags", "stage", "best_epoch", "best_val_loss", "train_time_s",
                  "trainable_params", "total_params", "images_seen", "peak_memory_MB",
                  "stopped_early_after", "seeds", "history",
                  "metrics": {domain: {split: {cross_entropy, study_loss, iou, dice,
                                               precision, recall, accuracy}}}}, ...]}

Micrograph domains (:mod:`emsim.micrographs`) get pixel metrics only where they have pixel labels
(masks). On their val split, the tiles' probabilities are also stitched back into each file (mean
over overlapping tiles) and scored with ``particle_fraction`` (mean predicted particle fraction)
and ``ood_score`` (mean over tiles, :func:`emsim.learning.ood.score` against the model's training
inputs); a domain with boxes adds detection against them (:func:`detection_scores`).

Non-finite numbers are written as ``null``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from emsim import data
from emsim.io import atomic_path, provenance
from emsim.learning import ood, particles
from emsim.learning.metrics import MetricAccumulator
from emsim.learning.models import load_model, pad_to_multiple, resolve_device

logger = logging.getLogger(__name__)

FORMAT = "emsim-evaluation"
FORMAT_VERSION = 1
TRAINING_FIELDS = (  # a model's training outcome and cost, copied into its evaluation record
    "best_epoch",
    "best_val_loss",
    "train_time_s",
    "trainable_params",
    "total_params",
    "images_seen",
    "peak_memory_MB",
    "stopped_early_after",
)
META_FIELDS = ("stage", *TRAINING_FIELDS, "seeds", "history")


def load_split(path: str | os.PathLike, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One split on ``device``: standardised, padded images (N, 1, H', W') and labels (N, H, W)."""
    images, labels = data.read_split(path, split)
    x = torch.from_numpy(pad_to_multiple(data.standardize(images))[:, None].copy())
    return x.to(device), torch.from_numpy(labels).to(device)


@torch.no_grad()
def score(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 16) -> dict[str, float]:
    """Dataset-level metrics of ``model`` on a loaded split (bf16 autocast on cuda)."""
    model.eval()
    h, w = labels.shape[-2:]
    accumulator = MetricAccumulator()
    on_cuda = images.device.type == "cuda"
    for start in range(0, len(images), batch_size):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda):
            logits = model(images[start : start + batch_size])
        accumulator.update(logits[..., :h, :w], labels[start : start + batch_size])
    return accumulator.result()


@torch.no_grad()
def probabilities(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    """Particle probability (N, H, W) float32 of loaded images (bf16 autocast on cuda)."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=images.device.type == "cuda"):
            logits = model(images[start : start + batch_size])
        out.append(logits.float().softmax(dim=1)[:, 1].cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *images.shape[-2:]), np.float32)


def stitch(probability: np.ndarray, tiles: dict) -> dict[tuple[int, int], np.ndarray]:
    """Each (file, frame)'s probability map, the mean over its overlapping tiles (``tiles``: :func:`micrograph_tiles`)."""
    size = probability.shape[-1]
    sums, counts = {}, {}
    for p, file, frame, y0, x0 in zip(probability, tiles["file"], tiles["frame"], tiles["tile_y0"], tiles["tile_x0"]):
        key = (int(file), int(frame))
        if key not in sums:
            shape = tiles["files"][key[0]]["shape"][1:]
            sums[key], counts[key] = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        sums[key][y0 : y0 + size, x0 : x0 + size] += p
        counts[key][y0 : y0 + size, x0 : x0 + size] += 1
    return {key: sums[key] / np.maximum(counts[key], 1) for key in sums}


def micrograph_tiles(path: str | os.PathLike, split: str) -> dict:
    """The tile metadata of a micrograph dataset's split (in split order), its files and boxes."""
    index = data.split_indices(path, split)
    meta = data.read_meta(path)
    tiles = {key: meta[key][index] for key in ("file", "frame", "tile_y0", "tile_x0")}
    attrs = data.read_attrs(path)
    return tiles | {
        "files": attrs["files"],
        "boxes": data.read_boxes(path),
        "pixel_size_A": attrs["config"]["image"]["pixel_size_A"],
    }


def detection_scores(maps: dict[tuple[int, int], np.ndarray], boxes: np.ndarray, pixel_size_A: float) -> dict:
    """Detection of boxed particles by the instances of stitched probability maps (one-to-one box
    matching at IoU >= 0.5, :mod:`emsim.learning.particles`), summed over the files."""
    results = []
    for (file, frame), probability in maps.items():
        instances = particles.instances_from_probability(
            probability, min_area_px=particles.MIN_AREA_NM2 * 100 / pixel_size_A**2
        )
        mine = boxes[(boxes[:, 0] == file) & (boxes[:, 1] == frame), 2:]
        results.append(particles.match_boxes(mine, particles.boxes_of_instances(instances)))
    return particles.combine(results, pixel_size_A)


def micrograph_scores(model, images: torch.Tensor, tiles: dict, reference: dict | None, batch_size: int) -> dict:
    """Particle fraction, OOD score and (with boxes) detection of a model on a micrograph split."""
    probability = probabilities(model, images, batch_size)
    maps = stitch(probability, tiles)
    scores = {"particle_fraction": float(np.mean([(m >= 0.5).mean() for m in maps.values()]))}
    images_np = images[:, 0].float().cpu().numpy()
    scores["ood_score"] = float(np.mean([ood.score(x, reference) for x in images_np])) if reference else None
    if len(tiles["boxes"]):
        scores |= detection_scores(maps, tiles["boxes"], tiles["pixel_size_A"])
    return scores


def evaluate_models(
    models: list[dict], datasets: dict[str, str], device: str = "auto", batch_size: int = 16
) -> list[dict]:
    """Score each model (``{"path", "tags"}``) on the val split of every domain in ``datasets``
    (domain -> dataset path) and on the train/test splits of its target domain.

    Each val split is read once per call and kept on the device; train/test splits are read once
    per target domain. Records are returned in the order of ``models``.
    """
    _check_inputs(models, datasets)
    device = resolve_device(device)
    val = {domain: load_split(path, "val", device) for domain, path in datasets.items()}
    tiles = {domain: micrograph_tiles(path, "val") for domain, path in datasets.items() if data.is_micrograph(path)}
    labelled = {domain for domain, path in datasets.items() if data.label_kind(path) == "mask"}
    by_target: dict[str, list[int]] = defaultdict(list)
    for i, entry in enumerate(models):
        by_target[entry["tags"]["target"]].append(i)
    records: list[dict | None] = [None] * len(models)
    done = 0
    for target, indices in by_target.items():
        own = {split: load_split(datasets[target], split, device) for split in ("train", "test")}
        for i in indices:
            records[i] = _evaluate_one(models[i], val, tiles, labelled, target, own, device, batch_size)
            done += 1
            logger.info("evaluated %d/%d: %s", done, len(models), models[i]["path"])
        del own
    return records


def _evaluate_one(
    entry: dict, val: dict, tiles: dict, labelled: set, target: str, own: dict, device: torch.device, batch_size: int
) -> dict:
    model, meta = load_model(entry["path"], map_location=device)
    metrics = {}
    for domain, (images, labels) in val.items():
        scores = score(model, images, labels, batch_size) if domain in labelled else {}
        if domain in tiles:
            scores |= micrograph_scores(model, images, tiles[domain], meta.get("input_reference"), batch_size)
        metrics[domain] = {"val": scores}
    for split, loaded in own.items() if target in labelled else ():
        metrics[target][split] = score(model, *loaded, batch_size)
    record = {"path": str(entry["path"]), "tags": dict(entry["tags"])}
    record.update({field: meta.get(field) for field in META_FIELDS})
    record["metrics"] = metrics
    return record


def _check_inputs(models: list[dict], datasets: dict[str, str]) -> None:
    """Fail before any work on a missing file, a missing target tag or a domain mismatch."""
    for domain, path in datasets.items():
        found = data.domain_name(path)
        if found != domain:
            raise ValueError(f"{path}: dataset of domain {found!r} given as domain {domain!r}")
    for entry in models:
        path = entry.get("path")
        if path is None or not Path(path).is_file():
            raise ValueError(f"model file {path!r} does not exist")
        target = entry.get("tags", {}).get("target")
        if target not in datasets:
            raise ValueError(
                f"{path}: tags['target'] = {target!r} is not one of the evaluated domains {sorted(datasets)}"
            )


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write_evaluation(records: list[dict], path: str | os.PathLike) -> None:
    """Write evaluation records as JSON, atomically (non-finite numbers become null)."""
    document = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "provenance": provenance(),
        "records": _finite_or_none(records),
    }
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")


def read_evaluation(path: str | os.PathLike) -> list[dict]:
    """Records of an evaluation file written by :func:`write_evaluation`."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable evaluation file ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{path}: not an emsim evaluation file (format is not {FORMAT!r})")
    return document["records"]
