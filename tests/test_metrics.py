"""distill.metrics.classification against scikit-learn and an independent NumPy float64 ECE.

Binning convention of the ECE (checked in torchmetrics 1.x ``_binning_bucketize``):
``torch.bucketize(conf, linspace(0, 1, 16), right=True) - 1``, i.e. 15 equal-width bins
``[lo, hi)`` (left-closed), and a confidence of exactly 1.0 goes to a 16th bin of its own.
The reference below implements that rule with NumPy alone.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from distill.metrics.classification import ECE_BINS, METRICS, classification_metrics, probabilities

# torchmetrics warns when a one-vs-rest column has no positive / negative rows (expected here).
pytestmark = pytest.mark.filterwarnings("ignore:No (positive|negative) samples in targets:UserWarning")

# --------------------------------------------------------------------------- references


def np_ece(probs: np.ndarray, target: np.ndarray, n_bins: int = 15) -> float:
    """Top-label L1 calibration error: sum over bins of (rows in bin / N) * |accuracy - confidence|."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == target).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin b holds edges[b] <= conf < edges[b + 1]; conf == 1.0 is a bin of its own (b = n_bins).
    bins = np.searchsorted(edges, confidence, side="right") - 1
    total = 0.0
    for b in np.unique(bins):
        rows = bins == b
        total += rows.mean() * abs(correct[rows].mean() - confidence[rows].mean())
    return float(total)


def ovr_auroc_present(probs: np.ndarray, target: np.ndarray) -> float:
    """Mean one-vs-rest AUROC over the classes present in ``target`` (and not all of it)."""
    scores = [
        roc_auc_score(target == c, probs[:, c])
        for c in range(probs.shape[1])
        if 0 < np.sum(target == c) < len(target)
    ]
    return float(np.mean(scores)) if len(scores) >= 2 else math.nan


def random_case(num_classes: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random probabilities (rounded to float32, as the metrics see them) and labels with every class."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(num_classes, 0.7), size=n).astype(np.float32)
    probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32).astype(np.float64)
    target = rng.integers(0, num_classes, size=n)
    target[:num_classes] = np.arange(num_classes)
    # Make the predictions informative so AUROC/accuracy are far from trivial values.
    probs[np.arange(n) % 3 == 0, :] = np.eye(num_classes)[target[np.arange(n) % 3 == 0]] * 0.6 + 0.4 / num_classes
    return probs, target


def run(probs: np.ndarray, target: np.ndarray, num_classes: int) -> dict[str, float]:
    out = classification_metrics(torch.tensor(probs, dtype=torch.float32), torch.tensor(target), num_classes)
    assert list(out) == list(METRICS)
    for value in out.values():
        assert isinstance(value, torch.Tensor) and value.ndim == 0
    return {k: float(v) for k, v in out.items()}


# --------------------------------------------------------------------------- against scikit-learn


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("num_classes", [2, 3, 7])
def test_metrics_match_sklearn(num_classes: int, seed: int) -> None:
    probs, target = random_case(num_classes, 211, seed)
    got = run(probs, target, num_classes)
    pred = probs.argmax(axis=1)
    assert got["accuracy"] == pytest.approx(accuracy_score(target, pred), abs=1e-5)
    assert got["f1_macro"] == pytest.approx(f1_score(target, pred, average="macro"), abs=1e-5)
    if num_classes == 2:
        expected_auroc = roc_auc_score(target, probs[:, 1])
    else:
        expected_auroc = roc_auc_score(target, probs, multi_class="ovr", average="macro")
    assert got["auroc"] == pytest.approx(expected_auroc, abs=1e-5)
    assert got["ece"] == pytest.approx(np_ece(probs, target, ECE_BINS), abs=1e-5)
    assert ECE_BINS == 15


def test_f1_macro_with_class_never_predicted() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    target = np.array([0, 2, 1, 1])
    got = run(probs, target, 3)
    pred = probs.argmax(axis=1)  # 0, 0, 1, 0: class 2 never predicted, F1 of class 2 is 0
    assert got["f1_macro"] == pytest.approx(f1_score(target, pred, average="macro", zero_division=0), abs=1e-6)
    # by hand: class 0 P=1/3 R=1 F1=1/2; class 1 P=1 R=1/2 F1=2/3; class 2 F1=0
    assert got["f1_macro"] == pytest.approx((0.5 + 2 / 3 + 0.0) / 3, abs=1e-6)
    assert got["accuracy"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- ECE


def test_ece_hand_computed() -> None:
    # confidences 0.9 (right), 0.9 (wrong), 0.7 (right), 0.55 (wrong)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.55, 0.45]])
    target = np.array([0, 1, 1, 1])
    # bins: {0.9, 0.9}: acc 0.5 conf 0.9; {0.7}: acc 1; {0.55}: acc 0
    expected = 0.5 * 0.4 + 0.25 * 0.3 + 0.25 * 0.55
    assert np_ece(probs, target) == pytest.approx(expected)
    assert run(probs, target, 2)["ece"] == pytest.approx(expected, abs=1e-6)


def test_ece_confidence_one_is_its_own_bin() -> None:
    # conf 1.0 wrong, conf 0.95 right. Own bins: 0.5*|0-1| + 0.5*|1-0.95| = 0.525;
    # a merged (lo, 1] last bin would give |0.5 - 0.975| = 0.475.
    probs = np.array([[1.0, 0.0, 0.0], [0.95, 0.03, 0.02]])
    target = np.array([1, 0])
    assert np_ece(probs, target) == pytest.approx(0.525)
    assert run(probs, target, 3)["ece"] == pytest.approx(0.525, abs=1e-6)


def test_ece_perfect_calibration_is_zero() -> None:
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert run(probs, np.array([0, 1, 0]), 2)["ece"] == pytest.approx(0.0, abs=1e-7)


# --------------------------------------------------------------------------- AUROC edge cases


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_auroc_nan_when_one_class_present(num_classes: int) -> None:
    probs, _ = random_case(num_classes, 30, 4)
    target = np.full(30, 1)
    got = run(probs, target, num_classes)
    assert math.isnan(got["auroc"])
    assert got["accuracy"] == pytest.approx(accuracy_score(target, probs.argmax(axis=1)), abs=1e-6)


@pytest.mark.parametrize("absent", [[3], [0, 4]])
def test_auroc_over_present_classes_only(absent: list[int]) -> None:
    num_classes = 5
    probs, target = random_case(num_classes, 120, 5)
    present = [c for c in range(num_classes) if c not in absent]
    target = np.array(present)[np.arange(120) % len(present)]
    got = run(probs, target, num_classes)
    expected = ovr_auroc_present(probs, target)
    assert got["auroc"] == pytest.approx(expected, abs=1e-5)
    # Same as scikit-learn's ovr-macro restricted to the present classes' columns.
    ovr = np.mean([roc_auc_score(target == c, probs[:, c]) for c in present])
    assert got["auroc"] == pytest.approx(ovr, abs=1e-5)


def test_auroc_hand_computed_binary() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    target = np.array([0, 0, 1, 1])
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: pairs won 1 + 2 = 3 of 4
    assert run(probs, target, 2)["auroc"] == pytest.approx(0.75, abs=1e-6)


# --------------------------------------------------------------------------- probabilities


def test_probabilities_one_logit_is_bernoulli() -> None:
    z = torch.tensor([[-3.0], [0.0], [0.5], [20.0]])
    expected = np.stack([1 - 1 / (1 + np.exp(-z.numpy()[:, 0])), 1 / (1 + np.exp(-z.numpy()[:, 0]))], axis=1)
    for logits in (z, z[:, 0]):
        p = probabilities(logits)
        assert p.shape == (4, 2)
        np.testing.assert_allclose(p.numpy(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("num_classes", [2, 3, 7])
def test_probabilities_many_logits_is_softmax(num_classes: int) -> None:
    rng = np.random.default_rng(num_classes)
    z = rng.normal(size=(6, num_classes)) * 3
    expected = np.exp(z - z.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    p = probabilities(torch.tensor(z))
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-12)
    # log-probabilities are valid logits: softmax(log p) == p
    np.testing.assert_allclose(probabilities(torch.tensor(np.log(expected))).numpy(), expected, rtol=1e-12)
