"""The seed study's findings as statistics of a per-model table, for emsim's results and the study's.

The study: L. Rangel DaCosta, H. Oill, M. Scott, "Strategies for effective transfer learning for
HRTEM analysis with neural networks" (article repository msa-em/hrtem-transfer-learning).

Each statistic takes a per-model table in the columns of :func:`emsim.report.table.model_table`
(``stage``, ``source``, ``target``, ``freeze``, ``size``, ``lr_pretrain``, ``lr_transfer``,
``target_val_<m>``, ``val_<m>__<d>``, ``before_val_<m>__<d>``) and a metric short name ``<m>``
(``ce``, or the study's convention ``study_loss``); only transfer rows count, as in the study.
Domain facts (defocus, dose, lattice of each domain: :func:`domain_facts`) say which findings
apply to an experiment. :func:`load_study` puts the study's public per-model tables into the same
columns, so one code path gives both columns of docs/validation.md::

    emsim findings results/report --configfile config/validation.yaml [--metric ce]
    emsim findings --study                                      # the tables shipped with emsim
    emsim findings --study hrtem-transfer-learning/notebooks    # or the article's own pickles
"""

from __future__ import annotations

import pickle
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from emsim.progress import bar
from emsim.study import experiments
from emsim.study.settings import TRANSFER, Study

STUDY_METRIC = "study_loss"
# What the article subtracted from every loss it reports: ln(1 + e^-1) rounded as it rounds it
# (emsim's own study_loss uses the exact emsim.learning.metrics.STUDY_LOSS_OFFSET = 0.31326).
STUDY_OFFSET = 0.3133
BEST_LRS, WORST_LRS = (1e-3, 1e-4), (1e-4, 1e-5)
BY_FAR = 1.5  # "by far the hardest": at least this many times the loss of the next hardest domain
CLAIMS = {
    "F1": "more transfer data gives lower target loss and less spread",
    "F2": "freezing the decoder is about as good as no freezing, freezing the encoder slightly worse",
    "F3": "learning rates (1e-3, 1e-4) are best and (1e-4, 1e-5) worst",
    "F4": "the in-focus (0 nm) domain is by far the hardest",
    "F5": "transfer does not necessarily improve out-of-distribution behaviour (a measurement, no rule)",
    "F6": "lower dose gives higher loss",
    "F7": "diamond C is the hardest lattice and wurtzite the easiest",
}
FACTS = ("defocus_nm", "dose_e_per_A2", "lattice")
# Metrics where higher is better; findings compare losses, so these enter as 1 - score. A size
# distance is undefined where a model predicts no particle: that counts as the worst (inf).
UNDEFINED_IS_WORST = ("size_w1_nm", "size_error_nm")
SCORES = (
    "iou",
    "dice",
    "precision",
    "recall",
    "accuracy",
    "det_precision",
    "det_recall",
    "det_f1",
    "det_mean_f1",
    "pq",
)


# ---------------------------------------------------------------- statistics


def transfer_rows(table: pd.DataFrame, metric: str = "ce", exclude=()) -> pd.DataFrame:
    """Transfer rows with a target loss, their target not in ``exclude``."""
    column = f"target_val_{metric}"
    if column not in table:
        raise ValueError(f"the table has no column {column!r} (metric {metric!r})")
    rows = table[(table["stage"] == TRANSFER) & table[column].notna()]
    return rows[~rows["target"].isin(list(exclude))]


def _quartiles(groups) -> pd.DataFrame:
    stats = groups.agg(n="size", median="median", q25=lambda v: v.quantile(0.25), q75=lambda v: v.quantile(0.75))
    stats["iqr"] = stats["q75"] - stats["q25"]
    return stats


def by_size(table: pd.DataFrame, metric: str = "ce", exclude=()) -> pd.DataFrame:
    """F1: n, median, quartiles and IQR of the target loss per transfer set size."""
    rows = transfer_rows(table, metric, exclude)
    return _quartiles(rows.groupby("size")[f"target_val_{metric}"]).sort_index()


def by_freeze(table: pd.DataFrame, metric: str = "ce", exclude=()) -> pd.DataFrame:
    """F2: n, median, quartiles and IQR of the target loss per frozen part."""
    rows = transfer_rows(table, metric, exclude)
    return _quartiles(rows.groupby("freeze")[f"target_val_{metric}"])


def by_lr_pair(table: pd.DataFrame, metric: str = "ce", exclude=()) -> pd.DataFrame:
    """F3: n, median, quartiles and IQR of the target loss per (lr_pretrain, lr_transfer)."""
    rows = transfer_rows(table, metric, exclude)
    return _quartiles(rows.groupby(["lr_pretrain", "lr_transfer"])[f"target_val_{metric}"])


def by_domain(table: pd.DataFrame, metric: str = "ce") -> pd.Series:
    """F4: median loss after transfer on each evaluation domain (val split), over transfer models."""
    rows = transfer_rows(table, metric)
    prefix = f"val_{metric}__"
    return pd.Series({c[len(prefix) :]: rows[c].median() for c in rows if c.startswith(prefix)}, dtype=float)


def spread(table: pd.DataFrame, metric: str = "ce", exclude=()) -> pd.DataFrame:
    """F5: per (source, target) pair, the population std across domains (``exclude`` left out)
    of the median loss before transfer (models pretrained on the source) and after (the pair's
    transfer models), as the study's generalization figure computes it."""
    rows = transfer_rows(table, metric)
    prefix = f"val_{metric}__"
    domains = [
        c[len(prefix) :]
        for c in rows
        if c.startswith(prefix) and c[len(prefix) :] not in exclude and f"before_{c}" in rows
    ]
    after = [f"{prefix}{d}" for d in domains]
    before = [f"before_{c}" for c in after]
    spreads = {}
    for source, of_source in rows.groupby("source"):
        std_before = of_source[before].median().std(ddof=0)
        for target, pair in of_source.groupby("target"):
            spreads[(source, target)] = {"before": std_before, "after": pair[after].median().std(ddof=0)}
    return pd.DataFrame.from_dict(spreads, orient="index").rename_axis(["source", "target"])


def by_target_fact(table: pd.DataFrame, facts: pd.DataFrame, fact: str, metric: str = "ce") -> pd.Series:
    """F6, F7: median target loss after transfer per value of a fact of the target domain
    (``dose_e_per_A2``, ``lattice``), sorted by that value."""
    rows = transfer_rows(table, metric)
    keys = rows["target"].map(facts[fact])
    return rows.groupby(keys)[f"target_val_{metric}"].median().sort_index()


def _metric_of(column: str) -> str | None:
    """The metric short name of a loss column (``[before_]target_val_<m>``, ``[before_]val_<m>__<d>``)."""
    column = column.removeprefix("before_")
    if column.startswith("target_val_"):
        return column.removeprefix("target_val_")
    if column.startswith("val_") and "__" in column:
        return column.removeprefix("val_").split("__", 1)[0]
    return None


def as_losses(table: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, str]:
    """The table and metric the findings' rules read (lower is better): a score (``SCORES``)
    becomes ``1-<m>`` = 1 - score in every column of that metric; a size-distribution distance
    that is undefined (the model predicted no particle: ``UNDEFINED_IS_WORST``) becomes inf, the
    worst; any other metric is kept."""
    columns = [c for c in table if _metric_of(c) == metric]
    if metric in SCORES:
        loss = f"1-{metric}"
        converted = {c.replace(f"val_{metric}", f"val_{loss}", 1): 1.0 - table[c] for c in columns}
    elif metric in UNDEFINED_IS_WORST:
        loss, converted = metric, {c: table[c].fillna(np.inf) for c in columns}
    else:
        return table, metric
    return pd.concat([table.drop(columns=columns), pd.DataFrame(converted, index=table.index)], axis=1), loss


# ---------------------------------------------------------------- verdicts


def _g(value) -> str:
    return f"{value:.3g}" if isinstance(value, (float, np.floating)) else str(value)


def _lrs(pair) -> str:
    return "(" + ", ".join(f"{v:.0e}".replace("e-0", "e-") for v in pair) + ")"


def judge_size(stats: pd.DataFrame) -> tuple[str, float]:
    """Agree if the median falls at every size step and the largest set has a smaller IQR than the
    smallest; margin: the smallest of those drops."""
    text = ", ".join(f"{size:g}: {_g(r['median'])} (IQR {_g(r['iqr'])})" for size, r in stats.iterrows())
    drops = np.min(-np.diff(stats["median"]), initial=np.inf)
    margin = float(np.min([drops, stats["iqr"].iloc[0] - stats["iqr"].iloc[-1]]))
    return f"median target loss by size: {text}", margin


def judge_freeze(stats: pd.DataFrame) -> tuple[str, float]:
    """Agree if encoder-frozen is worse than nothing frozen, by more than decoder-frozen differs;
    margin: (encoder - none) - |decoder - none|."""
    none, encoder, decoder = (stats.loc[f, "median"] for f in ("none", "encoder", "decoder"))
    text = f"median target loss: none {_g(none)}, decoder {_g(decoder)}, encoder {_g(encoder)}"
    return text, (encoder - none) - abs(decoder - none)


def _find_pair(stats: pd.DataFrame, pair: tuple[float, float]):
    return next((key for key in stats.index if np.allclose(key, pair)), None)


def judge_lr(stats: pd.DataFrame) -> tuple[str, float]:
    """Agree if (1e-3, 1e-4) has the lowest median target loss and (1e-4, 1e-5) the highest;
    margin: the smaller of the gaps to the nearest other pair."""
    text = ", ".join(
        f"{_lrs(k)}: {_g(r['median'])} (IQR {_g(r['iqr'])})" for k, r in stats.sort_values("median").iterrows()
    )
    medians = stats["median"]
    best, worst = medians[_find_pair(stats, BEST_LRS)], medians[_find_pair(stats, WORST_LRS)]
    others = medians.drop([_find_pair(stats, BEST_LRS), _find_pair(stats, WORST_LRS)])
    margin = np.min([others.min() - best, worst - others.max()]) if len(others) else worst - best
    return f"median target loss, best first: {text}", float(margin)


def judge_domain(medians: pd.Series, in_focus: str) -> tuple[str, float]:
    """Agree if the in-focus domain has the highest median loss, at least BY_FAR x the next;
    margin: its ratio to the hardest other domain minus BY_FAR."""
    ranked = medians.sort_values(ascending=False)
    ratio = ranked.iloc[0] / ranked.iloc[1]
    text = (
        f"hardest {ranked.index[0]} {_g(ranked.iloc[0])}, next {ranked.index[1]} "
        f"{_g(ranked.iloc[1])} ({ratio:.2g}x); easiest {ranked.index[-1]} {_g(ranked.iloc[-1])}"
    )
    return text, float(medians[in_focus] / medians.drop(in_focus).max() - BY_FAR)


def judge_spread(spreads: pd.DataFrame) -> tuple[str, None]:
    """The spread across domains before and after transfer, shown with no verdict ("measured"):
    the article says transfer "does not necessarily improve" it, which no rule can contradict."""
    before, after = spreads["before"].median(), spreads["after"].median()
    narrower = (spreads["after"] < spreads["before"]).mean()
    text = (
        f"median over {len(spreads)} pairs of std across domains: before {_g(before)}, "
        f"after {_g(after)}; narrower for {narrower:.0%} of pairs"
    )
    return text, None


def judge_dose(medians: pd.Series) -> tuple[str, float]:
    """Agree if the median target loss falls at every step up in dose; margin: the smallest fall."""
    text = ", ".join(f"{dose:g}: {_g(v)}" for dose, v in medians.items())
    return f"median target loss by dose (e/A^2): {text}", float(np.min(-np.diff(medians.to_numpy()), initial=np.inf))


def judge_lattice(medians: pd.Series) -> tuple[str, float]:
    """Agree if C_diamond has the highest median target loss and a wurtzite lattice the lowest;
    margin: the smaller of C's lead over the next and the best wurtzite's lead over the best other."""
    ranked = medians.sort_values()
    text = ", ".join(f"{lattice} {_g(v)}" for lattice, v in ranked.items())
    wurtzite = medians[medians.index.str.endswith("_wurtzite")]
    others = medians.drop(wurtzite.index)
    c_lead = medians["C_diamond"] - medians.drop("C_diamond").max() if "C_diamond" in medians else np.nan
    w_lead = others.min() - wurtzite.min() if len(wurtzite) and len(others) else np.nan
    return f"median target loss, easiest first: {text}", float(np.min([c_lead, w_lead]))


def verdict(margin: float | None, interval: tuple[float, float] | None = None) -> str:
    """``agree`` when the rule's margin is positive, ``disagree`` when negative; with a bootstrap
    ``interval`` of the margin, ``inconclusive`` when it contains 0; ``measured`` for no rule."""
    if margin is None:
        return "measured"
    if np.isnan(margin):  # a group the rule compares has no value (or two are both inf)
        return "inconclusive"
    if interval is None:
        return "agree" if margin > 0 else "disagree"
    low, high = interval
    return "agree" if low > 0 else "disagree" if high < 0 else "inconclusive"


def _measures(table: pd.DataFrame, facts: pd.DataFrame, metric: str) -> dict:
    """finding -> a function of a per-model table giving (statistic text, rule margin), for the
    findings that apply. F1-F3 need at least two sizes / the three frozen parts / both named LR
    pairs; F4 a varied defocus with a 0 nm domain (left out of F1-F3 and F5, as in the study); F6
    a varied dose; F7 a varied lattice."""
    transfer = transfer_rows(table, metric)
    varied = facts["defocus_nm"].nunique() > 1
    exclude = [d for d in facts.index[facts["defocus_nm"] == 0] if varied]
    out = {}
    if "size" in transfer and transfer["size"].nunique() > 1:
        out["F1"] = lambda t: judge_size(by_size(t, metric, exclude))
    if "freeze" in transfer and {"none", "encoder", "decoder"} <= set(transfer["freeze"]):
        out["F2"] = lambda t: judge_freeze(by_freeze(t, metric, exclude))
    if {"lr_pretrain", "lr_transfer"} <= set(transfer):
        stats = by_lr_pair(table, metric, exclude)
        if _find_pair(stats, BEST_LRS) is not None and _find_pair(stats, WORST_LRS) is not None:
            out["F3"] = lambda t: judge_lr(by_lr_pair(t, metric, exclude))
    if exclude and exclude[0] in (domains := by_domain(table, metric)) and len(domains) > 1:
        out["F4"] = lambda t: judge_domain(by_domain(t, metric), exclude[0])
    if any(c.startswith(f"before_val_{metric}__") for c in transfer) and len(spread(table, metric, exclude).dropna()):
        out["F5"] = lambda t: judge_spread(spread(t, metric, exclude).dropna())
    if facts["dose_e_per_A2"].nunique() > 1:
        out["F6"] = lambda t: judge_dose(by_target_fact(t, facts, "dose_e_per_A2", metric))
    if facts["lattice"].nunique() > 1:
        out["F7"] = lambda t: judge_lattice(by_target_fact(t, facts, "lattice", metric))
    return out


def findings(
    table: pd.DataFrame, facts: pd.DataFrame, metric: str = "ce", bootstrap: int = 0, seed: int = 0
) -> list[dict]:
    """Every finding that applies to one experiment: ``finding``, ``claim``, ``statistic``,
    ``margin`` (of the finding's rule; > 0 agrees), ``interval`` (the 2.5-97.5 % quantiles of the
    margin over ``bootstrap`` resamplings of the transfer models with replacement, seeded; None
    without) and ``verdict`` (:func:`verdict`). A score metric is judged as 1 - score (:func:`as_losses`)."""
    table, metric = as_losses(table, metric)
    transfer = transfer_rows(table, metric)
    if transfer.empty:
        return []
    with np.errstate(invalid="ignore"):  # inf - inf (groups that failed outright) gives nan: inconclusive
        return _findings(transfer, _measures(table, facts, metric), bootstrap, seed)


def _findings(transfer: pd.DataFrame, measures: dict, bootstrap: int, seed: int) -> list[dict]:
    full = {finding: measure(transfer) for finding, measure in measures.items()}
    margins: dict[str, list[float]] = {f: [] for f, (_, margin) in full.items() if margin is not None}
    rng = np.random.default_rng(seed)
    for _ in range(bootstrap):  # one resample in memory at a time, every finding judged on it
        sample = transfer.iloc[rng.integers(0, len(transfer), len(transfer))]
        for finding, values in margins.items():
            try:
                values.append(measures[finding](sample)[1])
            except (KeyError, IndexError, ValueError):  # a group left out of the resample
                values.append(np.nan)
    out = []
    for finding, (text, margin) in full.items():
        interval = None
        if bootstrap and margin is not None:
            judged = np.asarray(margins[finding])
            judged = judged[~np.isnan(judged)]
            # "nearest": no interpolation, so a margin of inf (a group that failed outright) stays inf
            quantiles = np.quantile(judged, [0.025, 0.975], method="nearest") if len(judged) else [np.nan] * 2
            interval = tuple(float(q) for q in quantiles)
        out.append(
            {
                "finding": finding,
                "claim": CLAIMS[finding],
                "statistic": text,
                "margin": margin,
                "interval": interval,
                "verdict": verdict(margin, interval),
            }
        )
    return out


def _split(path: Path, name: str) -> tuple[str, str, str]:
    """A markdown file as (text up to and with ``<!-- findings:<name> -->``, the block between the
    markers, the rest from ``<!-- /findings:<name> -->``); ValueError naming the file and block
    without exactly one such block."""
    document = path.read_text()
    start, end = f"<!-- findings:{name} -->", f"<!-- /findings:{name} -->"
    if document.count(start) != 1 or document.count(end) != 1 or document.index(start) > document.index(end):
        raise ValueError(f"{path}: needs one block {start} ... {end} to hold the findings")
    before, rest = document.split(start)
    block, after = rest.split(end)
    return before + start, block.strip("\n"), end + after


def read_block(path: str | Path, name: str) -> str:
    """The findings table in block ``name`` of a markdown file."""
    return _split(Path(path), name)[1]


def write_block(path: str | Path, name: str, table: str) -> None:
    """Replace the findings table in block ``name`` of a markdown file."""
    before, _, after = _split(Path(path), name)
    Path(path).write_text(f"{before}\n{table}\n{after}")


# The blocks of docs/validation.md summarised in docs/seed-study.md (block -> column title).
SUMMARY_COLUMNS = {
    "study": "the study's own tables",
    "validation:study_loss": "reduced study, per pixel",
    "validation:det_f1": "per particle: detection",
    "validation:size_w1_nm": "per particle: sizes",
    "validation_steps:study_loss": "the study's steps, per pixel",
    "validation_lattice:study_loss": "large particles (r 25-35 A), per pixel",
    "validation_lattice:det_f1": "large particles: detection",
}


def summary(path: str | Path, columns: dict[str, str]) -> str:
    """The verdicts of blocks of a markdown file as one table, a row per finding and a column per
    block (``columns``: block name -> column title); measured-only findings left out."""
    verdicts: dict[str, dict[str, list[str]]] = {}
    for block in columns:
        for line in read_block(path, block).splitlines()[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[-1] != "measured":
                verdicts.setdefault(cells[1], {}).setdefault(block, []).append(f"{cells[0]}: {cells[-1]}")
    lines = ["| finding | " + " | ".join(columns.values()) + " |", "|---|" + "---|" * len(columns)]
    for finding in sorted(verdicts):
        row = ("; ".join(verdicts[finding].get(block, ["-"])) for block in columns)
        lines.append(f"| {finding} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def markdown(results: dict[str, list[dict]]) -> str:
    """The findings of every experiment as one markdown table (margin with its bootstrap interval)."""
    lines = [
        "| experiment | finding | claim | statistic | rule margin [95 % interval] | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for experiment, rows in results.items():
        for r in rows:
            margin = "-" if r["margin"] is None else _g(r["margin"])
            if r.get("interval"):
                margin += f" [{_g(r['interval'][0])}, {_g(r['interval'][1])}]"
            lines.append(
                f"| {experiment} | {r['finding']} | {r['claim']} | {r['statistic']} | {margin} | {r['verdict']} |"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------- domain facts


def domain_facts(study: Study, domains: list[str]) -> pd.DataFrame:
    """Defocus (nm), dose (e/A^2) and lattice of each domain of a loaded study config."""
    rows = {}
    for name in domains:
        domain = study.domains[name]
        lattices = {study.structure_sets[s].particles["lattice"] for s in domain.sets}
        rows[name] = {
            "defocus_nm": domain.shifts.get("defocus", {}).get("mean_nm"),
            "dose_e_per_A2": domain.shifts.get("dose", {}).get("e_per_A2"),
            "lattice": "+".join(sorted(lattices)),
        }
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(FACTS))


def report_findings(
    report_dir: str | Path, study: Study, metric: str = "ce", progress: bool = False, bootstrap: int = 0
) -> dict[str, list[dict]]:
    """Findings of every experiment with a ``<report_dir>/<experiment>/models.parquet``
    (``progress``: a bar over them when stderr is a terminal; ``bootstrap``: :func:`findings`)."""
    expanded = experiments.expand(study)
    results = {}
    for path in bar(sorted(Path(report_dir).glob("*/models.parquet")), "findings", "experiment", progress):
        name = path.parent.name
        if name not in expanded:
            raise ValueError(
                f"{path}: experiment {name!r} is not in the study config (experiments: {', '.join(expanded)})"
            )
        table = pd.read_parquet(path)
        results[name] = findings(table, domain_facts(study, expanded[name].domains), metric, bootstrap)
    if not results:
        raise ValueError(f"{report_dir}: no <experiment>/models.parquet found")
    return results


# Metrics whose columns :func:`write_tables` keeps: the losses and the per-particle scores the
# findings are judged on in docs/validation.md.
KEPT_METRICS = ("ce", STUDY_METRIC, "det_f1", "size_w1_nm")
TAGS = ("stage", "source", "target", "freeze", "method", "size", "lr_pretrain", "lr_transfer", "seed", "model")


def write_tables(report_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Copy every ``<report_dir>/<experiment>/models.parquet`` to ``<out_dir>/<experiment>/``
    with only what the findings read (``TAGS`` and the columns of ``KEPT_METRICS``), so a run's
    findings can be regenerated without the run (docs/data)."""
    written = []
    for path in sorted(Path(report_dir).glob("*/models.parquet")):
        table = pd.read_parquet(path)
        keep = [c for c in table if c in TAGS or _metric_of(c) in KEPT_METRICS]
        out = Path(out_dir) / path.parent.name / "models.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        table[keep].to_parquet(out, index=False)
        written.append(out)
    return written


# ---------------------------------------------------------------- the study's tables

# Plain data constructors a pandas table pickle needs besides pandas and numpy classes
# (pyarrow ones for string columns written by pandas >= 3).
PICKLE_DATA_CLASSES = {
    ("builtins", "slice"),
    ("builtins", "bytearray"),
    ("pyarrow.lib", "_restore_array"),
    ("pyarrow.lib", "py_buffer"),
    ("pyarrow.lib", "type_for_alias"),
}


class _TableUnpickler(pickle.Unpickler):
    """Unpickles pandas and numpy classes and PICKLE_DATA_CLASSES only: nothing that runs code."""

    def find_class(self, module: str, name: str):
        if module.split(".")[0] in ("pandas", "numpy") or (module, name) in PICKLE_DATA_CLASSES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a table pickle")


def read_pickle_table(path: str | Path) -> pd.DataFrame:
    """A pandas DataFrame from a pickle, through a restricted unpickler."""
    with open(path, "rb") as file:
        table = _TableUnpickler(file).load()
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"{path}: holds a {type(table).__name__}, not a pandas DataFrame")
    return table


STUDY_LATTICES = {
    "w_ZnS": "ZnS_wurtzite",
    "w_CdSe": "CdSe_wurtzite",
    "fcc_Cu": "Cu_fcc",
    "fcc_Ag": "Ag_fcc",
    "dc_C": "C_diamond",
    "dc_Si": "Si_diamond",
    "spinel_Fe3O4": "Fe3O4_spinel",
    "spinel_Co3O4": "Co3O4_spinel",
    "bcc_Fe": "Fe_bcc",
}


def _defocus_name(angstrom) -> str:
    return f"df{angstrom / 10:g}"


def _structure_name(study_name: str) -> str:
    lattice, size = study_name.rsplit("_", 1)
    return f"str_{STUDY_LATTICES[lattice]}_{size}"


def study_defocus(df: pd.DataFrame, metric: str = STUDY_METRIC) -> tuple[pd.DataFrame, pd.DataFrame]:
    """mini_df.pkl (7,200 defocus transfer models, losses already offset; defocus in A) in
    emsim's columns, with its domain facts."""
    table = pd.DataFrame(
        {
            "stage": TRANSFER,
            "source": df["pretrain_defocus"].map(_defocus_name),
            "target": df["transfer_defocus"].map(_defocus_name),
            "freeze": df["freeze_option"],
            "size": df["N_tl_training_points"],
            "lr_pretrain": df["pretrain_lr"],
            "lr_transfer": df["transfer_lr"],
            f"target_val_{metric}": df["best_target_transfer_performance"],
            f"before_target_val_{metric}": df["best_target_pretrain_performance"],
        }
    )
    angstroms = sorted(int(c.rsplit("_", 1)[1]) for c in df if c.startswith("best_pretrain_val_"))
    for a in angstroms:
        table[f"val_{metric}__{_defocus_name(a)}"] = df[f"best_transfer_performance_{a}"]
        table[f"before_val_{metric}__{_defocus_name(a)}"] = df[f"best_pretrain_val_{a}"]
    facts = pd.DataFrame(
        {"defocus_nm": [a / 10 for a in angstroms], "dose_e_per_A2": 400.0, "lattice": "CdSe_wurtzite"},
        index=[_defocus_name(a) for a in angstroms],
    )
    return table, facts


def study_dose(df: pd.DataFrame, metric: str = STUDY_METRIC) -> tuple[pd.DataFrame, pd.DataFrame]:
    """tl_noise_models.pkl (180 dose transfer models, raw CE per epoch) in emsim's columns: each
    stage's losses at its best epoch on its own domain's validation loss, minus the offset.
    (The article's notebook took the transfer losses at the PRETRAIN best epoch; the medians
    differ by < 0.001.)"""
    doses = sorted({int(d) for d in df["pretrain_dose"]} | {int(d) for d in df["transfer_dose"]})
    rows = []
    for _, model in df.iterrows():
        row = {
            "stage": TRANSFER,
            "source": f"dose{int(model['pretrain_dose'])}",
            "target": f"dose{int(model['transfer_dose'])}",
            "freeze": model["freezing_mode"],
            "lr_pretrain": model["pretrain_lr"],
            "lr_transfer": model["transfer_lr"],
        }
        for prefix, history, own in (
            ("before_", model["pretrain_history"], model["pretrain_dose"]),
            ("", model["transfer_history"], model["transfer_dose"]),
        ):
            best = int(np.argmin(history[f"validation_{own}"]))
            for dose in doses:
                row[f"{prefix}val_{metric}__dose{dose}"] = history[f"validation_{dose}"][best] - STUDY_OFFSET
            row[f"{prefix}target_val_{metric}"] = row[f"{prefix}val_{metric}__{row['target']}"]
        rows.append(row)
    facts = pd.DataFrame(
        {"defocus_nm": -10.0, "dose_e_per_A2": [float(d) for d in doses], "lattice": "CdSe_wurtzite"},
        index=[f"dose{d}" for d in doses],
    )
    return pd.DataFrame(rows), facts


def study_structure(df: pd.DataFrame, metric: str = STUDY_METRIC) -> tuple[pd.DataFrame, pd.DataFrame]:
    """mini_size_df.pkl (structure transfer models, raw CE) in emsim's columns, minus the offset."""
    prefixes = {"": "best_transfer_performance_validation_", "before_": "best_pretrain_performance_validation_"}
    names = sorted(c[len(prefixes[""]) :] for c in df if c.startswith(prefixes[""]))
    table = pd.DataFrame(
        {
            "stage": TRANSFER,
            "source": df["pretrain_structure"].map(_structure_name),
            "target": df["transfer_structure"].map(_structure_name),
            "freeze": df["freezing_mode"],
        }
    )
    for prefix, column in prefixes.items():
        for name in names:
            table[f"{prefix}val_{metric}__{_structure_name(name)}"] = df[column + name] - STUDY_OFFSET
        own = [table.at[i, f"{prefix}val_{metric}__{t}"] for i, t in table["target"].items()]
        table[f"{prefix}target_val_{metric}"] = own
    facts = pd.DataFrame(
        {"defocus_nm": -10.0, "dose_e_per_A2": 300.0, "lattice": [STUDY_LATTICES[n.rsplit("_", 1)[0]] for n in names]},
        index=[_structure_name(n) for n in names],
    )
    return table, facts


STUDY_FILES = {
    "defocus": ("mini_df.pkl", study_defocus),
    "dose": ("tl_noise_models.pkl", study_dose),
    "structure": ("mini_size_df.pkl", study_structure),
}


SHIPPED = "seed_study"  # package folder of the converted tables (CC-BY-4.0, see its README.md)


def write_study_tables(notebooks: str | Path, folder: str | Path) -> None:
    """Convert the article's pickles (:func:`load_study`) once into plain tables: per series
    ``<series>.csv.gz`` (emsim's columns, losses to 6 significant digits) and ``<series>_facts.csv``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for experiment, (table, facts) in load_study(notebooks).items():
        table.to_csv(
            folder / f"{experiment}.csv.gz",
            index=False,
            float_format="%.6g",
            compression={"method": "gzip", "mtime": 0},
        )
        facts.to_csv(folder / f"{experiment}_facts.csv")


def shipped_study() -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """The study's tables as shipped with emsim (:func:`write_study_tables`): no download, no unpickler."""
    root = resources.files("emsim.study").joinpath(SHIPPED)
    out = {}
    for experiment in STUDY_FILES:
        with (
            resources.as_file(root.joinpath(f"{experiment}.csv.gz")) as table,
            resources.as_file(root.joinpath(f"{experiment}_facts.csv")) as facts,
        ):
            out[experiment] = (pd.read_csv(table), pd.read_csv(facts, index_col=0))
    return out


def load_study(notebooks: str | Path) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """The study's defocus, dose and structure tables (from the article repository's
    ``notebooks/`` folder) in emsim's columns, metric ``study_loss``, with their domain facts."""
    out = {}
    for experiment, (filename, convert) in STUDY_FILES.items():
        path = Path(notebooks) / filename
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing (clone msa-em/hrtem-transfer-learning and pass its notebooks/ folder)"
            )
        out[experiment] = convert(read_pickle_table(path))
    return out
