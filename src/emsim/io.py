"""File writing helpers shared by every output: atomic writes and provenance."""

from __future__ import annotations

import contextlib
import logging
import importlib.metadata
import os
from pathlib import Path

import emsim

PROVENANCE_PACKAGES = ("abtem", "ase", "numpy", "scipy", "h5py", "torch", "snakemake")


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling path; rename it to ``path`` only if the block succeeds.

    A killed or failing job therefore never leaves a file that looks finished.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def provenance(config_slice: dict | None = None) -> dict:
    """emsim and package versions, plus the config slice an output was made from."""
    versions = {}
    for name in PROVENANCE_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"emsim": emsim.__version__, "packages": versions, "config": config_slice or {}}


def log_to_file(path: str | Path, level: int = logging.INFO) -> None:
    """Send emsim's log records (and warnings) to ``path``: what a workflow job writes to its log."""
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
