"""A batch of models in one process: the models of one training job, sharing their inputs.

Each model is one grid point (a mapping with the fields of :class:`emsim.study.experiments.ModelSpec`:
``path``, ``stage``, ``datasets``, ``lr``, ``seed``, ``pretrained``, ``freeze``, ``size``,
``mix``) trained by the per-model entry points of :mod:`emsim.learning.train` inside one
:func:`emsim.learning.inputs.shared_inputs` block: every dataset split is read, hashed and moved to
the device once; ``torch.compile`` compiles once per model shape (later models of the same
architecture reuse the compiled code). Each model keeps its own file, history, seeds, provenance
and checkpoint, so a batch gives every model exactly the weights it would get alone (on CPU).

Resume is per model: a model file written by the same run is kept (not retrained), the model
that was running resumes from its checkpoint. A model that fails (diverges) is logged and its
siblings still train; :class:`BatchFailed` names every failed model at the end, and the record
is only written when all succeeded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence

import torch

from emsim import io
from emsim.learning import inputs, train
from emsim.study import settings
from emsim.study.settings import Training

logger = logging.getLogger(__name__)


class BatchFailed(RuntimeError):
    """One or more models of a batch failed; the message names each with its error."""


def train_batch(
    models: Sequence[Mapping], training: Training, record: str | os.PathLike, device: str | torch.device | None = None
) -> list[dict]:
    """Train ``models`` (each with the ``training`` settings and its own ``lr``) one after another
    in this process; write ``record`` (JSON: each model's path, best validation loss, whether it
    was kept from before, training and wall seconds) atomically. Returns the record's entries."""
    entries, failures = [], []
    with inputs.shared_inputs():
        for i, spec in enumerate(models, 1):
            logger.info("batch model %d/%d: %s", i, len(models), spec["path"])
            started = time.perf_counter()
            try:
                meta, kept = _train_one(spec, training, device)
            except Exception as error:  # noqa: BLE001 - one failed model must not stop its siblings
                logger.exception("%s failed", spec["path"])
                failures.append(f"{spec['path']}: {error}")
                continue
            entries.append(
                {
                    "path": spec["path"],
                    "best_val_loss": meta["best_val_loss"],
                    "kept": kept,
                    "train_time_s": 0.0 if kept else meta["train_time_s"],
                    "wall_s": time.perf_counter() - started,
                }
            )
    if failures:
        raise BatchFailed(f"{len(failures)} of {len(models)} models failed:\n" + "\n".join(failures))
    shared = {k: v for k, v in sorted(dataclasses.asdict(training).items()) if k not in ("models_per_job", "device")}
    with io.atomic_path(record) as tmp:
        with open(tmp, "w") as f:
            json.dump({"models": entries, "provenance": io.provenance(shared)}, f, indent=1)
    return entries


def _train_one(spec: Mapping, training: Training, device) -> tuple[dict, bool]:
    """Train one grid point -> (model meta, whether an existing file was kept)."""
    path = spec["path"]
    before = os.stat(path).st_mtime_ns if os.path.exists(path) else None
    stage, datasets, lr = spec["stage"], spec["datasets"], spec["lr"]
    if stage == "pretrain":
        meta = train.pretrain(datasets[0], path, training, lr, seed=spec["seed"], device=device, size=spec.get("size"))
    elif stage == "transfer":
        meta = train.transfer(
            spec["pretrained"],
            datasets[0],
            path,
            training,
            lr,
            spec["seed"],
            device=device,
            freeze=spec["freeze"],
            size=spec["size"],
            method=spec["method"],
        )
    elif stage == "baseline":
        meta = train.baseline(tuple(datasets), path, training, lr, spec["seed"], device=device, mix=tuple(spec["mix"]))
    else:
        raise ValueError(f"{path}: unknown stage {stage!r}; allowed: {list(settings.STAGES)}")
    return meta, before is not None and os.stat(path).st_mtime_ns == before
