"""Snakemake adapter: every figure of one experiment, PNG + SVG, into one folder."""

from pathlib import Path

import pandas as pd

from emsim import evaluate, io, report

io.log_to_file(snakemake.log[0])
p = snakemake.params
out = Path(snakemake.output[0])
out.mkdir(parents=True, exist_ok=True)
table = pd.read_parquet(snakemake.input.table)
records = [r for path in snakemake.input.evaluations for r in evaluate.read_evaluation(path)]
report.plot_target_loss(table, out / "target_loss")
report.plot_transfer_heatmap(table, out / "transfer_heatmap")
report.plot_ood_profile(table, out / "ood_profile", p.domain_values, p.parameter_label)
report.plot_training_curves(records, out / "training_curves")
example = next((r for r in records if r["tags"]["stage"] == "transfer"), records[0])
report.plot_examples(example["path"], dict(zip(p.domains, snakemake.input.datasets)), out / "examples", device=p.device)
