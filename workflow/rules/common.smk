# Study loading and the helpers the rule files share (config slices as params, resources).
from pathlib import Path

from emsim.study import config as emsim_config
from emsim.study import experiments as emsim_experiments
from emsim.simulation import optics as emsim_optics
from emsim.study import paths
from emsim.study.paths import dataset_path

# extensions: paths relative to the study file (the last --configfile, else the default study)
STUDY = emsim_config.load(config, base_dir=Path((workflow.overwrite_configfiles or ["config/config.yaml"])[-1]).parent)
EXPERIMENTS = emsim_experiments.expand(STUDY)
MODELS = {m.path: m for e in EXPERIMENTS.values() for m in e.models}


CONDA_ENV = "../../envs/emsim.yaml"


def threads_of(kind):
    """Threads of one kind of rule (config block `resources`)."""
    return STUDY["resources"][kind]["threads"]


def resources_of(kind, **override):
    """Memory, runtime and GPUs of one kind of rule (config block `resources`), with overrides."""
    return {k: v for k, v in STUDY["resources"][kind].items() if k != "threads"} | override


def simulation_gpu():
    """GPUs of a simulation job: one when the study simulates on the GPU."""
    return 1 if STUDY["simulation"]["device"] == "gpu" else 0


def n_shards(set_name):
    spec = STUDY["structure_sets"][set_name]
    return -(-spec["n_structures"] // STUDY["simulation"]["shard_size"])


def shard_paths(template, set_name):
    return [template.format(set=set_name, shard=i) for i in range(n_shards(set_name))]


def grid(pattern, attribute):
    """Input/params function: one attribute of the grid entry whose model file the wildcards name."""

    def get(wc):
        return getattr(MODELS[pattern.format(**dict(wc.items()))], attribute)

    return get


def evaluation_group(wc):
    """The models one evaluation job scores (an evaluation group of an experiment)."""
    return EXPERIMENTS[wc.experiment].groups[wc.group]


def evaluation_paths(wc):
    """Every evaluation file of an experiment."""
    return [paths.evaluation_path(wc.experiment, g) for g in EXPERIMENTS[wc.experiment].groups]


def series_values(wc):
    """The swept value of each domain of an experiment's series (x axis of its plots)."""
    return emsim_config.domain_values(STUDY, EXPERIMENTS[wc.experiment].domains)
