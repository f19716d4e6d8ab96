"""Which description of a model's training inputs ranks domains as the measured loss does?

For every evaluated (model, domain) pair of a finished study, computes four candidate scores on
the domain's validation images and prints Spearman's rho of each against the val loss and
against the shift gap (loss - the domain's own pretrained loss), per model (median) and across
pairs, and the AUROC for "loss > 1.5 x the model's in-domain loss":

- ``spectrum``: emsim's OOD score (:mod:`emsim.learning.ood`, RMS z of the ring-averaged log
  power spectrum);
- ``encoder_features``: RMS z of the per-image channel mean and log variance of the five encoder
  feature maps against their spread over the model's training images;
- ``bn_kl``: mean KL divergence of the per-image channel Gaussians at every encoder BatchNorm input
  from the layer's running statistics (no stored description needed);
- ``entropy``: the model's mean predictive entropy (bits) on the images (an uncertainty, not a
  distance)::

    python benchmarks/bench_ood_descriptors.py results
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from emsim import data
from emsim.learning import evaluate, ood, ood_check
from emsim.learning.models import load_model, pad_to_multiple

CANDIDATES = ("spectrum", "encoder_features", "bn_kl", "entropy")


def _batch(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pad_to_multiple(data.standardize(images))[:, None].copy())


def encoder_statistics(model, images: np.ndarray) -> list[np.ndarray]:
    """Per encoder map: (N, 2, C) per-image channel mean and log variance."""
    with torch.no_grad():
        maps = model.encoder(_batch(images))
    return [torch.stack([f.mean((2, 3)), torch.log(f.var((2, 3)) + 1e-6)], 1).double().numpy() for f in maps]


def scores(model, ref: dict, train_stats: list[np.ndarray], images: np.ndarray) -> dict[str, float]:
    found = {"spectrum": float(np.mean([ood.score(image, ref) for image in images]))}
    z2 = []
    for s, t in zip(encoder_statistics(model, images), train_stats):
        spatial = np.exp(t[:, 1].mean(0) / 2)
        spread = np.maximum(t.std(0), np.stack([0.1 * spatial, np.full_like(spatial, 0.2)]))
        z2.append((((s - t.mean(0)) / spread) ** 2).mean(axis=(1, 2)))
    found["encoder_features"] = float(np.sqrt(np.mean(z2, axis=0)).mean())
    inputs = []
    bns = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.append((m, a[0]))) for m in bns]
    with torch.no_grad():
        probability = model(_batch(images)).softmax(1)[:, 1].clamp(1e-7, 1 - 1e-7)
    for hook in hooks:
        hook.remove()
    kl = []
    for m, x in inputs:
        mean, var = x.mean((2, 3)).double(), x.var((2, 3)).double() + m.eps
        rm, rv = m.running_mean.double(), m.running_var.double() + m.eps
        kl.append(float((0.5 * (var / rv + (mean - rm) ** 2 / rv - 1 - torch.log(var / rv))).mean()))
    found["bn_kl"] = float(np.mean(kl))
    entropy = -(probability * torch.log2(probability) + (1 - probability) * torch.log2(1 - probability))
    found["entropy"] = float(entropy.mean())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a finished study's results folder")
    results = Path(parser.parse_args().results)
    torch.set_num_threads(1)
    records = [r for p in sorted((results / "evaluation").rglob("*.json")) for r in evaluate.read_evaluation(p)]
    val = {}
    pairs = {}
    for record in records:
        model, meta = load_model(ood_check._resolve(results, record["path"]))
        train, _ = ood_check.training_images(results, meta)
        ref = meta.get("input_reference") or ood.reference(train, None)
        train_stats = encoder_statistics(model, train)
        target = record["tags"]["target"]
        for domain, splits in record["metrics"].items():
            if domain not in val:
                val[domain] = data.read_split(results / "datasets" / f"{domain}.h5", "val")[0]
            pairs[record["path"], domain] = {
                "model": record["path"],
                "own": record["tags"]["stage"] == "pretrain" and domain == target,
                "domain": domain,
                "loss": splits["val"]["cross_entropy"],
                "in_domain_loss": record["metrics"][target]["val"]["cross_entropy"],
                **scores(model, ref, train_stats, val[domain]),
            }
    pairs = list(pairs.values())
    own = collections.defaultdict(list)
    for p in pairs:
        if p["own"]:
            own[p["domain"]].append(p["loss"])
    for p in pairs:
        p["gap"] = p["loss"] - np.mean(own[p["domain"]]) if p["domain"] in own else None
    gapped = [p for p in pairs if p["gap"] is not None]
    degraded = np.array([p["loss"] > ood_check.LOSS_RATIO * p["in_domain_loss"] for p in pairs])
    print(f"{len(pairs)} pairs, {len({p['model'] for p in pairs})} models; {len(gapped)} pairs with a shift gap")
    print(f"{'score':<18} {'rho loss: model':>16} {'pairs':>6} {'rho gap: model':>15} {'pairs':>6} {'AUROC':>6}")
    for name in CANDIDATES:
        s = np.array([p[name] for p in pairs])
        auroc = stats.mannwhitneyu(s[degraded], s[~degraded]).statistic / (degraded.sum() * (~degraded).sum())
        print(
            f"{name:<18} {_per_model(pairs, name, 'loss'):>+16.2f} {_rho(pairs, name, 'loss'):>+6.2f} "
            f"{_per_model(gapped, name, 'gap'):>+15.2f} {_rho(gapped, name, 'gap'):>+6.2f} {auroc:>6.2f}"
        )


def _rho(pairs: list[dict], score: str, target: str) -> float:
    return float(stats.spearmanr([p[score] for p in pairs], [p[target] for p in pairs]).statistic)


def _per_model(pairs: list[dict], score: str, target: str) -> float:
    by_model = collections.defaultdict(list)
    for p in pairs:
        by_model[p["model"]].append(p)
    return float(np.nanmedian([_rho(group, score, target) for group in by_model.values() if len(group) > 2]))


if __name__ == "__main__":
    main()
