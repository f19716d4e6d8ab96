"""Seconds per large frame for `emsim predict`: one model and a 3-model ensemble, PyTorch vs
ONNX Runtime, on the CPU (tiles batched; standardisation, padding and tiling done once per frame
for all members).

Times :func:`emsim.predict.tiled_probability` on a synthetic frame with random-weight models of
the given width (speed does not depend on the weights), after a warm-up on one row of tiles. Each
row gives wall and CPU seconds (all threads) per frame and ends with the 1-minute load average:
on a shared machine, CPU seconds / threads bounds from below the wall time it would take alone.
``--members 1`` skips the ensemble::

    python benchmarks/bench_predict.py --size 4096 --width 0.25
    python benchmarks/bench_predict.py --size 4096 --width 1 --members 1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from emsim.export import export_onnx, onnx_session
from emsim.learning.models import UNet, save_model
from emsim.predict import load_ensemble, tiled_probability, torch_forward


def onnx_forward(session):
    def forward(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {"image": batch})[0][:, 1]

    return forward


def seconds(forward, frame: np.ndarray, args) -> tuple[float, float]:
    """Wall and CPU (all threads) seconds per frame."""
    tiled_probability(forward, frame[: args.tile, : args.tile * args.batch], args.tile, args.batch)  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.repeats):
        tiled_probability(forward, frame, args.tile, args.batch)
    return (time.perf_counter() - start) / args.repeats, (time.process_time() - cpu) / args.repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="frame side in px")
    parser.add_argument("--width", type=float, default=0.25, help="U-Net width (default study: 0.25)")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8, help="tiles per forward pass")
    parser.add_argument("--members", type=int, default=3, help="ensemble size")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch and onnxruntime threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    frame = np.random.default_rng(0).poisson(40.0, (args.size, args.size)).astype(np.float32)
    print(
        f"cpu, torch {torch.__version__}, {torch.get_num_threads()} threads, frame "
        f"{args.size}x{args.size} px, tiles {args.tile} px in batches of {args.batch}, "
        f"width {args.width}"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min; the machine may be shared)")
    print(f"{'engine':<12} {'models':>6} {'s/frame':>9} {'frames/s':>9} {'cpu s':>7} {'load':>5}")
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for seed in range(args.members):
            paths.append(Path(folder) / f"m{seed}.pt")
            save_model(paths[-1], UNet(args.width, generator=torch.Generator().manual_seed(seed)), meta={})
        for members in sorted({1, args.members}):
            ensemble, _, _ = load_ensemble(paths[:members])
            onnx_path = Path(folder) / f"ensemble{members}.onnx"
            export_onnx(paths[:members], onnx_path)
            for engine, forward in (
                ("pytorch", torch_forward(ensemble)),
                ("onnxruntime", onnx_forward(onnx_session(onnx_path, args.threads))),
            ):
                s, cpu = seconds(forward, frame, args)
                print(
                    f"{engine:<12} {members:>6} {s:>9.2f} {1 / s:>9.3f} {cpu:>7.1f} {os.getloadavg()[0]:>5.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
