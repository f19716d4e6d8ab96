"""Montage of a dataset's images with their label outlines (`emsim show`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from emsim import data  # noqa: E402


def show_dataset(path: str | Path, out: str | Path, count: int = 8, split: str = "train", columns: int = 4) -> Path:
    """Draw ``count`` images of a split with the particle outline in colour; returns the PNG path."""
    images, labels = data.read_split(path, split)
    meta = data.read_meta(path)
    index = data.split_indices(path, split)
    count = min(count, len(images))
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows + 0.4), squeeze=False)
    pixel_A = data.read_attrs(path)["config"]["image"]["pixel_size_A"]
    for ax in axes.flat:
        ax.axis("off")
    for k in range(count):
        ax = axes.flat[k]
        image = images[k]
        low, high = np.percentile(image, [1, 99])
        ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        ax.contour(labels[k], levels=[0.5], colors="#ff7f0e", linewidths=0.8)
        ax.set_title(_caption(meta, index[k]), fontsize=8)
    scale_nm = 1.0
    bar_px = 10 * scale_nm / pixel_A
    axes.flat[0].plot([4, 4 + bar_px], [images.shape[1] - 6] * 2, color="white", lw=3)
    axes.flat[0].text(4, images.shape[1] - 10, f"{scale_nm:g} nm", color="white", fontsize=8)
    fig.suptitle(f"{data.domain_name(path)} ({split} split): images with label outlines")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _caption(meta: dict, i: int) -> str:
    parts = [f"#{i}"]
    if "defocus_A" in meta:
        parts.append(f"df {meta['defocus_A'][i] / 10:.1f} nm")
    if "dose_e_per_A2" in meta:
        parts.append(f"{meta['dose_e_per_A2'][i]:g} e/A²")
    return ", ".join(parts)
