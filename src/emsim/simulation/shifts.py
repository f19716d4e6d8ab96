"""Registry of domain-shift kinds: what a domain may vary, at which stage, with which parameters.

A shift kind is one function plus the JSON schema of its parameters. A domain in the study
config combines shifts by naming them as keys::

    domains:
      df{mean_nm}:
        structure_set: cdse
        defocus: {mean_nm: {range: [-20, 20, 10]}, sigma_nm: 1.5}
        dose: {e_per_A2: 400}

Stages, in the order they act on each image:

- ``optics``: the function returns aberration coefficients to add to the objective lens
  (``C10_A``, ``C12_A``, ``phi12_rad``); all optics shifts of a domain make one CTF.
- ``detector``: the function maps the image (intensity, or counts after ``dose``) to a new image;
  detector shifts run by ascending ``order`` (``dose`` is 50: lower runs on the noiseless
  intensity, higher on the counts).

Structure-stage variation (lattice, size, substrate) is a property of a structure set
(``structure_sets`` block), since it needs its own multislice; sweeps work there too.

Adding a kind: decorate a function with :func:`register` (see docs/domain-shifts.md), in a file
the study names under ``extensions`` (:mod:`emsim.extensions`) or in this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from emsim.simulation import optics

Stage = Literal["optics", "detector"]
STAGES: tuple[Stage, ...] = ("optics", "detector")


@dataclass(frozen=True)
class ShiftKind:
    """One kind of domain shift: its stage, parameter schema and function.

    ``apply(value, params, rng, context) -> (value, metadata)``: ``value`` is the aberration
    dict (optics) or the image (detector); ``metadata`` holds per-image values recorded in the
    dataset (e.g. the defocus actually drawn).
    """

    name: str
    stage: Stage
    parameters: dict
    required: tuple[str, ...]
    apply: Callable
    order: int = 50

    def schema(self) -> dict:
        """The parameters' JSON schema without their defaults: a study's domains stay as written (and
        their datasets' Snakemake params with them); :func:`ordered` fills the defaults."""
        properties = {k: {n: v for n, v in p.items() if n != "default"} for k, p in self.parameters.items()}
        return {
            "type": "object",
            "properties": properties,
            "required": list(self.required),
            "additionalProperties": False,
        }

    @property
    def defaults(self) -> dict:
        """The parameters with a ``default`` in their schema."""
        return {k: p["default"] for k, p in self.parameters.items() if "default" in p}


SHIFTS: dict[str, ShiftKind] = {}


def register(name: str, stage: Stage, parameters: dict, required: tuple[str, ...] = (), order: int = 50) -> Callable:
    """Decorator: register ``fn`` as the shift kind ``name`` (a key usable in any domain)."""
    if stage not in STAGES:
        raise ValueError(f"shift {name!r}: stage must be one of {STAGES}, not {stage!r}")

    def decorate(fn: Callable) -> Callable:
        if name in SHIFTS or name in ("structure_set", "seed"):
            raise ValueError(f"shift kind {name!r} is already defined")
        SHIFTS[name] = ShiftKind(name, stage, parameters, tuple(required), fn, order)
        return fn

    return decorate


def ordered(domain: dict, stage: Stage) -> list[tuple[ShiftKind, dict]]:
    """The shifts a domain config uses at one stage, in application order, with their parameters'
    defaults filled."""
    kinds = [SHIFTS[key] for key in domain if key in SHIFTS and SHIFTS[key].stage == stage]
    return [(kind, kind.defaults | domain[kind.name]) for kind in sorted(kinds, key=lambda k: (k.order, k.name))]


NUMBER = {"type": "number"}
NON_NEGATIVE = {"type": "number", "minimum": 0}
POSITIVE = {"type": "number", "exclusiveMinimum": 0}


@register("defocus", "optics", {"mean_nm": NUMBER, "sigma_nm": {**NON_NEGATIVE, "default": 0.0}}, required=("mean_nm",))
def defocus(aberrations: dict, params: dict, rng: np.random.Generator, context: dict):
    """Defocus (positive = underfocus) drawn per image from N(mean_nm, sigma_nm).

    With zero-defocus calibration the set's minimum-contrast defocus is added.
    """
    defocus_A = 10.0 * (params["mean_nm"] + params["sigma_nm"] * rng.standard_normal())
    applied_A = defocus_A + context.get("zero_defocus_A", 0.0)
    return {**aberrations, "C10_A": aberrations.get("C10_A", 0.0) - applied_A}, {"defocus_A": defocus_A}


@register(
    "astigmatism",
    "optics",
    {
        "magnitude_nm": NON_NEGATIVE,
        "angle_deg": {**NUMBER, "default": 0.0},
        "angle_sigma_deg": {**NON_NEGATIVE, "default": 0.0},
    },
    required=("magnitude_nm",),
)
def astigmatism(aberrations: dict, params: dict, rng: np.random.Generator, context: dict):
    """Two-fold astigmatism C12 (nm) along ``angle_deg`` (+ per-image spread ``angle_sigma_deg``)."""
    angle_deg = params["angle_deg"] + params["angle_sigma_deg"] * rng.standard_normal()
    out = {**aberrations, "C12_A": 10.0 * params["magnitude_nm"], "phi12_rad": math.radians(angle_deg)}
    return out, {"astigmatism_angle_deg": angle_deg}


@register("aperture", "optics", {"mrad": POSITIVE}, required=("mrad",))
def aperture(aberrations: dict, params: dict, rng: np.random.Generator, context: dict):
    """An objective aperture of semi-angle ``mrad``: strong scatterers (heavy particles) lose the
    electrons scattered outside it and image dark, as in bright-field TEM."""
    return {**aberrations, "aperture_mrad": float(params["mrad"])}, {}


@register("dose", "detector", {"e_per_A2": POSITIVE}, required=("e_per_A2",), order=50)
def dose(image: np.ndarray, params: dict, rng: np.random.Generator, context: dict):
    """Shot noise: Poisson counts at ``e_per_A2`` electrons per square Angstrom."""
    counts = optics.poisson_noise(image, params["e_per_A2"], context["pixel_size_A"], rng)
    return counts, {"dose_e_per_A2": params["e_per_A2"]}


@register("detector_blur", "detector", {"sigma_px": NON_NEGATIVE}, required=("sigma_px",), order=60)
def detector_blur(image: np.ndarray, params: dict, rng: np.random.Generator, context: dict):
    """Detector point-spread (Gaussian MTF of ``sigma_px`` pixels), applied to the counts."""
    return optics.gaussian_blur(image, params["sigma_px"]), {"blur_sigma_px": params["sigma_px"]}
