"""The transfer methods a study can name (``experiments.<name>.methods``): parameters, checks, labels.

Torch-free, so the study is checked before any job runs; :mod:`emsim.learning.methods` implements them.
An entry is a method name or a mapping ``{method: <name>, <parameter>: <value>, ...}``; missing
parameters take the defaults of :data:`PARAMS`. ``finetune`` is crossed with the experiment's
``freeze`` list (today's behaviour and file names); every other method is one grid point.

Block groups, from the head towards the input (:data:`GROUPS`): ``head`` (the segmentation head),
``decoder`` (the 5 decoder blocks), ``layer4`` .. ``layer1`` (the ResNet stages), ``stem``.
"""

from __future__ import annotations

import math

GROUPS = ("head", "decoder", "layer4", "layer3", "layer2", "layer1", "stem")
PARAMS = {
    "finetune": {"adabn": False},
    "head": {"adabn": False},
    "gradual": {"start": "decoder", "every": 1, "adabn": False},
    "discriminative": {"factor": 0.5, "adabn": False},
    "lora": {"rank": 4, "alpha": 4.0, "adabn": False},
    "adabn": {},
    "scratch": {},
}
GRADUAL_STARTS = ("head", "decoder")
LORA_MIN_CHANNELS = 8  # emsim.learning.models.MIN_CHANNELS
LORA_SMALLEST_OUT = 16  # the last decoder block's channels at width 1 (emsim.learning.models.DECODER_CHANNELS)
LORA_STEM_FAN_IN = 49  # 1 input channel x 7 x 7 kernel


def method_name(entry) -> str | None:
    """The method an (unresolved) ``methods`` entry names."""
    return entry if isinstance(entry, str) else entry.get("method") if isinstance(entry, dict) else None


def resolve(entry, key: str, epochs: int, width: float) -> dict:
    """A ``methods`` entry (or a resolved method) as ``{"name", **parameters}`` with defaults filled;
    ValueError naming ``key``."""
    if isinstance(entry, str):
        entry = {"method": entry}
    elif isinstance(entry, dict) and "method" not in entry and "name" in entry:  # already resolved
        entry = {"method": entry["name"], **{k: v for k, v in entry.items() if k != "name"}}
    if not isinstance(entry, dict) or "method" not in entry:
        raise ValueError(f"{key}: {entry!r} is neither a method name nor a mapping with a 'method' key")
    name = entry["method"]
    if not isinstance(name, str) or name not in PARAMS:
        raise ValueError(f"{key}.method: unknown method {name!r}; allowed: {', '.join(PARAMS)}")
    defaults = PARAMS[name]
    for param in entry:
        if param != "method" and param not in defaults:
            allowed = ", ".join(defaults) or "none"
            raise ValueError(f"{key}.{param}: not a parameter of method {name!r}; its parameters: {allowed}")
    method = {"name": name, **defaults, **{k: v for k, v in entry.items() if k != "method"}}
    _check(method, key, epochs, width)
    return method


def _check(method: dict, key: str, epochs: int, width: float) -> None:
    def number(param, low, high=None, integer=False):
        value = method[param]
        kind = int if integer else (int, float)
        ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value) and value >= low
        if not ok or (high is not None and value > high):
            bounds = f"{low}..{high}" if high is not None else f">= {low}"
            raise ValueError(
                f"{key}.{param}: must be {'an integer' if integer else 'a number'} {bounds}, got {value!r}"
            )

    if not isinstance(method.get("adabn", False), bool):
        raise ValueError(f"{key}.adabn: must be true or false, got {method['adabn']!r}")
    if method["name"] == "gradual":
        if method["start"] not in GRADUAL_STARTS:
            raise ValueError(f"{key}.start: must be one of {', '.join(GRADUAL_STARTS)}, got {method['start']!r}")
        number("every", 1, integer=True)
        steps, last = gradual_steps(method["start"]), gradual_steps(method["start"]) * method["every"]
        if last > epochs - 1:
            raise ValueError(
                f"{key}.every: the schedule unfreezes {steps} block groups, one every {method['every']} epoch(s), "
                f"so it needs training.epochs >= {last + 1}; training.epochs = {epochs}"
            )
    elif method["name"] == "discriminative":
        if not isinstance(method["factor"], (int, float)) or not 0 < method["factor"] <= 1:
            raise ValueError(f"{key}.factor: must be a number in (0, 1], got {method['factor']!r}")
    elif method["name"] == "lora":
        number("rank", 1, lora_max_rank(width), integer=True)
        if not isinstance(method["alpha"], (int, float)) or isinstance(method["alpha"], bool) or method["alpha"] <= 0:
            raise ValueError(f"{key}.alpha: must be a number > 0, got {method['alpha']!r}")


def gradual_steps(start: str) -> int:
    """Unfreezing steps of ``gradual`` after its first epoch (one block group per step)."""
    return len(GROUPS) - (GRADUAL_STARTS.index(start) + 1)


def lora_max_rank(width: float) -> int:
    """Largest LoRA rank every adapted convolution allows (min of its out channels and fan-in)."""
    return min(max(LORA_MIN_CHANNELS, int(round(LORA_SMALLEST_OUT * width))), LORA_STEM_FAN_IN)


def label(method: dict, freeze: str = "none") -> str:
    """The method's part of a model file name: ``finetune`` -> the frozen part (as before methods
    existed), else the name and every parameter, e.g. ``lora-rank4-alpha4``; ``-adabn`` when AdaBN runs first."""
    if method["name"] == "finetune":
        parts = [freeze]
    else:
        parts = [method["name"]] + [
            f"{k}{v:g}" if isinstance(v, (int, float)) else f"{k}{v}"
            for k, v in method.items()
            if k not in ("name", "adabn")
        ]
    return "-".join(parts + (["adabn"] if method.get("adabn") else []))


def describe(method: dict) -> str:
    """Its parameters as text for the per-model table, e.g. ``rank=4 alpha=4``."""
    return " ".join(
        f"{k}={v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k}={v}"
        for k, v in method.items()
        if k != "name" and (k != "adabn" or v)
    )
