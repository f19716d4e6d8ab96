"""The pretrain -> transfer grid of a study: which models exist, their files, inputs and tags.

Pretraining runs are keyed by (source domain, learning rate, seed) only, so every transfer run
and every experiment that starts from the same pretraining shares one file. Models are
evaluated in groups (one job per group loads each dataset once): ``pretrain/<source>``,
``transfer/<source>/<target>`` and ``baseline/<a>+<b>``.

Single-stage baselines train on each unordered pair of (source, target) domains once, as
``(a, b)`` in series order: ``a`` is the baseline's TARGET and ``b`` its source, the mixture
``[m, n]`` is m images of ``a`` plus n of ``b`` (so ``size`` = m, comparable with a transfer run
of m target images), and its one learning rate is tagged ``lr_baseline``; :func:`emsim.learning.train.baseline`
takes its datasets and mix in the same order.

Training batches (:func:`batches`): one training job trains a batch of models that share their
inputs, a group's models in grid order cut into ``training.models_per_job`` pieces of near-equal
size; pretraining batches are study-wide per source (experiments share pretrained files).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

from emsim.learning import methods
from emsim.study import config as config_module
from emsim.study.paths import baseline_path, batch_path, dataset_path, pretrain_path, transfer_path
from emsim.study.settings import Study


@dataclass(frozen=True)
class ModelSpec:
    """One trained model of the grid."""

    path: str
    stage: str
    datasets: tuple[str, ...]
    lr: float
    seed: int
    pretrained: str | None = None
    freeze: str = "none"
    method: dict = field(default_factory=lambda: {"name": "finetune", "adabn": False}, hash=False)
    size: int | None = None
    mix: tuple[int, int] | None = None
    tags: dict = field(default_factory=dict, compare=False)

    @property
    def pretrained_inputs(self) -> list[str]:
        """The pretrained model file, if the model starts from one (not ``scratch``)."""
        return [self.pretrained] if self.pretrained else []


@dataclass
class Experiment:
    """One expanded experiment: its series, its models and their evaluation groups."""

    name: str
    domains: list[str]
    groups: dict[str, list[ModelSpec]]

    @property
    def models(self) -> list[ModelSpec]:
        return [m for group in self.groups.values() for m in group]


MAX_NAME_BYTES = 200  # one file name (file systems take 255; checkpoints and temporaries add suffixes)
MAX_PATH_BYTES = 1000  # a whole result path, relative to the working directory


def expand(study: Study) -> dict[str, Experiment]:
    """Every experiment of a validated study, grid expanded; ConfigError if a generated file name
    is longer than file systems take (``MAX_NAME_BYTES``, ``MAX_PATH_BYTES``), showing the longest."""
    expanded = {name: _expand_one(study, name) for name in study.experiments}
    for name, experiment in expanded.items():
        paths = [m.path for m in experiment.models] + [d for m in experiment.models for d in m.datasets]
        longest = max(paths, key=lambda p: max(len(os.fsencode(part)) for part in p.split("/")), default=None)
        part = max(longest.split("/"), key=lambda p: len(os.fsencode(p))) if longest else ""
        if len(os.fsencode(part)) > MAX_NAME_BYTES or any(len(os.fsencode(p)) > MAX_PATH_BYTES for p in paths):
            raise config_module.ConfigError(
                f"experiments.{name}: generated file names are too long for file systems (at most "
                f"{MAX_NAME_BYTES} bytes per name, {MAX_PATH_BYTES} per path), e.g. {longest} "
                f"({len(os.fsencode(part))} bytes in one name); shorten the domain names or method labels"
            )
    return expanded


def all_models(study: Study) -> dict[str, ModelSpec]:
    """Every distinct model file of the study (pretraining shared across experiments)."""
    return {m.path: m for exp in expand(study).values() for m in exp.models}


def batches(study: Study, experiments: dict[str, Experiment] | None = None) -> dict[str, list[ModelSpec]]:
    """Every training batch of the study: batch record path -> its models (each model in one batch)."""
    experiments = expand(study) if experiments is None else experiments
    per_job = study.training.models_per_job
    groups: dict[str, dict[str, ModelSpec]] = {}
    for exp in experiments.values():
        for group, models in exp.groups.items():
            key = group if group.startswith("pretrain/") else f"{exp.name}/{group}"
            groups.setdefault(key, {}).update((m.path, m) for m in models)
    out = {}
    for key, models in groups.items():
        experiment, group = (None, key) if key.startswith("pretrain/") else key.split("/", 1)
        specs = sorted(models.values(), key=lambda m: m.path) if experiment is None else list(models.values())
        count = -(-len(specs) // per_job)
        for index in range(count):
            out[batch_path(group, index, experiment)] = specs[
                index * len(specs) // count : (index + 1) * len(specs) // count
            ]
    return out


def _expand_one(study: Study, name: str) -> Experiment:
    grid = config_module.experiment_grid(study, name)
    groups: dict[str, list[ModelSpec]] = {}
    for source in grid.sources:
        groups[f"pretrain/{source}"] = [
            ModelSpec(
                pretrain_path(source, lr, seed),
                "pretrain",
                (dataset_path(source),),
                lr,
                seed,
                tags=_tags(name, "pretrain", source, source, lr_pretrain=lr, seed=seed),
            )
            for lr in grid.pretrain_lrs
            for seed in grid.seeds
        ]
    for source, target in grid.pairs:
        groups[f"transfer/{source}/{target}"] = [
            _transfer_spec(name, source, target, method, freeze, size, lrs, seed)
            for (method, freeze), size, lrs, seed in itertools.product(
                grid.variants, grid.sizes, grid.lr_pairs, grid.seeds
            )
        ]
    for pair in grid.baseline_pairs:
        groups[f"baseline/{pair[0]}+{pair[1]}"] = [
            ModelSpec(
                baseline_path(name, pair, mix, lr, seed),
                "baseline",
                tuple(dataset_path(d) for d in pair),
                lr,
                seed,
                mix=tuple(mix),
                tags=_tags(
                    name, "baseline", pair[1], pair[0], mix=f"{mix[0]}:{mix[1]}", lr_baseline=lr, seed=seed, size=mix[0]
                ),
            )
            for (mix, lr), seed in itertools.product(grid.baseline_points, grid.seeds)
        ]
    return Experiment(name, grid.series, groups)


def _transfer_spec(name, source, target, method, freeze, size, lrs, seed) -> ModelSpec:
    """A transfer run; ``scratch`` trains at the pair's pretraining rate from random init (no pretrained file)."""
    scratch = method["name"] == "scratch"
    pretrained = None if scratch else pretrain_path(source, lrs[0], seed)
    return ModelSpec(
        transfer_path(name, source, target, methods.label(method, freeze), size, lrs, seed),
        "transfer",
        (dataset_path(target),),
        lrs[0] if scratch else lrs[1],
        seed,
        pretrained=pretrained,
        freeze=freeze,
        method=method,
        size=size,
        tags=_tags(
            name,
            "transfer",
            source,
            target,
            freeze=freeze if method["name"] == "finetune" else None,
            method=method["name"],
            method_params=methods.describe(method),
            size=size,
            lr_pretrain=lrs[0],
            lr_transfer=lrs[1],
            seed=seed,
            pretrained=pretrained,
        ),
    )


def _tags(experiment, stage, source, target, **extra) -> dict:
    tags = {
        "experiment": experiment,
        "stage": stage,
        "source": source,
        "target": target,
        "freeze": "none",
        "method": None,
        "method_params": None,
        "size": None,
        "lr_pretrain": None,
        "lr_transfer": None,
        "lr_baseline": None,
        "seed": None,
        "mix": None,
        "pretrained": None,
    }
    tags.update(extra)
    return tags
