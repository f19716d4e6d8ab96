# Study loading and the helpers the rule files share (config slices as params, resources).
import dataclasses
import re
from pathlib import Path

from emsim.study import config as emsim_config
from emsim.study import experiments as emsim_experiments
from emsim.simulation import optics as emsim_optics
from emsim.study import paths
from emsim.study.paths import dataset_path

# extensions: paths relative to the study file (the last --configfile, else the default study)
STUDY = emsim_config.load(config, base_dir=Path((workflow.overwrite_configfiles or ["config/config.yaml"])[-1]).parent)
EXPERIMENTS = emsim_experiments.expand(STUDY)
BATCHES = emsim_experiments.batches(STUDY, EXPERIMENTS)
BATCH_OF = {m.path: path for path, models in BATCHES.items() for m in models}


CONDA_ENV = "../../envs/emsim.yaml"


def threads_of(kind):
    """Threads of one kind of rule (config block `resources`)."""
    return STUDY.resources[kind]["threads"]


def resources_of(kind, **override):
    """Memory, runtime and GPUs of one kind of rule (config block `resources`), with overrides."""
    return {k: v for k, v in STUDY.resources[kind].items() if k != "threads"} | override


def simulation_gpu():
    """GPUs of a simulation job: one when the study simulates on the GPU."""
    return 1 if STUDY.simulation.device == "gpu" else 0


def n_shards(set_name):
    return -(-STUDY.structure_sets[set_name].n_structures // STUDY.simulation.shard_size)


def shard_paths(template, set_name):
    return [template.format(set=set_name, shard=i) for i in range(n_shards(set_name))]


def domain_shard_paths(template, domain):
    """The shards of every structure set a simulated domain draws from."""
    return [path for set_name in STUDY.domains[domain].sets for path in shard_paths(template, set_name)]


def domain_names(micrograph):
    """Wildcard regex of the simulated (False) or micrograph (True) domains' names."""
    names = [d for d in STUDY.domains if emsim_config.is_micrograph(STUDY, d) == micrograph]
    return "|".join(re.escape(n) for n in names) or "(?!)"


def micrograph_files(wc):
    """Every file a micrograph domain reads: images and their masks or boxes."""
    files = STUDY.domains[wc.domain].micrographs["files"]
    return [path for entry in files for key, path in entry.items()]


def batch_of(pattern, wc):
    """The models of the training batch whose record the wildcards name."""
    return BATCHES[pattern.format(**dict(wc.items()))]


def batch_inputs(pattern, attribute):
    """Input function: the batch's datasets, or the batch records of its pretrained models."""

    def get(wc):
        models = batch_of(pattern, wc)
        if attribute == "pretrained":  # none for scratch models
            return sorted({BATCH_OF[p] for m in models for p in m.pretrained_inputs})
        return sorted({d for m in models for d in m.datasets})

    return get


def batch_params(pattern):
    """Params function: the batch's grid points (emsim.learning.batch), without their report tags."""

    def get(wc):
        return [emsim_config.normalized({f: getattr(m, f) for f in MODEL_FIELDS}) for m in batch_of(pattern, wc)]

    return get


def batch_runtime(pattern):
    """Resource function: a batch job's minutes, resources.training.runtime per model."""
    return lambda wc: STUDY.resources["training"]["runtime"] * len(batch_of(pattern, wc))


MODEL_FIELDS = [f.name for f in dataclasses.fields(emsim_experiments.ModelSpec) if f.name != "tags"]


def evaluation_group(wc):
    """The models one evaluation job scores (an evaluation group of an experiment)."""
    return EXPERIMENTS[wc.experiment].groups[wc.group]


def evaluation_batches(wc):
    """The training batch records holding an evaluation group's models."""
    return sorted({BATCH_OF[m.path] for m in evaluation_group(wc)})


def evaluation_paths(wc):
    """Every evaluation file of an experiment."""
    return [paths.evaluation_path(wc.experiment, g) for g in EXPERIMENTS[wc.experiment].groups]


def series_values(wc):
    """The swept value of each domain of an experiment's series (x axis of its plots)."""
    return emsim_config.domain_values(STUDY, EXPERIMENTS[wc.experiment].domains)
