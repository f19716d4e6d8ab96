"""Hand-computed checks of the segmentation metrics and their edge cases."""

import math

import numpy as np
import pytest
import torch

from emsim.learning.metrics import (
    METRICS,
    STUDY_LOSS_OFFSET,
    MetricAccumulator,
    confusion,
    metrics_from_counts,
    segmentation_metrics,
)


def logits_for(pred: np.ndarray, margin: float = 2.0) -> torch.Tensor:
    """Two-class logits (N, 2, H, W) whose arg-max is ``pred``: class-1 logit = +-margin/2."""
    p = torch.as_tensor(pred, dtype=torch.float32)
    return torch.stack([torch.zeros_like(p), margin * (2 * p - 1)], dim=1)


def ce_of_margin(margin: float, correct: bool) -> float:
    """Cross-entropy of a pixel whose logits differ by ``margin`` (right or wrong side)."""
    z = margin if correct else -margin
    return math.log1p(math.exp(-z))


def test_empty_target_and_prediction_is_perfect():
    target = torch.zeros(2, 4, 4, dtype=torch.uint8)
    m = segmentation_metrics(logits_for(np.zeros((2, 4, 4))), target)
    assert m["iou"] == m["dice"] == m["precision"] == m["recall"] == m["accuracy"] == 1.0
    assert m["cross_entropy"] == pytest.approx(ce_of_margin(2.0, True))


def test_all_ones_perfect():
    target = torch.ones(1, 3, 5, dtype=torch.uint8)
    m = segmentation_metrics(logits_for(np.ones((1, 3, 5))), target)
    assert m["iou"] == m["dice"] == m["precision"] == m["recall"] == m["accuracy"] == 1.0


def test_inverted_prediction_is_zero_everywhere():
    target = np.zeros((1, 4, 4), np.uint8)
    target[0, :2] = 1
    m = segmentation_metrics(logits_for(1 - target, margin=3.0), torch.as_tensor(target))
    assert m["iou"] == m["dice"] == m["precision"] == m["recall"] == m["accuracy"] == 0.0
    assert m["cross_entropy"] == pytest.approx(ce_of_margin(3.0, False))


def test_empty_prediction_nonempty_target():
    target = torch.ones(1, 2, 2, dtype=torch.uint8)
    m = segmentation_metrics(logits_for(np.zeros((1, 2, 2))), target)
    assert (m["iou"], m["dice"], m["precision"], m["recall"], m["accuracy"]) == (0, 0, 0, 0, 0)


def test_nonempty_prediction_empty_target():
    target = torch.zeros(1, 2, 2, dtype=torch.uint8)
    pred = np.array([[[1, 0], [0, 0]]])
    m = segmentation_metrics(logits_for(pred), target)
    assert (m["iou"], m["dice"], m["precision"], m["recall"]) == (0, 0, 0, 0)
    assert m["accuracy"] == 0.75


def test_small_known_case():
    # target 4 particle pixels; prediction hits 3, adds 2 false positives, misses 1
    target = np.array([[[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]])
    pred = np.array([[[1, 1, 1, 0], [1, 0, 0, 1], [0, 0, 0, 0]]])
    tp, fp, fn, tn = 3, 2, 1, 6
    assert confusion(torch.as_tensor(pred), torch.as_tensor(target)).tolist() == [tp, fp, fn, tn]
    m = segmentation_metrics(logits_for(pred, margin=1.0), torch.as_tensor(target))
    assert m["iou"] == pytest.approx(3 / 6)
    assert m["dice"] == pytest.approx(6 / 9)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(9 / 12)
    expected_ce = (9 * ce_of_margin(1.0, True) + 3 * ce_of_margin(1.0, False)) / 12
    assert m["cross_entropy"] == pytest.approx(expected_ce)


def test_cross_entropy_matches_torch_and_probabilities_agree():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 8, 8, generator=gen)
    target = torch.randint(0, 2, (3, 8, 8), generator=gen)
    from_logits = segmentation_metrics(logits, target)
    from_probs = segmentation_metrics(logits.softmax(1), target, probabilities=True)
    assert from_logits["cross_entropy"] == pytest.approx(
        torch.nn.functional.cross_entropy(logits, target).item(), rel=1e-6
    )
    for name in METRICS:
        assert from_probs[name] == pytest.approx(from_logits[name], rel=1e-5)


def test_study_loss_is_cross_entropy_of_probabilities_minus_its_minimum():
    assert STUDY_LOSS_OFFSET == pytest.approx(0.3133, abs=1e-4)
    target = torch.tensor([[[1, 0]]])
    # perfect, fully confident prediction: 0 after the offset (its floor)
    perfect = segmentation_metrics(torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]])[None], target, probabilities=True)
    assert perfect["study_loss"] == pytest.approx(0.0, abs=1e-7)
    # fully confident and wrong: -log(1 / (1 + e)) - ln(1 + 1/e) = 1 per pixel
    wrong = segmentation_metrics(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])[None], target, probabilities=True)
    assert wrong["study_loss"] == pytest.approx(1.0, rel=1e-6)
    # from logits (0, ln 3) -> p1 = 3/4 on pixel 1 (target 1) and pixel 2 (target 0):
    # pixel 1: log(1 + e^(1/4 - 3/4)), pixel 2: log(1 + e^(3/4 - 1/4))
    logits = torch.tensor([[[0.0, 0.0]], [[math.log(3), math.log(3)]]])[None]
    expected = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(0.5))) / 2 - 0.31326168751822286
    assert segmentation_metrics(logits, target)["study_loss"] == pytest.approx(expected, rel=1e-6)


def test_accumulation_is_dataset_level_not_mean_of_images():
    # image 1: perfect on 1 particle pixel; image 2: 3 particle pixels, 1 found -> pooled IoU 2/4
    target = np.zeros((2, 2, 2), np.uint8)
    target[0, 0, 0] = 1
    target[1, 0, :] = 1
    target[1, 1, 0] = 1
    pred = np.zeros_like(target)
    pred[0, 0, 0] = 1
    pred[1, 0, 0] = 1
    acc = MetricAccumulator()
    for i in range(2):
        acc.update(logits_for(pred[i : i + 1]), torch.as_tensor(target[i : i + 1]))
    pooled = acc.result()
    assert pooled["iou"] == pytest.approx(2 / 4)  # mean of per-image IoU would be (1 + 1/3) / 2
    assert pooled == pytest.approx(segmentation_metrics(logits_for(pred), torch.as_tensor(target)))


def test_nothing_accumulated_is_nan():
    assert all(math.isnan(v) for v in MetricAccumulator().result().values())
    assert all(math.isnan(v) for v in metrics_from_counts(0, 0, 0, 0, 0.0, 0.0).values())


def test_shape_errors():
    with pytest.raises(ValueError, match="target shape"):
        segmentation_metrics(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="outputs must be"):
        segmentation_metrics(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
