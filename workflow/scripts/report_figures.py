"""Snakemake adapter: every figure of one experiment, PNG + SVG, into one folder."""

from pathlib import Path

import pandas as pd

from emsim import io, report
from emsim.learning import evaluate

io.log_to_file(snakemake.log[0])
p = snakemake.params
out = Path(snakemake.output[0])
out.mkdir(parents=True, exist_ok=True)
table = pd.read_parquet(snakemake.input.table)
records = [r for path in snakemake.input.evaluations for r in evaluate.read_evaluation(path)]
for metric in report.FIGURE_METRICS:  # cross-entropy figures, then the study-loss variants
    suffix = "" if metric == "ce" else f"_{metric}"
    report.plot_target_loss(table, out / f"target_loss{suffix}", metric)
    report.plot_transfer_heatmap(table, out / f"transfer_heatmap{suffix}", metric)
    report.plot_ood_profile(table, out / f"ood_profile{suffix}", p.domain_values, p.parameter_label, metric)
report.plot_method_cost(table, out / "method_cost")
report.plot_forgetting_vs_gain(table, out / "forgetting_vs_gain")
report.plot_gain_vs_scratch(table, out / "gain_vs_scratch")
report.plot_training_curves(records, out / "training_curves")
example = next((r for r in records if r["tags"]["stage"] == "transfer"), records[0])
report.plot_examples(example["path"], dict(zip(p.domains, snakemake.input.datasets)), out / "examples", device=p.device)
