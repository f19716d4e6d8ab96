"""Typed, frozen views of the study config's blocks, as the modules take them.

The schema (``schemas/config.schema.yaml``) is the one home of every key, check and default: a
class here has exactly its block's keys (a test keeps them equal) and no defaults; ``from_dict``
builds it from a block with every key present (as :func:`emsim.study.config.load` leaves it).
``dataclasses.asdict`` gives the block back as the dict that Snakemake params and provenance hold.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

import jsonschema

from emsim.study import schema as study_schema

STAGES = PRETRAIN, TRANSFER, BASELINE = ("pretrain", "transfer", "baseline")
"""The stages of a model (its ``stage`` tag): the one home of their names."""


class ConfigError(ValueError):
    """An invalid study configuration; the message names the key."""


class _Block:
    """``from_dict`` for a frozen dataclass that mirrors one block of the study schema."""

    BLOCK: ClassVar[str]  # the block's dotted key in the study config ("" for the whole study)

    @classmethod
    def _block_schema(cls) -> dict:
        """The block's schema as written (of an optional block: its object alternative)."""
        block = study_schema.load()
        for key in filter(None, cls.BLOCK.split(".")):
            block = block["properties"][key]
        return next((s for s in block.get("oneOf", []) if s.get("type") == "object"), block)

    @classmethod
    def schema(cls) -> dict:
        """The block's schema without defaults."""
        return without_defaults(cls._block_schema())

    @classmethod
    def with_defaults(cls, **values):
        """The block from ``values`` and the schema's defaults for the keys they lack."""
        properties = cls._block_schema()["properties"]
        return cls.from_dict({k: p["default"] for k, p in properties.items() if "default" in p} | values)

    @classmethod
    def from_dict(cls, block: Mapping):
        """The block as this class (nested blocks typed, lists as tuples); a missing, unknown or
        invalid key -> ValueError naming it."""
        if not isinstance(block, Mapping):
            raise ValueError(f"{cls.BLOCK or 'study'}: must be a mapping, got {block!r}")
        hints = typing.get_type_hints(cls)
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(block) - set(fields))
        missing = [name for name in fields if name not in block]
        if unknown or missing:
            named = [f"unknown key(s) {', '.join(map(cls._key, unknown))}"] * bool(unknown)
            named += [f"missing key(s) {', '.join(map(cls._key, missing))}"] * bool(missing)
            raise ValueError(f"{cls.BLOCK or 'study'}: {'; '.join(named)}; keys: {', '.join(fields)}")
        block = json.loads(json.dumps(dict(block)))  # a copy, tuples as lists
        error = jsonschema.exceptions.best_match(_validator(cls).iter_errors(block))
        if error is not None:
            raise ValueError(f"{cls._key(*error.absolute_path)}: {error.message}")
        return cls(**{name: _typed(block[name], hints[name]) for name in fields})

    @classmethod
    def _key(cls, *path) -> str:
        return ".".join(str(p) for p in (cls.BLOCK, *path) if p != "")


@functools.lru_cache(maxsize=None)
def _validator(cls):
    return study_schema.Validator(cls.schema())


def _typed(value, hint):
    """A block's value as its field holds it: a nested block as its class, lists as tuples."""
    block = next((t for t in (hint, *typing.get_args(hint)) if isinstance(t, type) and issubclass(t, _Block)), None)
    if block is not None and value is not None:
        return block.from_dict(value)
    if isinstance(value, list):
        return tuple(_typed(v, None) for v in value)
    return value


def without_defaults(schema):
    """A copy of ``schema`` with every ``default`` removed (for blocks that must be complete, or override others)."""
    if isinstance(schema, dict):
        return {k: without_defaults(v) for k, v in schema.items() if k != "default"}
    return schema


@dataclasses.dataclass(frozen=True)
class Microscope(_Block):
    """The objective lens and beam (config block ``microscope``)."""

    BLOCK: ClassVar[str] = "microscope"
    energy_eV: float  # beam energy [eV]
    Cs_A: float  # spherical aberration C30 [A]
    focal_spread_A: float  # focal spread, 1/e width [A]
    angular_spread_mrad: float  # beam convergence (spatial coherence) [mrad]


@dataclasses.dataclass(frozen=True)
class Simulation(_Block):
    """The multislice and its zero-defocus calibration (config block ``simulation``)."""

    BLOCK: ClassVar[str] = "simulation"
    sampling_A: float  # real-space sampling of the exit waves [A]
    slice_thickness_A: float  # multislice slice thickness [A]
    frozen_phonons: int  # phonon configurations per structure [count]
    phonon_sigma_A: float | str | Mapping[str, float]  # RMS displacement [A]: one, room_temperature or per element
    device: str  # cpu or gpu
    shard_size: int  # structures per simulation job [count]
    calibrate_zero_defocus: bool  # defocus 0 = each structure's minimum-contrast defocus
    zero_defocus_search_A: tuple[float, float]  # defocus range searched by the calibration [A]


@dataclasses.dataclass(frozen=True)
class Image(_Block):
    """The image window and the padded cell around it (config block ``image``)."""

    BLOCK: ClassVar[str] = "image"
    size_px: int  # image side [px]
    pixel_size_A: float  # pixel size [A]
    padding_A: float  # cell simulated around the window on every side [A]
    downsample: str  # intensity (after the CTF) or wave (before it, the seed study's order)


@dataclasses.dataclass(frozen=True)
class Labels(_Block):
    """Ground-truth masks (config block ``labels``, with a structure set's overrides)."""

    BLOCK: ClassVar[str] = "labels"
    method: str  # phase, potential or atoms
    atom_radius_A: float  # dilation of projected atoms, method atoms [A]
    threshold_rad: float  # phase threshold [rad]
    lowpass_sigma_A: float  # Gaussian low-pass before thresholding [A]
    closing_A: float  # radius of the morphological closing [A]
    blur_A: float  # Gaussian blur before the final threshold [A]


@dataclasses.dataclass(frozen=True)
class Instances(_Block):
    """How predicted particles are cut from a probability map (config block ``instances``)."""

    BLOCK: ClassVar[str] = "instances"
    enabled: bool  # particle metrics in the evaluation
    min_area_nm2: float  # smallest predicted particle kept [nm^2]
    split_touching: bool  # distance-transform watershed between touching particles
    min_depth_px: float  # neck depth that splits two particles [px]


@dataclasses.dataclass(frozen=True)
class EarlyStopping(_Block):
    """Early stopping on the validation loss (config block ``training.early_stopping``)."""

    BLOCK: ClassVar[str] = "training.early_stopping"
    patience: int  # epochs without improvement [count]
    min_delta: float  # least val-loss improvement that counts [loss]


@dataclasses.dataclass(frozen=True)
class Training(_Block):
    """How every model trains (config block ``training``)."""

    BLOCK: ClassVar[str] = "training"
    width: float  # U-Net channel multiplier [1]
    epochs: int  # epochs per stage [count]
    batch_size: int  # images per optimiser step [count]
    lr_decay: float  # learning-rate factor per epoch [1]
    device: str  # auto, cpu or cuda
    amp: str | bool  # bf16 autocast: auto, true or false
    channels_last: str | bool  # channels-last memory format: auto, true or false
    compile: bool  # torch.compile the model
    fused: str | bool  # fused Adam: auto, true or false
    models_per_job: int  # models one training job trains, at most [count]
    augmentation: str  # dihedral8 or random
    loss: str  # cross_entropy or softmax_cross_entropy
    early_stopping: EarlyStopping | None  # off: None


@dataclasses.dataclass(frozen=True)
class Study(_Block):
    """A loaded study (:func:`emsim.study.config.load`): typed blocks, the rest as mappings."""

    BLOCK: ClassVar[str] = ""
    extensions: tuple[str, ...]  # Python files that register domain-shift kinds
    seed: int  # study seed
    microscope: Microscope
    simulation: Simulation
    image: Image
    labels: Labels
    instances: Instances
    structure_sets: Mapping[str, Any]  # name -> expanded structure set
    domains: Mapping[str, Any]  # name -> expanded domain (with its ``sweep``)
    splits: Mapping[str, int]  # train, val, test [images]
    training: Training
    resources: Mapping[str, Mapping[str, int]]  # rule kind -> threads, mem_mb, runtime [min], gpu
    experiments: Mapping[str, Any]  # name -> experiment
    limits: Mapping[str, float]  # guards against sizes beyond reason
