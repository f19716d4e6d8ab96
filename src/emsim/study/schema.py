"""The study schema (schemas/config.schema.yaml): every key, its check and its default.

Light on imports, so that modules validating one block of it (e.g. emsim.learning.train) need not
import :mod:`emsim.study.config`.
"""

from __future__ import annotations

import copy
import functools
import math
from importlib import resources

import jsonschema
import yaml


@functools.lru_cache(maxsize=None)
def _parsed() -> dict:
    return yaml.safe_load(resources.files("emsim.study").joinpath("schemas/config.schema.yaml").read_text())


def load() -> dict:
    """A fresh copy of the study schema (parsed once per process: a copy is 30x cheaper than a parse)."""
    return copy.deepcopy(_parsed())


def _fill_defaults(validator, properties, instance, schema):
    if isinstance(instance, dict):
        for key, sub in properties.items():
            if "default" in sub and key not in instance:
                instance[key] = copy.deepcopy(sub["default"])
    yield from jsonschema.Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, schema)


Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    {"properties": _fill_defaults},
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many(
        {
            "integer": lambda checker, value: isinstance(value, int) and not isinstance(value, bool),
            "number": lambda checker, value: (
                isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ),
        }
    ),
)
"""Draft 2020-12 validator that fills each missing key's ``default`` as it validates; bools are not
integers, and NaN and infinity are not numbers."""
