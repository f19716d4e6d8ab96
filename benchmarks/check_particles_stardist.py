"""emsim's instance matching against StarDist's ``matching`` (the reference implementation of the
same definitions) on random instance maps; prints the largest difference of each statistic.

    pip install --no-deps stardist csbdeep && pip install six numba
    python benchmarks/check_particles_stardist.py [--maps 200]
"""

from __future__ import annotations

import argparse

import numpy as np

from emsim.learning import particles

FIELDS = ("tp", "fp", "fn", "precision", "recall", "f1", "panoptic_quality")


def random_maps(rng: np.random.Generator, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A true instance map of random discs and a prediction: shifted, grown or shrunk, some lost, some added."""
    yy, xx = np.mgrid[:size, :size]
    true = np.zeros((size, size), np.int32)
    pred = np.zeros((size, size), np.int32)
    for i in range(rng.integers(0, 9)):
        cy, cx, r = *rng.uniform(0, size, 2), rng.uniform(3, 12)
        true[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = i + 1
        if rng.random() < 0.8:
            dy, dx, dr = rng.normal(0, 2, 2).tolist() + [rng.normal(0, 2)]
            pred[(yy - cy - dy) ** 2 + (xx - cx - dx) ** 2 < max(r + dr, 1) ** 2] = i + 1
    for j in range(rng.integers(0, 3)):
        cy, cx = rng.uniform(0, size, 2)
        pred[(yy - cy) ** 2 + (xx - cx) ** 2 < 25] = 20 + j
    return _consecutive(true), _consecutive(pred)


def _consecutive(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n (0 stays background)."""
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int32)


def ours(true: np.ndarray, pred: np.ndarray, threshold: float) -> dict:
    result = particles.match_instances(true, pred, threshold)
    combined = particles.combine([result], 1.0)
    precision, recall = (result["tp"] / d if d else 0.0 for d in (result["n_pred"], result["n_true"]))
    denominator = result["tp"] + result["fp"] / 2 + result["fn"] / 2
    return {
        "tp": result["tp"], "fp": result["fp"], "fn": result["fn"], "precision": precision, "recall": recall,
        "f1": combined["detection_f1"], "panoptic_quality": result["iou_sum"] / denominator if denominator else 0.0,
    }  # fmt: skip


def compare(maps: int, seed: int = 0) -> dict[str, float]:
    from stardist.matching import matching

    rng = np.random.default_rng(seed)
    worst = dict.fromkeys(FIELDS, 0.0)
    for _ in range(maps):
        true, pred = random_maps(rng)
        for threshold in particles.IOU_THRESHOLDS:
            theirs = matching(true, pred, thresh=threshold)._asdict()
            for field, value in ours(true, pred, threshold).items():
                worst[field] = max(worst[field], abs(value - float(theirs[field])))
    return worst


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--maps", type=int, default=200)
    args = parser.parse_args()
    worst = compare(args.maps)
    print(
        f"{args.maps} random instance maps x {len(particles.IOU_THRESHOLDS)} IoU thresholds, largest |emsim - StarDist|:"
    )
    for field, value in worst.items():
        print(f"  {field:<18} {value:.3g}")
