"""Out-of-distribution score of an input image against a model's training inputs.

Description of the training inputs (stored in the model meta under ``input_reference``): the
pixel size and image size of the training domain and, for each of the encoder's five feature
maps (:meth:`emsim.learning.models.Encoder.forward`), the mean and standard deviation over the
training images of every channel's per-image mean and log variance. These are the statistics
the network's batch normalisation and decoder were fitted to; what the network is sensitive to
in a shift of defocus, dose or lattice moves them, what it ignores does not.

Score of an image: the RMS, over channels, both statistics and the five maps, of their z-scores
against that description (about 1 in distribution), averaged over up to ``MAX_TILES`` tiles of
the training size. The default threshold ``DEFAULT_THRESHOLD`` is replaced by one calibrated on a
study's own domains with :func:`study_scores` (``python -m emsim.learning.ood results``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from emsim import data
from emsim.learning.models import load_model, pad_to_multiple

logger = logging.getLogger(__name__)

MAX_TILES = 16  # tiles of the training size scored per image (evenly spread)
BATCH = 16  # images per encoder pass
LOG_EPS = 1e-6  # added to a channel's variance before the log (dead ReLU channels)
MIN_SPREAD = 0.1  # floor of a statistic's spread over the training images: 10 % of the
# channel's spatial standard deviation for its mean, 10 % of that deviation for its log variance
DEFAULT_THRESHOLD = 3.0
LOSS_RATIO = 1.5  # a domain counts as degraded where its loss exceeds this x the in-domain loss


def feature_statistics(model: torch.nn.Module, images: np.ndarray) -> list[np.ndarray]:
    """Per encoder feature map: (N, 2, C) per-image channel mean and log variance of raw images
    (N, H, W), standardised and padded as in training (``model`` in eval mode meanwhile)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(images), BATCH):
        x = torch.from_numpy(pad_to_multiple(data.standardize(images[start : start + BATCH]))[:, None].copy())
        with torch.no_grad():
            features = model.encoder(x.to(device))
        chunks.append(
            [
                torch.stack([f.mean(dim=(2, 3)), torch.log(f.var(dim=(2, 3)) + LOG_EPS)], dim=1).double().cpu().numpy()
                for f in features
            ]
        )
    model.train(was_training)
    return [np.concatenate(maps) for maps in zip(*chunks)]


def reference(model: torch.nn.Module, images: np.ndarray, pixel_size_A: float | None) -> dict:
    """Description of training images (N, H, W) as ``model`` sees them: pixel size, image size,
    per feature map the (2, C) mean and spread over images of the channel statistics."""
    stats_per_map = feature_statistics(model, images)
    return {
        "pixel_size_A": pixel_size_A,
        "size_px": int(max(images.shape[1:])),
        "feature_mean": [s.mean(axis=0).tolist() for s in stats_per_map],
        "feature_std": [_spread(s).tolist() for s in stats_per_map],
        "threshold": DEFAULT_THRESHOLD,
    }


def _spread(statistics: np.ndarray) -> np.ndarray:
    """(2, C) spread over images of (N, 2, C) channel statistics, floored by ``MIN_SPREAD``."""
    spatial_std = np.exp(statistics[:, 1].mean(axis=0) / 2)
    floor = np.stack([MIN_SPREAD * spatial_std, np.full_like(spatial_std, 2 * MIN_SPREAD)])
    return np.maximum(statistics.std(axis=0), floor)


def describe(run: dict, model: torch.nn.Module, images: np.ndarray) -> dict:
    """The ``input_reference`` entry of a model's meta: :func:`reference` of its training images,
    with the pixel size of its (first) training dataset (None if that file records none)."""
    attrs = data.read_attrs(run.get("dataset") or run["datasets"][0])
    return reference(model, images, attrs.get("config", {}).get("image", {}).get("pixel_size_A"))


def tiles(image: np.ndarray, size_px: int) -> np.ndarray:
    """Up to ``MAX_TILES`` non-overlapping ``size_px`` tiles (T, h, w) of ``image``, evenly spread
    (the whole image if it is not larger)."""
    h, w = image.shape
    th, tw = min(size_px, h), min(size_px, w)
    corners = [(top, left) for top in range(0, h - th + 1, th) for left in range(0, w - tw + 1, tw)]
    pick = np.linspace(0, len(corners) - 1, min(MAX_TILES, len(corners))).round().astype(int)
    return np.stack([image[top : top + th, left : left + tw] for top, left in (corners[i] for i in pick)])


def scores(model: torch.nn.Module, images: np.ndarray, ref: dict) -> np.ndarray:
    """Score (N,) of each image (N, H, W) against ``ref``: RMS z of its tiles' feature statistics,
    averaged over tiles."""
    per_image = []
    for image in images:
        z2 = [
            (((s - np.asarray(mean)) / np.asarray(std)) ** 2).mean(axis=(1, 2))
            for s, mean, std in zip(
                feature_statistics(model, tiles(image, ref["size_px"])), ref["feature_mean"], ref["feature_std"]
            )
        ]
        per_image.append(np.sqrt(np.mean(z2, axis=0)).mean())
    return np.asarray(per_image)


def score(model: torch.nn.Module, image: np.ndarray, ref: dict) -> float:
    """Score of one raw image (at the model's pixel size) against ``ref``."""
    return float(scores(model, image[None], ref)[0])


def study_scores(results: str | os.PathLike, loss_ratio: float = LOSS_RATIO) -> dict:
    """OOD score versus measured loss on every evaluated (model, domain) pair of a study.

    ``results`` is a study's results folder (``datasets/``, ``models/``, ``evaluation/``); scores
    are computed on each domain's validation images. A model without a feature description
    (trained before it existed) is described from its training images. Returns ``pairs`` (model,
    domain, score, loss, in-domain loss), ``domains`` (mean score and loss per domain), Spearman's
    rank correlation of score and loss across each model's domains (``rho_per_model``, with its
    ``rho_median``), across the domains' means (``rho_domains``) and across all pairs
    (``rho_pairs``), and ``threshold``: the score that best separates pairs whose loss exceeds
    ``loss_ratio`` x the in-domain loss (balanced accuracy)."""
    from emsim.learning import evaluate

    results = Path(results)
    records = [r for path in sorted((results / "evaluation").rglob("*.json")) for r in evaluate.read_evaluation(path)]
    if not records:
        raise ValueError(f"{results}: no evaluation files under {results / 'evaluation'}")
    images: dict[str, np.ndarray] = {}
    pairs = []
    for record in records:
        model, meta = load_model(_resolve(results, record["path"]))
        ref = meta.get("input_reference") or {}
        if "feature_mean" not in ref:
            ref = _describe_from_meta(results, model, meta)
        target = record["tags"]["target"]
        in_domain = record["metrics"][target]["val"]["cross_entropy"]
        for domain, splits in record["metrics"].items():
            if domain not in images:
                images[domain] = data.read_split(results / "datasets" / f"{domain}.h5", "val")[0]
            pairs.append(
                {
                    "model": str(record["path"]),
                    "domain": domain,
                    "score": float(scores(model, images[domain], ref).mean()),
                    "loss": splits["val"]["cross_entropy"],
                    "in_domain_loss": in_domain,
                }
            )
    pairs = [p for p in pairs if p["loss"] is not None]
    domains = sorted({p["domain"] for p in pairs})
    per_domain = {
        d: {
            "score": float(np.mean([p["score"] for p in pairs if p["domain"] == d])),
            "loss": float(np.mean([p["loss"] for p in pairs if p["domain"] == d])),
        }
        for d in domains
    }
    per_model = {
        m: _spearman([p["score"] for p in pairs if p["model"] == m], [p["loss"] for p in pairs if p["model"] == m])
        for m in dict.fromkeys(p["model"] for p in pairs)
    }
    defined = [r for r in per_model.values() if r is not None]
    return {
        "pairs": pairs,
        "domains": per_domain,
        "rho_per_model": per_model,
        "rho_median": float(np.median(defined)) if defined else None,
        "rho_domains": _spearman([per_domain[d]["score"] for d in domains], [per_domain[d]["loss"] for d in domains]),
        "rho_pairs": _spearman([p["score"] for p in pairs], [p["loss"] for p in pairs]),
        "threshold": _calibrate(pairs, loss_ratio),
        "loss_ratio": loss_ratio,
    }


def _resolve(results: Path, path: str) -> Path:
    """A path from an evaluation record: as written (workflow folder) or under ``results``."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    candidate = results.parent / path
    if candidate.is_file():
        return candidate
    raise ValueError(f"model file {path} of an evaluation record not found (also not under {results.parent})")


def _describe_from_meta(results: Path, model: torch.nn.Module, meta: dict) -> dict:
    datasets = [meta["dataset"]] if meta.get("dataset") else meta.get("datasets", [])
    counts = [meta.get("size")] if meta.get("dataset") else meta.get("mix", [None])
    images = np.concatenate(
        [data.read_split(_resolve(results, path), "train")[0][:n] for path, n in zip(datasets, counts)]
    )
    return describe({"dataset": str(_resolve(results, datasets[0]))}, model, images)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emsim.learning.ood", description=study_scores.__doc__)
    parser.add_argument("results", help="a study's results folder")
    parser.add_argument("--loss-ratio", type=float, default=LOSS_RATIO)
    parser.add_argument("-o", "--output", help="also write everything as JSON here")
    args = parser.parse_args(argv)
    found = study_scores(args.results, args.loss_ratio)
    print(f"{'domain':<24} {'OOD score':>10} {'val loss':>10}")
    for domain, row in found["domains"].items():
        print(f"{domain:<24} {row['score']:>10.3f} {row['loss']:>10.4f}")
    print(
        f"Spearman rho (score vs loss): median over {len(found['rho_per_model'])} models' domains "
        f"{found['rho_median']}, across domain means {found['rho_domains']}, "
        f"across {len(found['pairs'])} (model, domain) pairs {found['rho_pairs']}"
    )
    print(f"calibrated threshold (loss > {args.loss_ratio} x in-domain): {found['threshold']}")
    if args.output:
        from emsim.io import atomic_path

        with atomic_path(args.output) as tmp:
            Path(tmp).write_text(json.dumps(found, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
