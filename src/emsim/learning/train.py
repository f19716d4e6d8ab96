"""Pretraining, transfer learning and single-stage mixed-data baselines of the U-Net.

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
autotuning. ``amp``, ``channels_last`` and ``fused`` are ``auto`` (on only on CUDA), true or false:
true turns them on on the CPU too, where the tests exercise them (channels-last on small images:
torch 2.13's CPU backward crashes from 256 px).

Batches (:mod:`emsim.learning.batch`): inside :func:`shared_inputs`, every dataset split is read,
hashed and moved to the device once for all the models the block trains, and a call whose model
file already exists, written by the same run (same model format, config, seeds, sizes and input
content), returns that file's meta instead of training again.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from emsim import data, io
from emsim.learning import methods, ood
from emsim.learning.metrics import STUDY_LOSS_OFFSET
from emsim.learning.models import (
    UNet,
    check_state,
    count_parameters,
    load_model,
    read_model_file,
    resolve_device,
    save_model,
    state_digest,
)
from emsim.study.settings import STAGES, EarlyStopping, Training

logger = logging.getLogger(__name__)

DIVERGENCE_LOSS = 1e3  # a 2-class cross-entropy above this counts as exploded
CHECKPOINT_VERSION = 4  # 4: with a checksum of the whole state

EpochCallback = Callable[[int, dict], None]


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or exploded; the message names stage, epoch and step."""


def model_config(training: Training, lr: float) -> dict:
    """What a model file records of its training (``config`` in its meta, part of its identity): the
    ``training`` block without the workflow's ``models_per_job``, plus ``lr``."""
    config = {k: v for k, v in dataclasses.asdict(training).items() if k != "models_per_job"}
    return dict(sorted({**config, "lr": lr}.items()))


def loss_sum(logits: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Summed per-pixel ``loss`` (``training.loss`` in the schema) of a batch; ``softmax_cross_entropy``
    without the study's offset."""
    logits, target = logits.float(), target.long()
    if loss == "softmax_cross_entropy":
        logits = logits.softmax(dim=1)  # the study fed probabilities to CrossEntropyLoss
    return F.cross_entropy(logits, target, reduction="sum")


def loss_offset(loss: str) -> float:
    """What is subtracted from the per-pixel mean of ``loss`` in the history."""
    return STUDY_LOSS_OFFSET if loss == "softmax_cross_entropy" else 0.0


def dihedral(x: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """Apply symmetry ``ops[i]`` in 0..7 to ``x[i]`` (last two dims square).

    Bit 0 flips columns, bit 1 flips rows, bit 2 transposes: the 8 elements of the dihedral
    group D4. Runs on the device of ``x``."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    for bit, transform in ((1, lambda t: t.flip(-1)), (2, lambda t: t.flip(-2)), (4, lambda t: t.transpose(-1, -2))):
        x = torch.where((ops & bit).bool().view(shape), transform(x), x)
    return x


def make_train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, amp: bool, loss_name: str = "cross_entropy"
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One optimisation step on a batch -> detached mean loss (no device sync, no offset).
    ``amp`` = bf16 autocast on the model's device."""
    device_type = next(model.parameters()).device.type

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = loss_sum(logits, y, loss_name) / y.numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def train_epoch(
    step,
    images: torch.Tensor,
    labels: torch.Tensor,
    order: torch.Tensor,
    ops: torch.Tensor,
    batch_size: int,
    channels_last: bool,
) -> torch.Tensor:
    """Run ``step`` over batches of device-resident ``images`` (n,1,H,W) / ``labels`` (n,H,W):
    image ``order[i]`` in symmetry ``ops[i]`` is the i-th sample; returns the per-step losses."""
    losses = []
    for start in range(0, len(order), batch_size):
        index, op = order[start : start + batch_size], ops[start : start + batch_size]
        x = dihedral(images[index], op)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        losses.append(step(x, dihedral(labels[index], op)))
    return torch.stack(losses)


@torch.no_grad()
def mean_loss(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    amp: bool,
    channels_last: bool,
    loss: str = "cross_entropy",
) -> float:
    """Per-pixel ``loss`` of ``model`` (eval mode, no augmentation) over a dataset, minus
    :func:`loss_offset`."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=images.device)
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        total += loss_sum(logits, labels[start : start + batch_size], loss)
    model.train(was_training)
    return total.item() / labels.numel() - loss_offset(loss)


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
    images, labels = _read_split(dataset, "train")
    images, labels = _first(images, labels, size, "size", dataset)
    domain = data.domain_name(dataset)
    val = _read_split(dataset, "val")
    model = UNet(training.width, generator=torch.Generator().manual_seed(seed))
    run = {
        "stage": "pretrain",
        "dataset": str(dataset),
        "size": size,
        "source_domain": domain,
        "target_domain": domain,
        "seeds": {"init": seed, "data": seed},
        "inputs": {str(dataset): _digest(images, labels, *val)},
    }
    return _fit(run, model, (images, labels), val, out, training, lr, seed, device, on_epoch_end)


def transfer(
    pretrained: str | os.PathLike | None,
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    training: Training,
    lr: float,
    freeze: str,
    size: int,
    seed: int,
    device: str | torch.device | None = None,
    *,
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
    images, labels = _read_split(dataset, "train")
    images, labels = _first(images, labels, size, "size", dataset)
    val = _read_split(dataset, "val")
    inputs = {str(dataset): _digest(images, labels, *val)}
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
        inputs[str(pretrained)] = digest(*(t.cpu().numpy() for t in model.state_dict().values()))
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
        "inputs": inputs,
    }
    if not labelled:  # adabn on unlabelled images: no validation loss
        run["unlabelled_target"] = True
    method_ = methods.build(spec, freeze, seed)
    return _fit(run, model, (images, labels), val, out, training, lr, seed, device, on_epoch_end, method_)


def baseline(
    datasets: Sequence[str | os.PathLike],
    mix: Sequence[int],
    out: str | os.PathLike,
    training: Training,
    lr: float,
    seed: int,
    device: str | torch.device | None = None,
    *,
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
    train, val, inputs = [], [], {}
    for path, n in zip(datasets, mix):
        train.append(_first(*_read_split(path, "train"), n, "mix", path))
        val.append(_read_split(path, "val"))
        inputs[str(path)] = _digest(*train[-1], *val[-1])
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
        "inputs": inputs,
    }
    return _fit(
        run, model, _concat(train, datasets), _concat(val, datasets), out, training, lr, seed, device, on_epoch_end
    )


def digest(*arrays: np.ndarray) -> str:
    """sha256 over the dtype, shape and bytes of ``arrays``: the content identity of an input."""
    h = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype.str}{array.shape}".encode())
        h.update(memoryview(array).cast("B"))
    return h.hexdigest()


class SharedInputs:
    """What the models of one batch share: dataset splits (as read), their digests and their
    device tensors, keyed by file and split, or by the memory of the arrays they come from
    (the arrays are held here, so a key is never reused by another array)."""

    def __init__(self) -> None:
        self.splits: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self.digests: dict[tuple, str] = {}
        self.tensors: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


_SHARED: ContextVar[SharedInputs | None] = ContextVar("emsim_shared_inputs", default=None)


@contextlib.contextmanager
def shared_inputs() -> Iterator[SharedInputs]:
    """Within the block, training calls share their inputs and keep finished model files (module doc)."""
    token = _SHARED.set(SharedInputs())
    try:
        yield _SHARED.get()
    finally:
        _SHARED.reset(token)


def _array_key(*arrays: np.ndarray) -> tuple:
    return tuple((a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str) for a in arrays)


def _read_split(path, split: str) -> tuple[np.ndarray, np.ndarray]:
    shared = _SHARED.get()
    if shared is None:
        return data.read_split(path, split)
    key = (str(path), split)
    if key not in shared.splits:
        shared.splits[key] = data.read_split(path, split)
    return shared.splits[key]


def _digest(*arrays: np.ndarray) -> str:
    shared = _SHARED.get()
    if shared is None:
        return digest(*arrays)
    key = _array_key(*arrays)
    if key not in shared.digests:
        shared.digests[key] = digest(*arrays)
    return shared.digests[key]


def _first(images: np.ndarray, labels: np.ndarray, n: int | None, key: str, path) -> tuple[np.ndarray, np.ndarray]:
    if n is None:
        return images, labels
    if not 0 <= n <= len(images):
        raise ValueError(f"{key} = {n} is outside 0..{len(images)}, the size of the train split of {path}")
    return images[:n], labels[:n]


def _concat(parts: list[tuple[np.ndarray, np.ndarray]], paths) -> tuple[np.ndarray, np.ndarray]:
    shapes = {p[0].shape[1:] for p in parts if len(p[0])}
    if len(shapes) > 1:
        raise ValueError(f"datasets {list(map(str, paths))} have different image shapes {shapes}")
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(2))


def _to_device(
    images: np.ndarray, labels: np.ndarray, device: torch.device, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    shared = _SHARED.get()
    if shared is None or len(images) == 0:
        return _tensors(images, labels, device, what)
    key = (*_array_key(images, labels), str(device))
    if key not in shared.tensors:
        shared.tensors[key] = _tensors(images, labels, device, what)
    return shared.tensors[key]


def _tensors(
    images: np.ndarray, labels: np.ndarray, device: torch.device, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if len(images) == 0:
        raise ValueError(f"the {what} set is empty")
    h, w = images.shape[1:]
    if h != w:
        raise ValueError(f"{what} images are {h}x{w} px; dihedral augmentation needs square images")
    x = torch.from_numpy(data.standardize(images)).unsqueeze(1).to(device)
    return x, torch.from_numpy(np.ascontiguousarray(labels, np.uint8)).to(device)


def _epoch_order(
    seed: int, stage: str, epoch: int, n: int, augmentation: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image index and symmetry of every sample of an epoch, in training order."""
    rng = np.random.default_rng([seed, STAGES.index(stage), epoch])
    if augmentation == "dihedral8":
        pairs = rng.permutation(n * 8)
        order, ops = pairs // 8, pairs % 8
    else:
        order = rng.permutation(n)
        ops = rng.integers(0, 8, n)[order]
    return torch.from_numpy(order).to(device), torch.from_numpy(ops).to(device)


def _check_loss(loss: float, stage: str, epoch: int, where: str) -> None:
    if not math.isfinite(loss) or loss > DIVERGENCE_LOSS:
        raise TrainingDiverged(f"{stage} diverged at epoch {epoch}, {where}: loss {loss}")


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
    channels_last = _switch(training.channels_last, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    train_x, train_y = _to_device(*train, device, "training")
    val_x, val_y = _to_device(*val, device, "validation")
    run = {
        **run,
        "config": model_config(training, lr),
        "seed": int(seed),
        "train_size": len(train_x),
        "val_size": len(val_x),
    }
    if _SHARED.get() is not None and (meta := _finished(out, run)) is not None:
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
    step = make_train_step(net, optimizer, amp, training.loss)

    ckpt_path = Path(f"{out}.ckpt")
    history, best = _resume(ckpt_path, run, device, model, optimizer)
    for epoch in range(len(history), training.epochs if method.trains else 0):
        if _stopped_at(history, training.early_stopping) is not None:
            break
        start = time.perf_counter()
        epoch_lr = lr * training.lr_decay**epoch
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr * group["lr_scale"]
        method.set_epoch(model, epoch)
        order, ops = _epoch_order(seed, stage, epoch, len(train_x), training.augmentation, device)
        train_loss = _train_loss(step, train_x, train_y, order, ops, training, channels_last, stage, epoch)
        val_loss = mean_loss(net, val_x, val_y, training.batch_size, amp, channels_last, training.loss)
        _check_loss(val_loss, stage, epoch + 1, "validation")
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
        _save_checkpoint(ckpt_path, run, model, optimizer, history, best)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record)
    if best["state_dict"] is None:  # no epoch ran (adabn): the adapted model is the result
        val_loss = None
        if not run.get("unlabelled_target"):
            val_loss = mean_loss(net, val_x, val_y, training.batch_size, amp, channels_last, training.loss)
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


def _finished(out: Path, run: dict) -> dict | None:
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
    expected = json.loads(json.dumps(run, default=str))
    differing = sorted(k for k in expected if meta.get(k) != expected[k])
    if differing:
        logger.info("retraining %s: its run differs in %s", out, ", ".join(differing))
        return None
    return meta


def _resume(ckpt_path: Path, run: dict, device, model: UNet, optimizer) -> tuple[list, dict]:
    """History and best epoch so far, from a matching checkpoint (loaded into model and optimizer)."""
    state = _load_checkpoint(ckpt_path, run, device)
    if state is None:
        return [], {"epoch": None, "val_loss": math.inf, "state_dict": None}
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    logger.info("%s: resuming %s after epoch %d", run["stage"], ckpt_path, len(state["history"]))
    return state["history"], state["best"]


def _train_loss(
    step, train_x, train_y, order, ops, training: Training, channels_last: bool, stage: str, epoch: int
) -> float:
    """One epoch of training steps; its mean training loss (offset removed), every step checked."""
    batch_size = training.batch_size
    losses = train_epoch(step, train_x, train_y, order, ops, batch_size, channels_last)
    losses = losses.tolist()  # the epoch's only device sync; names the first bad step
    for i, loss in enumerate(losses, 1):
        _check_loss(loss, stage, epoch + 1, f"step {i}")
    sizes = [min(batch_size, len(order) - s) for s in range(0, len(order), batch_size)]
    return float(np.dot(losses, sizes) / len(order)) - loss_offset(training.loss)


def _save_checkpoint(path: Path, run: dict, model: UNet, optimizer, history: list, best: dict) -> None:
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


def _load_checkpoint(path: Path, run: dict, device: torch.device) -> dict | None:
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
    old = state.get("run") or {}
    if old == run:
        return state
    differing = sorted(k for k in set(old) | set(run) if k != "inputs" and old.get(k) != run.get(k))
    if differing:
        logger.warning("ignoring checkpoint %s: written by a different run (differs in %s)", path, ", ".join(differing))
    else:
        before = old.get("inputs") or {}
        changed = [name for name, sha in run["inputs"].items() if before.get(name) != sha]
        logger.warning(
            "discarded checkpoint %s: the content of input(s) %s changed since it was written", path, ", ".join(changed)
        )
    return None
