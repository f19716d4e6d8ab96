"""Particles from segmentations: instances of a probability map, and their detection against boxes.

Instances (:func:`instances_from_probability`): connected components (8-connectivity) of
``probability >= threshold``; touching particles are split by a watershed of the distance
transform (scikit-image): markers are the h-maxima of the distance to the background (the
maxima that stand at least ``min_depth_px`` above the neck joining them to a higher one), flooded
over the inverted distance within the mask; instances smaller than ``min_area_px`` are dropped.
Two touching discs of radius r whose neck is narrower than 2 (r - ``min_depth_px``) are split; the
small ripples of an irregular outline are not.

Detection (:func:`match_boxes`): optimal one-to-one matching of predicted to true boxes by
box IoU (Hungarian assignment on the IoU matrix, pairs below ``iou_threshold`` unmatched), the
definition of StarDist's ``matching`` with boxes in place of masks: precision = tp / (tp + fp),
recall = tp / (tp + fn), F1 = 2 tp / (2 tp + fp + fn), each 0 where its denominator is 0.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, optimize, stats
from skimage import morphology, segmentation

MIN_AREA_NM2 = 1.0  # smallest predicted particle kept [nm^2]
EIGHT = np.ones((3, 3), bool)  # 8-connectivity


def instances_from_mask(mask: np.ndarray) -> np.ndarray:
    """Connected components (8-connectivity) of a binary mask: int32 labels 1..n, 0 = background."""
    labels, _ = ndimage.label(np.asarray(mask, bool), structure=EIGHT)
    return labels.astype(np.int32)


def instances_from_probability(
    probability: np.ndarray,
    threshold: float = 0.5,
    min_area_px: float = 0.0,
    split_touching: bool = True,
    min_depth_px: float = 2.0,
) -> np.ndarray:
    """Particle instances (int32 labels 1..n) of a probability map; see the module docstring."""
    mask = np.asarray(probability) >= threshold
    labels = instances_from_mask(mask)
    if split_touching and labels.max() > 0:
        distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        markers, _ = ndimage.label(morphology.h_maxima(distance, min_depth_px), structure=EIGHT)
        labels = segmentation.watershed(-distance, markers, mask=mask, connectivity=2).astype(np.int32)
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area_px
    keep[0] = False
    renumber = np.zeros(len(areas), np.int32)
    renumber[keep] = np.arange(1, keep.sum() + 1)
    return renumber[labels]


def boxes_of_instances(labels: np.ndarray) -> np.ndarray:
    """Bounding box of each instance 1..n as (n, 4) ``x0, y0, x1, y1`` in pixel edges."""
    slices = ndimage.find_objects(labels)
    boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in slices if s is not None]
    return np.array(boxes, np.float64).reshape(-1, 4)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of boxes ``x0, y0, x1, y1``."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def box_sizes(boxes: np.ndarray) -> np.ndarray:
    """The size of each box ``x0, y0, x1, y1``: the square root of its area (px)."""
    return np.sqrt(np.clip((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 0, None))


def match_boxes(true_boxes: np.ndarray, pred_boxes: np.ndarray, iou_threshold: float = 0.5) -> dict:
    """Optimal one-to-one matching at box IoU >= ``iou_threshold``: tp, fp, fn, n_true, n_pred, the
    matched ``pairs`` (true index, predicted index) and the sizes (sqrt of box area, px) of all
    true, all predicted and the matched boxes."""
    true_boxes, pred_boxes = np.asarray(true_boxes, float).reshape(-1, 4), np.asarray(pred_boxes, float).reshape(-1, 4)
    iou = box_iou(true_boxes, pred_boxes)
    matched = []
    if iou.size:
        rows, cols = optimize.linear_sum_assignment(iou, maximize=True)
        matched = [(r, c) for r, c in zip(rows, cols) if iou[r, c] >= iou_threshold]
    true_size, pred_size = box_sizes(true_boxes), box_sizes(pred_boxes)
    tp = len(matched)
    return {
        "tp": tp,
        "fp": len(pred_boxes) - tp,
        "fn": len(true_boxes) - tp,
        "n_true": len(true_boxes),
        "n_pred": len(pred_boxes),
        "pairs": [(int(r), int(c)) for r, c in matched],
        "true_sizes_px": true_size.tolist(),
        "pred_sizes_px": pred_size.tolist(),
        "matched_size_pairs_px": [(float(true_size[r]), float(pred_size[c])) for r, c in matched],
    }


def combine(results: list[dict], pixel_size_A: float) -> dict:
    """Dataset-level detection from per-image :func:`match_boxes` results: precision, recall and F1
    of the summed counts, mean (signed and absolute) count error per image, mean absolute size
    error of matched particles and Wasserstein-1 distance of the size distributions [nm]."""
    tp, fp, fn = (sum(r[k] for r in results) for k in ("tp", "fp", "fn"))
    nm = pixel_size_A / 10
    errors = [r["n_pred"] - r["n_true"] for r in results]
    pairs = np.array([p for r in results for p in r["matched_size_pairs_px"]], float).reshape(-1, 2) * nm
    true_sizes = [s * nm for r in results for s in r["true_sizes_px"]]
    pred_sizes = [s * nm for r in results for s in r["pred_sizes_px"]]
    return {
        "detection_precision": tp / (tp + fp) if tp + fp else 0.0,
        "detection_recall": tp / (tp + fn) if tp + fn else 0.0,
        "detection_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "count_error": float(np.mean(errors)) if errors else None,
        "abs_count_error": float(np.mean(np.abs(errors))) if errors else None,
        "size_error_nm": float(np.abs(pairs[:, 0] - pairs[:, 1]).mean()) if len(pairs) else None,
        "size_wasserstein_nm": float(stats.wasserstein_distance(true_sizes, pred_sizes))
        if true_sizes and pred_sizes
        else None,
        "n_true": sum(r["n_true"] for r in results),
        "n_pred": sum(r["n_pred"] for r in results),
    }
