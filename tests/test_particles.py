"""Particle instances from probability maps and their detection against boxes."""

import itertools

import numpy as np
import pytest
from scipy import ndimage
from skimage import morphology, segmentation

from emsim.learning import particles


def discs(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.any([(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2 for cy, cx in centres], axis=0)


def test_touching_particles_are_split_and_single_ones_are_not():
    touching = discs((80, 120), [(40, 40), (40, 68)], 15)
    assert particles.instances_from_mask(touching).max() == 1
    split = particles.instances_from_probability(touching.astype(float))
    assert split.max() == 2 and np.array_equal(split > 0, touching)
    halves = [np.bincount(split[:, :54].ravel(), minlength=3)[1:], np.bincount(split[:, 54:].ravel(), minlength=3)[1:]]
    assert halves[0].argmax() != halves[1].argmax(), "each disc is one instance"
    yy, xx = np.mgrid[:80, :120]
    ellipse = ((yy - 40) / 10) ** 2 + ((xx - 60) / 40) ** 2 < 1
    assert particles.instances_from_probability(ellipse.astype(float)).max() == 1
    assert particles.instances_from_probability(touching.astype(float), split_touching=False).max() == 1


def test_small_instances_are_dropped_and_labels_renumbered():
    mask = discs((60, 60), [(15, 15)], 8) | discs((60, 60), [(45, 45)], 2)
    labels = particles.instances_from_probability(mask * 0.9, min_area_px=20)
    assert labels.max() == 1 and labels[15, 15] == 1 and labels[45, 45] == 0
    assert particles.instances_from_probability(np.zeros((20, 20))).max() == 0


def test_boxes_of_instances_in_pixel_edges():
    labels = np.zeros((10, 10), np.int32)
    labels[2:5, 3] = 1
    labels[7, 6:9] = 2
    assert particles.boxes_of_instances(labels).tolist() == [[3, 2, 4, 5], [6, 7, 9, 8]]


def test_box_matching_threshold_and_counts():
    true = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float)
    shifted = true[:1] + [3.7, 0, 3.7, 0]  # IoU 6.3 / 13.7 = 0.46
    assert particles.box_iou(true[:1], shifted)[0, 0] == pytest.approx(6.3 / 13.7)
    at_half = particles.match_boxes(true, shifted)
    assert (at_half["tp"], at_half["fp"], at_half["fn"]) == (0, 1, 3)
    at_03 = particles.match_boxes(true, shifted, iou_threshold=0.3)
    assert (at_03["tp"], at_03["fp"], at_03["fn"]) == (1, 0, 2)
    empty = particles.match_boxes(true, np.zeros((0, 4)))
    assert (empty["tp"], empty["fp"], empty["fn"], empty["n_pred"]) == (0, 0, 3, 0)


def test_matching_is_optimal_where_greedy_is_not():
    """Greedy (best IoU first) pairs t0 with p0 (0.8) and leaves t1 unmatched; optimal pairs both."""
    true = np.array([[0, 0, 10, 10], [0, 3, 10, 13]], float)
    pred = np.array([[0, 1, 10, 11], [0, -3, 10, 7]], float)
    iou = particles.box_iou(true, pred)
    assert iou[0, 0] > iou[0, 1] >= 0.5 and iou[1, 0] >= 0.5 and iou[1, 1] < 0.5
    assert particles.match_boxes(true, pred)["tp"] == 2


def test_matching_equals_exhaustive_search_on_random_boxes():
    """An independent reference: the largest one-to-one set of pairs at IoU >= 0.5 (and, among those,
    the largest IoU sum) by trying every assignment."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        corners = rng.uniform(0, 20, (4, 2))
        true = np.column_stack([corners, corners + 8])
        pred = true[rng.permutation(4)[:3]] + rng.normal(0, 2, (3, 4))
        iou = particles.box_iou(true, pred)
        best = max(
            sum(iou[t, p] >= 0.5 for t, p in zip(perm, range(3))) for perm in itertools.permutations(range(4), 3)
        )
        assert particles.match_boxes(true, pred)["tp"] == best


def test_combine_sums_counts_and_measures_sizes():
    a = particles.match_boxes(np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([[0, 0, 10, 10]]))
    b = particles.match_boxes(np.array([[0, 0, 20, 20]]), np.array([[0, 0, 20, 20], [50, 50, 52, 52]]))
    result = particles.combine([a, b], pixel_size_A=5.0)  # 0.5 nm per px
    assert (result["n_true"], result["n_pred"]) == (3, 3)
    assert result["detection_precision"] == pytest.approx(2 / 3) and result["detection_recall"] == pytest.approx(2 / 3)
    assert result["detection_f1"] == pytest.approx(2 / 3)
    assert result["count_error"] == 0 and result["abs_count_error"] == 1
    assert result["size_error_nm"] == 0
    # sizes 5, 5, 10 nm true against 5, 10, 1 nm predicted
    assert result["size_wasserstein_nm"] == pytest.approx(np.mean(np.abs(np.sort([5, 5, 10]) - np.sort([5, 10, 1]))))
    nothing = particles.combine([particles.match_boxes(np.zeros((0, 4)), np.zeros((0, 4)))], 5.0)
    assert nothing["detection_f1"] == 0 and nothing["size_wasserstein_nm"] is None


def test_instances_of_a_noisy_probability_map_recover_well_separated_particles():
    rng = np.random.default_rng(1)
    centres = [(20 + 40 * i, 20 + 40 * j) for i in range(4) for j in range(4)]
    truth = discs((160, 160), centres, 9)
    probability = ndimage.gaussian_filter(truth + rng.normal(0, 0.3, truth.shape), 1.5)
    labels = particles.instances_from_probability(probability, min_area_px=30)
    true_boxes = particles.boxes_of_instances(particles.instances_from_mask(truth))
    result = particles.match_boxes(true_boxes, particles.boxes_of_instances(labels))
    assert result["tp"] == 16 and result["fp"] <= 1


def test_instance_matching_equals_stardist():
    matching = pytest.importorskip("stardist.matching", reason="StarDist (the reference) is not installed").matching
    rng = np.random.default_rng(3)
    for _ in range(20):
        field = ndimage.gaussian_filter(rng.normal(size=(64, 64)), 3)
        true = ndimage.label(field > 0.1)[0]
        pred = ndimage.label(field + ndimage.gaussian_filter(rng.normal(size=(64, 64)), 3) > 0.1)[0]  # overlapping
        for threshold in particles.IOU_THRESHOLDS:
            ours = particles.match_instances(true, pred, threshold)
            theirs = matching(true, pred, thresh=threshold)
            assert (ours["tp"], ours["fp"], ours["fn"]) == (theirs.tp, theirs.fp, theirs.fn)


def test_instance_matching_counts_and_panoptic_quality():
    true = np.zeros((20, 20), np.int32)
    true[2:8, 2:8], true[12:18, 12:18] = 1, 2
    pred = np.zeros_like(true)
    pred[2:8, 3:8] = 1  # IoU 30/36 with true 1
    pred[0:2, 15:20] = 2  # false
    result = particles.match_instances(true, pred)
    assert (result["tp"], result["fp"], result["fn"]) == (1, 1, 1) and result["pairs"] == [(0, 0)]
    combined = particles.combine([result], pixel_size_A=10.0)
    assert combined["panoptic_quality"] == pytest.approx((30 / 36) / (1 + 0.5 + 0.5))
    thresholds = dict((t, tp) for t, tp, _, _ in result["by_threshold"])
    assert thresholds[0.8] == 1 and thresholds[0.9] == 0
    assert combined["mean_f1"] == pytest.approx(np.mean([0.5] * 6 + [0.0]))
    assert result["true_sizes_px"] == pytest.approx([2 * np.sqrt(36 / np.pi)] * 2)


@pytest.mark.parametrize("threshold", [0.0, 1.5, float("nan")])
def test_iou_threshold_out_of_range(threshold):
    with pytest.raises(ValueError, match="iou_threshold must lie in"):
        particles.match_boxes(np.zeros((1, 4)), np.zeros((1, 4)), threshold)


def global_watershed(probability: np.ndarray, min_depth_px: float) -> np.ndarray:
    """The reference split: one h-maxima watershed of the whole map (components without a marker kept)."""
    mask = probability >= 0.5
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    markers, _ = ndimage.label(morphology.h_maxima(distance, min_depth_px), structure=np.ones((3, 3)))
    split = segmentation.watershed(-distance, markers, mask=mask, connectivity=2)
    unreached = mask & (split == 0)
    split[unreached] = ndimage.label(unreached, structure=np.ones((3, 3)))[0][unreached] + split.max()
    return split


@pytest.mark.parametrize("seed", range(6))
def test_split_per_component_equals_one_global_watershed(seed):
    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.normal(size=(96, 96)), 4)
    probability = (blobs > np.quantile(blobs, 0.6)).astype(float)
    mine, reference = particles.instances_from_probability(probability), global_watershed(probability, 2.0)
    assert mine.max() == reference.max()
    overlap = np.zeros((mine.max() + 1, reference.max() + 1), int)
    np.add.at(overlap, (mine.ravel(), reference.ravel()), 1)
    assert overlap.max(axis=1).sum() >= 0.99 * mine.size  # the same particles; ties on their borders may differ


def test_ids_without_pixels_are_no_instances():
    """A scene's particle outside the image window keeps its id but has no pixel: not a missed particle."""
    true = np.zeros((20, 20), np.int32)
    true[2:8, 2:8] = 3  # ids 1 and 2 lie outside the window
    pred = np.zeros((20, 20), np.int32)
    pred[2:8, 2:8] = 5
    result = particles.match_instances(true, pred)
    assert (result["n_true"], result["n_pred"], result["tp"], result["fn"]) == (1, 1, 1, 0)
