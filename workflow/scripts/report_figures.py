"""Snakemake adapter: every figure of one experiment, PNG + SVG, into one folder."""

from pathlib import Path

import pandas as pd

from emsim import io
from emsim.learning import evaluate
from emsim.report import figures
from emsim.study.settings import Instances

io.log_to_file(snakemake.log[0])
p = snakemake.params
out = Path(snakemake.output[0])
out.mkdir(parents=True, exist_ok=True)
table = pd.read_parquet(snakemake.input.table)
records = [r for path in snakemake.input.evaluations for r in evaluate.read_evaluation(path)]
for metric in figures.FIGURE_METRICS:  # cross-entropy figures, then the study-loss variants
    suffix = "" if metric == "ce" else f"_{metric}"
    figures.plot_target_loss(table, out / f"target_loss{suffix}", metric)
    figures.plot_transfer_heatmap(table, out / f"transfer_heatmap{suffix}", metric)
    figures.plot_ood_profile(table, out / f"ood_profile{suffix}", p.domain_values, p.parameter_label, metric)
figures.plot_method_cost(table, out / "method_cost")
figures.plot_forgetting_vs_gain(table, out / "forgetting_vs_gain")
figures.plot_gain_vs_scratch(table, out / "gain_vs_scratch")
figures.plot_training_curves(records, out / "training_curves")
figures.plot_detection(table, out / "detection")  # nothing without particle metrics
figures.plot_size_distributions(records, out / "size_distribution")
example = next((r for r in records if r["tags"]["stage"] == "transfer"), records[0])
figures.plot_examples(
    example["path"],
    dict(zip(p.domains, snakemake.input.datasets)),
    out / "examples",
    device=p.device,
    instances=Instances.from_dict(p.instances),
)
