"""What the particle metrics add to an evaluation job, at the default study's sizes.

Times :func:`emsim.learning.evaluate.evaluate_models` on the same models and datasets with the
study block ``instances`` enabled and disabled (median of ``--repeats``), and prints the added
fraction (issue target: <= 15 %). Datasets: ``--domains`` domains of ``--val`` images of
``--size`` px (the default study: 5 domains of a series, 8 val images of 192 px) holding discs
with their instance maps; models: U-Nets of the default width trained for 60 steps on such
discs, so that their predictions look like a trained model's::

    python benchmarks/bench_evaluate_particles.py
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from emsim import data
from emsim.learning import evaluate
from emsim.learning.models import UNet, save_model
from emsim.study.settings import Instances


def discs(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poisson images of 1-3 dark discs (radius 40-70 px, as the default study's 10-14 A particles at
    0.2 A/px; some touching), their labels and instances."""
    yy, xx = np.mgrid[:size, :size]
    found = np.zeros((n, size, size), np.uint16)
    for i in range(n):
        for k in range(1, rng.integers(1, 4) + 1):
            cy, cx = rng.uniform(0, size, 2)
            found[i][((yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(40, 70) ** 2) & (found[i] == 0)] = k
    labels = (found > 0).astype(np.uint8)
    return rng.poisson(40.0 * (1 - 0.5 * labels)).astype(np.float32), labels, found


def write_domain(path: Path, seed: int, n_val: int, size: int) -> str:
    images, labels, found = discs(np.random.default_rng(seed), 3 * n_val, size)
    image_of, instance = np.nonzero(np.stack([np.isin(np.arange(1, 4), np.unique(f)) for f in found]))
    data.write_dataset(
        path,
        images,
        labels,
        {"seed": np.full(len(images), seed)},
        {"train": np.arange(n_val), "val": np.arange(n_val, 2 * n_val), "test": np.arange(2 * n_val, 3 * n_val)},
        {"domain": path.stem, "config": {"image": {"pixel_size_A": 0.2}}},
        {"instances": found, "particles/image": image_of, "particles/instance": instance + 1},
    )
    return str(path)


def train_model(path: Path, seed: int, size: int, width: float) -> str:
    images, labels, _ = discs(np.random.default_rng(100 + seed), 32, size)
    x = torch.from_numpy(data.standardize(images))[:, None]
    y = torch.from_numpy(labels).long()
    model = UNet(width=width, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(60):
        batch = torch.randint(0, len(x), (4,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_model(path, model, meta={"stage": "pretrain"})
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=5)
    parser.add_argument("--val", type=int, default=8)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        datasets = {f"d{i}": write_domain(root / f"d{i}.h5", i, args.val, args.size) for i in range(args.domains)}
        models = [
            {"path": train_model(root / f"m{i}.pt", i, args.size, args.width), "tags": {"target": "d0"}}
            for i in range(args.models)
        ]
        on = Instances.with_defaults()
        times = {}
        for name, settings in (("pixel metrics only", dataclasses.replace(on, enabled=False)), ("with particles", on)):
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                records = evaluate.evaluate_models(models, datasets, device="cpu", instances=settings)
                runs.append(time.perf_counter() - start)
            times[name] = statistics.median(runs)
            print(f"{name}: {times[name]:.2f} s (median of {args.repeats})")
    f1 = [r["metrics"][d]["val"]["detection_f1"] for r in records for d in datasets]
    added = times["with particles"] / times["pixel metrics only"] - 1
    print(
        f"{args.models} models x {args.domains} domains x {args.val} val images of {args.size} px, "
        f"{torch.get_num_threads()} threads; detection F1 median {np.median(f1):.2f} "
        f"(IoU >= 0.5); particle metrics add {100 * added:.1f} % (target <= 15 %)"
    )


if __name__ == "__main__":
    main()
