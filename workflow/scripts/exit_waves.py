"""Snakemake adapter: multislice exit waves (full scene and particles in vacuum) and labels of one shard."""

from emsim import io
from emsim.simulation import simulate, structures
from emsim.study.settings import Image, Labels, Microscope, Simulation

io.log_to_file(snakemake.log[0])
p = snakemake.params
scenes = structures.load_scenes(snakemake.input.scenes)
indices = [scene.info["index"] for scene in scenes]
sim = Simulation.from_dict(p.simulation)
microscope = None if p.calibration_lens is None else Microscope.from_dict(p.calibration_lens)
shard = simulate.simulate_shard(
    scenes,
    indices,
    sim,
    p.energy_eV,
    Image.with_defaults(**p.image),
    Labels.from_dict(p.labels),
    seed=p.seed,
    microscope=microscope,
    wisdom_path=snakemake.input.wisdom,
)
config_slice = {
    "simulation": p.simulation,
    "energy_eV": p.energy_eV,
    "calibration_lens": p.calibration_lens,
    "image": p.image,
    "labels": p.labels,
}
shard.save(snakemake.output[0], {"structure_set": snakemake.wildcards.set, "provenance": io.provenance(config_slice)})
