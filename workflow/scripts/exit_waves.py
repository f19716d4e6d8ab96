"""Snakemake adapter: multislice exit waves (full scene and particles in vacuum) and labels of one shard."""

from emsim import io
from emsim.simulation import simulate, structures

io.log_to_file(snakemake.log[0])
p = snakemake.params
scenes = structures.load_scenes(snakemake.input.scenes)
indices = [scene.info["index"] for scene in scenes]
shard = simulate.simulate_shard(
    scenes, indices, p.simulation, p.microscope, p.image, p.labels, seed=p.seed, wisdom_path=snakemake.input.wisdom
)
config_slice = {"simulation": p.simulation, "microscope": p.microscope, "image": p.image, "labels": p.labels}
shard.save(snakemake.output[0], {"structure_set": snakemake.wildcards.set, "provenance": io.provenance(config_slice)})
