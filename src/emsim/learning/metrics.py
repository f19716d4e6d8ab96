"""Segmentation metrics of the particle class, accumulated over batches.

Every metric is dataset-level: confusion counts and the cross-entropy sum are accumulated over
all pixels of all batches, then turned into metrics once (not a mean of per-image metrics).
Class 1 is the particle (positive) class; predictions are the arg-max over classes.

With TP, FP, FN, TN the particle-class confusion counts:

- ``cross_entropy`` = mean over pixels of -log softmax(logits)[target] (nats per pixel)
- ``study_loss`` = the seed study's reported loss: mean over pixels of
  -log softmax(p)[target] with p = softmax(logits) (PyTorch's CrossEntropyLoss fed probabilities),
  minus :data:`STUDY_LOSS_OFFSET` = ln(1 + e^-1) = 0.3133, that quantity's minimum for 2 classes
  (0 for a perfect, fully confident prediction; at most ln(1 + e) - 0.3133 = 1.0)
- ``iou``       = TP / (TP + FP + FN)
- ``dice``      = 2 TP / (2 TP + FP + FN)  (= F1)
- ``precision`` = TP / (TP + FP)
- ``recall``    = TP / (TP + FN)
- ``accuracy``  = (TP + TN) / all pixels (both classes)

Edge cases (no particle in target and/or prediction):

- empty target and empty prediction: iou = dice = precision = recall = 1 (nothing to find,
  nothing wrongly found);
- empty prediction, non-empty target: precision = 0 (not 1: predicting nothing where particles
  exist is a failure), recall = iou = dice = 0;
- non-empty prediction, empty target: recall = 0 (every predicted pixel is wrong),
  precision = iou = dice = 0;
- no pixels at all: every metric is NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

METRICS = ("cross_entropy", "study_loss", "iou", "dice", "precision", "recall", "accuracy")
STUDY_LOSS_OFFSET = math.log1p(math.exp(-1.0))
PARTICLE = 1
_EPS = 1e-12


def _ratio(numerator: int, denominator: int, both_empty: bool) -> float:
    """numerator / denominator; 1 if the denominator is 0 because nothing exists on either side,
    0 if it is 0 although the other side has particles."""
    if denominator == 0:
        return 1.0 if both_empty else 0.0
    return numerator / denominator


def metrics_from_counts(tp: int, fp: int, fn: int, tn: int, ce_sum: float, study_sum: float) -> dict[str, float]:
    """Metrics (see module docstring) from confusion counts, the summed pixel cross-entropy and
    the summed pixel cross-entropy of the probabilities (without offset)."""
    n = tp + fp + fn + tn
    if n == 0:
        return {name: math.nan for name in METRICS}
    empty = tp + fp + fn == 0
    return {
        "cross_entropy": ce_sum / n,
        "study_loss": study_sum / n - STUDY_LOSS_OFFSET,
        "iou": _ratio(tp, tp + fp + fn, empty),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, empty),
        "precision": _ratio(tp, tp + fp, empty),
        "recall": _ratio(tp, tp + fn, empty),
        "accuracy": (tp + tn) / n,
    }


class MetricAccumulator:
    """Accumulates confusion counts and both losses over batches (on the batches' device).

    ``update(outputs, target)`` takes ``outputs`` (N, C, H, W) logits, or probabilities with
    ``probabilities=True``, and integer ``target`` (N, H, W); ``result()`` gives the metrics dict.
    """

    def __init__(self) -> None:
        self._counts: torch.Tensor | None = None  # int64 [tp, fp, fn, tn]
        self._ce_sum: torch.Tensor | None = None  # float64
        self._study_sum: torch.Tensor | None = None  # float64

    def update(self, outputs: torch.Tensor, target: torch.Tensor, *, probabilities: bool = False) -> None:
        """Add one batch."""
        if outputs.ndim != 4 or outputs.shape[1] < 2:
            raise ValueError(f"outputs must be (N, C>=2, H, W), got {tuple(outputs.shape)}")
        if target.shape != outputs.shape[:1] + outputs.shape[2:]:
            raise ValueError(f"target shape {tuple(target.shape)} does not match outputs {tuple(outputs.shape)}")
        outputs = outputs.float()
        target = target.long()
        if probabilities:
            probs = outputs
            ce_sum = F.nll_loss(torch.log(outputs.clamp_min(_EPS)), target, reduction="sum")
        else:
            probs = outputs.softmax(dim=1)
            ce_sum = F.cross_entropy(outputs, target, reduction="sum")
        study_sum = F.cross_entropy(probs, target, reduction="sum")
        counts = confusion(outputs.argmax(dim=1), target)
        if self._counts is None:
            self._counts, self._ce_sum, self._study_sum = counts, ce_sum.double(), study_sum.double()
        else:
            self._counts += counts
            self._ce_sum += ce_sum.double()
            self._study_sum += study_sum.double()

    def result(self) -> dict[str, float]:
        """Dataset-level metrics of everything added so far (NaN if nothing was added)."""
        if self._counts is None:
            return metrics_from_counts(0, 0, 0, 0, 0.0, 0.0)
        tp, fp, fn, tn = (int(c) for c in self._counts.cpu())
        return metrics_from_counts(tp, fp, fn, tn, float(self._ce_sum), float(self._study_sum))


def confusion(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Particle-class counts ``[tp, fp, fn, tn]`` (int64 tensor) of class maps of equal shape."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    p = pred == PARTICLE
    t = target == PARTICLE
    tp = (p & t).sum()
    fp = (p & ~t).sum()
    fn = (~p & t).sum()
    tn = p.numel() - tp - fp - fn
    return torch.stack([tp, fp, fn, tn]).long()


def segmentation_metrics(
    outputs: torch.Tensor, target: torch.Tensor, *, probabilities: bool = False
) -> dict[str, float]:
    """Metrics of a single batch (shortcut for one :class:`MetricAccumulator` update)."""
    accumulator = MetricAccumulator()
    accumulator.update(outputs, target, probabilities=probabilities)
    return accumulator.result()
