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

Particle metrics (:func:`domain_scores`, study block ``instances``): predicted particles are cut
from the probability map (:func:`emsim.learning.particles.cut_particles`) and matched
one-to-one to the true particles: a simulated domain's scene instances
(:mod:`emsim.simulation.instances`), a micrograph domain's boxes or its masks' connected
components; ``detection_precision``, ``detection_recall``, ``detection_f1`` (IoU >= 0.5),
``count_error``, ``abs_count_error`` (per image), ``size_error_nm`` (matched particles),
``size_wasserstein_nm``, ``n_true``, ``n_pred``, and with instances ``mean_f1`` (IoU 0.3-0.9) and
``panoptic_quality``. Micrograph domains get pixel metrics only where they have pixel labels; their
tiles' probabilities are stitched back into each file (mean over overlapping tiles) before the
particles are cut, and they add ``particle_fraction`` and ``ood_score`` (mean over tiles,
:func:`emsim.learning.ood.score` against the model's training inputs); with boxes also
``outside_boxes``, the fraction of the predicted mask outside every box (support painted as particle).

Non-finite numbers are written as ``null``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emsim import data
from emsim.io import atomic_path, provenance
from emsim.learning import ood, particles
from emsim.learning.metrics import MetricAccumulator
from emsim.learning.models import load_model, pad_to_multiple, resolve_device
from emsim.study.settings import Instances

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
def _logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int, size: tuple[int, int]):
    """The model's logits (B, 2, h, w) batch by batch, cropped to ``size`` (bf16 autocast on cuda)."""
    model.eval()
    for start in range(0, len(images), batch_size):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=images.device.type == "cuda"):
            yield model(images[start : start + batch_size])[..., : size[0], : size[1]]


def score(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 16,
    keep: list[np.ndarray] | None = None,
) -> dict[str, float]:
    """Dataset-level metrics of ``model`` on a loaded split (bf16 autocast on cuda); the particle
    probabilities (N, H, W) are appended to ``keep`` if given."""
    accumulator = MetricAccumulator()
    for start, logits in zip(range(0, len(images), batch_size), _logits(model, images, batch_size, labels.shape[-2:])):
        accumulator.update(logits, labels[start : start + batch_size])
        if keep is not None:
            keep.append(_probability(logits))
    return accumulator.result()


def probabilities(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    """Particle probability (N, H, W) float32 of loaded images (bf16 autocast on cuda)."""
    out = [_probability(logits) for logits in _logits(model, images, batch_size, images.shape[-2:])]
    return np.concatenate(out) if out else np.zeros((0, *images.shape[-2:]), np.float32)


def _probability(logits: torch.Tensor) -> np.ndarray:
    return logits.float().softmax(dim=1)[:, 1].cpu().numpy()


def stitch(probability: np.ndarray, tiles: dict) -> dict[tuple[int, int], np.ndarray]:
    """Each (file, frame)'s map, the mean over its overlapping tiles (``tiles``: :func:`micrograph_tiles`)."""
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
    return tiles | {"files": data.read_attrs(path)["files"], "boxes": data.read_boxes(path)}


@dataclass
class Domain:
    """What the evaluation holds of one domain's val split: images and labels on the device, the
    true instances (simulated) or tiles (micrographs), and how to score it."""

    images: torch.Tensor
    labels: torch.Tensor
    pixel_size_A: float | None  # None: no particle metrics (their sizes are in nm)
    labelled: bool  # pixel labels
    instances: np.ndarray | None = None  # simulated: true instance maps
    tiles: dict | None = None  # micrographs: tile positions, files, boxes

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device) -> Domain:
        images, labels = load_split(path, "val", device)
        pixel_size_A = data.read_attrs(path).get("config", {}).get("image", {}).get("pixel_size_A")
        labelled = data.label_kind(path) == "mask"
        if data.is_micrograph(path):
            return cls(images, labels, pixel_size_A, labelled, tiles=micrograph_tiles(path, "val"))
        return cls(images, labels, pixel_size_A, labelled, instances=data.read_instances(path, "val"))


def particle_scores(
    probability: np.ndarray, truth: np.ndarray, pixel_size_A: float, settings: Instances, boxes: bool
) -> dict:
    """Particle metrics of probability maps against true instance maps, or boxes (n, 4) per map
    (``boxes``): :func:`emsim.learning.particles.combine` over the maps."""
    results = []
    for p, true in zip(probability, truth):
        found = particles.cut_particles(p, pixel_size_A, settings)
        if boxes:
            results.append(particles.match_boxes(true, particles.boxes_of_instances(found)))
        else:
            results.append(particles.match_instances(true, found))
    return particles.combine(results, pixel_size_A)


def domain_scores(model, domain: Domain, reference: dict | None, settings: Instances, batch_size: int) -> dict:
    """Every metric of one model on one domain's val split: pixel metrics where it has pixel labels;
    particle metrics against the true instances (simulated), the masks' connected components or
    the boxes (micrographs, on the tiles stitched back into each file); and for micrographs the
    mean predicted particle fraction and OOD score."""
    settings = settings if domain.pixel_size_A is not None else dataclasses.replace(settings, enabled=False)
    needed = domain.tiles is not None or (settings.enabled and domain.instances is not None)
    keep: list[np.ndarray] | None = [] if needed else None
    scores = score(model, domain.images, domain.labels, batch_size, keep)
    scores = scores if domain.labelled else {}
    probability = np.concatenate(keep) if keep else np.zeros((0, *domain.labels.shape[-2:]), np.float32)
    if domain.tiles is None:
        if settings.enabled and domain.instances is not None:
            scores |= particle_scores(probability, domain.instances, domain.pixel_size_A, settings, boxes=False)
        return scores
    maps = stitch(probability, domain.tiles)
    scores["particle_fraction"] = float(np.mean([(m >= 0.5).mean() for m in maps.values()]))
    tiles_np = domain.images[:, 0].float().cpu().numpy()
    scores["ood_score"] = float(np.mean([ood.score(x, reference) for x in tiles_np])) if reference else None
    if settings.enabled and len(domain.tiles["boxes"]):
        boxes = domain.tiles["boxes"]
        truth = [boxes[(boxes[:, 0] == file) & (boxes[:, 1] == frame), 2:] for file, frame in maps]
        scores["outside_boxes"] = particles.outside_boxes([m >= 0.5 for m in maps.values()], truth)
        scores |= particle_scores(np.stack(list(maps.values())), truth, domain.pixel_size_A, settings, boxes=True)
    elif settings.enabled and domain.labelled:
        masks = stitch(domain.labels.float().cpu().numpy(), domain.tiles)
        truth = [particles.instances_from_mask(m >= 0.5) for m in masks.values()]
        scores |= particle_scores(np.stack(list(maps.values())), truth, domain.pixel_size_A, settings, boxes=False)
    return scores


def evaluate_models(
    models: list[dict],
    datasets: dict[str, str],
    device: str = "auto",
    batch_size: int = 16,
    instances: Instances | None = None,
) -> list[dict]:
    """Score each model (``{"path", "tags"}``) on the val split of every domain in ``datasets``
    (domain -> dataset path) and on the train/test splits of its target domain; particle metrics
    by ``instances`` (default: the schema's).

    Each val split is read once per call and kept on the device; train/test splits are read once
    per target domain. Records are returned in the order of ``models``.
    """
    _check_inputs(models, datasets)
    device = resolve_device(device)
    settings = Instances.with_defaults() if instances is None else instances
    val = {domain: Domain.load(path, device) for domain, path in datasets.items()}
    by_target: dict[str, list[int]] = defaultdict(list)
    for i, entry in enumerate(models):
        by_target[entry["tags"]["target"]].append(i)
    records: list[dict | None] = [None] * len(models)
    done = 0
    for target, indices in by_target.items():
        own = {split: load_split(datasets[target], split, device) for split in ("train", "test")}
        for i in indices:
            records[i] = _evaluate_one(models[i], val, target, own, settings, device, batch_size)
            done += 1
            logger.info("evaluated %d/%d: %s", done, len(models), models[i]["path"])
        del own
    return records


def _evaluate_one(
    entry: dict, val: dict, target: str, own: dict, settings: Instances, device: torch.device, batch_size: int
) -> dict:
    model, meta = load_model(entry["path"], map_location=device)
    reference = meta.get("input_reference")
    metrics = {
        name: {"val": domain_scores(model, domain, reference, settings, batch_size)} for name, domain in val.items()
    }
    for split, loaded in own.items() if val[target].labelled else ():
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
