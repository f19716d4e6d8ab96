"""Snakemake adapter: read, resample and tile one micrograph domain's files into its dataset."""

from emsim import io, micrograph_dataset

io.log_to_file(snakemake.log[0])
micrograph_dataset.build_dataset(snakemake.params.domain, snakemake.output[0])
