"""Synthetic data the test modules share: disc datasets, untrained models, training settings and
evaluation records (tiny, CPU, seeded)."""

import numpy as np
import torch

from emsim import data
from emsim.learning.models import UNet, save_model
from emsim.study.settings import Training

SIZE_PX = 64


def disc_images(rng: np.random.Generator, n: int, size: int, contrast: float, dose: float):
    """Poisson images of 1-3 dark discs on a flat background, with their masks."""
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(8, size - 8, 2)
            labels[i] |= ((yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(4, 9) ** 2).astype(np.uint8)
    images = rng.poisson(dose * (1 - contrast * labels)).astype(np.float32)
    return images, labels


def disc_domain(path, domain: str, seed: int, size: int = 64, contrast: float = 0.5, n: int = 6):
    """A dataset of dark Poisson discs (disc_images), splits of n/3 each, the test split reversed."""
    rng = np.random.default_rng(seed)
    images, labels = disc_images(rng, n, size, contrast, dose=40.0)
    third = n // 3
    splits = {"train": np.arange(third), "val": np.arange(third, 2 * third), "test": np.arange(2 * third, n)[::-1]}
    data.write_dataset(
        path, images, labels, {"seed": np.full(n, seed)}, splits, {"domain": domain, "config": {"contrast": contrast}}
    )
    return str(path)


def untrained_model(path, seed: int, stage: str = "transfer") -> str:
    """A width-0.125 U-Net with its init seed, saved with the metadata a trained one carries."""
    model = UNet(width=0.125, generator=torch.Generator().manual_seed(seed))
    history = [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.69, "lr": 1e-3, "time_s": 0.1}]
    meta = {
        "stage": stage,
        "history": history,
        "best_epoch": 1,
        "best_val_loss": 0.69,
        "train_time_s": 0.1,
        "trainable_params": 100,
        "total_params": 200,
        "config": {"width": 0.125},
        "seeds": {"init": seed},
    }
    save_model(path, model, meta=meta)
    return str(path)


# one thread (conftest): OpenMP with 2 threads on a busy 2-core machine is up to 50x slower; "random"
# augmentation (1/8 of the default dihedral8's steps) keeps the tests fast
CFG = Training.with_defaults(
    width=0.125,
    epochs=3,
    batch_size=4,
    lr_decay=0.9,
    amp=False,
    channels_last=False,
    compile=False,
    device="cpu",
    augmentation="random",
)
LR = 3e-3


def bright_disc_domain(path, domain, n_train=8, n_val=4, seed=0, contrast=50.0, size_px=SIZE_PX):
    """Bright disks (label 1) on a noisy background: an easy segmentation task."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val + 2
    yy, xx = np.mgrid[:size_px, :size_px]
    labels = np.zeros((n, size_px, size_px), np.uint8)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(10, size_px - 10, 2)
            labels[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(5, 10) ** 2
    images = (100 + contrast * labels + rng.normal(0, 10, labels.shape)).astype(np.float32)
    splits = {
        "train": np.arange(n_train),
        "val": np.arange(n_train, n_train + n_val),
        "test": np.arange(n_train + n_val, n),
    }
    data.write_dataset(path, images, labels, {"index": np.arange(n)}, splits, {"domain": domain})
    return path


METRIC_NAMES = ("cross_entropy", "study_loss", "iou", "dice", "precision", "recall", "accuracy")


def evaluation_record(path, tags, val_ce: dict, own: dict | None = None, epochs: int = 2) -> dict:
    """An evaluation record whose CE values are given; other metrics derive from them."""

    def split(ce):
        return {m: (ce if m == "cross_entropy" else ce / 2 if m == "study_loss" else 1 - ce) for m in METRIC_NAMES}

    metrics = {d: {"val": split(ce)} for d, ce in val_ce.items()}
    for name, ce in (own or {}).items():
        metrics[tags["target"]][name] = split(ce)
    history = [
        {"epoch": e + 1, "train_loss": 0.6 / (e + 1), "val_loss": 0.65 / (e + 1) ** 0.8, "lr": 1e-3, "time_s": 1.0}
        for e in range(epochs)
    ]
    return {
        "path": path,
        "tags": tags,
        "stage": tags["stage"],
        "best_epoch": epochs,
        "best_val_loss": val_ce[tags["target"]],
        "train_time_s": 12.5,
        "trainable_params": 1000,
        "total_params": 4000,
        "seeds": {"init": 7, "data": 8},
        "history": history,
        "metrics": metrics,
    }
