"""Checkpoints and resume, and whether a finished model file can be kept: both compare a file's
``run`` (stage, inputs' content, config, seeds, sizes) with the call's (:func:`differences`), in one place."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from emsim import io
from emsim.learning.models import UNet, check_state, read_model_file, state_digest

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 4  # 4: with a checksum of the whole state


def finished(out: Path, run: dict) -> dict | None:
    """The meta of ``out`` if it is a sound current-format model file written by ``run``, else None
    (a damaged file, one of an older format, another run or changed inputs is trained again, and
    the log says why)."""
    if not out.exists():
        return None
    try:
        payload = read_model_file(out)
    except ValueError as error:
        logger.warning("retraining %s: %s", out, error)
        return None
    meta = payload.get("meta") or {}
    differing = differences(meta, run)
    if differing:
        logger.info("retraining %s: its run differs in %s", out, ", ".join(differing))
        return None
    return meta


def resume(ckpt_path: Path, run: dict, device, model: UNet, optimizer) -> tuple[list, dict]:
    """History and best epoch so far, from a matching checkpoint (loaded into model and optimizer)."""
    state = _load(ckpt_path, run, device)
    if state is None:
        return [], {"epoch": None, "val_loss": math.inf, "state_dict": None}
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    logger.info("%s: resuming %s after epoch %d", run["stage"], ckpt_path, len(state["history"]))
    return state["history"], state["best"]


def save(path: Path, run: dict, model: UNet, optimizer, history: list, best: dict) -> None:
    """Write the resumable state with ``sha256`` (:func:`state_digest` of all of it) atomically."""
    state = {
        "emsim_checkpoint": CHECKPOINT_VERSION,
        "run": run,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": history,
        "best": best,
    }
    with io.atomic_path(path) as tmp:
        torch.save(state | {"sha256": state_digest(state)}, tmp)


def _load(path: Path, run: dict, device: torch.device) -> dict | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # unreadable: start over rather than fail the job
        logger.warning("ignoring unreadable checkpoint %s (%s)", path, error)
        return None
    if not isinstance(state, dict) or state.get("emsim_checkpoint") != CHECKPOINT_VERSION:
        logger.warning("ignoring checkpoint %s: not a version %d emsim checkpoint", path, CHECKPOINT_VERSION)
        return None
    digest = state.pop("sha256", None)
    try:
        if digest is None:
            raise ValueError(f"checkpoint {path} carries no checksum")
        check_state(state, digest, f"checkpoint {path}")
        check_state(state["model"], None, f"checkpoint {path}")
    except ValueError as error:
        logger.warning("discarded damaged checkpoint: %s; training restarts from the first epoch", error)
        return None
    differing = differences(state.get("run") or {}, run)
    if not differing:
        return state
    if differing != ["inputs"]:
        others = ", ".join(k for k in differing if k != "inputs")
        logger.warning("ignoring checkpoint %s: written by a different run (differs in %s)", path, others)
    else:
        before = state["run"].get("inputs") or {}
        changed = [name for name, sha in run["inputs"].items() if before.get(name) != sha]
        logger.warning(
            "discarded checkpoint %s: the content of input(s) %s changed since it was written", path, ", ".join(changed)
        )
    return None


def differences(recorded: dict, run: dict) -> list[str]:
    """The keys of a training call's identity ``run`` whose values a file's ``recorded`` run (a
    checkpoint's, or a model file's meta) does not hold, compared as JSON."""
    expected = json.loads(json.dumps(run, default=str))
    held = json.loads(json.dumps({k: recorded.get(k) for k in run}, default=str))
    return sorted(k for k in expected if held[k] != expected[k])
