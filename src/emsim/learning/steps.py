"""What one training step and one epoch do: the loss, dihedral augmentation, the sample order of
an epoch, the validation loss, divergence checks (:mod:`emsim.learning.train` runs the loop)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from emsim.learning.metrics import STUDY_LOSS_OFFSET
from emsim.study.settings import STAGES

DIVERGENCE_LOSS = 1e3  # a 2-class cross-entropy above this counts as exploded


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or exploded; the message names stage, epoch and step."""


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


def epoch_order(
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


def check_loss(loss: float, stage: str, epoch: int, where: str) -> None:
    if not math.isfinite(loss) or loss > DIVERGENCE_LOSS:
        raise TrainingDiverged(f"{stage} diverged at epoch {epoch}, {where}: loss {loss}")
