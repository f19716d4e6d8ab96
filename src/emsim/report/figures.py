"""Figures drawn from the per-model table (:mod:`emsim.report.table`) and the evaluation records.

Figures are written as ``<stem>.png`` and ``<stem>.svg``; the loss figures take the loss to plot
(``metric``: a short name of :data:`FIGURE_METRICS`, default ``ce``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib
import matplotlib.patches
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from emsim import data
from emsim.io import atomic_path
from emsim.learning import evaluate, metrics, particles
from emsim.learning.models import load_model, resolve_device
from emsim.predict import segment_image
from emsim.report.table import is_number
from emsim.study.settings import BASELINE, PRETRAIN, TRANSFER, Instances

CE_LABEL = "cross-entropy (nats/pixel)"
FIGURE_METRICS = {"ce": CE_LABEL, "study_loss": "study loss (CE of softmax outputs - 0.3133)"}
FREEZE_ORDER = ("none", "encoder", "decoder")
FAMILY_COLOURS = {
    "pretrain only": "tab:grey",
    "transfer, nothing frozen": "tab:blue",
    "transfer, encoder frozen": "tab:orange",
    "transfer, decoder frozen": "tab:green",
    "single-stage baseline": "tab:purple",
}


def save_figure(figure: Figure, stem: str | os.PathLike) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.svg`` atomically (byte-reproducible SVG)."""
    paths = []
    for fmt in ("png", "svg"):
        path = Path(f"{stem}.{fmt}")
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        with matplotlib.rc_context({"svg.hashsalt": "emsim"}), atomic_path(path) as tmp:
            figure.savefig(tmp, format=fmt, dpi=150, metadata=metadata, bbox_inches="tight")
        paths.append(path)
    return paths


def _family(row: pd.Series) -> str:
    if row["stage"] == PRETRAIN:
        return "pretrain only"
    if row["stage"] == BASELINE:
        return "single-stage baseline"
    freeze = row.get("freeze")
    if freeze is None or pd.isna(freeze):
        return "transfer"
    return "transfer, nothing frozen" if freeze == "none" else f"transfer, {freeze} frozen"


def _rows(table: pd.DataFrame, stage: str) -> pd.DataFrame:
    return table[table["stage"] == stage] if "stage" in table else table.iloc[:0]


def _note(ax, text: str) -> None:
    """Say why a panel is empty (its x ticks go; y ticks may be shared with other panels)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])


def _strip_box(ax, groups: list[tuple[str, np.ndarray]], colours: list[str]) -> None:
    """Box plot (median, quartiles) with every value as a jittered point on top."""
    rng = np.random.default_rng(0)
    positions = np.arange(len(groups))
    ax.boxplot(
        [values for _, values in groups],
        positions=positions,
        widths=0.55,
        showfliers=False,
        medianprops={"color": "black", "linewidth": 2},
        zorder=4,
    )
    for x, (_, values), colour in zip(positions, groups, colours):
        jitter = rng.uniform(-0.18, 0.18, len(values)) if len(values) > 1 else np.zeros(1)
        ax.scatter(
            x + jitter,
            values,
            s=12,
            alpha=0.8 if len(values) < 50 else 0.4,
            color=colour,
            zorder=2,
            rasterized=len(values) > 500,
            linewidths=0,
        )
    ax.set_xticks(positions, [label for label, _ in groups])


def _metric_label(metric: str) -> str:
    if metric not in FIGURE_METRICS:
        raise ValueError(f"no loss figure for metric {metric!r}; allowed: {list(FIGURE_METRICS)}")
    return FIGURE_METRICS[metric]


def plot_target_loss(table: pd.DataFrame, stem: str | os.PathLike, metric: str = "ce") -> list[Path]:
    """Target val. loss after transfer, by transfer size, by freezing and by learning-rate pair
    (box + points); single-stage baselines join the size panel, the median pretrain-only loss
    on the same targets is a dashed line."""
    label = _metric_label(metric)
    transfer = _rows(table, TRANSFER)
    baselines = _rows(table, BASELINE)[f"target_val_{metric}"].dropna().to_numpy()
    panels = [
        ("size", "transfer set size (images)"),
        ("freeze", "frozen part"),
        ("lr_pair", "learning rate: pretrain → transfer"),
    ]
    figure = Figure(figsize=(13, 4.2), layout="constrained")
    axes = figure.subplots(1, 3, sharey=True)
    before = transfer[f"before_target_val_{metric}"].dropna() if len(transfer) else pd.Series([])
    for ax, (key, xlabel) in zip(axes, panels):
        ax.set_xlabel(xlabel)
        groups = _groups(transfer, key, metric)
        colours = ["tab:blue"] * len(groups)
        if key == "size" and len(baselines):
            groups.append(("baseline", baselines))
            colours.append("tab:purple")
        if groups:
            _strip_box(ax, groups, colours)
        else:
            _note(
                ax,
                f"no transfer models with a '{key}' tag"
                if key != "lr_pair"
                else "no transfer models with learning-rate tags",
            )
        if len(before):
            pretrain_line = ax.axhline(before.median(), color="tab:grey", linestyle="--")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(f"target val. {label}")
    if len(before):
        figure.legend(
            handles=[pretrain_line],
            loc="outside lower center",
            fontsize=9,
            labels=[f"median loss of the pretrained models on the same targets (pretrain only): {before.median():.3g}"],
        )
    figure.suptitle(f"Loss on the target domain after transfer ({len(transfer)} models)")
    return save_figure(figure, stem)


def _fmt(value) -> str:
    return f"{value:g}" if is_number(value) else str(value)


def _fmt_lr(value) -> str:
    """Learning rate as short scientific notation, e.g. ``1e-4``."""
    if not is_number(value):
        return str(value)
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _sortable(value) -> tuple:
    return (0, float(value), "") if is_number(value) else (1, 0.0, str(value))


def _group_key(row: pd.Series, key: str) -> tuple[tuple, str] | None:
    """(sort key, label) of a transfer row in the panel of ``key``; None if it has no such tag."""
    if key == "lr_pair":
        a, b = row.get("lr_pretrain"), row.get("lr_transfer")
        if a is None or b is None or pd.isna(a) or pd.isna(b):
            return None
        return (_sortable(a), _sortable(b)), f"{_fmt_lr(a)}\n→ {_fmt_lr(b)}"
    value = row.get(key)
    if value is None or pd.isna(value):
        return None
    if key == "freeze":
        rank = FREEZE_ORDER.index(value) if value in FREEZE_ORDER else len(FREEZE_ORDER)
        return (rank, str(value)), "nothing" if value == "none" else str(value)
    return _sortable(value), _fmt(value)


def _groups(transfer: pd.DataFrame, key: str, metric: str) -> list[tuple[str, np.ndarray]]:
    """(label, target val. ``metric`` values) per value of ``key``, in a natural order."""
    grouped: dict[str, list[float]] = {}
    order: dict[str, tuple] = {}
    for _, row in transfer.iterrows():
        found = _group_key(row, key)
        if found is not None and not pd.isna(row[f"target_val_{metric}"]):
            order[found[1]] = found[0]
            grouped.setdefault(found[1], []).append(row[f"target_val_{metric}"])
    return [(label, np.array(grouped[label])) for label in sorted(grouped, key=order.get)]


def _domains_of(table: pd.DataFrame, prefix: str = "val_ce__") -> list[str]:
    return [c[len(prefix) :] for c in table.columns if c.startswith(prefix)]


def plot_transfer_heatmap(table: pd.DataFrame, stem: str | os.PathLike, metric: str = "ce") -> list[Path]:
    """Source x target matrix of the median target val. loss, before and after transfer."""
    label = _metric_label(metric)
    transfer = _rows(table, TRANSFER)
    domains = _domains_of(table)
    sources = [d for d in domains if d in set(transfer.get("source", []))]
    targets = [d for d in domains if d in set(transfer.get("target", []))]
    figure = Figure(
        figsize=(4 + 0.45 * 2 * max(len(targets), 3), 2.5 + 0.4 * max(len(sources), 3)), layout="constrained"
    )
    axes = figure.subplots(1, 2, sharey=True)
    if not sources or not targets:
        for ax in axes:
            _note(ax, "no transfer models")
            ax.set_yticks([])
        figure.suptitle("Median target loss by source and target domain")
        return save_figure(figure, stem)
    matrices = {}
    for column, name in (
        (f"before_target_val_{metric}", "before transfer (pretrain only)"),
        (f"target_val_{metric}", "after transfer"),
    ):
        medians = transfer.groupby(["source", "target"])[column].median()
        matrices[name] = np.array([[medians.get((s, t), np.nan) for t in targets] for s in sources])
    finite = np.concatenate([m[np.isfinite(m)] for m in matrices.values()])
    vmin, vmax = (finite.min(), finite.max()) if len(finite) else (0.0, 1.0)
    for ax, (name, matrix) in zip(axes, matrices.items()):
        image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_facecolor("0.85")
        ax.set_title(name)
        ax.set_xticks(range(len(targets)), targets, rotation=90 if len(targets) > 4 else 0)
        ax.set_yticks(range(len(sources)), sources)
        ax.set_xlabel("target domain")
        if matrix.size <= 200:
            _annotate(ax, matrix, (vmin + vmax) / 2)
    axes[0].set_ylabel("source (pretraining) domain")
    figure.colorbar(image, ax=axes, label=f"median target val. {label}", shrink=0.9)
    figure.suptitle("Median target loss by source and target domain (grey: no models)")
    return save_figure(figure, stem)


def _annotate(ax, matrix: np.ndarray, middle: float) -> None:
    for (i, j), value in np.ndenumerate(matrix):
        if np.isfinite(value):
            ax.text(
                j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if value < middle else "black"
            )


def plot_ood_profile(
    table: pd.DataFrame,
    stem: str | os.PathLike,
    domain_values: dict[str, float | str] | None = None,
    parameter_label: str | dict[str, str] = "domain",
    metric: str = "ce",
) -> list[Path]:
    """Median val. loss on every domain vs the swept domain parameter, per model family
    (pretrain only, transfer by frozen part, baseline); band = interquartile range.
    One panel per experiment; ``parameter_label`` (per experiment if a dict) names the x axis
    with its unit, e.g. ``"defocus (nm)"``; non-numeric domain values are plotted as categories."""
    metric_label = _metric_label(metric)
    domain_values = domain_values or {}
    experiments = (list(dict.fromkeys(table["experiment"].dropna())) if "experiment" in table else []) or [None]
    figure = Figure(figsize=(6.5 * len(experiments), 4.5), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(experiments), squeeze=False)[0])
    families = table.apply(_family, axis=1) if len(table) else pd.Series([], dtype=str)
    for ax, experiment in zip(axes, experiments):
        rows = table if experiment is None else table[table["experiment"] == experiment]
        domains = [d for d in _domains_of(table) if rows[f"val_{metric}__{d}"].notna().any()]
        if not domains:
            _note(ax, "no evaluated models")
            continue
        values = [domain_values.get(d, d) for d in domains]
        numeric = all(is_number(v) for v in values)
        x = np.array(values, float) if numeric else np.arange(len(domains))
        order = np.argsort(x, kind="stable")
        present = list(dict.fromkeys(families[rows.index]))
        for family in [f for f in FAMILY_COLOURS if f in present] + [f for f in present if f not in FAMILY_COLOURS]:
            losses = rows.loc[families[rows.index] == family, [f"val_{metric}__{d}" for d in domains]]
            q25, q50, q75 = (losses.quantile(q).to_numpy()[order] for q in (0.25, 0.5, 0.75))
            colour = FAMILY_COLOURS.get(family, "black")
            ax.plot(x[order], q50, marker="o", color=colour, label=f"{family} (n={len(losses)})")
            if len(losses) > 1:
                ax.fill_between(x[order], q25, q75, color=colour, alpha=0.1, linewidth=0)
        if not numeric:
            ax.set_xticks(x, [str(v) for v in values], rotation=90 if len(values) > 6 else 0)
        label = parameter_label.get(experiment, "domain") if isinstance(parameter_label, dict) else parameter_label
        ax.set_xlabel(label)
        ax.set_ylabel(f"median val. {metric_label}")
        ax.set_title(f"experiment {experiment}" if experiment is not None else "all models")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle("Out-of-distribution profile: loss on every domain (band: quartiles)")
    return save_figure(figure, stem)


def method_label(row: pd.Series) -> str | None:
    """A transfer row's method with its parameters (``finetune, encoder frozen``, ``lora rank=4 alpha=8``)."""
    method = row.get("method")
    if row.get("stage") != TRANSFER or method is None or pd.isna(method):
        return None
    if method == "finetune":
        freeze = row.get("freeze")
        frozen = "nothing frozen" if freeze in (None, "none") or pd.isna(freeze) else f"{freeze} frozen"
        return f"finetune, {frozen}" + (" +adabn" if "adabn=True" in str(row.get("method_params") or "") else "")
    params = row.get("method_params")
    return f"{method} {params}".strip() if isinstance(params, str) else str(method)


def _by_method(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    transfer = _rows(table, TRANSFER)
    labels = transfer.apply(method_label, axis=1) if len(transfer) else pd.Series([], dtype=object)
    return [(label, transfer[labels == label]) for label in dict.fromkeys(labels.dropna())]


def _method_colours(groups) -> dict[str, str]:
    return {label: f"C{i % 10}" for i, (label, _) in enumerate(groups)}


def _method_figure(groups: list[tuple[str, pd.DataFrame]], size: tuple[float, float], empty: str) -> tuple:
    """One-axes figure for per-method groups: ``(figure, ax, non-empty groups, colours)``; the
    axes say ``empty`` when no group has rows."""
    groups = [(n, g) for n, g in groups if len(g)]
    figure = Figure(figsize=size, layout="constrained")
    ax = figure.subplots()
    if not groups:
        _note(ax, empty)
        ax.set_yticks([])
    return figure, ax, groups, _method_colours(groups)


def pareto_front(cost: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats in both cost and loss (lower is better), by cost."""
    order = np.lexsort((loss, cost))
    front, best = [], math.inf
    for i in order:
        if loss[i] < best:
            front.append(i)
            best = loss[i]
    return np.array(front, dtype=int)


def plot_method_cost(table: pd.DataFrame, stem: str | os.PathLike, metric: str = "ce") -> list[Path]:
    """Target val. loss vs training cost (trainable parameters; training time) per transfer method,
    with the Pareto frontier of all transfer models (dashed)."""
    label = _metric_label(metric)
    groups = _by_method(table)
    colours = _method_colours(groups)
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    for ax, (cost, xlabel) in zip(
        axes, (("trainable_params", "trainable parameters"), ("train_time_s", "training time (s)"))
    ):
        points = [(g[cost].to_numpy(float), g[f"target_val_{metric}"].to_numpy(float), name) for name, g in groups]
        xs = np.concatenate([p[0] for p in points]) if points else np.array([])
        ys = np.concatenate([p[1] for p in points]) if points else np.array([])
        keep = np.isfinite(xs) & np.isfinite(ys) & (xs > 0)
        if not keep.any():
            _note(ax, "no transfer models with a recorded cost")
            continue
        for x, y, name in points:
            shown = x > 0  # a log axis: adabn has no trainable parameters and no training time
            note = "" if shown.all() else f", {int((~shown).sum())} at cost 0 not shown"
            ax.scatter(x[shown], y[shown], color=colours[name], label=f"{name} (n={len(x)}{note})", s=25, zorder=3)
        front = pareto_front(xs[keep], ys[keep])
        ax.plot(xs[keep][front], ys[keep][front], "k--", linewidth=1, label="Pareto frontier", zorder=2)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # labelled ticks also within a decade
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(f"target val. {label}")
    if groups:
        axes[0].legend(fontsize=8)
    figure.suptitle("Target loss vs training cost per transfer method (lower left is better)")
    return save_figure(figure, stem)


def plot_forgetting_vs_gain(table: pd.DataFrame, stem: str | os.PathLike) -> list[Path]:
    """Forgetting (source loss after - before transfer) vs gain over the pretrained model on the
    target, one colour per transfer method (models without a pretrained model, scratch, are left out)."""
    groups = [(n, g.dropna(subset=["forgetting", "gain_vs_pretrain"])) for n, g in _by_method(table)]
    figure, ax, groups, colours = _method_figure(groups, (6.5, 5), "no transfer models with a source evaluation")
    for name, g in groups:
        ax.scatter(g["gain_vs_pretrain"], g["forgetting"], color=colours[name], label=f"{name} (n={len(g)})", s=25)
    ax.axhline(0, color="0.6", linewidth=0.8)
    ax.axvline(0, color="0.6", linewidth=0.8)
    ax.set_xlabel(f"gain on the target over pretrain only ({CE_LABEL})")
    ax.set_ylabel(f"forgetting: source loss after - before ({CE_LABEL})")
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize=8)
    figure.suptitle("Forgetting vs gain per transfer method (best: right and low)")
    return save_figure(figure, stem)


def plot_ood_check(found: dict, stem: str | os.PathLike) -> list[Path]:
    """OOD score of every (model, domain) pair of :func:`emsim.learning.ood_check.study_scores` against
    its val loss (left) and its shift gap (right), one colour per domain, in-domain pairs ringed,
    the calibrated threshold dashed."""
    pairs = found["pairs"]
    domains = sorted({p["domain"] for p in pairs})
    colours = {d: matplotlib.colormaps["tab20"](i % 20) for i, d in enumerate(domains)}
    figure = Figure(figsize=(12, 5), layout="constrained")
    axes = figure.subplots(1, 2, sharex=True)
    panels = (
        ("loss", f"val loss ({CE_LABEL})", "rho_pairs"),
        ("shift_gap", "shift gap: loss - the domain's own", "rho_gap_pairs"),
    )
    for ax, (key, ylabel, rho) in zip(axes, panels):
        for domain in domains:
            shown = [p for p in pairs if p["domain"] == domain and p.get(key) is not None]
            for in_domain, legend in ((False, domain), (True, None)):
                points = [p for p in shown if (p["domain"] == p["target"]) == in_domain]
                ax.scatter(
                    [p["score"] for p in points],
                    [p[key] for p in points],
                    color=colours[domain],
                    edgecolors="black" if in_domain else "none",
                    s=22,
                    label=legend,
                )
        if found["threshold"] is not None:
            ax.axvline(found["threshold"], color="0.3", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("OOD score (RMS z of the log power spectrum)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"Spearman rho across pairs {found[rho]:+.2f}" if found[rho] is not None else "", fontsize=9)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    figure.suptitle("OOD score vs measured loss (ringed: in-domain; dashed: calibrated threshold)")
    return save_figure(figure, stem)


def plot_gain_vs_scratch(table: pd.DataFrame, stem: str | os.PathLike) -> list[Path]:
    """Median gain over the from-scratch model (same target and size) by transfer size, per
    method; band = interquartile range. Above 0: transfer helped."""
    groups = [(n, g.dropna(subset=["gain_vs_scratch"])) for n, g in _by_method(table) if not n.startswith("scratch")]
    figure, ax, groups, colours = _method_figure(
        groups, (6.5, 4.5), "no scratch models to compare with (add method scratch)"
    )
    for name, g in groups:
        by_size = g.groupby("size")["gain_vs_scratch"]
        q25, q50, q75 = (by_size.quantile(q) for q in (0.25, 0.5, 0.75))
        ax.plot(q50.index, q50, marker="o", color=colours[name], label=f"{name} (n={len(g)})")
        ax.fill_between(q50.index, q25, q75, color=colours[name], alpha=0.15, linewidth=0)
    ax.axhline(0, color="0.4", linestyle="--", linewidth=1)
    if groups and len({s for _, g in groups for s in g["size"]}) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xlabel("transfer set size (target images)")
    ax.set_ylabel(f"gain over scratch ({CE_LABEL})")
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize=8)
    figure.suptitle("Does transfer help? Gain over training from scratch on the same images")
    return save_figure(figure, stem)


def plot_training_curves(records: list[dict], stem: str | os.PathLike) -> list[Path]:
    """Train and val loss vs epoch per stage: median over models, band = interquartile range."""
    stages = list(dict.fromkeys(r["tags"].get("stage", r.get("stage")) for r in records)) or [None]
    figure = Figure(figsize=(5 * len(stages), 4), layout="constrained")
    axes = figure.subplots(1, len(stages), squeeze=False)[0]
    for ax, stage in zip(axes, stages):
        histories = [r.get("history") or [] for r in records if r["tags"].get("stage", r.get("stage")) == stage]
        curves = pd.DataFrame([{**h, "model": i} for i, hist in enumerate(histories) for h in hist])
        if curves.empty:
            _note(ax, "no training history")
        else:
            positive = True
            for column, colour, name in (("train_loss", "tab:blue", "train"), ("val_loss", "tab:orange", "val.")):
                by_epoch = curves.groupby("epoch")[column]
                q25, q50, q75 = (by_epoch.quantile(q) for q in (0.25, 0.5, 0.75))
                ax.plot(q50.index, q50, marker="o", markersize=3, color=colour, label=f"{name} (median)")
                ax.fill_between(q50.index, q25, q75, color=colour, alpha=0.2, linewidth=0)
                positive &= bool((curves[column].dropna() > 0).all())
            if positive:
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(NullFormatter())
            ax.legend(fontsize=8)
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("epoch")
        ax.set_ylabel(CE_LABEL)
        ax.set_title(f"{stage or 'all'} ({len(histories)} models)")
        ax.grid(alpha=0.3, which="both")
    figure.suptitle("Training curves (band: quartiles over models)")
    return save_figure(figure, stem)


def plot_examples(
    model_path: str | os.PathLike,
    datasets: dict[str, str],
    stem: str | os.PathLike,
    index: int = 0,
    device: str = "auto",
    instances: Instances | None = None,
) -> list[Path]:
    """Image, true label, prediction and particles (matched, missed, false; cut by ``instances``,
    default the schema's) of one model for val image ``index`` of each domain."""
    model, _ = load_model(model_path, map_location=resolve_device(device))
    settings = Instances.with_defaults() if instances is None else instances
    figure = Figure(figsize=(10, 2.5 * len(datasets) + 0.6), layout="constrained")
    axes = figure.subplots(len(datasets), 4, squeeze=False)
    for i, (row, (domain, path)) in enumerate(zip(axes, datasets.items())):
        images, labels = data.read_split(path, "val")
        if not 0 <= index < len(images):
            raise ValueError(f"{path}: val split has {len(images)} images, no index {index}")
        image, label = images[index], labels[index]
        prediction = segment_image(model, image)
        low, high = np.percentile(image, [1, 99])
        row[0].imshow(image, cmap="gray", vmin=low, vmax=high)
        row[2].imshow(prediction, cmap="gray", vmin=0, vmax=1)
        kind = data.label_kind(path)
        if kind == "mask":
            counts = metrics.confusion(torch.from_numpy(prediction), torch.from_numpy(label))
            iou = metrics.metrics_from_counts(*(int(c) for c in counts), 0.0, 0.0)["iou"]
            row[1].imshow(label, cmap="gray", vmin=0, vmax=1)
            row[2].text(
                0.03, 0.97, f"IoU {iou:.2f}", transform=row[2].transAxes, va="top", backgroundcolor="white", fontsize=9
            )
        else:
            _note(row[1], f"no pixel labels\n({kind})")
        _particles_panel(row[3], path, index, image, label, prediction.astype(np.float32), settings)
        row[0].set_ylabel(f"{domain}\n({image.shape[0]} x {image.shape[1]} px)")
        titles = ("image", "true label", "prediction", "particles") if i == 0 else ("", "", "", "")
        for ax, title in zip(row, titles):
            ax.set_title(title, fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    figure.suptitle(
        f"Val. image {index} of each domain, model {Path(model_path).name}; particles: "
        "found (green), missed (red), false (yellow)"
    )
    return save_figure(figure, stem)


def _particles_panel(
    ax, path: str, index: int, image: np.ndarray, label: np.ndarray, probability: np.ndarray, settings
) -> None:
    """Predicted particles of val image ``index`` against the truth the evaluation uses: the boxes
    that lie in a micrograph tile, else the true instances (simulated) or the mask's components."""
    pixel_size_A = data.read_attrs(path).get("config", {}).get("image", {}).get("pixel_size_A")
    tiles = evaluate.micrograph_tiles(path, "val") if data.is_micrograph(path) else None
    kind = data.label_kind(path)
    if tiles is not None and len(tiles["boxes"]) and pixel_size_A:
        boxes = tiles["boxes"]
        mine = (boxes[:, 0] == tiles["file"][index]) & (boxes[:, 1] == tiles["frame"][index])
        shifted = boxes[mine, 2:] - [tiles["tile_x0"][index], tiles["tile_y0"][index]] * 2
        size = image.shape[-1]
        inside = (shifted[:, 0] >= 0) & (shifted[:, 1] >= 0) & (shifted[:, 2] <= size) & (shifted[:, 3] <= size)
        result = plot_detection_overlay(image, probability, shifted[inside], pixel_size_A, settings, ax)
    elif tiles is not None and kind != "mask":
        _note(ax, f"no true particles\n({kind})")
        return
    else:
        truth = data.read_instances(path, "val") if tiles is None else None
        true = particles.instances_from_mask(label) if truth is None else truth[index]
        found = particles.cut_particles(probability, pixel_size_A, settings)
        result = particles.match_instances(true, found)
        colours = np.zeros((*image.shape, 4), np.float32)
        matched_pred = np.isin(found, [c + 1 for _, c in result["pairs"]])
        colours[matched_pred] = (0.0, 0.9, 0.0, 0.45)
        colours[(found > 0) & ~matched_pred] = (1.0, 0.85, 0.0, 0.55)
        low, high = np.percentile(image, [1, 99])
        ax.imshow(image, cmap="gray", vmin=low, vmax=high)
        ax.imshow(colours)
        missed = np.isin(true, [t + 1 for t in range(result["n_true"]) if t not in {t for t, _ in result["pairs"]}])
        if missed.any():
            ax.contour(missed, [0.5], colors="red", linewidths=0.8)
    ax.text(
        0.03,
        0.97,
        f"found {result['tp']}/{result['n_true']}, {result['fp']} false",
        transform=ax.transAxes,
        va="top",
        backgroundcolor="white",
        fontsize=8,
    )


def _record_family(record: dict) -> str:
    row = pd.Series(record["tags"])
    return method_label(row) or _family(row)


def plot_size_distributions(records: list[dict], stem: str | os.PathLike) -> list[Path]:
    """Particle sizes (equivalent diameter; boxes: square root of the box area) of the predictions
    against the truth on each domain's val split, per model family (the sum over its models,
    as fractions); nothing is drawn (and [] returned) without particle metrics."""
    histograms: dict[str, list[tuple[str, dict]]] = {}  # domain -> (family, histogram) per model
    for record in records:
        for domain, scores in record["metrics"].items():
            if "size_histogram" in scores.get("val", {}):
                histograms.setdefault(domain, []).append((_record_family(record), scores["val"]["size_histogram"]))
    if not histograms:
        return []
    families = list(dict.fromkeys(_record_family(r) for r in records))
    columns = min(3, len(histograms))
    rows = math.ceil(len(histograms) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.2 * rows + 0.5), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    edges = particles.SIZE_EDGES_NM
    for ax, (domain, pairs) in zip(axes, histograms.items()):
        truth = np.asarray(pairs[0][1]["true"], float)
        ax.bar(
            edges[:-1],
            truth / max(truth.sum(), 1),
            width=np.diff(edges),
            align="edge",
            color="0.8",
            label=f"true ({truth.sum():.0f})",
        )
        top = np.flatnonzero(truth)
        for f, family in enumerate(families):
            counts = np.sum([np.asarray(h["pred"], float) for name, h in pairs if name == family], axis=0)
            if np.ndim(counts) == 0 or not counts.sum():
                continue
            fraction = counts / counts.sum()
            ax.stairs(fraction, edges, color=f"C{f}", linewidth=1.5, label=f"{family} ({counts.sum():.0f})")
            top = np.union1d(top, np.flatnonzero(counts))
        ax.set_xlim(0, edges[min(len(edges) - 1, (top.max() + 2) if len(top) else len(edges) - 1)])
        ax.set_title(domain, fontsize=10)
        ax.set_xlabel("particle size [nm]")
        ax.set_ylabel("fraction of particles")
        ax.legend(fontsize=7)
    for ax in axes[len(histograms) :]:
        ax.set_visible(False)
    figure.suptitle("Particle sizes on each domain's val split: predictions (lines) against the truth (grey)")
    return save_figure(figure, stem)


DETECTION_METRICS = (("det_precision", "precision"), ("det_recall", "recall"), ("det_f1", "F1"))


def plot_detection(table: pd.DataFrame, stem: str | os.PathLike) -> list[Path]:
    """Detection precision, recall and F1 (IoU >= 0.5) of every model family on each domain with
    particle metrics (one point per model): the OOD profile in particles; nothing is drawn (and []
    returned) for a table without them."""
    domains = _domains_of(table, "val_det_f1__")
    if not domains:
        return []
    families = sorted({method_label(row) or _family(row) for _, row in table.iterrows()})
    figure = Figure(
        figsize=(4 * len(DETECTION_METRICS), 0.6 + 0.45 * len(families) * len(domains)), layout="constrained"
    )
    axes = figure.subplots(1, len(DETECTION_METRICS), sharey=True)
    labels = [method_label(row) or _family(row) for _, row in table.iterrows()]
    for ax, (column, name) in zip(axes, DETECTION_METRICS):
        for d, domain in enumerate(domains):
            for f, family in enumerate(families):
                values = table[f"val_{column}__{domain}"][[label == family for label in labels]].dropna()
                y = d * (len(families) + 1) + f
                ax.plot(values, np.full(len(values), y), "o", color=f"C{f}", alpha=0.7)
                if len(values):
                    ax.plot([values.median()] * 2, [y - 0.35, y + 0.35], color="black", linewidth=2)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel(name)
        ax.grid(alpha=0.3, axis="x")
    ticks = [d * (len(families) + 1) + f for d in range(len(domains)) for f in range(len(families))]
    axes[0].set_yticks(ticks, [f"{domain}: {family}" for domain in domains for family in families], fontsize=8)
    axes[0].invert_yaxis()
    figure.suptitle("Particle detection (IoU >= 0.5, one-to-one; boxes: box IoU); bar: median")
    return save_figure(figure, stem)


def plot_detection_overlay(
    image: np.ndarray,
    probability: np.ndarray,
    boxes: np.ndarray,
    pixel_size_A: float,
    settings: Instances,
    ax,
    title: str = "",
) -> dict:
    """Draw ``image`` with the particles a probability map finds (cut by ``settings``) against true
    ``boxes`` (x0, y0, x1, y1 px): matched true boxes green, missed red, false detections yellow,
    predicted outlines cyan; returns the :func:`emsim.learning.particles.match_boxes` result."""
    instances = particles.cut_particles(probability, pixel_size_A, settings)
    predicted = particles.boxes_of_instances(instances)
    result = particles.match_boxes(boxes, predicted)
    matched_true = {t for t, _ in result["pairs"]}
    matched_pred = {p for _, p in result["pairs"]}
    low, high = np.percentile(image, [1, 99])
    ax.imshow(image, cmap="gray", vmin=low, vmax=high)
    ax.contour(instances > 0, [0.5], colors="cyan", linewidths=0.5)
    for groups, colour in (
        ([b for i, b in enumerate(boxes) if i in matched_true], "lime"),
        ([b for i, b in enumerate(boxes) if i not in matched_true], "red"),
        ([b for i, b in enumerate(predicted) if i not in matched_pred], "yellow"),
    ):
        for x0, y0, x1, y1 in groups:
            ax.add_patch(
                matplotlib.patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=colour, linewidth=0.8)
            )
    ax.set_title(f"{title}\nfound {result['tp']}/{result['n_true']}, {result['fp']} false", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return result
