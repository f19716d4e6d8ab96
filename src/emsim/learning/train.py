"""Pretraining, transfer learning and single-stage mixed-data baselines of the U-Net: one entry
point per stage, each ``(inputs, out, training, lr, seed, device, *, stage options)``.

Every stage: Adam, learning rate ``lr * lr_decay**epoch`` in epoch ``epoch`` (0-based), batches
of ``batch_size`` (last batch may be smaller), dihedral augmentation (images must be square),
per-image standardisation. The saved model is the one with the best validation loss (of the
trained loss); its meta holds the per-epoch history (with ``images_seen``, the cumulative number
of augmented images trained on), full config and seeds.

Augmentation (``augmentation``): ``dihedral8`` (the seed study) trains on every image in all 8
dihedral symmetries every epoch, the n*8 (image, symmetry) pairs in shuffled order, i.e. 8x the
steps of ``random``; ``random`` draws one symmetry per image per epoch.

Loss (``loss``): ``cross_entropy`` on logits, or ``softmax_cross_entropy``, the seed study's
cross-entropy applied to softmax outputs, recorded minus its minimum ln(1 + e^-1) like the study's
numbers (:data:`emsim.learning.metrics.STUDY_LOSS_OFFSET`).

Reproducibility and resume: the model is initialised from ``torch.Generator().manual_seed(seed)``;
the shuffle order and augmentation of epoch ``e`` come from ``numpy.random.default_rng([seed,
stage, e])``. After every epoch a checkpoint ``out + ".ckpt"`` (model, optimiser, history, best
weights) is written atomically; a rerun of the same call resumes from it and ends with exactly the
weights of an uninterrupted run (on CPU; GPU kernels may be non-deterministic). The checkpoint's
identity covers the call (config, seed, paths, sizes) and the CONTENT of every input (sha256 of the
arrays read from each dataset and of the pretrained weights): a checkpoint of another call, or one
whose inputs changed since (a rebuilt dataset), is discarded with a warning naming the difference.
The checkpoint is removed once the model file is written.

Transfer methods (:mod:`emsim.learning.methods`) decide the trainable parameters of each epoch,
the per-group learning-rate scale (``lr_scale``) and what is saved (LoRA merged). Early stopping
(``early_stopping: {patience, min_delta}``, off by default) ends training after ``patience``
epochs without a val loss below the best minus ``min_delta``; a resumed run stops at the same epoch.

GPU path: data resident on the device, augmentation there, bf16 autocast (``amp``),
``channels_last`` memory format, optional ``torch.compile``, fused Adam (``fused``), cuDNN
autotuning. ``amp`` and ``fused`` are ``auto`` (on only on CUDA), true or false: true turns them
on on the CPU too, where the tests exercise them. ``channels_last: auto`` is on on CUDA and, on
the CPU, for U-Nets of width >= ``CPU_CHANNELS_LAST_MIN_WIDTH`` (narrower ones crash torch 2.13's
oneDNN backward there).

Batches (:mod:`emsim.learning.batch`): inside :func:`emsim.learning.inputs.shared_inputs`, every dataset split is read,
hashed and moved to the device once for all the models the block trains, and a call whose model
file already exists, written by the same run (same model format, config, seeds, sizes and input
content), returns that file's meta instead of training again.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from emsim import data, io
from emsim.learning import checkpoints, inputs, methods, ood, steps
from emsim.learning.models import (
    UNet,
    count_parameters,
    load_model,
    resolve_device,
    save_model,
)
from emsim.study.settings import EarlyStopping, Training

logger = logging.getLogger(__name__)


EpochCallback = Callable[[int, dict], None]


def model_config(training: Training, lr: float) -> dict:
    """What a model file records of its training (``config`` in its meta, part of its identity): the
    ``training`` block without the workflow's ``models_per_job``, plus ``lr``."""
    config = {k: v for k, v in dataclasses.asdict(training).items() if k != "models_per_job"}
    return dict(sorted({**config, "lr": lr}.items()))


def pretrain(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    training: Training,
    lr: float,
    seed: int,
    device: str | torch.device | None = None,
    *,
    size: int | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> dict:
    """Train a randomly initialised U-Net on the train split of one domain (its first ``size``
    images if given), selecting on that domain's val split; initial learning rate ``lr``. Returns the model meta."""
    images, labels = inputs.read_split(dataset, "train")
    images, labels = inputs.first(images, labels, size, "size", dataset)
    domain = data.domain_name(dataset)
    val = inputs.read_split(dataset, "val")
    model = UNet(training.width, generator=torch.Generator().manual_seed(seed))
    run = {
        "stage": "pretrain",
        "dataset": str(dataset),
        "size": size,
        "source_domain": domain,
        "target_domain": domain,
        "seeds": {"init": seed, "data": seed},
        "inputs": {str(dataset): inputs.input_digest(images, labels, *val)},
    }
    return _fit(run, model, (images, labels), val, out, training, lr, seed, device, on_epoch_end)


def transfer(
    pretrained: str | os.PathLike | None,
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    training: Training,
    lr: float,
    seed: int,
    device: str | torch.device | None = None,
    *,
    freeze: str = "none",
    size: int | None = None,
    method: str | dict = "finetune",
    on_epoch_end: EpochCallback | None = None,
) -> dict:
    """Adapt a pretrained model to the first ``size`` images of the target's train split (nested
    sets: the 64-image set is part of the 128-image set; replicates differ only through ``seed``:
    shuffle order and augmentation) with a transfer ``method`` (a name or a method dict,
    :mod:`emsim.learning.methods`; ``finetune`` with ``freeze`` in {encoder, decoder, none});
    ``scratch`` ignores ``pretrained`` and starts from the random init of ``seed``. Selection on
    the target's val split; initial learning rate ``lr``. A target without pixel labels (a
    micrograph domain with boxes or none) takes ``adabn`` only, with no val loss. Returns the model meta."""
    spec = methods.resolve(method, "method", int(training.epochs), float(training.width))
    labelled = data.label_kind(dataset) == "mask"
    if not labelled and spec["name"] != "adabn":
        raise ValueError(
            f"{dataset}: the target has no pixel labels; only method adabn adapts to it, not {spec['name']}"
        )
    images, labels = inputs.read_split(dataset, "train")
    images, labels = inputs.first(images, labels, size, "size", dataset)
    val = inputs.read_split(dataset, "val")
    digests = {str(dataset): inputs.input_digest(images, labels, *val)}
    if spec["name"] == "scratch":
        model, source_meta = UNet(training.width, generator=torch.Generator().manual_seed(seed)), {}
        pretrained = None
    else:
        model, source_meta = load_model(pretrained)
        if model.config["width"] != float(training.width):
            raise ValueError(
                f"training.width = {training.width} differs from the width "
                f"{model.config['width']} of the pretrained model {pretrained}"
            )
        digests[str(pretrained)] = inputs.digest(*(t.cpu().numpy() for t in model.state_dict().values()))
    run = {
        "stage": "transfer",
        "dataset": str(dataset),
        "pretrained": None if pretrained is None else str(pretrained),
        "freeze": freeze,
        "method": spec,
        "size": size,
        "source_domain": source_meta.get("target_domain"),
        "target_domain": data.domain_name(dataset),
        "seeds": {
            "data": seed,
            **{f"pretrain_{k}": v for k, v in (source_meta.get("seeds") or {"init": seed}).items()},
        },
        "pretrained_best_val_loss": source_meta.get("best_val_loss"),
        "pretrained_config": source_meta.get("config"),
        "inputs": digests,
    }
    if not labelled:  # adabn on unlabelled images: no validation loss
        run["unlabelled_target"] = True
    method_ = methods.build(spec, freeze, seed)
    return _fit(run, model, (images, labels), val, out, training, lr, seed, device, on_epoch_end, method_)


def baseline(
    datasets: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    training: Training,
    lr: float,
    seed: int,
    device: str | torch.device | None = None,
    *,
    mix: Sequence[int],
    on_epoch_end: EpochCallback | None = None,
) -> dict:
    """Single-stage training from random init on the first ``mix[0]`` train images of
    ``datasets[0]`` plus the first ``mix[1]`` of ``datasets[1]``; validation loss on the union of
    both val splits (all images, each pixel weighted equally). Returns the model meta.

    ``datasets[0]`` is the TARGET domain and ``datasets[1]`` the source: ``mix`` = (target
    images, source images), so ``mix[0]`` plays the role of a transfer run's ``size``
    (the grid's pairs, :mod:`emsim.study.experiments`, are tagged the same way)."""
    if len(datasets) != 2 or len(mix) != 2:
        raise ValueError(f"baseline needs 2 datasets and a 2-element mix, got {datasets}, {mix}")
    if sum(mix) < 1:
        raise ValueError(f"baseline mix {list(mix)} selects no images")
    train, val, digests = [], [], {}
    for path, n in zip(datasets, mix):
        train.append(inputs.first(*inputs.read_split(path, "train"), n, "mix", path))
        val.append(inputs.read_split(path, "val"))
        digests[str(path)] = inputs.input_digest(*train[-1], *val[-1])
    domains = [data.domain_name(path) for path in datasets]
    model = UNet(training.width, generator=torch.Generator().manual_seed(seed))
    run = {
        "stage": "baseline",
        "datasets": [str(p) for p in datasets],
        "mix": [int(n) for n in mix],
        "domains": domains,
        "source_domain": domains[1],
        "target_domain": domains[0],
        "seeds": {"init": seed, "data": seed},
        "inputs": digests,
    }
    return _fit(
        run,
        model,
        inputs.concat(train, datasets),
        inputs.concat(val, datasets),
        out,
        training,
        lr,
        seed,
        device,
        on_epoch_end,
    )


def _fit(
    run: dict,
    model: UNet,
    train,
    val,
    out,
    training: Training,
    lr: float,
    seed: int,
    device,
    on_epoch_end: EpochCallback | None,
    method: methods.TransferMethod | None = None,
) -> dict:
    """Shared training loop with checkpoint/resume; writes the best model to ``out``. ``method``
    (default: everything trains) sets up the model, its parameter groups and each epoch's trainable set."""
    stage, out = run["stage"], Path(out)
    method = method or methods.build({"name": "scratch"})
    device = resolve_device(device if device is not None else training.device)
    amp = _switch(training.amp, device)
    channels_last = _channels_last(training, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    train_x, train_y = inputs.to_device(*train, device, "training")
    val_x, val_y = inputs.to_device(*val, device, "validation")
    run = {
        **run,
        "config": model_config(training, lr),
        "seed": int(seed),
        "train_size": len(train_x),
        "val_size": len(val_x),
    }
    if inputs.sharing() and (meta := checkpoints.finished(out, run)) is not None:
        logger.info("%s: kept %s (same run, same inputs)", stage, out)
        return meta
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.to(device, memory_format=memory_format)
    model.train()
    method.setup(model, train_x, training.batch_size, channels_last)
    model.to(device, memory_format=memory_format)  # adapters made by the method
    optimizer = torch.optim.Adam(method.param_groups(model), lr=lr, fused=_switch(training.fused, device))
    net = torch.compile(model) if training.compile else model
    step = steps.make_train_step(net, optimizer, amp, training.loss)

    ckpt_path = Path(f"{out}.ckpt")
    history, best = checkpoints.resume(ckpt_path, run, device, model, optimizer)
    for epoch in range(len(history), training.epochs if method.trains else 0):
        if _stopped_at(history, training.early_stopping) is not None:
            break
        start = time.perf_counter()
        epoch_lr = lr * training.lr_decay**epoch
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr * group["lr_scale"]
        method.set_epoch(model, epoch)
        order, ops = steps.epoch_order(seed, stage, epoch, len(train_x), training.augmentation, device)
        train_loss = _train_loss(step, train_x, train_y, order, ops, training, channels_last, stage, epoch)
        val_loss = steps.mean_loss(net, val_x, val_y, training.batch_size, amp, channels_last, training.loss)
        steps.check_loss(val_loss, stage, epoch + 1, "validation")
        if val_loss < best["val_loss"]:
            best = {"epoch": epoch + 1, "val_loss": val_loss, "state_dict": copy.deepcopy(model.state_dict())}
        images_seen = (history[-1]["images_seen"] if history else 0) + len(order)
        record = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": epoch_lr,
            "images_seen": images_seen,
            "trainable_params": count_parameters(model, trainable_only=True),
            "time_s": time.perf_counter() - start,
        }
        history.append(record)
        logger.info(
            "%s epoch %d/%d: train %.4f val %.4f lr %.3g (%.1f s)",
            stage,
            epoch + 1,
            training.epochs,
            train_loss,
            val_loss,
            epoch_lr,
            record["time_s"],
        )
        checkpoints.save(ckpt_path, run, model, optimizer, history, best)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record)
    if best["state_dict"] is None:  # no epoch ran (adabn): the adapted model is the result
        val_loss = None
        if not run.get("unlabelled_target"):
            val_loss = steps.mean_loss(net, val_x, val_y, training.batch_size, amp, channels_last, training.loss)
        best = {"epoch": 0, "val_loss": val_loss, "state_dict": copy.deepcopy(model.state_dict())}
    meta = _save_best(out, model, run, history, best, device, train[0], method, training.early_stopping)
    ckpt_path.unlink(missing_ok=True)
    return meta


def _stopped_at(history: list, stopping: EarlyStopping | None) -> int | None:
    """The epoch after which early stopping ends training: ``patience`` epochs in a row without a
    val loss below the best so far minus ``min_delta``; None if it has not (or is off)."""
    if stopping is None:
        return None
    best, waited = math.inf, 0
    for record in history:
        if record["val_loss"] < best - float(stopping.min_delta):
            best, waited = record["val_loss"], 0
        else:
            waited += 1
        if waited >= int(stopping.patience):
            return record["epoch"]
    return None


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak GPU memory allocated by torch since the run started, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"


def _switch(value, device: torch.device) -> bool:
    """An ``auto``/true/false switch: ``auto`` is on on CUDA only."""
    return device.type == "cuda" if value == "auto" else bool(value)


CPU_CHANNELS_LAST_MIN_WIDTH = 0.25
"""Narrowest U-Net that trains in channels-last on the CPU: torch 2.13's oneDNN backward crashes
(SIGSEGV or abort) below it, from 192 px at width 0.125 and at 512 px at 0.1875-0.2; every run
from 0.25 trained (192-2048 px at 0.25, up to 1024 px at 0.5 and 1; measured, docs/training.md)."""


def _channels_last(training: Training, device: torch.device) -> bool:
    """The ``channels_last`` switch: ``auto`` is on on CUDA, and on the CPU from
    ``CPU_CHANNELS_LAST_MIN_WIDTH`` (1.6-1.9x faster training there on the default study)."""
    if training.channels_last == "auto":
        return device.type == "cuda" or training.width >= CPU_CHANNELS_LAST_MIN_WIDTH
    return bool(training.channels_last)


def _train_loss(
    step, train_x, train_y, order, ops, training: Training, channels_last: bool, stage: str, epoch: int
) -> float:
    """One epoch of training steps; its mean training loss (offset removed), every step checked."""
    batch_size = training.batch_size
    losses = steps.train_epoch(step, train_x, train_y, order, ops, batch_size, channels_last)
    losses = losses.tolist()  # the epoch's only device sync; names the first bad step
    for i, loss in enumerate(losses, 1):
        steps.check_loss(loss, stage, epoch + 1, f"step {i}")
    sizes = [min(batch_size, len(order) - s) for s in range(0, len(order), batch_size)]
    return float(np.dot(losses, sizes) / len(order)) - steps.loss_offset(training.loss)


def _save_best(
    out: Path,
    model: UNet,
    run: dict,
    history: list,
    best: dict,
    device,
    train_images,
    method: methods.TransferMethod,
    stopping: EarlyStopping | None,
) -> dict:
    """Write the best epoch's weights (as a plain U-Net: LoRA merged) with the run's metadata to
    ``out``; return the metadata. Cost: ``trainable_params`` (the most any epoch trained),
    ``train_time_s``, ``images_seen``, ``peak_memory_MB`` (of ``peak_memory_kind``)."""
    model.load_state_dict(best["state_dict"])
    plain = method.export(model)
    peak, peak_kind = _peak_memory_mb(device)
    meta = {
        **run,
        "history": history,
        "best_epoch": best["epoch"],
        "best_val_loss": best["val_loss"],
        "stopped_early_after": _stopped_at(history, stopping),
        "train_time_s": sum(r["time_s"] for r in history),
        "images_seen": history[-1]["images_seen"] if history else 0,
        "peak_memory_MB": peak,
        "peak_memory_kind": peak_kind,
        "trainable_params": max((r["trainable_params"] for r in history), default=0),
        "total_params": count_parameters(plain),
        "device": str(device),
        "input_reference": ood.describe(run, train_images),
        "provenance": io.provenance(run["config"]),
    }
    save_model(out, plain, meta=meta)
    return meta
