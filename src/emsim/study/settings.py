"""Typed, frozen views of the study config's blocks, as the modules take them.

The schema (``schemas/config.schema.yaml``) is the one home of every key, check and default: a
class here has exactly its block's keys (a test keeps them equal) and no defaults; ``from_dict``
builds it from a block with every key present (as :func:`emsim.study.config.load` leaves it), an
optional key without a default (``targets``, ``baseline``) absent as None.
``dataclasses.asdict`` gives the block back as the dict that Snakemake params and provenance hold.
Structure sets and domains, whose keys depend on registered kinds (lattices, supports, shifts), are
typed at their top level only: :class:`StructureSet` and :class:`Domain`, validated by the loader.
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
        """The block's schema as written (of an optional block: its object alternative); a block
        under ``$defs`` carries the definitions its references need."""
        root = block = study_schema.load()
        keys = list(filter(None, cls.BLOCK.split(".")))
        if keys[:1] == ["$defs"]:
            block, keys = root["$defs"][keys[1]], keys[2:]
        for key in keys:
            block = block["properties"][key]
        block = next((s for s in block.get("oneOf", []) if s.get("type") == "object"), block)
        return {**block, "$defs": root["$defs"]} if cls.BLOCK.startswith("$defs") else block

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
            raise ValueError(f"{cls._key() or 'study'}: must be a mapping, got {block!r}")
        hints = typing.get_type_hints(cls)
        fields = [f.name for f in dataclasses.fields(cls)]
        optional = cls._optional()
        unknown = sorted(set(block) - set(fields))
        missing = [name for name in fields if name not in block and name not in optional]
        if unknown or missing:
            named = [f"unknown key(s) {', '.join(map(cls._key, unknown))}"] * bool(unknown)
            named += [f"missing key(s) {', '.join(map(cls._key, missing))}"] * bool(missing)
            raise ValueError(f"{cls._key() or 'study'}: {'; '.join(named)}; keys: {', '.join(fields)}")
        block = {k: v for k, v in block.items() if not (v is None and k in optional)}  # None: absent
        block = json.loads(json.dumps(block))  # a copy, tuples as lists
        error = jsonschema.exceptions.best_match(_validator(cls).iter_errors(block))
        if error is not None:
            raise ValueError(f"{cls._key(*error.absolute_path)}: {error.message}")
        return cls(**{name: _typed(block.get(name), hints[name]) for name in fields})

    @classmethod
    def _optional(cls) -> set[str]:
        """Keys the block may lack (neither required nor defaulted): absent -> None."""
        schema = cls._block_schema()
        required = set(schema.get("required", ()))
        return {k for k, p in schema["properties"].items() if k not in required and "default" not in p}

    @classmethod
    def _key(cls, *path) -> str:
        return ".".join(str(p) for p in (cls.BLOCK.removeprefix("$defs."), *path) if p != "")


@functools.lru_cache(maxsize=None)
def _validator(cls):
    return study_schema.Validator(cls.schema())


def _typed(value, hint):
    """A block's value as its field holds it: a nested block as its class (in a mapping: each
    value), lists as tuples."""
    if typing.get_origin(hint) is Mapping and value is not None:
        item = typing.get_args(hint)[1]
        return {key: _typed(v, item) for key, v in value.items()}
    block = next((t for t in (hint, *typing.get_args(hint)) if isinstance(t, type) and hasattr(t, "from_dict")), None)
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
class StructureSet:
    """One expanded structure set (``structure_sets.<name>``, its schema and defaults in
    :data:`emsim.simulation.structures.STRUCTURE_SET_SCHEMA`), as :func:`emsim.study.config.load` leaves it."""

    n_structures: int  # scenes [count]
    seed: int  # seed of the scenes' draws
    particles: Mapping[str, Any]  # lattice, sizes, counts, orientation (emsim.simulation.structures)
    substrate: Mapping[str, Any]  # the support: kind and its keys (emsim.simulation.supports)
    labels: Mapping[str, Any]  # the set's overrides of the study's labels block

    @classmethod
    def from_dict(cls, entry: Mapping) -> StructureSet:
        return cls(**({"labels": {}} | dict(entry)))


@dataclasses.dataclass(frozen=True)
class Domain:
    """One expanded domain (``domains.<name>``): simulated from structure sets under shifts, or
    made of micrograph files; validated by :func:`emsim.study.config.load`."""

    structure_set: str | Mapping[str, float] | None  # one set, or set -> proportion; None: micrographs
    shifts: Mapping[str, Mapping[str, Any]]  # shift kind -> its parameters as written, in config order
    micrographs: Mapping[str, Any] | None  # the files, resolved (emsim.micrographs.resolve); None: simulated
    seed: int | None  # None: drawn from the study seed and the domain's name
    sweep: Mapping[str, Any]  # swept key -> the value that made this domain

    @classmethod
    def from_dict(cls, entry: Mapping) -> Domain:
        """The domain from its config entry (shift kinds as top-level keys) and its ``sweep``."""
        entry = dict(entry)
        fixed = {key: entry.pop(key, None) for key in ("structure_set", "micrographs", "seed")}
        return cls(**fixed, sweep=entry.pop("sweep", {}), shifts=entry)

    @property
    def is_micrograph(self) -> bool:
        return self.micrographs is not None

    @property
    def sets(self) -> dict[str, float]:
        """The structure sets the domain draws from, with their proportions (one set: proportion 1)."""
        value = self.structure_set
        return {value: 1.0} if isinstance(value, str) else dict(value or {})

    def entry(self) -> dict:
        """The config entry as written, with its ``sweep`` (what a dataset job depends on)."""
        fixed = {"structure_set": self.structure_set, "micrographs": self.micrographs, "seed": self.seed}
        return {k: v for k, v in fixed.items() if v is not None} | dict(self.shifts) | {"sweep": dict(self.sweep)}


@dataclasses.dataclass(frozen=True)
class Baseline(_Block):
    """Single-stage training on each unordered (source, target) pair (``experiments.<name>.baseline``)."""

    BLOCK: ClassVar[str] = "$defs.experiment.baseline"
    mixtures: tuple[tuple[int, int], ...]  # images of (target, source) per model [count]
    lrs: tuple[float, ...]  # learning rates


@dataclasses.dataclass(frozen=True)
class Experiment(_Block):
    """One pretrain -> transfer experiment (``experiments.<name>``), before its grid is expanded."""

    BLOCK: ClassVar[str] = "$defs.experiment"
    domains: tuple[str, ...]  # the series (names or glob patterns)
    sources: tuple[str, ...]  # pretraining domains
    targets: tuple[str, ...] | None  # transfer targets; None: every domain of the series with pixel labels
    freeze: tuple[str, ...]  # frozen parts crossed with finetune
    methods: tuple[str | Mapping[str, Any], ...]  # transfer methods as written (emsim.learning.methods)
    transfer_sizes: tuple[int, ...]  # target images per transfer [count]
    lr_pairs: tuple[tuple[float, float], ...]  # (pretraining, transfer) learning rates
    replicates: int  # seeds per grid point [count]
    baseline: Baseline | None  # None: no single-stage baselines


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
    structure_sets: Mapping[str, StructureSet]  # name -> expanded structure set
    domains: Mapping[str, Domain]  # name -> expanded domain
    splits: Mapping[str, int]  # train, val, test [images]
    training: Training
    resources: Mapping[str, Mapping[str, int]]  # rule kind -> threads, mem_mb, runtime [min], gpu
    experiments: Mapping[str, Experiment]  # name -> experiment
    limits: Mapping[str, float]  # guards against sizes beyond reason
