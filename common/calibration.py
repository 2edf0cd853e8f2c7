"""Decision thresholds without test labels (numpy only; docs/deployment.md, "Thresholds").

Everywhere in this project a value (an image score or a pixel of the anomaly map, both
sigmoid probabilities in [0, 1]) is called a defect when it is strictly greater than the
threshold: `value > threshold`.

- `threshold_at_fpr(normal_scores, fpr)`: the quantile rule. On n normal values the decision
  may flag at most k = floor(fpr * n) of them. The threshold is the (k + 1)-th largest value:
  every value strictly above it is flagged (at most k, ties included), and any smaller
  threshold would flag at least k + 1. It is therefore the smallest threshold whose false-
  positive rate on these values is <= fpr. With fpr < 1 / n, k = 0 and the threshold is the
  largest normal value (no normal value flagged).
- `f1_optimal_threshold(scores, labels)`: among the candidate thresholds (every distinct value,
  and one just below the smallest, which flags everything) the one whose decisions have the
  highest F1 against `labels`; ties go to the largest threshold (fewest alarms).
"""

import math

import numpy as np

# fpr * n is computed in floating point: 0.29 * 100 = 28.999999999999996 must allow 29
_COUNT_SLACK = 1e-9


def _finite_1d(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name} is empty: at least one value is needed")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def allowed_false_positives(count: int, fpr: float) -> int:
    """k = floor(fpr * count): how many of `count` normal values may lie above the threshold."""
    return int(math.floor(fpr * count + _COUNT_SLACK))


def threshold_at_fpr(normal_scores, fpr: float) -> float:
    """The smallest threshold t with #{s > t} / n <= fpr on the normal values (see the module docstring)."""
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr must be in [0, 1), got {fpr}")
    scores = _finite_1d(normal_scores, "normal_scores")
    allowed = allowed_false_positives(scores.size, fpr)
    # the (allowed + 1)-th largest value = the element at position n - allowed - 1 in ascending order
    position = scores.size - allowed - 1
    return float(np.partition(scores, position)[position])


def false_positive_rate(normal_scores, threshold: float) -> float:
    """The share of normal values strictly above `threshold`."""
    scores = _finite_1d(normal_scores, "normal_scores")
    return float(np.count_nonzero(scores > threshold) / scores.size)


def f1_optimal_threshold(scores, labels) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of `scores > threshold` against `labels` (1 = defect).

    Candidates: every distinct score, plus the float just below the smallest (everything
    flagged). Ties in F1 go to the largest threshold. Needs at least one positive label."""
    values = _finite_1d(scores, "scores")
    truth = np.asarray(labels).reshape(-1)
    if truth.size != values.size:
        raise ValueError(f"scores ({values.size}) and labels ({truth.size}) differ in length")
    truth = truth.astype(bool)
    positives = int(np.count_nonzero(truth))
    if positives == 0:
        raise ValueError("labels hold no defect: F1 is undefined")
    order = np.argsort(-values, kind="stable")
    sorted_values, sorted_truth = values[order], truth[order]
    # flag the top j values for each j at the end of a run of equal values
    true_positives = np.cumsum(sorted_truth)
    flagged = np.arange(1, values.size + 1)
    run_ends = np.flatnonzero(np.r_[sorted_values[1:] != sorted_values[:-1], True])
    tp, count = true_positives[run_ends], flagged[run_ends]
    f1 = 2.0 * tp / (count + positives)
    # flagging the top run_ends[i] + 1 values = threshold at the next smaller distinct value
    below = np.r_[sorted_values[run_ends[1:]], np.nextafter(sorted_values[-1], -np.inf)]
    best = np.flatnonzero(f1 == f1.max())
    index = best[0]  # fewest values flagged among the ties = largest threshold
    return float(below[index]), float(f1[index])


__all__ = ["threshold_at_fpr", "false_positive_rate", "f1_optimal_threshold", "allowed_false_positives"]
