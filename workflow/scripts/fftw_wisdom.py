"""Snakemake adapter: FFTW plans shared by every exit-wave job (reproducible bytes across jobs)."""

from emsim import io
from emsim.simulation import simulate
from emsim.study.settings import Image, Simulation

io.log_to_file(snakemake.log[0])
p = snakemake.params
simulate.plan_fftw(Simulation.from_dict(p.simulation), p.energy_eV, Image.with_defaults(**p.image), snakemake.output[0])
