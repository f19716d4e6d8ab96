"""Snakemake adapter: FFTW plans shared by every exit-wave job (reproducible bytes across jobs)."""

from emsim import io
from emsim.simulation import simulate

io.log_to_file(snakemake.log[0])
p = snakemake.params
simulate.plan_fftw(p.simulation, p.microscope, p.image, snakemake.output[0])
