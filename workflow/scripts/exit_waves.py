"""Snakemake adapter: multislice exit waves (full scene and particles in vacuum) and labels of one shard."""

from emsim import io
from emsim.simulation import simulate, structures
from emsim.study.settings import Image, Labels, Microscope, Simulation

io.log_to_file(snakemake.log[0])
p = snakemake.params
scenes = structures.load_scenes(snakemake.input.scenes)
indices = [scene.info["index"] for scene in scenes]
sim = Simulation.from_dict(p.simulation)
# p.microscope is the whole microscope when the calibration needs its lens, else the beam energy only
microscope = Microscope.from_dict(p.microscope) if sim.calibrate_zero_defocus else None
shard = simulate.simulate_shard(
    scenes,
    indices,
    sim,
    p.microscope["energy_eV"],
    Image.with_defaults(**p.image),
    Labels.from_dict(p.labels),
    seed=p.seed,
    microscope=microscope,
    wisdom_path=snakemake.input.wisdom,
)
config_slice = {"simulation": p.simulation, "microscope": p.microscope, "image": p.image, "labels": p.labels}
shard.save(snakemake.output[0], {"structure_set": snakemake.wildcards.set, "provenance": io.provenance(config_slice)})
