"""Snakemake adapter: build one shard of a structure set's scenes."""

from emsim import io
from emsim.simulation import structures

io.log_to_file(snakemake.log[0])
shard, size = int(snakemake.wildcards.shard), snakemake.params.shard_size
spec = snakemake.params.spec
indices = range(shard * size, min((shard + 1) * size, spec["n_structures"]))
scenes = structures.build_structure_set(spec, snakemake.params.cell_A, indices)
attrs = {"structure_set": snakemake.wildcards.set, "indices": list(indices), "provenance": io.provenance(spec)}
structures.save_scenes(snakemake.output[0], scenes, attrs)
