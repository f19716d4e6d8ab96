"""A study's ``extensions``: Python files that register domain-shift kinds
(:func:`emsim.simulation.shifts.register`) or transfer methods (:func:`emsim.learning.methods.register`).

Every process that reads the study imports them: ``emsim check``, the Snakefile, the dataset and
transfer jobs.
"""

from __future__ import annotations

import importlib.util
import sys
import zlib
from pathlib import Path

from emsim.study.settings import ConfigError


def load(path: str | Path) -> None:
    """Import one extension file, once per process."""
    path = Path(path)
    module_name = f"emsim_extension_{path.stem}_{zlib.crc32(str(path.resolve()).encode()):08x}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or not path.is_file():
        raise ConfigError(f"extensions: {str(path)!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise ConfigError(f"extensions: {path} failed to load: {error!r}") from error
