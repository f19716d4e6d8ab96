"""The per-model table of a study.

Table (:func:`model_table`), one row per trained model; ``<m>`` is a metric short name
(``ce`` = cross-entropy in nats/pixel, ``study_loss`` = the seed study's reported loss, see
:mod:`emsim.learning.metrics`, ``iou``, ``dice``, ``precision``, ``recall``, ``accuracy``, where the
domain has pixel labels; particle metrics (:mod:`emsim.learning.evaluate`): ``det_precision``,
``det_recall``, ``det_f1``, ``count_error``, ``abs_count_error`` (per image), ``size_error_nm``
(matched particles), ``size_w1_nm`` (Wasserstein-1 of the size distributions), and against true
instances (simulated domains, masks) ``det_mean_f1`` (IoU 0.3-0.9) and ``pq`` (panoptic quality);
on micrograph domains ``particle_fraction`` and ``ood_score``, with boxes ``outside_boxes``: the fraction
of the predicted mask outside every box), ``<d>`` a domain name:

- ``model`` (file path); every tag as its own column (``experiment``, ``stage``, ``source``,
  ``target``, ``freeze``, ``method``, ``method_params``, ``size``, ``lr_pretrain``, ``lr_transfer``,
  ``seed``, ``mix``, ``pretrained``, ...; list values joined with ``:``, e.g. mix ``128:384``);
  ``seeds__<key>`` per entry of the model's seed dict; ``best_epoch``, ``best_val_loss``, and
  the cost: ``train_time_s``, ``trainable_params``, ``total_params``, ``images_seen``,
  ``peak_memory_MB``; ``stopped_early_after``, ``epochs``;
  ``source_value``/``target_value`` (the swept parameter, when ``domain_values`` is given);
- ``target_<split>_<m>``: this model on the train/val/test split of its own target domain;
- ``val_<m>__<d>``: this model on the val split of domain ``<d>`` (AFTER transfer);
- ``before_target_val_<m>``, ``before_val_<m>__<d>``: the same for the model it was transferred
  from (BEFORE transfer; joined through tag ``pretrained``; NaN for pretrain and baseline rows);
- derived: ``id_gap`` = target_val_ce - target_train_ce; ``ood_gap__<d>`` = val_ce__<d> -
  target_val_ce; ``ood_spread`` = population std of val_ce__<d> across domains (those with pixel labels);
  ``forgetting`` = val_ce__<source> - before_val_ce__<source>; ``gain_vs_pretrain`` =
  before_target_val_ce - target_val_ce; ``gain_vs_baseline`` = median over the baselines of the
  same experiment trained on the same unordered {source, target} pair (a baseline's pair is its
  ``target`` and ``source`` tags) of their val_ce__<target>, minus target_val_ce;
  ``gain_vs_scratch`` = median target_val_ce of the ``scratch`` models of the same experiment,
  target and size, minus target_val_ce. Gains < 0 mean negative transfer; the last four are NaN
  except for transfer rows (``gain_vs_scratch`` also for the scratch models themselves).
"""

from __future__ import annotations

import json
import logging
import math
import os
from statistics import median

import numpy as np
import pandas as pd

from emsim.io import atomic_path
from emsim.learning.evaluate import TRAINING_FIELDS
from emsim.study.settings import BASELINE, TRANSFER

logger = logging.getLogger(__name__)

SHORT = {
    "cross_entropy": "ce",
    "study_loss": "study_loss",
    "iou": "iou",
    "dice": "dice",
    "precision": "precision",
    "recall": "recall",
    "accuracy": "accuracy",
    "particle_fraction": "particle_fraction",
    "ood_score": "ood_score",
    "outside_boxes": "outside_boxes",
    "detection_precision": "det_precision",
    "detection_recall": "det_recall",
    "detection_f1": "det_f1",
    "mean_f1": "det_mean_f1",
    "panoptic_quality": "pq",
    "count_error": "count_error",
    "abs_count_error": "abs_count_error",
    "size_error_nm": "size_error_nm",
    "size_wasserstein_nm": "size_w1_nm",
}


def domain_order(records: list[dict], domain_values: dict | None = None) -> list[str]:
    """Domains of the records: by swept value (numeric, else given order), then the rest."""
    seen = list(dict.fromkeys(d for r in records for d in r["metrics"]))
    if not domain_values:
        return seen
    valued = [d for d in domain_values if d in seen]
    if all(is_number(domain_values[d]) for d in valued):
        valued.sort(key=lambda d: float(domain_values[d]))
    return valued + [d for d in seen if d not in valued]


def is_number(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _num(value) -> float:
    return math.nan if value is None else float(value)


def _tag_value(value):
    if isinstance(value, (list, tuple)):
        return ":".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def _metric(record: dict | None, domain: str, split: str, metric: str) -> float:
    if record is None:
        return math.nan
    return _num(record["metrics"].get(domain, {}).get(split, {}).get(metric))


def _metric_columns(
    record: dict | None, target: str, domains: list[str], prefix: str, target_splits: tuple[str, ...]
) -> dict[str, float]:
    columns = {
        f"{prefix}target_{split}_{short}": _metric(record, target, split, metric)
        for split in target_splits
        for metric, short in SHORT.items()
    }
    columns.update(
        {
            f"{prefix}val_{short}__{d}": _metric(record, d, "val", metric)
            for d in domains
            for metric, short in SHORT.items()
        }
    )
    return columns


def _identity(record: dict, domain_values: dict | None) -> dict:
    row = {"model": record["path"]}
    row.update({key: _tag_value(value) for key, value in record["tags"].items()})
    row.setdefault("stage", record.get("stage"))
    seeds = record.get("seeds")
    if isinstance(seeds, dict):
        row.update({f"seeds__{key}": _tag_value(value) for key, value in seeds.items()})
    elif seeds is not None:
        row["seeds"] = _tag_value(seeds)
    row.update({field: record.get(field) for field in TRAINING_FIELDS})
    row["epochs"] = len(record.get("history") or [])
    if domain_values:
        for end in ("source", "target"):
            row[f"{end}_value"] = domain_values.get(record["tags"].get(end))
    return row


def model_table(records: list[dict], domain_values: dict[str, float | str] | None = None) -> pd.DataFrame:
    """One row per model: hyperparameters, training facts, metrics after and before transfer,
    and derived gaps and gains (column naming in the module docstring)."""
    domains = domain_order(records, domain_values)
    by_path = {os.path.abspath(r["path"]): r for r in records}
    rows = []
    for record in records:
        tags = record["tags"]
        row = _identity(record, domain_values)
        row.update(_metric_columns(record, tags["target"], domains, "", ("train", "val", "test")))
        before = None
        if tags.get("pretrained") and row["stage"] == TRANSFER:
            before = by_path.get(os.path.abspath(tags["pretrained"]))
            if before is None:
                logger.warning(
                    "%s: pretrained model %s is not among the evaluated records", record["path"], tags["pretrained"]
                )
        row.update(_metric_columns(before, tags["target"], domains, "before_", ("val",)))
        rows.append(row)
    table = pd.DataFrame(rows)
    return _add_derived(table, domains) if rows else table


def _add_derived(table: pd.DataFrame, domains: list[str]) -> pd.DataFrame:
    val_ce = [f"val_ce__{d}" for d in domains]
    derived = {
        "id_gap": table["target_val_ce"] - table["target_train_ce"],
        "ood_spread": table[val_ce].std(axis=1, ddof=0),
    }
    transfer = table["stage"] == TRANSFER
    derived["forgetting"] = [
        row[f"val_ce__{row['source']}"] - row[f"before_val_ce__{row['source']}"]
        if is_transfer and f"val_ce__{row.get('source')}" in table
        else math.nan
        for is_transfer, (_, row) in zip(transfer, table.iterrows())
    ]
    derived["gain_vs_pretrain"] = table["before_target_val_ce"] - table["target_val_ce"]
    derived["gain_vs_baseline"] = _gain_vs_baseline(table)
    derived["gain_vs_scratch"] = _gain_vs_scratch(table)
    gaps = {f"ood_gap__{d}": table[f"val_ce__{d}"] - table["target_val_ce"] for d in domains}
    return pd.concat([table, pd.DataFrame(derived, index=table.index), pd.DataFrame(gaps, index=table.index)], axis=1)


def _gain_vs_baseline(table: pd.DataFrame) -> list[float]:
    experiment = table["experiment"] if "experiment" in table else pd.Series(None, table.index)
    baselines: dict[tuple, list[pd.Series]] = {}
    for (_, row), exp in zip(table.iterrows(), experiment):
        if row["stage"] == BASELINE:
            key = (exp, frozenset((row.get("source"), row.get("target"))))
            baselines.setdefault(key, []).append(row)
    gains = []
    for (_, row), exp in zip(table.iterrows(), experiment):
        matching = baselines.get((exp, frozenset((row.get("source"), row.get("target")))), [])
        column = f"val_ce__{row['target']}"
        losses = [b[column] for b in matching if column in b and not pd.isna(b[column])]
        gains.append(median(losses) - row["target_val_ce"] if row["stage"] == TRANSFER and losses else math.nan)
    return gains


def _gain_vs_scratch(table: pd.DataFrame) -> pd.Series:
    if "method" not in table:
        return pd.Series(math.nan, table.index)
    keys = [c for c in ("experiment", "target", "size") if c in table]
    transfer = (table["stage"] == TRANSFER).to_numpy()
    scratch = table[transfer & (table["method"] == "scratch").to_numpy()]
    if scratch.empty:
        return pd.Series(math.nan, table.index)
    reference = scratch.groupby(keys, dropna=False)["target_val_ce"].median().rename("scratch_ce")
    joined = table[keys].join(reference, on=keys)
    return (joined["scratch_ce"] - table["target_val_ce"]).where(transfer)


def write_table(table: pd.DataFrame, parquet_path: str | os.PathLike, csv_path: str | os.PathLike) -> None:
    """Write the table as Parquet and CSV, atomically; object columns of mixed types become text."""
    table = table.copy()
    for column in table.columns[table.dtypes == object]:  # noqa: E721 (a pandas dtype mask)
        kinds = {type(v) for v in table[column] if v is not None and not pd.isna(v)}
        if len(kinds) > 1:
            table[column] = [None if v is None or pd.isna(v) else str(v) for v in table[column]]
    with atomic_path(parquet_path) as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
