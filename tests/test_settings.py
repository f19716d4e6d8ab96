"""Typed config blocks (emsim.study.settings): the same keys as the schema, built only from complete blocks."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from emsim.simulation import structures
from emsim.study import config, settings
from emsim.study import schema as study_schema

BLOCKS = [
    settings.Microscope,
    settings.Simulation,
    settings.Image,
    settings.Labels,
    settings.EarlyStopping,
    settings.Training,
    settings.Baseline,
    settings.Experiment,
    settings.Study,
]


@pytest.mark.parametrize("cls", BLOCKS, ids=lambda cls: cls.__name__)
def test_fields_are_the_schema_keys(cls):
    root = block = study_schema.load()
    keys = list(filter(None, cls.BLOCK.split(".")))
    if keys[:1] == ["$defs"]:  # a block of the experiments: its references resolve in $defs
        block, keys = root["$defs"][keys[1]], keys[2:]
    for key in keys:
        block = block["properties"][key]
    block = next((s for s in block.get("oneOf", []) if s.get("type") == "object"), block)
    assert cls._block_schema() == ({**block, "$defs": root["$defs"]} if cls.BLOCK.startswith("$defs") else block)
    assert [f.name for f in dataclasses.fields(cls)] == list(block["properties"])
    assert all(
        f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in dataclasses.fields(cls)
    )


def test_load_returns_frozen_typed_blocks_that_give_back_the_dicts():
    study = config.load("config/test.yaml")
    assert isinstance(study.training, settings.Training) and study.image.size_px == 64
    assert study.simulation.zero_defocus_search_A == (-200.0, 200.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        study.image.size_px = 128
    block = config.normalized(study.simulation)
    assert (
        block["zero_defocus_search_A"] == [-200.0, 200.0] and settings.Simulation.from_dict(block) == study.simulation
    )


def test_from_dict_names_the_missing_unknown_or_invalid_key():
    image = {"size_px": 64, "pixel_size_A": 0.4, "padding_A": 0.0, "downsample": "intensity"}
    with pytest.raises(ValueError, match=r"image: missing key\(s\) image.padding_A"):
        settings.Image.from_dict({"size_px": 64, "pixel_size_A": 0.4})
    with pytest.raises(ValueError, match=r"image: unknown key\(s\) image.pixel_A"):
        settings.Image.from_dict(image | {"pixel_A": 0.4})
    with pytest.raises(ValueError, match="image.size_px: 16 is less than the minimum of 32"):
        settings.Image.from_dict(image | {"size_px": 16})
    training = dataclasses.asdict(config.load("config/test.yaml").training)
    with pytest.raises(ValueError, match="training.early_stopping.patience: 0 is less than the minimum"):
        settings.Training.from_dict(training | {"early_stopping": {"patience": 0, "min_delta": 0.0}})
    stopping = settings.Training.from_dict(training | {"early_stopping": {"patience": 2, "min_delta": 0.1}})
    assert stopping.early_stopping == settings.EarlyStopping(patience=2, min_delta=0.1)


def test_with_defaults_fills_the_schema_defaults():
    assert settings.Simulation.with_defaults(shard_size=3).shard_size == 3
    assert settings.Labels.with_defaults() == settings.Labels.from_dict(
        {k: v["default"] for k, v in study_schema.load()["properties"]["labels"]["properties"].items()}
    )
    with pytest.raises(ValueError, match="image.size_px: 16 is less than the minimum"):
        settings.Image.with_defaults(size_px=16)


def test_structure_sets_domains_and_experiments_are_typed():
    study = config.load("config/test.yaml")
    spec = study.structure_sets["au"]
    schema = structures.STRUCTURE_SET_SCHEMA["properties"]
    assert [f.name for f in dataclasses.fields(spec)] == [*schema, "labels"]
    assert spec.particles["lattice"] == "Au_fcc" and spec.labels == {}
    domain = study.domains["df-10"]
    assert not domain.is_micrograph and domain.sets == {"au": 1.0} and domain.seed is None
    assert domain.shifts["defocus"]["mean_nm"] == -10 and domain.sweep == {"mean_nm": -10}
    raw = yaml.safe_load(Path("config/test.yaml").read_text())["domains"]["df{mean_nm}"]
    assert domain.entry() == {**raw, "defocus": raw["defocus"] | {"mean_nm": -10}, "sweep": {"mean_nm": -10}}
    experiment = study.experiments["defocus"]
    assert experiment.targets is None and experiment.baseline == settings.Baseline(mixtures=((2, 2),), lrs=(1e-3,))
    assert experiment.lr_pairs == ((1e-3, 1e-4),) and experiment.methods == ("finetune",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        experiment.replicates = 3
    other = settings.Experiment.from_dict(dataclasses.asdict(experiment) | {"targets": ["df10"], "baseline": None})
    assert other.targets == ("df10",) and other.baseline is None
    with pytest.raises(ValueError, match="missing key"):
        settings.Experiment.from_dict({"domains": ["df*"]})
