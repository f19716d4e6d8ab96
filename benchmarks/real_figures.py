"""Figures and numbers of the sim-to-real study (config/real.yaml) for docs/real.md.

From a finished run (run it in the run's folder, model paths are relative to it): (0) the study's
micrograph files side by side, (1) for each
micrograph domain with boxes, its first val file with the particles each kind of model finds
against the boxes (first replicate; the same stitching and instances as the evaluation), (2) the
OOD scores of simulated and real val tiles against the pretrained model's training spectrum,
(3) the detection table (median over replicates) as Markdown, (4) the support series: the models
pretrained (and fine-tuned) on amorphous, graphitic and mixed supports on the held-out file, with the
fraction of their mask outside the boxes per replicate::

    python benchmarks/real_figures.py results docs/figures
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from emsim import data
from emsim.learning import evaluate, ood, particles
from emsim.learning.models import load_model
from emsim.readers import read_images
from emsim.report.figures import plot_detection_overlay, save_figure
from emsim.rescale import resample
from emsim.study.settings import Instances

KINDS = {  # caption -> (experiment, stage, method)
    "pretrained on the simulation only": ("transfer", "pretrain", None),
    "AdaBN to the unlabelled micrographs": ("adabn", "transfer", "adabn"),
    "fine-tuned on the weak micrograph labels": ("transfer", "transfer", "finetune"),
    "trained on the weak micrograph labels alone": ("transfer", "transfer", "scratch"),
    "single-stage: simulation + micrographs": ("transfer", "baseline", None),
}
SUPPORT_KINDS = {  # caption -> (experiment, stage, method, source)
    "pretrained, amorphous support": ("supports", "pretrain", None, "sim"),
    "pretrained, graphitic support": ("supports", "pretrain", None, "sim_graphitic"),
    "pretrained, mixed supports": ("supports", "pretrain", None, "sim_mixed"),
    "fine-tuned from amorphous": ("supports", "transfer", "finetune", "sim"),
    "fine-tuned from graphitic": ("supports", "transfer", "finetune", "sim_graphitic"),
    "fine-tuned from mixed": ("supports", "transfer", "finetune", "sim_mixed"),
}
HELD_OUT = "pt_weak"  # its val file (Pt_carbon1) is bright-field and never trained on
DARK = "pt_dark"
COLUMNS = {  # table column -> caption
    f"val_det_recall__{HELD_OUT}": "recall",
    f"val_det_precision__{HELD_OUT}": "precision",
    f"val_det_f1__{HELD_OUT}": "F1",
    f"val_count_error__{HELD_OUT}": "count error",
    f"val_size_w1_nm__{HELD_OUT}": "size W1 [nm]",
    f"val_iou__{HELD_OUT}": "IoU, weak labels",
    f"val_det_f1__{DARK}": "F1, dark-field",
    f"val_ood_score__{HELD_OUT}": "OOD score",
    f"val_ood_score__{DARK}": "OOD score, dark-field",
}


def model_rows(results: Path, kinds: dict) -> pd.DataFrame:
    """The report rows of each kind of model (caption -> experiment, stage, method[, source])."""
    tables = {e: pd.read_csv(results / f"report/{e}/models.csv") for e in {k[0] for k in kinds.values()}}
    rows = []
    for caption, (experiment, stage, method, *source) in kinds.items():
        table = tables[experiment]
        chosen = table[(table["stage"] == stage) & ((table["method"] == method) if method else True)]
        if source:
            chosen = chosen[chosen["source"] == source[0]]
        rows.append(chosen.copy().assign(kind=caption))
    return pd.concat(rows)


def per_replicate(rows: pd.DataFrame, columns: dict) -> pd.DataFrame:
    """Each column's values per replicate (seed order) as 'a / b', one row per kind."""
    cells = {
        caption: {
            name: " / ".join("-" if pd.isna(v) else f"{v:.3f}" for v in group.sort_values("seed")[column])
            for column, name in columns.items()
        }
        for caption, group in rows.groupby("kind", sort=False)
    }
    return pd.DataFrame.from_dict(cells, orient="index")


def box_coverage(tiles: dict) -> float:
    """Fraction of the split's first file covered by its boxes (on the tiles' canvas)."""
    file, frame = int(tiles["file"][0]), int(tiles["frame"][0])
    height, width = tiles["files"][file]["shape"][1:]
    boxes = tiles["boxes"][(tiles["boxes"][:, 0] == file) & (tiles["boxes"][:, 1] == frame), 2:]
    return 1 - particles.outside_boxes([np.ones((height, width), bool)], [boxes])


def overlays(results: Path, rows: pd.DataFrame, out: Path, domain: str, name: str = "real_detection") -> None:
    path = results / "datasets" / f"{domain}.h5"
    tiles = evaluate.micrograph_tiles(path, "val")
    pixel_size_A = data.read_attrs(path)["config"]["image"]["pixel_size_A"]
    images, _ = evaluate.load_split(path, "val", torch.device("cpu"))
    canvas = (int(tiles["file"][0]), int(tiles["frame"][0]))  # the split's first file
    source = tiles["files"][canvas[0]]["path"]
    raw = read_images(source)[0][canvas[1]]
    maps = {}
    for caption, group in rows.groupby("kind", sort=False):
        model, _ = load_model(group.sort_values("model")["model"].iloc[0])
        maps[caption] = evaluate.stitch(evaluate.probabilities(model, images), tiles)[canvas]
    raw = resample(raw, next(iter(maps.values())).shape)
    boxes = tiles["boxes"][(tiles["boxes"][:, 0] == canvas[0]) & (tiles["boxes"][:, 1] == canvas[1]), 2:]
    figure = Figure(figsize=(4 * len(maps), 4.6), layout="constrained")
    for ax, (caption, probability) in zip(figure.subplots(1, len(maps)), maps.items()):
        plot_detection_overlay(raw, probability, boxes, pixel_size_A, Instances.with_defaults(), ax, caption)
    figure.suptitle(
        f"{Path(source).name} ({domain}, val): true boxes found (green), missed (red), "
        "false detections (yellow), predicted particles (cyan)"
    )
    save_figure(figure, out / f"{name}_{domain}")


def thumbnails(results: Path, out: Path) -> None:
    """Every micrograph file of the study's datasets, side by side, with its split."""
    files = {}
    for domain in (HELD_OUT, DARK):
        for entry in data.read_attrs(results / "datasets" / f"{domain}.h5")["files"]:
            files[entry["path"]] = f"{Path(entry['path']).name}\n{domain}, {entry['split']}"
    figure = Figure(figsize=(3.2 * len(files), 3.6), layout="constrained")
    for ax, (path, caption) in zip(figure.subplots(1, len(files)), files.items()):
        image = read_images(path)[0][0]
        ax.imshow(image, cmap="gray", vmin=np.percentile(image, 0.5), vmax=np.percentile(image, 99.5))
        ax.set_title(caption, fontsize=9)
        ax.set_axis_off()
    save_figure(figure, out / "real_micrographs")


def ood_scores(results: Path, rows: pd.DataFrame, out: Path) -> dict:
    _, meta = load_model(rows[rows["kind"] == next(iter(KINDS))]["model"].iloc[0])
    reference = meta["input_reference"]
    scores = {
        name: [ood.score(x, reference) for x in data.read_split(results / "datasets" / f"{name}.h5", "val")[0]]
        for name in ("sim", HELD_OUT, DARK)
    }
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    ax = figure.subplots()
    bins = np.linspace(0, max(max(v) for v in scores.values()) * 1.05, 40)
    for name, values in scores.items():
        ax.hist(values, bins, alpha=0.6, label=f"{name} (median {np.median(values):.2f})")
    ax.axvline(reference["threshold"], color="black", linestyle="--", label="default threshold")
    ax.set_xlabel("OOD score against the pretrained model's training spectrum")
    ax.set_ylabel("val tiles")
    ax.legend(fontsize=8)
    save_figure(figure, out / "real_ood_scores")
    return {name: float(np.median(v)) for name, v in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = model_rows(args.results, KINDS)
    thumbnails(args.results, args.out)
    for domain in (HELD_OUT, DARK):
        overlays(args.results, rows, args.out, domain)
    print("median OOD score of val tiles:", ood_scores(args.results, rows, args.out))
    summary = rows.groupby("kind", sort=False)[list(COLUMNS)].median().rename(columns=COLUMNS)
    summary.insert(0, "models", rows.groupby("kind", sort=False).size().astype(str))
    print(summary.to_markdown(floatfmt=".3f"))
    supports = model_rows(args.results, SUPPORT_KINDS)
    overlays(args.results, supports[supports["stage"] == "pretrain"], args.out, HELD_OUT, "real_supports")
    columns = {
        f"val_outside_boxes__{HELD_OUT}": "mask outside boxes",
        f"val_particle_fraction__{HELD_OUT}": "masked fraction",
        f"val_det_f1__{HELD_OUT}": "F1",
        f"val_det_recall__{HELD_OUT}": "recall",
        f"val_det_precision__{HELD_OUT}": "precision",
        f"val_outside_boxes__{DARK}": "outside boxes, dark-field",
    }
    print(per_replicate(supports, columns).to_markdown())
    tiles = evaluate.micrograph_tiles(args.results / "datasets" / f"{HELD_OUT}.h5", "val")
    print(f"boxes cover {box_coverage(tiles):.3f} of the held-out file's pixels")


if __name__ == "__main__":
    main()
