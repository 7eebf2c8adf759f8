"""distill.metrics.calibration against hand-computed values, SciPy and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.metrics.calibration import (
    TEMPERATURE_BOUNDS,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    labelled_folds,
    log_loss,
)


def _nll64(log_probs: np.ndarray, y: np.ndarray, t: float) -> float:
    """Float64 reference: mean -log softmax(z / T)[y] with SciPy's log_softmax."""
    return float(-np.mean(scipy.special.log_softmax(log_probs / t, axis=1)[np.arange(y.size), y]))


def test_log_loss_matches_the_hand_computed_value() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    y = np.array([0, 1, 0])
    assert log_loss(probs, y) == pytest.approx(-(np.log(0.7) + np.log(0.8) + np.log(0.3)) / 3, rel=1e-14)


def test_log_loss_stays_finite_for_a_zero_probability() -> None:
    assert log_loss(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-np.log(1e-12))


def test_ece_matches_the_hand_computed_value() -> None:
    # 15 equal-width bins: confidences 0.9, 0.9 fall in (13/15, 14/15]; 0.6 and 0.55 in (8/15, 9/15].
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.55, 0.45]])
    y = np.array([0, 1, 1, 1])
    # bin 13: accuracy 1/2, confidence 0.9; bin 8: accuracy 1/2 (0.6 right, 0.55 wrong), confidence 0.575
    expected = 2 / 4 * abs(0.5 - 0.9) + 2 / 4 * abs(0.5 - 0.575)
    assert expected_calibration_error(probs, y) == pytest.approx(expected, rel=1e-12)
    # Two bins: all four rows in (0.5, 1]: accuracy 2/4, mean confidence 0.7375.
    assert expected_calibration_error(probs, y, bins=2) == pytest.approx(abs(0.5 - 0.7375), rel=1e-12)


def test_ece_is_zero_for_a_calibrated_group() -> None:
    # Confidence 0.75 and three of four right: calibrated exactly.
    probs = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.0, abs=1e-15)


def _tempered_case(seed: int = 0, n: int = 400, k: int = 4, true_t: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities ``z`` whose labels are drawn from softmax(z / true_t): T = true_t is right."""
    rng = np.random.default_rng(seed)
    z = scipy.special.log_softmax(rng.normal(0, 3, size=(n, k)), axis=1)
    p = scipy.special.softmax(z / true_t, axis=1)
    y = np.array([rng.choice(k, p=row) for row in p])
    return z, y


def test_fit_temperature_matches_scipy_and_lowers_the_nll() -> None:
    z, y = _tempered_case()
    t = fit_temperature(z, y)
    reference = scipy.optimize.minimize_scalar(lambda s: _nll64(z, y, s), bounds=TEMPERATURE_BOUNDS,
                                               method="bounded", options={"xatol": 1e-9})
    assert t == pytest.approx(reference.x, rel=1e-4)
    assert _nll64(z, y, t) <= _nll64(z, y, 1.0)
    assert _nll64(z, y, t) == pytest.approx(reference.fun, abs=1e-9)
    assert t == pytest.approx(2.0, rel=0.25)  # and it recovers the temperature the labels were drawn with


def test_fit_temperature_on_a_hand_made_case() -> None:
    # Two rows, binary, log-probabilities (log 0.8, log 0.2), one right and one wrong: the NLL
    # 0.5 * [-log s(a/T) - log s(-a/T)] with a = log 4 is smallest as T grows: the upper bound.
    z = np.log(np.array([[0.8, 0.2], [0.8, 0.2]]))
    assert fit_temperature(z, np.array([0, 1])) == pytest.approx(TEMPERATURE_BOUNDS[1], rel=1e-3)
    # Always right with confidence 0.8: sharpening helps, down to the lower bound.
    assert fit_temperature(z, np.array([0, 0])) == pytest.approx(TEMPERATURE_BOUNDS[0], rel=1e-3)
    # Right 4 times in 5 at confidence 0.8: already calibrated, T = 1.
    z5 = np.log(np.tile([0.8, 0.2], (5, 1)))
    assert fit_temperature(z5, np.array([0, 0, 0, 0, 1])) == pytest.approx(1.0, abs=1e-4)


def test_apply_temperature_is_scipy_log_softmax_and_finite() -> None:
    z, _ = _tempered_case(n=20)
    np.testing.assert_allclose(apply_temperature(z, 0.5), scipy.special.log_softmax(z / 0.5, axis=1), rtol=1e-12)
    # A probability of 0 (log = -inf) or NaN is clamped like probabilities_to_logits: finite output.
    bad = np.array([[0.0, -np.inf, -1.0], [np.nan, 0.0, -2.0]])
    out = apply_temperature(bad, 0.05)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.exp(out).sum(axis=1), 1.0, rtol=1e-12)
    clamped = np.log(np.clip(np.exp(scipy.special.log_softmax(np.array([[0.0, -1e300, -1.0]]), axis=1)), 1e-12, 1))
    np.testing.assert_allclose(out[0], scipy.special.log_softmax(clamped[0] / 0.05), rtol=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(z, 0.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=0, max_size=40), st.integers(0, 2**32 - 1), st.integers(2, 6))
def test_labelled_folds_partition_and_stratify(labels: list[int], seed: int, max_folds: int) -> None:
    y = np.array(labels, dtype=np.int64)
    folds = labelled_folds(y, seed, max_folds)
    _, counts = np.unique(y, return_counts=True)
    if counts.size < 2 or counts.min() < 2:
        assert folds is None
        return
    assert folds is not None
    assert len(folds) == min(max_folds, int(counts.min()))
    for fold in folds:
        assert fold.dtype == np.int64 and np.all(np.diff(fold) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate(folds)), np.arange(y.size))  # each held out once
    for c in np.unique(y):  # stratified: a class's rows spread over the folds as evenly as possible
        per_fold = [int(np.sum(y[f] == c)) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1 and min(per_fold) >= 1
    again = labelled_folds(y, seed, max_folds)
    assert again is not None and all(np.array_equal(a, b) for a, b in zip(folds, again, strict=True))


def test_labelled_folds_equal_scikit_learns_stratified_k_fold() -> None:
    from sklearn.model_selection import StratifiedKFold

    y = np.repeat(np.arange(3), [4, 6, 3])
    folds = labelled_folds(y, 11)
    assert folds is not None and len(folds) == 3  # the smallest class has 3 rows
    expected = [np.sort(test) for _, test in StratifiedKFold(3, shuffle=True, random_state=11).split(y[:, None], y)]
    for got, want in zip(folds, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_labelled_folds_none_cases() -> None:
    assert labelled_folds(np.array([0, 0, 1]), 0) is None  # a class with one row
    assert labelled_folds(np.array([2, 2, 2, 2]), 0) is None  # one class
    assert labelled_folds(np.array([], dtype=np.int64), 0) is None
