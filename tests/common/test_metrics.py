"""Metrics against sklearn, against a brute-force AUPRO, and on hand-checked cases."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from common.metrics import (
    METRIC_NAMES,
    UndefinedMetricError,
    aupro,
    auroc,
    auroc_ranked,
    average_precision,
    average_precision_ranked,
    compute_metrics,
    min_max_normalize,
    normalized_scores,
    rank_pixels,
)


def brute_force_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """The PRO curve point by point at every distinct score, then trapezoids up to fpr_limit."""
    regions = []
    for image_index, mask in enumerate(masks):
        labelled, count = ndimage.label(mask > 0.5, structure=np.ones((3, 3)))
        regions += [(image_index, labelled == region) for region in range(1, count + 1)]
    normal = masks <= 0.5
    points = [(0.0, 0.0)]
    for threshold in np.unique(maps)[::-1]:
        above = maps >= threshold
        pro = np.mean([above[image_index][region].mean() for image_index, region in regions])
        points.append((above[normal].mean(), pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x1 >= fpr_limit:
            y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            return (area + (fpr_limit - x0) * (y0 + y_limit) / 2) / fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    raise AssertionError("the curve never reached the FPR limit")


def random_case(seed: int, quantized: bool) -> tuple[np.ndarray, np.ndarray]:
    """4 images of 12x12: blob-ish random masks (diagonal contacts likely), the last image normal."""
    rng = np.random.default_rng(seed)
    masks = (ndimage.uniform_filter(rng.random((4, 12, 12)), size=(1, 3, 3)) > 0.6).astype(np.float32)
    masks[-1] = 0
    maps = rng.random((4, 12, 12)) + 0.4 * masks
    if quantized:
        maps = np.round(maps * 8) / 8  # many ties, also between normal and anomalous pixels
    return maps.astype(np.float32), masks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_and_ap_match_sklearn_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = (rng.integers(0, 6, 300) + labels * rng.integers(0, 3, 300)).astype(np.float32)
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_auroc_and_ap_match_sklearn_on_continuous_scores():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 500)
    scores = rng.normal(size=500) + labels
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_hand_checked_auroc_and_ap():
    # Positives 0.8 and 0.3; negatives 0.9, 0.8 (tie), 0.1.
    scores = np.array([0.8, 0.3, 0.9, 0.8, 0.1])
    labels = np.array([1, 1, 0, 0, 0])
    # Pairs won: 0.8 beats 0.1 and ties 0.8 (1.5); 0.3 beats 0.1 (1) -> 2.5 / 6.
    assert auroc(scores, labels) == pytest.approx(2.5 / 6, abs=1e-15)
    # At 0.8: recall 1/2, precision 1/3; at 0.3: recall 2/2, precision 2/4.
    assert average_precision(scores, labels) == pytest.approx(0.5 * (1 / 3) + 0.5 * 0.5, abs=1e-15)


def test_pixel_auroc_and_ap_match_sklearn():
    maps, masks = random_case(3, quantized=True)
    pixels = rank_pixels(maps, masks)
    flat_labels, flat_maps = masks.reshape(-1).astype(int), maps.reshape(-1)
    assert auroc_ranked(pixels) == pytest.approx(roc_auc_score(flat_labels, flat_maps), abs=1e-12)
    assert average_precision_ranked(pixels) == pytest.approx(average_precision_score(flat_labels, flat_maps), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("quantized", [True, False])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_aupro_matches_brute_force(seed, quantized, fpr_limit):
    maps, masks = random_case(seed, quantized)
    assert aupro(maps, masks, fpr_limit) == pytest.approx(brute_force_aupro(maps, masks, fpr_limit), abs=1e-12)


def test_aupro_hand_checked_and_normalised_by_the_limit():
    # One row: a 2-pixel region scored 0.8, 0.3; ten normal pixels.
    maps = np.array([[[0.8, 0.3, 0.9, 0.8, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1]]], dtype=np.float32)
    masks = np.zeros_like(maps)
    masks[0, 0, :2] = 1
    # Curve: (0,0) (.1,0) (.2,.5) (.5,.5) (.5,1) (1,1). No point at FPR 0.3, so the segment
    # (.2,.5)-(.5,.5) is cut there: area .1*.25 + .1*.5 = .075, / 0.3 = 0.25
    # (dividing the area up to the last point before the limit, .025, by .2 would give .125).
    assert aupro(maps, masks) == pytest.approx(0.25, abs=1e-12)
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.025 + 0.15 + 0.5, abs=1e-12)
    # Cut inside the rising segment (.1,0)-(.2,.5): at .15 the PRO is .25, area .05 * .125.
    assert aupro(maps, masks, fpr_limit=0.15) == pytest.approx(0.05 * 0.125 / 0.15, abs=1e-12)


def test_aupro_regions_are_8_connected():
    # Region A = (0,0), (1,1), (1,2): one region through the diagonal contact (size 3); region B = (3,3).
    masks = np.zeros((1, 4, 4), dtype=np.float32)
    for row, col in [(0, 0), (1, 1), (1, 2), (3, 3)]:
        masks[0, row, col] = 1
    maps = np.full((1, 4, 4), 0.1, dtype=np.float32)
    maps[0, 1, 1] = maps[0, 1, 2] = maps[0, 3, 3] = 0.2
    maps[0, 0, 0] = 0.9
    maps[0, 2, 0] = 0.6  # one of the 12 normal pixels
    # At 0.9: PRO = mean(1/3, 0) = 1/6 (4-connectivity would give mean(1, 0, 0) = 1/3).
    # Curve: (0,0) (0,1/6) (1/12,1/6) (1/12,1) (1,1).
    expected = (1 / 12 * 1 / 6 + (0.3 - 1 / 12)) / 0.3
    assert aupro(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_aupro_perfect_and_inverted_maps():
    _, masks = random_case(7, quantized=False)
    assert aupro(masks.copy(), masks) == pytest.approx(1.0, abs=1e-12)
    assert aupro(1 - masks, masks) == pytest.approx(0.0, abs=1e-12)


def test_min_max_normalize_matches_torch_float32_bitwise():
    values = np.random.default_rng(0).normal(3, 2, size=(5, 7, 9)).astype(np.float32)
    tensor = torch.from_numpy(values)
    expected = ((tensor - tensor.min()) / (tensor.max() - tensor.min())).numpy()
    normalized = min_max_normalize(values)
    assert normalized.dtype == np.float32
    np.testing.assert_array_equal(normalized, expected)
    # float64 input is computed in float32 too.
    np.testing.assert_array_equal(min_max_normalize(values.astype(np.float64)), expected)


def test_min_max_normalize_constant_gives_zeros():
    np.testing.assert_array_equal(min_max_normalize(np.full(4, 0.7)), np.zeros(4, dtype=np.float32))


def test_seg_score_is_max_of_raw_map():
    maps = np.full((3, 2, 2), -10.0, dtype=np.float32)
    maps[:, 0, 0] = [2.0, 6.0, 4.0]
    scores = np.array([0.25, 0.75, 0.5], dtype=np.float32)
    image_scores, seg_scores = normalized_scores(maps, scores)
    np.testing.assert_array_equal(image_scores, [0.0, 1.0, 0.5])
    # Max of the raw maps, then normalised over images (max of the normalised maps would be .75, 1, .875).
    np.testing.assert_array_equal(seg_scores, [0.0, 1.0, 0.5])


@pytest.mark.parametrize(
    ("labels", "metric"),
    [([0, 0, 0], auroc), ([1, 1, 1], auroc), ([0, 0, 0], average_precision)],
)
def test_undefined_image_metrics_raise(labels, metric):
    with pytest.raises(UndefinedMetricError):
        metric(np.array([0.1, 0.5, 0.9]), np.array(labels))


def test_ap_without_normal_samples_is_one_like_sklearn():
    labels, scores = np.ones(3, dtype=int), np.array([0.1, 0.5, 0.9])
    assert average_precision(scores, labels) == average_precision_score(labels, scores) == 1.0


@pytest.mark.parametrize("mask_value", [0.0, 1.0])
def test_undefined_aupro_raises(mask_value):
    with pytest.raises(UndefinedMetricError):
        aupro(np.random.default_rng(0).random((2, 4, 4)), np.full((2, 4, 4), mask_value))


def test_aupro_rejects_bad_fpr_limit():
    maps, masks = random_case(0, quantized=False)
    with pytest.raises(ValueError):
        aupro(maps, masks, fpr_limit=0.0)


def test_compute_metrics_values_and_order():
    maps, masks = random_case(11, quantized=True)
    maps = maps * 3 - 1  # raw maps are not in [0, 1]
    labels = np.array([1, 1, 1, 0])
    scores = np.array([0.9, 0.2, 0.7, 0.4], dtype=np.float32)
    values, notes = compute_metrics(maps, masks, scores, labels)
    assert list(values) == METRIC_NAMES
    assert notes == []
    normalized_maps = min_max_normalize(maps)
    assert values["I-AUROC"] == pytest.approx(2 / 3, abs=1e-12)
    assert values["AP-det"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    seg = maps.reshape(4, -1).max(axis=1)
    assert values["seg-I-AUROC"] == pytest.approx(roc_auc_score(labels, seg), abs=1e-12)
    assert values["seg-AP-det"] == pytest.approx(average_precision_score(labels, seg), abs=1e-12)
    flat_labels = masks.reshape(-1).astype(int)
    assert values["P-AUROC"] == pytest.approx(roc_auc_score(flat_labels, normalized_maps.reshape(-1)), abs=1e-12)
    assert values["AP-loc"] == pytest.approx(
        average_precision_score(flat_labels, normalized_maps.reshape(-1)), abs=1e-12
    )
    assert values["AUPRO"] == pytest.approx(brute_force_aupro(normalized_maps, masks, 0.3), abs=1e-12)


def test_compute_metrics_seg_scores_come_from_map_max():
    # Anomalous images have the higher max but the lower mean; the classifier scores are inverted.
    maps = np.zeros((4, 3, 3), dtype=np.float32)
    maps[:2] = 0.5
    maps[2:, 1, 1] = 0.9
    values, _ = compute_metrics(maps, np.zeros_like(maps), np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1]))
    assert values["seg-I-AUROC"] == 1.0
    assert values["I-AUROC"] == 0.0


def test_compute_metrics_no_anomalies_gives_none_and_notes():
    maps = np.random.default_rng(0).random((3, 4, 4))
    values, notes = compute_metrics(maps, np.zeros_like(maps), np.array([0.1, 0.2, 0.3]), np.zeros(3, dtype=int))
    assert list(values) == METRIC_NAMES
    assert all(value is None for value in values.values())
    assert len(notes) == len(METRIC_NAMES)
    assert "I-AUROC undefined: the test set has no anomalous images" in notes
    assert "P-AUROC undefined: the test set has no anomalous pixels" in notes


def test_compute_metrics_only_anomalies():
    maps = np.random.default_rng(0).random((3, 4, 4))
    values, notes = compute_metrics(maps, np.ones_like(maps), np.array([0.1, 0.2, 0.3]), np.ones(3, dtype=int))
    assert values["AP-det"] == 1.0 and values["AP-loc"] == 1.0 and values["seg-AP-det"] == 1.0
    assert values["I-AUROC"] is None and values["P-AUROC"] is None and values["AUPRO"] is None
    assert "AUPRO undefined: the test set has no normal pixels" in notes


def test_compute_metrics_nan_map_counts_as_zero():
    maps, masks = random_case(2, quantized=False)
    maps[0, 0, 0] = np.nan
    values, notes = compute_metrics(maps, masks, np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 1, 1, 0]))
    # The NaN makes the global min/max NaN, so every normalised pixel is NaN, then 0: all tied.
    assert values["P-AUROC"] == 0.5
    assert values["I-AUROC"] == 1.0
    # The seg score of image 0 is NaN: the seg metrics are undefined, with a note.
    assert values["seg-I-AUROC"] is None
    assert "seg-I-AUROC undefined: the scores of the images contain NaN" in notes


def test_compute_metrics_nan_from_infinite_map_counts_as_zero():
    # max = +inf: finite pixels normalise to 0, the inf pixel to inf/inf = NaN, which becomes 0: all tied.
    maps, masks = random_case(4, quantized=False)
    maps[masks > 0.5] = np.inf
    values, _ = compute_metrics(maps, masks, np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 1, 1, 0]))
    assert values["P-AUROC"] == 0.5


def test_roc_and_pr_curves_are_what_auroc_and_ap_integrate():
    from sklearn.metrics import precision_recall_curve

    from common.metrics import area_under_roc, precision_recall_ranked, rank_scores, roc_curve_ranked

    rng = np.random.default_rng(9)
    labels = rng.integers(0, 2, 200)
    scores = (rng.integers(0, 12, 200) + 3 * labels).astype(np.float32)  # many ties
    ranked = rank_scores(scores, labels)
    roc = roc_curve_ranked(ranked)
    fpr, tpr = roc.points()
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    # one vertex pair per distinct anomalous score: for pixels, a small share of all of them
    assert roc.thresholds.size == np.unique(scores[labels == 1]).size
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # the drawn polyline's trapezoids give the metric, and the metric is the curve's exact integral
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert area_under_roc(roc) == auroc(scores, labels)
    pr = precision_recall_ranked(ranked)
    expected_precision, expected_recall, expected_thresholds = precision_recall_curve(labels, scores)
    by_threshold = dict(zip(expected_thresholds, zip(expected_precision, expected_recall)))
    for threshold, precision, recall in zip(pr.thresholds, pr.precision, pr.recall):
        assert (precision, recall) == pytest.approx(by_threshold[threshold], abs=1e-12)


def test_pro_curve_stops_just_past_the_limit_and_integrates_to_aupro():
    from common.metrics import area_under_pro, pro_curve_ranked

    maps, masks = random_case(1, quantized=False)
    curve = pro_curve_ranked(rank_pixels(maps, masks), 0.3)
    fpr, pro = curve.points()
    assert fpr[0] == 0.0 and fpr[-2] < 0.3 <= fpr[-1]
    inside = fpr < 0.3
    cut_fpr = np.r_[fpr[inside], 0.3]
    cut_pro = np.r_[pro[inside], curve.pro_at_limit()]
    assert np.trapezoid(cut_pro, cut_fpr) / 0.3 == pytest.approx(aupro(maps, masks), abs=1e-12)
    assert area_under_pro(curve) == aupro(maps, masks)


def test_compute_metrics_and_curves_gives_the_curve_of_every_defined_metric():
    from common.metrics import METRIC_CURVES, compute_metrics_and_curves

    maps, masks = random_case(5, quantized=True)
    labels, scores = np.array([1, 1, 1, 0]), np.array([0.9, 0.2, 0.7, 0.4], dtype=np.float32)
    values, notes, curves = compute_metrics_and_curves(maps, masks, scores, labels)
    assert (values, notes) == compute_metrics(maps, masks, scores, labels)
    assert set(curves) == set(METRIC_NAMES)
    for name, curve in curves.items():
        assert METRIC_CURVES[name][1](curve) == values[name], name
    values, notes, curves = compute_metrics_and_curves(maps, np.zeros_like(masks), scores, np.zeros(4, int))
    assert curves == {} and len(notes) == len(METRIC_NAMES)
