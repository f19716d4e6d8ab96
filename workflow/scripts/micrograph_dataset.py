"""Snakemake adapter: read, resample and tile one micrograph domain's files into its dataset."""

from emsim import io, micrographs

io.log_to_file(snakemake.log[0])
micrographs.build_dataset(snakemake.params.domain, snakemake.output[0])
