"""Evaluation metrics (docs/method.md, "Evaluation"): min-max normalisation, AUROC, step-wise AP, AUPRO.

Everything is exact (ties handled as sklearn does) and built on sorting the scores
of each class once: a `RankedScores` holds the normal and the anomalous scores,
each sorted ascending, and every curve is read off it with binary searches. For
pixel metrics that is one `np.sort` of the normal pixels (fast, vectorised) plus
one argsort of the anomalous pixels only, shared by P-AUROC, AP-loc and AUPRO.

Each metric is the integral of a curve that a function here returns (`roc_curve_ranked`,
`precision_recall_ranked`, `pro_curve_ranked`), so whoever draws a curve (the run report)
draws the very numbers the metric integrates; `compute_metrics_and_curves` gives both.

A metric that the data cannot define (one class missing) raises
`UndefinedMetricError`; `compute_metrics` turns that into `None` plus a note.
"""

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

# Column order of the results CSV.
METRIC_NAMES = ["I-AUROC", "AP-det", "P-AUROC", "AUPRO", "AP-loc", "seg-I-AUROC", "seg-AP-det"]

AUPRO_FPR_LIMIT = 0.3
# GT masks are 0/1 floats after resizing; a pixel is a defect pixel above this.
MASK_THRESHOLD = 0.5


class UndefinedMetricError(ValueError):
    """The data does not define the metric (e.g. no anomalous samples); `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RankedScores:
    """Scores split by ground truth, each sorted ascending.

    `positive_weights` (pixels only) is aligned with `positives`: 1 / (region size *
    number of regions), so the weights of a set of pixels sum to its mean region overlap.
    `unit` names what a score belongs to ("images", "pixels"), for error messages.
    """

    negatives: np.ndarray
    positives: np.ndarray
    unit: str
    positive_weights: np.ndarray | None = None

    def require_both_classes(self) -> None:
        if self.positives.size == 0:
            raise UndefinedMetricError(f"the test set has no anomalous {self.unit}")
        if self.negatives.size == 0:
            raise UndefinedMetricError(f"the test set has no normal {self.unit}")


def min_max_normalize(values: np.ndarray) -> np.ndarray:
    """Any-shape array -> float32 array of the same shape, (x - min) / (max - min) over all of it.

    Computed in float32 like the published torch code, so ties created by rounding are the
    same. A constant array gives zeros (torch would give 0/0 = NaN, which the published
    code maps to 0 for anomaly maps). NaN in the input propagates to every output value.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.size == 0:
        raise ValueError("min_max_normalize: empty array")
    low, high = values.min(), values.max()
    if high == low:
        return np.zeros_like(values)
    # Infinite inputs give inf / inf = NaN, as in torch; no warning for that.
    with np.errstate(invalid="ignore"):
        normalized = values - low
        normalized /= high - low
    return normalized


def normalized_scores(anomaly_maps: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps N x H x W and scores N -> (normalised scores N, normalised seg scores N), float32.

    The seg score of an image is the max of its raw (not yet normalised) anomaly map.
    """
    anomaly_maps = np.asarray(anomaly_maps)
    seg_scores = anomaly_maps.reshape(anomaly_maps.shape[0], -1).max(axis=1)
    return min_max_normalize(scores), min_max_normalize(seg_scores)


def _check_no_nan(scores: np.ndarray, unit: str) -> None:
    if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
        raise UndefinedMetricError(f"the scores of the {unit} contain NaN")


def rank_scores(scores: np.ndarray, labels: np.ndarray, unit: str = "samples") -> RankedScores:
    """Scores N and 0/1 labels N -> their RankedScores."""
    scores, labels = np.asarray(scores).reshape(-1), np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in length")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (anomalous)")
    _check_no_nan(scores, unit)
    is_positive = labels == 1
    return RankedScores(np.sort(scores[~is_positive]), np.sort(scores[is_positive]), unit)


def rank_pixels(anomaly_maps: np.ndarray, gt_masks: np.ndarray) -> RankedScores:
    """Maps N x H x W and GT masks N x H x W (defect where > 0.5) -> RankedScores of all pixels.

    Regions are the 8-connected components of each image's mask, labelled per image.
    """
    anomaly_maps = np.asarray(anomaly_maps)
    if anomaly_maps.ndim != 3 or anomaly_maps.shape != np.shape(gt_masks):
        raise ValueError(f"anomaly maps {anomaly_maps.shape} and masks {np.shape(gt_masks)} must both be N x H x W")
    _check_no_nan(anomaly_maps, "pixels")
    anomalous = np.ascontiguousarray(np.asarray(gt_masks) > MASK_THRESHOLD)
    negatives = anomaly_maps[~anomalous]
    negatives.sort()

    positive_scores, inverse_sizes, region_count = [], [], 0
    for image_map, image_mask in zip(anomaly_maps, anomalous):
        if not image_mask.any():
            continue
        count, region_labels, stats, _ = cv2.connectedComponentsWithStats(image_mask.view(np.uint8), connectivity=8)
        region_sizes = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
        positive_scores.append(image_map[image_mask])
        inverse_sizes.append(1.0 / region_sizes[region_labels[image_mask] - 1])
        region_count += count - 1
    if not positive_scores:
        return RankedScores(negatives, np.empty(0, anomaly_maps.dtype), "pixels", np.empty(0))

    positives = np.concatenate(positive_scores)
    order = np.argsort(positives)
    weights = np.concatenate(inverse_sizes)[order] / region_count
    return RankedScores(negatives, positives[order], "pixels", weights)


@dataclass(frozen=True)
class RocCurve:
    """The ROC curve, as counts, with two vertices per distinct anomalous score t (highest first).

    `false_positives_above[k]` / `false_positives_at[k]` = normal samples > t_k / >= t_k, and
    `true_positives_above[k]` / `true_positives_at[k]` = anomalous samples > t_k / >= t_k. Coming
    down from t_(k-1) to t_k the curve runs horizontally (the normal scores between them) to
    (FP(> t_k), TP(> t_k)), then straight across the ties at t_k to (FP(>= t_k), TP(>= t_k)); after
    the lowest anomalous score it runs horizontally to (N, P). Its size is that of the anomalous
    set, which for pixels is a small share of all pixels."""

    thresholds: np.ndarray
    false_positives_above: np.ndarray
    false_positives_at: np.ndarray
    true_positives_above: np.ndarray
    true_positives_at: np.ndarray
    negative_count: int
    positive_count: int

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """(FPR, TPR) of the whole polyline, from (0, 0) to (1, 1), as floats in [0, 1]."""
        fp = np.c_[self.false_positives_above, self.false_positives_at].reshape(-1)
        tp = np.c_[self.true_positives_above, self.true_positives_at].reshape(-1)
        fp = np.r_[0, fp, self.negative_count]
        tp = np.r_[0, tp, self.positive_count]
        return fp / self.negative_count, tp / self.positive_count


def roc_curve_ranked(ranked: RankedScores) -> RocCurve:
    """RankedScores with both classes -> its RocCurve (UndefinedMetricError when a class is missing)."""
    ranked.require_both_classes()
    negatives, positives = ranked.negatives, ranked.positives
    group_starts = np.flatnonzero(np.r_[True, positives[1:] != positives[:-1]])
    group_sizes = np.diff(np.r_[group_starts, positives.size])
    thresholds = positives[group_starts][::-1]
    true_positives_at = (positives.size - group_starts)[::-1]
    true_positives_above = true_positives_at - group_sizes[::-1]
    false_positives_at = negatives.size - np.searchsorted(negatives, thresholds, side="left")
    false_positives_above = negatives.size - np.searchsorted(negatives, thresholds, side="right")
    return RocCurve(thresholds, false_positives_above, false_positives_at, true_positives_above, true_positives_at,
                    negatives.size, positives.size)


def area_under_roc(curve: RocCurve) -> float:
    """The exact area under a RocCurve: its segments summed in integer counts (twice their area),
    one division at the end. It equals P(anomalous > normal) + P(tie) / 2 (Mann-Whitney)."""
    fp_above, fp_at, tp_above, tp_at = (np.asarray(counts, dtype=np.int64) for counts in (
        curve.false_positives_above, curve.false_positives_at, curve.true_positives_above, curve.true_positives_at))
    horizontal = 2 * np.dot(fp_above - np.r_[0, fp_at[:-1]], tp_above)
    across_ties = np.dot(fp_at - fp_above, tp_above + tp_at)
    last = 2 * (curve.negative_count - int(fp_at[-1])) * curve.positive_count
    twice_area = int(horizontal) + int(across_ties) + last
    return twice_area / (2 * curve.positive_count * curve.negative_count)


def auroc_ranked(ranked: RankedScores) -> float:
    """Exact ROC AUC of RankedScores: the area under `roc_curve_ranked`."""
    return area_under_roc(roc_curve_ranked(ranked))


@dataclass(frozen=True)
class PrecisionRecallCurve:
    """Precision and recall at every distinct anomalous score t (ascending): a sample is called
    anomalous when its score is >= t. `recall_gains[k]` = anomalous samples scored exactly t_k
    (what recall gains at t_k, in samples)."""

    thresholds: np.ndarray
    true_positives: np.ndarray
    false_positives: np.ndarray
    recall_gains: np.ndarray
    positive_count: int

    @property
    def precision(self) -> np.ndarray:
        return self.true_positives / (self.true_positives + self.false_positives)

    @property
    def recall(self) -> np.ndarray:
        return self.true_positives / self.positive_count


def precision_recall_ranked(ranked: RankedScores) -> PrecisionRecallCurve:
    """RankedScores -> its PrecisionRecallCurve. Only thresholds holding an anomalous sample change
    recall, so only those are visited. No anomalous samples: UndefinedMetricError."""
    if ranked.positives.size == 0:
        raise UndefinedMetricError(f"the test set has no anomalous {ranked.unit}")
    positives = ranked.positives
    group_starts = np.flatnonzero(np.r_[True, positives[1:] != positives[:-1]])
    group_sizes = np.diff(np.r_[group_starts, positives.size])
    thresholds = positives[group_starts]
    true_positives = positives.size - group_starts
    false_positives = ranked.negatives.size - np.searchsorted(ranked.negatives, thresholds, side="left")
    return PrecisionRecallCurve(thresholds, true_positives, false_positives, group_sizes, positives.size)


def step_average_precision(curve: PrecisionRecallCurve) -> float:
    """Step-wise AP of a PrecisionRecallCurve: sum over thresholds of (recall gain) x precision."""
    return float(np.dot(curve.recall_gains, curve.precision) / curve.positive_count)


def average_precision_ranked(ranked: RankedScores) -> float:
    """Step-wise AP: sum over distinct positive scores t of (recall gain at t) x precision(score >= t).

    With no normal samples AP is 1 (as sklearn); with no anomalous ones it is undefined.
    """
    return step_average_precision(precision_recall_ranked(ranked))


@dataclass(frozen=True)
class ProCurve:
    """The PRO-vs-FPR curve from FPR 0 to just past `fpr_limit`, one vertex per distinct normal
    pixel score t (highest first): `fpr[k]` = share of normal pixels >= t_k, `pro_at[k]` = region
    weight of anomalous pixels >= t_k, `pro_above[k]` = of those > t_k. As for `RocCurve`, the
    curve rises vertically to (fpr[k-1], pro_above[k]), then runs straight to (fpr[k], pro_at[k])."""

    fpr: np.ndarray
    pro_above: np.ndarray
    pro_at: np.ndarray
    fpr_limit: float

    @property
    def crossing(self) -> int:
        """The index of the first vertex at or past `fpr_limit`."""
        return int(np.searchsorted(self.fpr, self.fpr_limit, side="left"))

    def pro_at_limit(self) -> float:
        """The PRO where the curve crosses `fpr_limit` (linear inside the crossing segment)."""
        crossing = self.crossing
        segment_start = self.fpr[crossing - 1] if crossing else 0.0
        fraction = (self.fpr_limit - segment_start) / (self.fpr[crossing] - segment_start)
        return float(self.pro_above[crossing] + fraction * (self.pro_at[crossing] - self.pro_above[crossing]))

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """(FPR, PRO) of the polyline from (0, 0) to the crossing vertex (just past the limit)."""
        end = self.crossing + 1
        previous = np.r_[0.0, self.fpr[: end - 1]]
        fpr = np.c_[previous, self.fpr[:end]].reshape(-1)
        pro = np.c_[self.pro_above[:end], self.pro_at[:end]].reshape(-1)
        return np.r_[0.0, fpr], np.r_[0.0, pro]


def pro_curve_ranked(ranked: RankedScores, fpr_limit: float = AUPRO_FPR_LIMIT) -> ProCurve:
    """RankedScores of pixels (from rank_pixels) -> the ProCurve up to `fpr_limit`.

    FPR only moves at normal scores, so only distinct normal scores are vertices, and only those
    in the top `fpr_limit` share of normal pixels are needed (plus the one crossing the limit).
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if ranked.positive_weights is None:
        raise ValueError("aupro needs RankedScores from rank_pixels (region weights)")
    ranked.require_both_classes()
    negatives, positives = ranked.negatives, ranked.positives
    negative_count = negatives.size

    # The normal pixels that reach FPR >= fpr_limit at the lowest threshold kept (+1: float safety).
    kept = min(negative_count, int(np.ceil(fpr_limit * negative_count)) + 1)
    top = negatives[negative_count - kept :]
    group_starts = np.flatnonzero(np.r_[True, top[1:] != top[:-1]])
    thresholds = top[group_starts][::-1]
    first_index = group_starts + (negative_count - kept)
    # The lowest kept group may continue below the slice.
    first_index[0] = np.searchsorted(negatives, top[0], side="left")
    fpr = (negative_count - first_index[::-1]) / negative_count

    # pro_above[k]: weight of positives at sorted index >= k.
    pro_above = np.zeros(positives.size + 1)
    pro_above[:-1] = np.cumsum(ranked.positive_weights[::-1])[::-1]
    pro_at = pro_above[np.searchsorted(positives, thresholds, side="left")]
    pro_before = pro_above[np.searchsorted(positives, thresholds, side="right")]
    return ProCurve(fpr, pro_before, pro_at, fpr_limit)


def area_under_pro(curve: ProCurve) -> float:
    """Area under a ProCurve from FPR 0 to its limit, divided by the limit; the segment crossing
    the limit is cut by linear interpolation."""
    fpr, pro_before, pro_at, fpr_limit = curve.fpr, curve.pro_above, curve.pro_at, curve.fpr_limit
    crossing = curve.crossing
    fpr_start = np.r_[0.0, fpr[:crossing]]
    area = float(np.dot(np.diff(fpr_start), (pro_before[:crossing] + pro_at[:crossing]) / 2))
    segment_start, segment_end = fpr_start[-1], fpr[crossing]
    fraction = (fpr_limit - segment_start) / (segment_end - segment_start)
    pro_at_limit = pro_before[crossing] + fraction * (pro_at[crossing] - pro_before[crossing])
    area += (fpr_limit - segment_start) * (pro_before[crossing] + pro_at_limit) / 2
    return float(area / fpr_limit)


def aupro_ranked(ranked: RankedScores, fpr_limit: float = AUPRO_FPR_LIMIT) -> float:
    """Area under the PRO-vs-FPR curve from FPR 0 to `fpr_limit`, divided by `fpr_limit`
    (`area_under_pro` of `pro_curve_ranked`)."""
    return area_under_pro(pro_curve_ranked(ranked, fpr_limit))


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Scores N, 0/1 labels N -> exact ROC AUC (equal to sklearn's roc_auc_score)."""
    return auroc_ranked(rank_scores(scores, labels))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Scores N, 0/1 labels N -> step-wise AP (equal to sklearn's average_precision_score)."""
    return average_precision_ranked(rank_scores(scores, labels))


def aupro(anomaly_maps: np.ndarray, gt_masks: np.ndarray, fpr_limit: float = AUPRO_FPR_LIMIT) -> float:
    """Maps N x H x W, GT masks N x H x W -> normalised area under the PRO curve up to `fpr_limit`."""
    return aupro_ranked(rank_pixels(anomaly_maps, gt_masks), fpr_limit)


# The curve each metric integrates: (curve function, integral, what is ranked).
METRIC_CURVES: dict[str, tuple[Callable, Callable, str]] = {
    "I-AUROC": (roc_curve_ranked, area_under_roc, "image"),
    "AP-det": (precision_recall_ranked, step_average_precision, "image"),
    "P-AUROC": (roc_curve_ranked, area_under_roc, "pixels"),
    "AUPRO": (pro_curve_ranked, area_under_pro, "pixels"),
    "AP-loc": (precision_recall_ranked, step_average_precision, "pixels"),
    "seg-I-AUROC": (roc_curve_ranked, area_under_roc, "seg"),
    "seg-AP-det": (precision_recall_ranked, step_average_precision, "seg"),
}


def compute_metrics_and_curves(
    anomaly_maps: np.ndarray, gt_masks: np.ndarray, scores: np.ndarray, labels: np.ndarray
) -> tuple[dict[str, float | None], list[str], dict[str, object]]:
    """`compute_metrics`, plus {metric: the curve it integrates} (RocCurve, PrecisionRecallCurve
    or ProCurve) for every defined metric."""
    anomaly_maps = np.asarray(anomaly_maps)
    if anomaly_maps.ndim != 3:
        raise ValueError(f"anomaly maps must be N x H x W, got {anomaly_maps.shape}")
    image_scores, seg_scores = normalized_scores(anomaly_maps, scores)
    maps = min_max_normalize(anomaly_maps)
    # As the published evaluation: NaN maps (early training) count as 0.
    maps[np.isnan(maps)] = 0.0

    values: dict[str, float | None] = dict.fromkeys(METRIC_NAMES)
    notes: list[str] = []
    curves: dict[str, object] = {}
    pixels = rank_pixels(maps, gt_masks)
    rankers: dict[str, Callable[[], RankedScores]] = {
        "image": lambda: rank_scores(image_scores, labels, "images"),
        "pixels": lambda: pixels,
        "seg": lambda: rank_scores(seg_scores, labels, "images"),
    }
    for name in METRIC_NAMES:
        make_curve, integrate, ranked = METRIC_CURVES[name]
        try:
            curve = make_curve(rankers[ranked]())
        except UndefinedMetricError as error:
            notes.append(f"{name} undefined: {error.reason}")
            continue
        curves[name] = curve
        values[name] = integrate(curve)
    return values, notes, curves


def compute_metrics(
    anomaly_maps: np.ndarray, gt_masks: np.ndarray, scores: np.ndarray, labels: np.ndarray
) -> tuple[dict[str, float | None], list[str]]:
    """The evaluation of one test set (docs/method.md, "Evaluation").

    In: raw anomaly maps N x H x W, GT masks N x H x W (0/1), scores N (sigmoid of the
    score logits), labels N (0/1). Out: every metric of METRIC_NAMES, in that order, None
    where undefined, and one note per undefined metric saying why.
    """
    values, notes, _ = compute_metrics_and_curves(anomaly_maps, gt_masks, scores, labels)
    return values, notes
