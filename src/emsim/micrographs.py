"""Micrograph domains: a domain made of micrograph files instead of a simulation.

A study domain ``{micrographs: {images, labels | boxes, pixel_size_A, splits, ...}}`` (schema:
``$defs.micrographs``) names files; :func:`resolve` expands its globs when the study loads, pairs
each image with its mask or box file by the image's stem, and fails on a glob that matches
nothing, a label file missing for an image or present without one. Splits are by FILE
(:func:`file_splits`). The dataset is built by :mod:`emsim.micrograph_dataset`.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from emsim import data


def label_kind(spec: dict) -> str:
    """``mask`` (pixel labels: masks, or ellipses drawn from boxes), ``boxes`` or ``none``: what a
    micrographs block labels its images with."""
    if "labels" in spec or ("boxes" in spec and spec["box_masks"]):
        return "mask"
    return "boxes" if "boxes" in spec else "none"


def resolve(spec: dict, base_dir: str | Path, key: str) -> dict:
    """The block with ``images`` expanded into ``files`` (one ``{image, labels?, boxes?}`` per image,
    paths relative to the working directory (absolute outside it), sorted); ValueError naming ``key`` and the file."""
    base_dir = Path(base_dir)
    if sum(spec["splits"].values()) <= 0:
        raise ValueError(f"{key}.splits: the fractions sum to 0")
    if "labels" in spec and "boxes" in spec:
        raise ValueError(f"{key}: give labels (masks) or boxes, not both")
    if spec["box_masks"] and "boxes" not in spec:
        raise ValueError(f"{key}.box_masks: true needs boxes to draw the masks from")
    patterns = [spec["images"]] if isinstance(spec["images"], str) else list(spec["images"])
    images: list[str] = []
    for pattern in patterns:
        found = sorted(p for p in glob.glob(str(base_dir / pattern), recursive=True) if os.path.isfile(p))
        if not found:
            raise ValueError(f"{key}.images: {pattern!r} matches no file (relative to {base_dir})")
        images += [_path(p) for p in found if _path(p) not in images]
    stems: dict[str, str] = {}
    for path in images:
        stem = Path(path).stem
        if stem in stems:
            raise ValueError(f"{key}.images: {stems[stem]} and {path} share the stem {stem!r}; stems name label files")
        stems[stem] = path
    files = [{"image": path} for path in images]
    for kind in ("labels", "boxes"):
        if kind not in spec:
            continue
        template = spec[kind]
        if "{stem}" not in template:
            raise ValueError(f"{key}.{kind}: {template!r} has no '{{stem}}' (the image's file stem)")
        for entry in files:
            path = base_dir / template.format(stem=Path(entry["image"]).stem)
            if not path.is_file():
                raise ValueError(f"{key}.{kind}: {entry['image']} has no {kind} file {_path(path)}")
            entry[kind] = _path(path)
        # a label file is an orphan if no file of its stem lies beside the images (excluded by a glob is fine)
        beside = {Path(p).stem for folder in {Path(i).parent for i in images} for p in os.listdir(folder)}
        pattern = glob.escape(str(base_dir / template)).replace(glob.escape("{stem}"), "*")
        prefix, suffix = str(base_dir / template).split("{stem}")
        orphans = sorted(_path(p) for p in glob.glob(pattern) if p[len(prefix) : len(p) - len(suffix)] not in beside)
        if orphans:
            raise ValueError(f"{key}.{kind}: {orphans[0]} has no image of its stem beside {key}.images")
    resolved = {k: v for k, v in spec.items() if k not in ("images", "labels", "boxes")}
    return resolved | {"files": files, "label_kind": label_kind(spec)}


def split_counts(fractions: dict[str, float], n_files: int) -> dict[str, int]:
    """Files per split: the fractions (normalised to sum 1) of ``n_files``, cut by largest remainder."""
    total = sum(fractions[s] for s in data.SPLITS)
    if total <= 0:
        raise ValueError("splits: the fractions sum to 0")
    exact = {s: fractions[s] / total * n_files for s in data.SPLITS}
    counts = {s: int(np.floor(v)) for s, v in exact.items()}
    for s in sorted(data.SPLITS, key=lambda s: counts[s] - exact[s])[: n_files - sum(counts.values())]:
        counts[s] += 1
    return counts


def file_splits(n_files: int, fractions: dict[str, float], seed: int) -> list[str]:
    """The split of each file: files shuffled with ``seed``, then cut by :func:`split_counts`."""
    counts = split_counts(fractions, n_files)
    order = np.random.default_rng([seed, 0]).permutation(n_files)
    names = [s for s in data.SPLITS for _ in range(counts[s])]
    split = [""] * n_files
    for position, file in enumerate(order):
        split[file] = names[position]
    return split


def _path(path: str | Path) -> str:
    """``path`` relative to the working directory when inside it, else absolute."""
    relative = os.path.relpath(path)
    return os.path.abspath(path) if relative.startswith("..") else relative
