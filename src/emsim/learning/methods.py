"""Transfer methods, one class each in a registry (``experiments.<name>.methods``).

A method owns its parameters (defaults and checks), its part of a model file's name, the block
groups that train in each epoch, its optimiser parameter groups (each with an ``lr_scale``), what
it does before training and what it saves. Parameters outside the epoch's trainable groups get no
gradient and their BatchNorm layers stay in eval mode (:meth:`emsim.learning.models.UNet.set_trainable`).

Torch-free: the study is checked (:func:`resolve`) before any job runs or torch is imported; the
model does the torch work it is asked for (``set_trainable``, ``add_lora``, ``adapt_batchnorm``).

A study names a method by its name or as ``{method: <name>, <parameter>: <value>, ...}``; missing
parameters take the class's defaults. ``finetune`` is crossed with the experiment's ``freeze`` list.
Adding a method: one :func:`register`-ed subclass of :class:`TransferMethod` (docs/training.md).

Block groups, from the head towards the input (:data:`GROUPS`): ``head`` (the segmentation head),
``decoder`` (the 5 decoder blocks), ``layer4`` .. ``layer1`` (the ResNet stages), ``stem``.
"""

from __future__ import annotations

import math
from typing import ClassVar

from emsim.learning.architecture import lora_max_rank

GROUPS = ("head", "decoder", "layer4", "layer3", "layer2", "layer1", "stem")
FREEZE_PARTS = ("encoder", "decoder", "none")

METHODS: dict[str, type[TransferMethod]] = {}


def register(cls: type[TransferMethod]) -> type[TransferMethod]:
    """Class decorator: make a method available to study configs under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def finetune_groups(part: str) -> tuple[str, ...]:
    """The block groups that train when ``part`` (:data:`FREEZE_PARTS`) is frozen."""
    if part not in FREEZE_PARTS:
        raise ValueError(f"freeze part {part!r} is not one of {FREEZE_PARTS}")
    frozen = {"none": (), "decoder": ("decoder",), "encoder": GROUPS[2:]}[part]
    return tuple(g for g in GROUPS if g not in frozen)


class TransferMethod:
    """A transfer method with resolved parameters ``params`` (:func:`resolve`), applied to a U-Net.

    Subclasses set ``name`` and ``defaults`` (every parameter with its default; ``adabn: False``
    offers AdaBN before training) and override what differs from "everything trains at the base
    learning rate": :meth:`check`, :meth:`trainable_groups`, :meth:`param_groups`, :meth:`setup`.
    """

    name: ClassVar[str]
    defaults: ClassVar[dict] = {"adabn": False}
    trains: ClassVar[bool] = True  # False: no epoch runs (adabn alone)

    def __init__(self, params: dict, freeze: str = "none", seed: int = 0):
        self.params, self.freeze, self.seed = dict(params), freeze, seed

    @classmethod
    def check(cls, params: dict, key: str, epochs: int, width: float) -> None:
        """ValueError naming ``key``.<parameter> for a bad value (``epochs``, ``width``: the study's training)."""
        if not isinstance(params.get("adabn", False), bool):
            raise ValueError(f"{key}.adabn: must be true or false, got {params['adabn']!r}")

    def label(self) -> str:
        """Its part of a model file name: the name and every parameter, e.g. ``lora-rank4-alpha4``,
        ``-adabn`` when AdaBN runs first."""
        parts = [self.name] + [
            f"{k}{v:g}" if isinstance(v, (int, float)) else f"{k}{v}" for k, v in self.params.items() if k != "adabn"
        ]
        return "-".join(parts + (["adabn"] if self.params.get("adabn") else []))

    def trainable_groups(self, epoch: int) -> tuple[str, ...]:
        """Block groups whose pretrained parameters train in ``epoch`` (0-based)."""
        return GROUPS

    def setup(self, model, images, batch_size: int, channels_last: bool) -> None:
        """Before training: AdaBN if asked for, then the trainable set of epoch 0."""
        if self.params.get("adabn"):
            model.adapt_batchnorm(images, batch_size, channels_last)
        self.set_epoch(model, 0)

    def set_epoch(self, model, epoch: int) -> None:
        """Trainable parameters and frozen (eval-mode) submodules of ``epoch``."""
        model.set_trainable(self.trainable_groups(epoch))

    def param_groups(self, model) -> list[dict]:
        """Optimiser parameter groups: every parameter that trains in some epoch, with ``lr_scale``."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]

    def export(self, model):
        """The model to save: a plain U-Net (adapters merged)."""
        return model.merged()


@register
class Finetune(TransferMethod):
    """Everything trains but the frozen part (``freeze``: encoder, decoder blocks, or none)."""

    name = "finetune"

    def label(self) -> str:
        """The frozen part, as model files were named before methods existed."""
        return "-".join([self.freeze] + (["adabn"] if self.params.get("adabn") else []))

    def trainable_groups(self, epoch: int) -> tuple[str, ...]:
        return finetune_groups(self.freeze)


@register
class Head(TransferMethod):
    """Only the segmentation head trains (feature extraction)."""

    name = "head"

    def trainable_groups(self, epoch: int) -> tuple[str, ...]:
        return ("head",)


@register
class Gradual(TransferMethod):
    """Epoch 0 trains the head (``start: head``) or head and decoder (``start: decoder``); every
    ``every`` epochs the next block group towards the input joins."""

    name = "gradual"
    defaults = {"start": "decoder", "every": 1, "adabn": False}
    STARTS: ClassVar[tuple[str, ...]] = ("head", "decoder")

    @classmethod
    def check(cls, params, key, epochs, width):
        super().check(params, key, epochs, width)
        if params["start"] not in cls.STARTS:
            raise ValueError(f"{key}.start: must be one of {', '.join(cls.STARTS)}, got {params['start']!r}")
        _number(params, "every", key, 1, integer=True)
        steps = len(GROUPS) - (cls.STARTS.index(params["start"]) + 1)
        if steps * params["every"] > epochs - 1:
            raise ValueError(
                f"{key}.every: the schedule unfreezes {steps} block groups, one every {params['every']} epoch(s), "
                f"so it needs training.epochs >= {steps * params['every'] + 1}; training.epochs = {epochs}"
            )

    def trainable_groups(self, epoch: int) -> tuple[str, ...]:
        first = self.STARTS.index(self.params["start"]) + 1
        return GROUPS[: min(len(GROUPS), first + epoch // self.params["every"])]

    def param_groups(self, model) -> list[dict]:
        """Every parameter from the start: the optimiser holds the groups that join later."""
        return [{"params": list(model.parameters()), "lr_scale": 1.0}]


@register
class Discriminative(TransferMethod):
    """Everything trains; block group i (0 = head) at ``lr * factor**i``."""

    name = "discriminative"
    defaults = {"factor": 0.5, "adabn": False}

    @classmethod
    def check(cls, params, key, epochs, width):
        super().check(params, key, epochs, width)
        factor = params["factor"]
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not 0 < factor <= 1:
            raise ValueError(f"{key}.factor: must be a number in (0, 1], got {factor!r}")

    def param_groups(self, model) -> list[dict]:
        return [
            {"params": model.parameters_of(g), "lr_scale": self.params["factor"] ** i} for i, g in enumerate(GROUPS)
        ]


@register
class LoRA(TransferMethod):
    """Every convolution but the head's gets a low-rank adapter; adapters and the head train, the
    pretrained weights and BN statistics stay fixed; merged into plain weights on export."""

    name = "lora"
    defaults = {"rank": 4, "alpha": 4.0, "adabn": False}

    @classmethod
    def check(cls, params, key, epochs, width):
        super().check(params, key, epochs, width)
        _number(params, "rank", key, 1, lora_max_rank(width), integer=True)
        alpha = params["alpha"]
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha > 0:
            raise ValueError(f"{key}.alpha: must be a number > 0, got {alpha!r}")

    def setup(self, model, images, batch_size, channels_last):
        if self.params.get("adabn"):
            model.adapt_batchnorm(images, batch_size, channels_last)
        model.add_lora(self.params["rank"], self.params["alpha"], self.seed)
        self.set_epoch(model, 0)

    def trainable_groups(self, epoch: int) -> tuple[str, ...]:
        return ("head",)


@register
class AdaBN(TransferMethod):
    """No gradient step: BN running statistics re-estimated on the target's training images."""

    name = "adabn"
    defaults = {}
    trains = False

    def setup(self, model, images, batch_size, channels_last):
        model.adapt_batchnorm(images, batch_size, channels_last)
        self.set_epoch(model, 0)

    def trainable_groups(self, epoch: int) -> tuple[str, ...]:
        return ()


@register
class Scratch(TransferMethod):
    """Everything trains from a random initialisation (the caller builds the model)."""

    name = "scratch"
    defaults = {}


def _number(params: dict, name: str, key: str, low: float, high: float | None = None, integer: bool = False) -> None:
    value = params[name]
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value) and value >= low
    if not ok or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{key}.{name}: must be {'an integer' if integer else 'a number'} {bounds}, got {value!r}")


def method_name(entry) -> str | None:
    """The method an (unresolved) ``methods`` entry names."""
    return entry if isinstance(entry, str) else entry.get("method") if isinstance(entry, dict) else None


def resolve(entry, key: str, epochs: int, width: float) -> dict:
    """A ``methods`` entry (or a resolved method) as ``{"name", **parameters}`` with defaults
    filled and checked; ValueError naming ``key``."""
    if isinstance(entry, str):
        entry = {"method": entry}
    elif isinstance(entry, dict) and "method" not in entry and "name" in entry:  # already resolved
        entry = {"method": entry["name"], **{k: v for k, v in entry.items() if k != "name"}}
    if not isinstance(entry, dict) or "method" not in entry:
        raise ValueError(f"{key}: {entry!r} is neither a method name nor a mapping with a 'method' key")
    name = entry["method"]
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"{key}.method: unknown method {name!r}; allowed: {', '.join(METHODS)}")
    cls = METHODS[name]
    for param in entry:
        if param != "method" and param not in cls.defaults:
            allowed = ", ".join(cls.defaults) or "none"
            raise ValueError(f"{key}.{param}: not a parameter of method {name!r}; its parameters: {allowed}")
    params = {**cls.defaults, **{k: v for k, v in entry.items() if k != "method"}}
    cls.check(params, key, epochs, width)
    return {"name": name, **params}


def build(method: dict, freeze: str = "none", seed: int = 0) -> TransferMethod:
    """The method object of a resolved method dict (``freeze``: finetune's frozen part)."""
    return METHODS[method["name"]]({k: v for k, v in method.items() if k != "name"}, freeze, seed)


def label(method: dict, freeze: str = "none") -> str:
    """A resolved method's part of a model file name (:meth:`TransferMethod.label`)."""
    return build(method, freeze).label()


def describe(method: dict) -> str:
    """Its parameters as text for the per-model table, e.g. ``rank=4 alpha=4``."""
    return " ".join(
        f"{k}={v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k}={v}"
        for k, v in method.items()
        if k != "name" and (k != "adabn" or v)
    )
