"""Snakemake adapter: render one domain's dataset from its structure set's cached exit waves."""

from emsim import io
from emsim.simulation import domains

io.log_to_file(snakemake.log[0])
domains.build_domain_dataset(
    snakemake.params.domain, list(snakemake.input.waves), list(snakemake.input.scenes), snakemake.output[0]
)
