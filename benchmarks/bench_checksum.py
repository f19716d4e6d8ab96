"""Cost of the integrity checks: sha256 of a full-width U-Net's weights (model file) and of a
checkpoint's state (weights + Adam moments + history), written and verified once per model or epoch.

Run: ``PYTHONPATH=src python benchmarks/bench_checksum.py``; prints seconds per call (median of 5).
"""

import time

import numpy as np
import torch

from emsim.learning.models import UNet, check_state, state_digest


def seconds(call, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    torch.set_num_threads(1)
    model = UNet(width=1.0)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(1, 1, 64, 64)).mean().backward()
    optimizer.step()
    weights = model.state_dict()
    checkpoint = {"model": weights, "optimizer": optimizer.state_dict(), "history": [{"epoch": 1}] * 10}
    n = sum(p.numel() for p in model.parameters())
    digest = state_digest(weights)
    print(
        f"U-Net width 1.0: {n / 1e6:.1f} M parameters, {sum(t.numel() * t.element_size() for t in weights.values()) / 1e6:.0f} MB"
    )
    print(f"model file digest           {seconds(lambda: state_digest(weights)):.3f} s")
    print(f"model file verify (+finite) {seconds(lambda: check_state(weights, digest, 'x')):.3f} s")
    print(f"checkpoint digest           {seconds(lambda: state_digest(checkpoint)):.3f} s")


if __name__ == "__main__":
    main()
