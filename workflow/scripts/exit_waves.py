"""Snakemake adapter: multislice exit waves (full scene and particles in vacuum) and labels of one shard."""

from emsim import io, simulate, structures

io.log_to_file(snakemake.log[0])
p = snakemake.params
scenes = structures.load_scenes(snakemake.input[0])
microscope = {"energy_eV": p.energy_eV}
shard = simulate.simulate_shard(scenes, p.simulation, microscope, p.image, p.labels, seed=p.seed)
config_slice = {"simulation": p.simulation, "energy_eV": p.energy_eV, "image": p.image, "labels": p.labels}
shard.save(snakemake.output[0], {"structure_set": snakemake.wildcards.set, "provenance": io.provenance(config_slice)})
