"""The OOD check: the OOD score (:mod:`emsim.learning.ood`) against the measured loss on every
evaluated (model, domain) pair of a study, and the threshold calibrated on it (``emsim ood``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from scipy import stats

from emsim import data
from emsim.learning import evaluate, models
from emsim.learning.ood import describe, log_spectrum
from emsim.progress import bar

logger = logging.getLogger(__name__)

LOSS_RATIO = 1.5  # a domain counts as degraded where its loss exceeds this x the in-domain loss


def study_scores(results: str | os.PathLike, loss_ratio: float = LOSS_RATIO, progress: bool = False) -> dict:
    """OOD score versus measured loss on every evaluated (model, domain) pair of a study.

    ``results`` is a study's results folder (``datasets/``, ``models/``, ``evaluation/``); scores
    are taken on each domain's validation images. A model without a description (trained before
    it existed) is described from its training dataset. A pair's ``shift_gap`` is its loss minus
    the domain's own loss (the mean in-domain loss of the models pretrained on that domain; None
    where the study pretrains none): the part of the loss the shift causes, without the domain's
    own difficulty. Returns ``pairs``, ``domains`` (mean score and loss), Spearman's rho of score
    and loss per model across its domains (``rho_per_model``, median ``rho_median``), across
    domain means (``rho_domains``) and across pairs (``rho_pairs``), the same per model and
    across pairs for the shift gap (``rho_gap_median``, ``rho_gap_pairs``), and ``threshold``:
    the score that best separates pairs whose loss exceeds ``loss_ratio`` x the model's in-domain
    loss (balanced accuracy). ``progress``: a bar over the records when stderr is a terminal."""
    results = Path(results)
    records = [r for path in sorted((results / "evaluation").rglob("*.json")) for r in evaluate.read_evaluation(path)]
    if not records:
        raise ValueError(f"{results}: no evaluation files under {results / 'evaluation'}")
    spectra_cache: dict[tuple[str, int], np.ndarray] = {}
    pairs: dict[tuple[str, str], dict] = {}
    for record in bar(records, "ood", "model", show=progress):
        _, meta = models.load_model(_resolve(results, record["path"]))
        ref = meta.get("input_reference") or _describe_from_meta(results, meta)
        target = record["tags"]["target"]
        in_domain = record["metrics"][target]["val"]["cross_entropy"]
        for domain, splits in record["metrics"].items():
            key = (domain, ref["size_px"])
            if key not in spectra_cache:
                images, _ = data.read_split(results / "datasets" / f"{domain}.h5", "val")
                spectra_cache[key] = np.stack([log_spectrum(i, ref["size_px"]) for i in images])
            z = (spectra_cache[key] - np.asarray(ref["spectrum_mean"])) / np.asarray(ref["spectrum_std"])
            if splits["val"]["cross_entropy"] is not None:
                pairs[str(record["path"]), domain] = {
                    "model": str(record["path"]),
                    "stage": record["tags"]["stage"],
                    "target": target,
                    "domain": domain,
                    "score": float(np.sqrt((z**2).mean(axis=1)).mean()),
                    "loss": splits["val"]["cross_entropy"],
                    "in_domain_loss": in_domain,
                }
    pairs = list(pairs.values())
    own = {}
    for p in pairs:
        if p["stage"] == "pretrain" and p["domain"] == p["target"]:
            own.setdefault(p["domain"], []).append(p["loss"])
    for p in pairs:
        p["shift_gap"] = p["loss"] - float(np.mean(own[p["domain"]])) if p["domain"] in own else None
    domains = sorted({p["domain"] for p in pairs})
    per_domain = {
        d: {
            "score": float(np.mean([p["score"] for p in pairs if p["domain"] == d])),
            "loss": float(np.mean([p["loss"] for p in pairs if p["domain"] == d])),
        }
        for d in domains
    }
    gapped = [p for p in pairs if p["shift_gap"] is not None]
    rho_per_model = _rho_per_model(pairs, "loss")
    return {
        "pairs": pairs,
        "domains": per_domain,
        "rho_per_model": rho_per_model,
        "rho_median": _median(rho_per_model.values()),
        "rho_domains": _spearman([per_domain[d]["score"] for d in domains], [per_domain[d]["loss"] for d in domains]),
        "rho_pairs": _spearman([p["score"] for p in pairs], [p["loss"] for p in pairs]),
        "rho_gap_median": _median(_rho_per_model(gapped, "shift_gap").values()),
        "rho_gap_pairs": _spearman([p["score"] for p in gapped], [p["shift_gap"] for p in gapped]),
        "threshold": _calibrate(pairs, loss_ratio),
        "loss_ratio": loss_ratio,
    }


def _rho_per_model(pairs: list[dict], key: str) -> dict[str, float | None]:
    """Spearman's rho of score and ``key`` across each model's domains."""
    models = dict.fromkeys(p["model"] for p in pairs)
    return {
        m: _spearman([p["score"] for p in pairs if p["model"] == m], [p[key] for p in pairs if p["model"] == m])
        for m in models
    }


def _median(values) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.median(defined)) if defined else None


def _resolve(results: Path, path: str) -> Path:
    """A path from an evaluation record: as written (workflow folder) or under ``results``."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    candidate = results.parent / path
    if candidate.is_file():
        return candidate
    raise ValueError(f"model file {path} of an evaluation record not found (also not under {results.parent})")


def training_images(results: Path, meta: dict) -> tuple[np.ndarray, Path]:
    """The training images of a model (from its meta, datasets under ``results``) and its first dataset."""
    datasets = [meta["dataset"]] if meta.get("dataset") else meta.get("datasets", [])
    counts = [meta.get("size")] if meta.get("dataset") else meta.get("mix", [None])
    images = np.concatenate(
        [data.read_split(_resolve(results, path), "train")[0][:n] for path, n in zip(datasets, counts)]
    )
    return images, _resolve(results, datasets[0])


def _describe_from_meta(results: Path, meta: dict) -> dict:
    images, first = training_images(results, meta)
    return describe({"dataset": str(first)}, images)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def _spearman(x: list[float], y: list[float]) -> float | None:
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(stats.spearmanr(x, y).statistic)


def _calibrate(pairs: list[dict], loss_ratio: float) -> float | None:
    """Score threshold with the best balanced accuracy for 'loss > loss_ratio x in-domain'."""
    scores = np.array([p["score"] for p in pairs])
    degraded = np.array([p["loss"] > loss_ratio * p["in_domain_loss"] for p in pairs])
    if degraded.all() or not degraded.any():
        return None
    ordered = np.unique(scores)
    candidates = (ordered[1:] + ordered[:-1]) / 2
    accuracy = [
        ((scores > t) & degraded).sum() / degraded.sum() + ((scores <= t) & ~degraded).sum() / (~degraded).sum()
        for t in candidates
    ]
    return float(candidates[int(np.argmax(accuracy))])


def summary(found: dict, loss_ratio: float = LOSS_RATIO) -> str:
    """:func:`study_scores` as text: per-domain score and loss, Spearman's rho, the threshold."""
    lines = [f"{'domain':<24} {'OOD score':>10} {'val loss':>10}"]
    lines += [f"{domain:<24} {row['score']:>10.3f} {row['loss']:>10.4f}" for domain, row in found["domains"].items()]
    lines.append(
        f"Spearman rho, score vs loss: median over {len(found['rho_per_model'])} models (each across its "
        f"domains) {_fmt(found['rho_median'])}, across domain means {_fmt(found['rho_domains'])}, "
        f"across {len(found['pairs'])} (model, domain) pairs {_fmt(found['rho_pairs'])}"
    )
    lines.append(
        "Spearman rho, score vs shift gap (loss - the domain's own pretrained loss): median over "
        f"models {_fmt(found['rho_gap_median'])}, across pairs {_fmt(found['rho_gap_pairs'])}"
    )
    lines.append(f"calibrated threshold (loss > {loss_ratio} x in-domain): {found['threshold']}")
    return "\n".join(lines)
