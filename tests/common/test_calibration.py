"""common/calibration.py against brute force on synthetic score distributions."""

import numpy as np
import pytest

from common.calibration import f1_optimal_threshold, false_positive_rate, threshold_at_fpr


def brute_force_threshold_at_fpr(values: np.ndarray, fpr: float) -> float:
    """The smallest candidate t (every value; FPR is a step function changing only at values)
    with mean(values > t) <= fpr, counted exactly with fractions."""
    n = len(values)
    return min(t for t in np.unique(values) if np.count_nonzero(values > t) * 1.0 <= fpr * n + 1e-9)


def distributions(seed: int):
    rng = np.random.default_rng(seed)
    yield rng.normal(0.2, 0.05, 200)
    yield rng.beta(2, 8, 37)
    yield np.round(rng.random(500), 2)  # many ties
    yield np.full(10, 0.3)  # all equal
    yield rng.random(1)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.05, 0.1, 0.29, 0.5, 0.99])
def test_threshold_at_fpr_is_the_brute_force_quantile(seed, fpr):
    for values in distributions(seed):
        threshold = threshold_at_fpr(values, fpr)
        assert threshold == brute_force_threshold_at_fpr(values, fpr)
        assert false_positive_rate(values, threshold) <= fpr + 1e-12
        # smallest: any value below it would flag more than allowed
        below = values[values < threshold]
        if below.size:
            assert false_positive_rate(values, below.max()) > fpr


def test_threshold_at_fpr_counts_allowed_false_positives_exactly():
    values = np.arange(100, dtype=float)  # 0 .. 99
    assert threshold_at_fpr(values, 0.29) == 70.0  # 29 values (71..99) above: 0.29 * 100 is 28.999... in floats
    assert threshold_at_fpr(values, 0.0) == 99.0
    assert threshold_at_fpr(values, 0.005) == 99.0  # fewer than one allowed
    assert threshold_at_fpr([0.1, 0.7, 0.7, 0.7], 0.5) == 0.7  # ties: no threshold flags exactly 2


@pytest.mark.parametrize("bad", [([], 0.1), ([0.1, np.nan], 0.1), ([0.1], 1.0), ([0.1], -0.1)])
def test_threshold_at_fpr_refuses_bad_input(bad):
    with pytest.raises(ValueError):
        threshold_at_fpr(*bad)


def f1_of(values, labels, threshold) -> float:
    flagged = values > threshold
    tp = np.count_nonzero(flagged & labels)
    return 2 * tp / (np.count_nonzero(flagged) + np.count_nonzero(labels))


@pytest.mark.parametrize("seed", range(6))
def test_f1_optimal_threshold_is_the_brute_force_best(seed):
    rng = np.random.default_rng(seed)
    n_normal, n_defect = rng.integers(1, 60), rng.integers(1, 30)
    values = np.r_[rng.normal(0.3, 0.15, n_normal), rng.normal(0.6, 0.2, n_defect)]
    if seed % 2:
        values = np.round(values, 1)  # ties across classes
    labels = np.r_[np.zeros(n_normal, bool), np.ones(n_defect, bool)]
    candidates = np.r_[np.unique(values), values.min() - 1.0]
    f1s = np.array([f1_of(values, labels, t) for t in candidates])
    threshold, f1 = f1_optimal_threshold(values, labels)
    assert f1 == pytest.approx(f1s.max(), abs=1e-12)
    assert f1_of(values, labels, threshold) == pytest.approx(f1, abs=1e-12)
    # ties go to the largest threshold: the same decisions as the largest best candidate
    largest_best = candidates[np.flatnonzero(np.isclose(f1s, f1s.max(), rtol=0, atol=1e-12))].max()
    assert np.array_equal(values > threshold, values > largest_best)


def test_f1_optimal_threshold_separable_and_all_flagged():
    threshold, f1 = f1_optimal_threshold([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert (threshold, f1) == (0.2, 1.0)
    threshold, f1 = f1_optimal_threshold([0.5, 0.5], [1, 1])  # everything flagged
    assert f1 == 1.0 and threshold < 0.5
    # F1 2/3 when flagging {0.9} (threshold 0.8) and when flagging {0.9, 0.8, 0.7, 0.6}: the larger wins
    threshold, f1 = f1_optimal_threshold([0.9, 0.8, 0.7, 0.6, 0.1], [1, 0, 0, 1, 0])
    assert threshold == 0.8 and f1 == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        f1_optimal_threshold([0.1, 0.2], [0, 0])
