"""Training throughput and peak memory of the U-Net: emsim's optimised path vs a plain fp32 loop.

Optimised path = the code emsim.learning.train runs: dataset resident on the device, dihedral augmentation
there, bf16 autocast (cuda only), channels_last, fused Adam (cuda), optional torch.compile.
Plain path = a textbook fp32 loop: data in host memory, augmentation with numpy, a host-to-device
copy and a ``loss.item()`` per step. Both train the same model (same width and seed), with full
fine-tuning and with a frozen encoder.

GPU (targets on one H100 at 512 px, batch 16: >= 800 images/s full fine-tuning, frozen encoder
>= 1.3x faster)::

    python benchmarks/bench_training.py --compile

CPU smoke check::

    python benchmarks/bench_training.py --size 128 --steps 3 --warmup 1 --width 0.25
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F

from emsim.learning import steps
from emsim.learning.models import UNet, count_parameters, freeze, resolve_device

POOL_BATCHES = 4  # distinct batches of synthetic data the loops cycle through


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory since the last reset (cuda), or the process's peak RSS (cpu)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(width: float, part: str, device: torch.device, channels_last: bool):
    model = UNet(width, generator=torch.Generator().manual_seed(0))
    freeze(model, part)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device, memory_format=fmt).train()


def optimised(args, part, images, labels, device):
    """Images/s of the emsim.learning.train code path (train_epoch + make_train_step)."""
    model = build(args.width, part, device, channels_last=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4, fused=device.type == "cuda")
    net = torch.compile(model) if args.compile else model
    step = steps.make_train_step(net, optimizer, amp=device.type == "cuda")
    x, y = images.to(device), labels.to(device)
    rng = np.random.default_rng(0)

    def run(steps):
        n = steps * args.batch
        order = torch.from_numpy(rng.integers(0, len(x), n)).to(device)
        ops = torch.from_numpy(rng.integers(0, 8, n)).to(device)
        return steps.train_epoch(step, x, y, order, ops, args.batch, channels_last=True)

    return timed(run, args, device, model)


def plain(args, part, images, labels, device):
    """Images/s of a plain fp32 loop: host data, numpy augmentation, copy per step."""
    model = build(args.width, part, device, channels_last=False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x_host, y_host = images.numpy(), labels.numpy()
    rng = np.random.default_rng(0)

    def run(steps):
        for _ in range(steps):
            index = rng.integers(0, len(x_host), args.batch)
            xs, ys = [], []
            for i, op in zip(index, rng.integers(0, 8, args.batch)):
                xi, yi = np.rot90(x_host[i], op % 4, (-2, -1)), np.rot90(y_host[i], op % 4)
                if op >= 4:
                    xi, yi = xi[..., ::-1], yi[..., ::-1]
                xs.append(xi)
                ys.append(yi)
            x = torch.from_numpy(np.ascontiguousarray(xs)).to(device)
            y = torch.from_numpy(np.ascontiguousarray(ys)).to(device).long()
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()

    return timed(run, args, device, model)


def timed(run, args, device, model):
    run(args.warmup)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    run(args.steps)
    synchronize(device)
    elapsed = time.perf_counter() - start
    return {
        "images_per_s": args.steps * args.batch / elapsed,
        "peak_mb": peak_memory_mb(device),
        "trainable": count_parameters(model, trainable_only=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512, help="image size in px")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the optimised path")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--skip-plain", action="store_true")
    args = parser.parse_args()

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    g = torch.Generator().manual_seed(0)
    n = POOL_BATCHES * args.batch
    images = torch.randn(n, 1, args.size, args.size, generator=g)
    labels = (torch.rand(n, args.size, args.size, generator=g) > 0.7).to(torch.uint8)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {name}, torch {torch.__version__}, {args.size} px, batch {args.batch}, "
        f"width {args.width}, {args.steps} timed steps after {args.warmup} warm-up, "
        f"compile={args.compile}, threads {torch.get_num_threads()}"
    )
    memory = "device allocated" if device.type == "cuda" else "process RSS (monotonic)"
    print(f"peak memory: {memory}")
    print(f"{'path':<10} {'training':<15} {'trainable':>11} {'images/s':>9} {'peak MB':>9}")
    paths = [("optimised", optimised)] + ([] if args.skip_plain else [("plain fp32", plain)])
    results = {}
    for label, bench in paths:
        for part, mode in (("none", "full fine-tune"), ("encoder", "frozen encoder")):
            r = bench(args, part, images, labels, device)
            results[label, part] = r
            print(
                f"{label:<10} {mode:<15} {r['trainable']:>11,} {r['images_per_s']:>9.1f} {r['peak_mb']:>9.0f}",
                flush=True,
            )
    for label, _ in paths:
        ratio = results[label, "encoder"]["images_per_s"] / results[label, "none"]["images_per_s"]
        print(f"{label}: frozen encoder / full fine-tune = {ratio:.2f}x")
    if not args.skip_plain:
        full = [results[label, "none"]["images_per_s"] for label in ("optimised", "plain fp32")]
        ratio = full[0] / full[1]
        print(f"optimised / plain fp32 (full fine-tune) = {ratio:.2f}x")


if __name__ == "__main__":
    main()
