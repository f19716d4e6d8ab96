"""Per-model overhead: N transfers as N processes (one per model, as one job each) vs one batch.

A small synthetic dataset and a pretrained U-Net are made first; then the same N transfer runs
(freezing x seeds) are trained once as N ``python -c`` processes, each importing emsim, reading the
dataset and training one model (what a per-model job does, without Snakemake), and once as one
:func:`emsim.learning.batch.train_batch` in one process. Prints seconds per model, the per-model
overhead (wall minus the training time the models record) and the wall ratio.

    PYTHONPATH=src python benchmarks/bench_batch.py                       # 16 models, 64 px, width 0.125
    PYTHONPATH=src python benchmarks/bench_batch.py --size 512 --width 1 --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from emsim import data
from emsim.learning import train
from emsim.learning.models import load_model
from emsim.study import schema
from emsim.study.settings import Training


def make_dataset(path: Path, size: int, n: int) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(size / 4, 3 * size / 4, 2)
        labels[i] = (yy - cy) ** 2 + (xx - cx) ** 2 < (size / 8) ** 2
    images = (100 + 50 * labels + rng.normal(0, 10, labels.shape)).astype(np.float32)
    splits = {"train": np.arange(n - 8), "val": np.arange(n - 8, n - 4), "test": np.arange(n - 4, n)}
    data.write_dataset(path, images, labels, {"index": np.arange(n)}, splits, {"domain": "bench"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="image size (px)")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--images", type=int, default=16, help="transfer set size")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    defaults = {k: v["default"] for k, v in schema.load()["properties"]["training"]["properties"].items()}
    cfg = defaults | {
        "width": args.width,
        "epochs": args.epochs,
        "batch_size": 8,
        "augmentation": "random",
        "compile": args.compile,
    }
    training = Training.from_dict(cfg)
    root = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    dataset, pretrained = root / "d.h5", root / "pre.pt"
    make_dataset(dataset, args.size, args.images + 8)
    train.pretrain(dataset, pretrained, dataclasses.replace(training, epochs=1), 1e-3, seed=0, device=args.device)
    freezes = ("none", "encoder", "decoder")
    models = [
        {
            "stage": "transfer",
            "datasets": [str(dataset)],
            "lr": 1e-3,
            "seed": i,
            "pretrained": str(pretrained),
            "freeze": freezes[i % 3],
            "method": "finetune",
            "size": args.images,
        }
        for i in range(args.models)
    ]

    def train_time(paths) -> float:
        return sum(load_model(p)[1]["train_time_s"] for p in paths)

    separate = [str(root / f"separate_{i}.pt") for i in range(args.models)]
    started = time.perf_counter()
    for spec, path in zip(models, separate):
        call = (
            "from emsim.learning import train; from emsim.study.settings import Training; "
            f"train.transfer({spec['pretrained']!r}, {spec['datasets'][0]!r}, {path!r}, Training.from_dict({cfg!r}), "
            f"{spec['lr']!r}, {spec['freeze']!r}, {spec['size']}, {spec['seed']}, {args.device!r})"
        )
        subprocess.run([sys.executable, "-c", call], check=True)
    wall_separate = time.perf_counter() - started

    batched = [{**spec, "path": str(root / f"batch_{i}.pt")} for i, spec in enumerate(models)]
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from emsim.learning import batch; from emsim.study.settings import Training; "
            f"batch.train_batch({batched!r}, Training.from_dict({cfg!r}), {str(root / 'record.json')!r}, {args.device!r})",
        ],
        check=True,
    )
    wall_batch = time.perf_counter() - started
    assert json.loads((root / "record.json").read_text())["models"]

    n = args.models
    print(
        f"{n} transfers, {args.size} px, width {args.width}, {args.images} images x {args.epochs} epochs, {args.device}"
    )
    for name, wall, paths in (("separate processes", wall_separate, separate), ("one batch", wall_batch, batched)):
        trained = train_time(p if isinstance(p, str) else p["path"] for p in paths)
        print(f"{name:>18}: wall {wall:7.1f} s, {wall / n:6.2f} s/model, overhead {(wall - trained) / n:6.2f} s/model")
    print(f"wall ratio separate / batch: {wall_separate / wall_batch:.2f}")


if __name__ == "__main__":
    main()
