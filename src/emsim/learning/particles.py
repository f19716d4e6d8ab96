"""Particles from segmentations: instances of a probability map, and their detection against boxes.

Instances (:func:`instances_from_probability`): connected components (8-connectivity) of
``probability >= threshold``; touching particles are split by a watershed of the distance
transform (scikit-image): markers are the h-maxima of the distance to the background (the
maxima that stand at least ``min_depth_px`` above the neck joining them to a higher one), flooded
over the inverted distance within the mask; instances smaller than ``min_area_px`` are dropped.
Two touching discs of radius r whose neck is narrower than 2 (r - ``min_depth_px``) are split; the
small ripples of an irregular outline are not.

Detection (:func:`match_instances` on masks, :func:`match_boxes` on boxes): optimal one-to-one
matching, the definition of StarDist's ``matching``: the assignment (Hungarian) with the most
pairs at IoU >= ``iou_threshold``, ties broken by their IoU sum; precision = tp / (tp + fp),
recall = tp / (tp + fn), F1 = 2 tp / (2 tp + fp + fn), each 0 where its denominator is 0;
panoptic quality = sum of matched IoUs / (tp + fp/2 + fn/2).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, optimize, stats
from skimage import morphology, segmentation

IOU_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # mean F1 over these, as instance benchmarks report
EIGHT = np.ones((3, 3), bool)  # 8-connectivity
SIZE_EDGES_NM = np.linspace(0.0, 10.0, 41)  # size histogram bins (0.25 nm); larger sizes count in the last


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
        labels = _split_touching(mask, labels, min_depth_px)
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area_px
    keep[0] = False
    renumber = np.zeros(len(areas), np.int32)
    renumber[keep] = np.arange(1, keep.sum() + 1)
    return renumber[labels]


def _split_touching(mask: np.ndarray, labels: np.ndarray, min_depth_px: float) -> np.ndarray:
    """The watershed split of each component of ``labels`` with two or more h-maxima of its
    distance to the background. Only components with more than one local-maximum region of the
    distance can have two h-maxima, and each is flooded in its own bounding box: the particles of
    one watershed of the whole map (pixels tied between two may fall to the other), at the cost of
    the components that need it."""
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    peaks, _ = ndimage.label(mask & (distance == ndimage.maximum_filter(distance, size=3)), structure=EIGHT)
    out, next_id = labels.copy(), int(labels.max()) + 1
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        own = labels[box] == k
        if len(np.unique(peaks[box][own])) < 2:
            continue
        depth = np.where(own, distance[box], 0.0)
        markers, n = ndimage.label(morphology.h_maxima(depth, min_depth_px) & own, structure=EIGHT)
        if n < 2:
            continue
        flooded = segmentation.watershed(-depth, markers, mask=own, connectivity=2)
        crop = out[box]
        for m in range(2, n + 1):
            crop[flooded == m] = next_id
            next_id += 1
    return out


def cut_particles(probability: np.ndarray, pixel_size_A: float | None, settings) -> np.ndarray:
    """:func:`instances_from_probability` as a study's ``instances`` block says
    (:class:`emsim.study.settings.Instances`): its ``min_area_nm2`` at ``pixel_size_A`` (no
    minimum without a pixel size), ``split_touching`` and ``min_depth_px``."""
    return instances_from_probability(
        probability,
        min_area_px=0.0 if pixel_size_A is None else settings.min_area_nm2 * 100 / pixel_size_A**2,
        split_touching=settings.split_touching,
        min_depth_px=settings.min_depth_px,
    )


def boxes_of_instances(labels: np.ndarray) -> np.ndarray:
    """Bounding box of each instance 1..n as (n, 4) ``x0, y0, x1, y1`` in pixel edges."""
    slices = ndimage.find_objects(labels)
    boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in slices if s is not None]
    return np.array(boxes, np.float64).reshape(-1, 4)


def outside_boxes(masks: list[np.ndarray], boxes: list[np.ndarray]) -> float | None:
    """Fraction of the masks' pixels that lie outside every box ``x0, y0, x1, y1`` of their map (the
    support or background painted as particle, where only the boxes are known); None without any
    masked pixel."""
    outside = total = 0
    for mask, map_boxes in zip(masks, boxes):
        inside = np.zeros(mask.shape, bool)
        for x0, y0, x1, y1 in np.asarray(map_boxes, float).reshape(-1, 4):
            inside[max(int(np.floor(y0)), 0) : int(np.ceil(y1)), max(int(np.floor(x0)), 0) : int(np.ceil(x1))] = True
        outside += int((mask & ~inside).sum())
        total += int(mask.sum())
    return outside / total if total else None


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of boxes ``x0, y0, x1, y1``."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def instance_iou(true_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """IoU matrix (n_true, n_pred) of the instances 1..n of two label maps."""
    n_true, n_pred = int(true_labels.max()), int(pred_labels.max())
    pairs = np.bincount(
        true_labels.ravel().astype(np.int64) * (n_pred + 1) + pred_labels.ravel(), minlength=(n_true + 1) * (n_pred + 1)
    ).reshape(n_true + 1, n_pred + 1)
    inter = pairs[1:, 1:].astype(float)
    union = pairs[1:, :].sum(axis=1)[:, None] + pairs[:, 1:].sum(axis=0)[None, :] - inter
    return inter / np.maximum(union, 1)


def equivalent_diameters_px(labels: np.ndarray) -> np.ndarray:
    """Equivalent-disc diameter 2 sqrt(area / pi) of each instance 1..n (px)."""
    return 2 * np.sqrt(np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)[1:] / np.pi)


def match_instances(true_labels: np.ndarray, pred_labels: np.ndarray, iou_threshold: float = 0.5) -> dict:
    """Optimal one-to-one matching of instance maps at mask IoU >= ``iou_threshold`` (StarDist's
    ``matching``, criterion iou; ids without pixels are no instances): the :func:`match_boxes` fields, with equivalent diameters as
    sizes, and ``by_threshold``: (threshold, tp, fp, fn) at each of ``IOU_THRESHOLDS``."""
    true_labels, pred_labels = _sequential(true_labels), _sequential(pred_labels)
    iou = instance_iou(true_labels, pred_labels)
    result = _matched(iou, iou_threshold, equivalent_diameters_px(true_labels), equivalent_diameters_px(pred_labels))
    by_threshold = []
    for threshold in IOU_THRESHOLDS:
        tp = len(_assignment(iou, threshold))
        by_threshold.append((threshold, tp, iou.shape[1] - tp, iou.shape[0] - tp))
    return result | {"by_threshold": by_threshold}


def particle_table(labels: np.ndarray, pixel_size_A: float | None, maps: dict[str, np.ndarray]) -> list[dict]:
    """One row per instance 1..n: id, centroid (px, array axes), area (px and nm^2), equivalent
    diameter (nm) and the mean of each map in ``maps`` (name -> array shaped like ``labels``) over
    its pixels as ``mean_<name>``; the nm fields are None without a pixel size."""
    n = int(labels.max(initial=0))
    index = np.arange(1, n + 1)
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    centroids = np.array(ndimage.center_of_mass(np.ones(labels.shape), labels, index)).reshape(-1, 2)
    means = {name: ndimage.mean(values, labels, index) for name, values in maps.items()}
    nm = None if pixel_size_A is None else pixel_size_A / 10
    return [
        {
            "id": int(k),
            "centroid_y_px": float(centroids[k - 1, 0]),
            "centroid_x_px": float(centroids[k - 1, 1]),
            "area_px": int(area[k - 1]),
            "area_nm2": None if nm is None else float(area[k - 1] * nm**2),
            "diameter_nm": None if nm is None else float(2 * np.sqrt(area[k - 1] / np.pi) * nm),
        }
        | {f"mean_{name}": float(mean[k - 1]) for name, mean in means.items()}
        for k in index
    ]


def _sequential(labels: np.ndarray) -> np.ndarray:
    """``labels`` renumbered 1..n over the ids present (an id with no pixel is no instance)."""
    ids = np.unique(labels)
    lookup = np.zeros(int(ids.max(initial=0)) + 1, np.int64)
    present = ids[ids > 0]
    lookup[present] = np.arange(1, len(present) + 1)
    return lookup[labels]


def box_sizes(boxes: np.ndarray) -> np.ndarray:
    """The size of each box ``x0, y0, x1, y1``: the square root of its area (px)."""
    return np.sqrt(np.clip((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 0, None))


def match_boxes(true_boxes: np.ndarray, pred_boxes: np.ndarray, iou_threshold: float = 0.5) -> dict:
    """Optimal one-to-one matching at box IoU >= ``iou_threshold``: tp, fp, fn, n_true, n_pred, the
    matched ``pairs`` (true index, predicted index) and the sizes (sqrt of box area, px) of all
    true, all predicted and the matched boxes."""
    true_boxes, pred_boxes = np.asarray(true_boxes, float).reshape(-1, 4), np.asarray(pred_boxes, float).reshape(-1, 4)
    iou = box_iou(true_boxes, pred_boxes)
    return _matched(iou, iou_threshold, box_sizes(true_boxes), box_sizes(pred_boxes))


def _matched(iou: np.ndarray, iou_threshold: float, true_size: np.ndarray, pred_size: np.ndarray) -> dict:
    """Counts, pairs and sizes of the optimal assignment on an IoU matrix (true x predicted)."""
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must lie in (0, 1], got {iou_threshold}")
    matched = _assignment(iou, iou_threshold)
    tp = len(matched)
    return {
        "tp": tp,
        "fp": iou.shape[1] - tp,
        "fn": iou.shape[0] - tp,
        "n_true": iou.shape[0],
        "n_pred": iou.shape[1],
        "iou_sum": float(sum(iou[r, c] for r, c in matched)),
        "pairs": [(int(r), int(c)) for r, c in matched],
        "true_sizes_px": true_size.tolist(),
        "pred_sizes_px": pred_size.tolist(),
        "matched_size_pairs_px": [(float(true_size[r]), float(pred_size[c])) for r, c in matched],
    }


def _assignment(iou: np.ndarray, iou_threshold: float) -> list[tuple[int, int]]:
    """The (true, predicted) pairs at IoU >= ``iou_threshold`` of the assignment with the most such
    pairs, ties broken by their IoU sum (StarDist's cost: the IoU term sums to less than 1)."""
    if not iou.size:
        return []
    weight = (iou >= iou_threshold) + iou / (2 * min(iou.shape))
    rows, cols = optimize.linear_sum_assignment(weight, maximize=True)
    return [(r, c) for r, c in zip(rows, cols) if iou[r, c] >= iou_threshold]


def combine(results: list[dict], pixel_size_A: float) -> dict:
    """Dataset-level detection from per-image :func:`match_boxes` or :func:`match_instances` results:
    precision, recall and F1 of the summed counts, mean (signed and absolute) count error per image,
    mean absolute size error of matched particles and Wasserstein-1 distance of the size
    distributions [nm]; for instances also the mean F1 over ``IOU_THRESHOLDS`` and the panoptic
    quality (sum of matched IoUs / (tp + fp/2 + fn/2)); ``size_histogram``: counts of the true and
    the predicted sizes over ``SIZE_EDGES_NM``."""
    tp, fp, fn = (sum(r[k] for r in results) for k in ("tp", "fp", "fn"))
    nm = pixel_size_A / 10
    errors = [r["n_pred"] - r["n_true"] for r in results]
    pairs = np.array([p for r in results for p in r["matched_size_pairs_px"]], float).reshape(-1, 2) * nm
    true_sizes = [s * nm for r in results for s in r["true_sizes_px"]]
    pred_sizes = [s * nm for r in results for s in r["pred_sizes_px"]]
    out = {
        "detection_precision": tp / (tp + fp) if tp + fp else 0.0,
        "detection_recall": tp / (tp + fn) if tp + fn else 0.0,
        "detection_f1": _f1(tp, fp, fn),
        "count_error": float(np.mean(errors)) if errors else None,
        "abs_count_error": float(np.mean(np.abs(errors))) if errors else None,
        "size_error_nm": float(np.abs(pairs[:, 0] - pairs[:, 1]).mean()) if len(pairs) else None,
        "size_wasserstein_nm": float(stats.wasserstein_distance(true_sizes, pred_sizes))
        if true_sizes and pred_sizes
        else None,
        "n_true": sum(r["n_true"] for r in results),
        "n_pred": sum(r["n_pred"] for r in results),
        "size_histogram": {"true": size_histogram(true_sizes), "pred": size_histogram(pred_sizes)},
    }
    if results and all("by_threshold" in r for r in results):
        counts = np.sum([np.array(r["by_threshold"])[:, 1:] for r in results], axis=0)
        out["mean_f1"] = float(np.mean([_f1(*c) for c in counts]))
        denominator = tp + fp / 2 + fn / 2
        out["panoptic_quality"] = sum(r["iou_sum"] for r in results) / denominator if denominator else 0.0
    return out


def size_histogram(sizes_nm: list[float]) -> list[int]:
    """Counts of ``sizes_nm`` in the bins of ``SIZE_EDGES_NM`` (larger sizes in the last bin)."""
    clipped = np.clip(np.asarray(sizes_nm, float), 0.0, SIZE_EDGES_NM[-1] - 1e-9)
    return np.histogram(clipped, SIZE_EDGES_NM)[0].tolist()


def _f1(tp: float, fp: float, fn: float) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
