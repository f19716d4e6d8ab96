"""Snakemake adapter: the per-model table of one experiment (Parquet and CSV)."""

from emsim import io
from emsim.learning import evaluate
from emsim.report import table as report_table

io.log_to_file(snakemake.log[0])
records = [r for path in snakemake.input for r in evaluate.read_evaluation(path)]
table = report_table.model_table(records, snakemake.params.domain_values)
report_table.write_table(table, snakemake.output.parquet, snakemake.output.csv)
