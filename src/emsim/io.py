"""File helpers shared by every output: atomic writes, read errors that name the file, provenance, job logs."""

from __future__ import annotations

import contextlib
import glob
import importlib.metadata
import logging
import os
import sys
from pathlib import Path

import emsim

PROVENANCE_PACKAGES = ("abtem", "ase", "numpy", "scipy", "h5py", "torch", "snakemake")


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling path; rename it to ``path`` only if the block succeeds.

    A killed or failing job therefore never leaves a file that looks finished; temporary files
    that a killed earlier attempt left (``.<name>.tmp<pid>``) are removed first. An OSError
    names ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp*"):
            if stale.name[len(path.name) + 5 :].isdigit():
                stale.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.touch()
    except OSError as error:
        raise OSError(f"{path}: cannot write ({error.strerror or error})") from error
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        raise OSError(f"{path}: cannot write ({error})") from error
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def reading(path: str | Path, what: str):
    """Turn errors while reading ``path`` (truncated file, failed checksum, missing entry) into a
    ValueError that names the file."""
    try:
        yield
    except (OSError, KeyError) as error:
        raise ValueError(f"{path}: cannot read this {what}, damaged or not one ({error})") from error


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
    """Send emsim's log records, warnings and an uncaught exception (with its traceback) to ``path``.

    What a workflow job writes to its log: a failing job's log ends with the error.
    """
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    previous = sys.excepthook

    def log_uncaught(kind, error, traceback):
        logging.getLogger("emsim").critical("job failed: %s", error, exc_info=(kind, error, traceback))
        handler.flush()
        previous(kind, error, traceback)

    sys.excepthook = log_uncaught
