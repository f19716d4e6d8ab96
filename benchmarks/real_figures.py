"""Figures and numbers of the sim-to-real study (config/real.yaml) for docs/real.md.

From a finished run's results folder: (1) the held-out micrograph with the particles each kind of
model finds against the boxes (first replicate; the same stitching and instances as the
evaluation), (2) the OOD scores of simulated and real tiles against the pretrained model's
training spectrum, (3) the detection table (median over replicates) as Markdown::

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
from emsim.learning import evaluate, ood
from emsim.learning.models import load_model
from emsim.report.figures import plot_detection_overlay, save_figure
from emsim.study.settings import Instances

KINDS = {  # caption -> (experiment, stage, method)
    "pretrained on the simulation only": ("transfer", "pretrain", None),
    "AdaBN to the unlabelled micrographs": ("adabn", "transfer", "adabn"),
    "fine-tuned on the weak micrograph labels": ("transfer", "transfer", "finetune"),
    "trained on the weak micrograph labels alone": ("transfer", "transfer", "scratch"),
    "single-stage: simulation + micrographs": ("transfer", "baseline", None),
}
COLUMNS = {"det_recall": "recall", "det_precision": "precision", "det_f1": "F1", "count_error": "count error"}


def model_rows(results: Path) -> pd.DataFrame:
    tables = [pd.read_csv(results / f"report/{e}/models.csv") for e in ("transfer", "adabn")]
    rows = []
    for caption, (experiment, stage, method) in KINDS.items():
        table = next(t for t in tables if t["experiment"].iloc[0] == experiment)
        chosen = table[(table["stage"] == stage) & ((table["method"] == method) if method else True)]
        rows.append(chosen.assign(kind=caption))
    return pd.concat(rows)


def overlays(results: Path, rows: pd.DataFrame, out: Path, domain: str = "pt_test") -> None:
    path = results / "datasets" / f"{domain}.h5"
    tiles = evaluate.micrograph_tiles(path, "val")
    pixel_size_A = data.read_attrs(path)["config"]["image"]["pixel_size_A"]
    settings = Instances.with_defaults()
    images, _ = evaluate.load_split(path, "val", torch.device("cpu"))
    files = data.read_attrs(path)["files"]
    canvas = (int(tiles["file"][0]), int(tiles["frame"][0]))  # the domain's first file
    raw = evaluate.stitch(images[:, 0].numpy(), tiles)[canvas]
    boxes = tiles["boxes"][tiles["boxes"][:, 0] == canvas[0], 2:]
    figure = Figure(figsize=(4 * len(KINDS), 4.6), layout="constrained")
    axes = figure.subplots(1, len(KINDS))
    for ax, (caption, group) in zip(axes, rows.groupby("kind", sort=False)):
        model, _ = load_model(group.sort_values("model")["model"].iloc[0])
        probability = evaluate.stitch(evaluate.probabilities(model, images), tiles)[canvas]
        plot_detection_overlay(raw, probability, boxes, pixel_size_A, settings, ax, caption)
    figure.suptitle(
        f"{Path(files[canvas[0]]['path']).name} (held out): true boxes found (green), missed (red), "
        "false detections (yellow), predicted particles (cyan)"
    )
    save_figure(figure, out / "real_detection")


def ood_scores(results: Path, rows: pd.DataFrame, out: Path) -> dict:
    _, meta = load_model(rows[rows["kind"] == next(iter(KINDS))]["model"].iloc[0])
    reference = meta["input_reference"]
    scores = {
        name: [ood.score(x, reference) for x in data.read_split(results / "datasets" / f"{name}.h5", "val")[0]]
        for name in ("sim", "pt_weak", "pt_test")
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
    rows = model_rows(args.results)
    overlays(args.results, rows, args.out)
    print("median OOD score of val tiles:", ood_scores(args.results, rows, args.out))
    columns = [f"val_{c}__pt_test" for c in COLUMNS] + ["val_iou__pt_weak", "val_ood_score__pt_test"]
    summary = rows.groupby("kind", sort=False)[columns].median()
    summary.columns = [*COLUMNS.values(), "IoU on weak labels (pt_weak val)", "OOD score (pt_test)"]
    summary.insert(0, "models", rows.groupby("kind", sort=False).size())
    print(summary.to_markdown(floatfmt=".3f"))


if __name__ == "__main__":
    main()
