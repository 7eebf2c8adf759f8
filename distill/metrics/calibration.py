"""Calibration of teacher probabilities: scores, temperature scaling and the labelled-row folds.

Pure NumPy/SciPy in float64. A few-shot teacher (a one-vs-rest GP on ten classes) is often far
from calibrated; temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural
Networks"; a one-parameter form of Platt 1999, "Probabilistic Outputs for Support Vector
Machines") fixes its confidence without changing its ranking, fitted on out-of-fold outputs only.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "log_loss",
    "expected_calibration_error",
    "fit_temperature",
    "apply_temperature",
    "labelled_folds",
    "TEMPERATURE_BOUNDS",
]

#: ``fit_temperature`` searches T within these bounds (in log T).
TEMPERATURE_BOUNDS = (0.05, 20.0)
#: Probabilities are clamped to at least this before a log (as ``distill.teachers.base.PROBABILITY_FLOOR``).
_FLOOR = 1e-12


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _check(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(y, dtype=np.int64)
    if p.ndim != 2 or labels.shape != (p.shape[0],):
        raise ValueError(f"probabilities [N, K] and labels [N] expected, got {p.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= p.shape[1]):
        raise ValueError(f"labels must lie in 0..{p.shape[1] - 1}, got {labels.min()}..{labels.max()}")
    return p, labels


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood ``-mean_i log p_i[y_i]`` (p clamped to >= 1e-12 so it stays finite)."""
    p, labels = _check(probs, y)
    if labels.size == 0:
        return float("nan")
    return float(-np.mean(np.log(np.clip(p[np.arange(labels.size), labels], _FLOOR, 1.0))))


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with equal-width bins (Guo et al. 2017): ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``.

    A row's confidence ``c = max_k p_k`` falls in bin ``b`` when ``b/bins < c <= (b+1)/bins`` (a
    confidence of 0 in the first bin); its prediction is the first arg-max.
    """
    p, labels = _check(probs, y)
    if labels.size == 0:
        return float("nan")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == labels).astype(np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.sum() / labels.size * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def _nll(log_probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = _log_softmax(log_probs / temperature)
    return float(-np.mean(scaled[np.arange(labels.size), labels]))


def fit_temperature(log_probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature ``T`` minimising the mean NLL of ``softmax(log_probs / T)``.

    Temperature scaling (Guo et al. 2017, section 4.2; Platt 1999 with a single slope and no bias):
    a bounded scalar minimisation over ``log T`` in ``log TEMPERATURE_BOUNDS``. Rows whose inputs are
    not finite are clamped first, as ``apply_temperature`` does.
    """
    from scipy.optimize import minimize_scalar

    z, labels = _check(_clamped(log_probs), y)
    if labels.size == 0:
        raise ValueError("fit_temperature needs at least one row")
    low, high = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    result = minimize_scalar(lambda s: _nll(z, labels, float(np.exp(s))), bounds=(low, high), method="bounded",
                             options={"xatol": 1e-6})
    return float(np.exp(result.x))


def _clamped(log_probs: np.ndarray) -> np.ndarray:
    """Normalised log-probabilities clamped to ``[log 1e-12, 0]`` (as ``probabilities_to_logits``):
    valid log-probabilities pass unchanged up to the clamp; NaN counts as the floor, +-inf as huge."""
    z = np.nan_to_num(np.asarray(log_probs, dtype=np.float64), nan=np.log(_FLOOR), posinf=1e300, neginf=-1e300)
    return np.clip(_log_softmax(z), np.log(_FLOOR), 0.0)


def apply_temperature(log_probs: np.ndarray, temperature: float) -> np.ndarray:
    """``log_softmax(log_probs / T)`` over the last axis, with the inputs clamped to ``[log 1e-12, 0]``
    so that the result is finite for any input (the teachers' own clamp, ``probabilities_to_logits``)."""
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    return _log_softmax(_clamped(log_probs) / float(temperature))


def labelled_folds(y: np.ndarray, seed: int, max_folds: int = 5) -> list[np.ndarray] | None:
    """Stratified folds of positions ``0..n-1`` of the labelled rows, each a sorted int64 array of
    held-out positions (every position held out exactly once).

    ``n_splits = min(max_folds, smallest count among the classes present)``; None when fewer than two
    classes are present or a present class has fewer than two rows (no cross-validation possible).
    Deterministic for a seed: scikit-learn's ``StratifiedKFold(shuffle=True, random_state=seed)``.
    """
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(y, dtype=np.int64)
    _, counts = np.unique(labels, return_counts=True)
    if counts.size < 2 or counts.min() < 2 or max_folds < 2:
        return None
    splits = int(min(max_folds, counts.min()))
    folds = StratifiedKFold(n_splits=splits, shuffle=True, random_state=int(seed))
    return [np.sort(held).astype(np.int64) for _, held in folds.split(np.zeros((labels.size, 1)), labels)]
