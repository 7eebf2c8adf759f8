"""distill's batched metrics against torchmetrics (``tests/oracles.py``), scikit-learn and hand-computed values.

Every leading index of the batched result must equal torchmetrics' metrics on that slice, including
its conventions: argmax takes the first maximum, macro-F1 averages the classes with tp + fp + fn > 0,
AUROC counts a tie as one half and is NaN with fewer than two scorable classes (binary: class 1's AUROC),
and the ECE bins are ``bucketize(conf, torch.linspace(0, 1, 16), right=True) - 1`` on float32 edges.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from distill.metrics.classification import ECE_BINS, METRICS, batch_classification_metrics, classification_metrics
from tests.oracles import torchmetrics_classification_metrics

# torchmetrics warns when a one-vs-rest column has no positive / negative rows (expected here).
pytestmark = pytest.mark.filterwarnings("ignore:No (positive|negative) samples in targets:UserWarning")

# --------------------------------------------------------------------------- helpers


def random_probs(shape: tuple[int, ...], seed: int, concentration: float = 0.7) -> torch.Tensor:
    """Dirichlet rows of shape ``[..., N, C]`` in float32."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(shape[-1], concentration), size=shape[:-1])
    return torch.tensor(probs, dtype=torch.float32)


def random_target(
    shape: tuple[int, ...], num_classes: int, seed: int, classes: list[int] | None = None
) -> torch.Tensor:
    rng = np.random.default_rng(seed + 1000)
    pool = np.arange(num_classes) if classes is None else np.asarray(classes)
    return torch.tensor(pool[rng.integers(0, len(pool), size=shape)])


def assert_matches_reference(probs: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """Batched metrics equal torchmetrics' at every leading index (NaN where it is NaN)."""
    got = batch_classification_metrics(probs, target, num_classes)
    lead = probs.shape[:-2]
    assert list(got) == list(METRICS)
    target = target.expand(*probs.shape[:-1])
    for key, value in got.items():
        assert value.shape == lead and value.dtype == torch.float64, key
    for idx in np.ndindex(*lead):
        ref = torchmetrics_classification_metrics(probs[idx], target[idx], num_classes)
        for key in METRICS:
            expected, actual = float(ref[key]), float(got[key][idx])
            if math.isnan(expected):
                assert math.isnan(actual), (key, idx, actual)
            else:
                assert actual == pytest.approx(expected, abs=1e-6), (key, idx)
    return got


def np_ece(probs: np.ndarray, target: np.ndarray) -> float:
    """Top-label L1 ECE in float64 with torchmetrics' float32 edges, [lo, hi) bins and 1.0 in a bin of its own."""
    edges = torch.linspace(0, 1, ECE_BINS + 1).double().numpy()
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == target).astype(np.float64)
    bins = np.searchsorted(edges, confidence, side="right") - 1
    return float(
        sum((bins == b).mean() * abs(correct[bins == b].mean() - confidence[bins == b].mean()) for b in np.unique(bins))
    )


# --------------------------------------------------------------------------- against distill.metrics.classification


@pytest.mark.parametrize(
    ("shape", "seed"),
    [((7, 50, 2), 0), ((3, 4, 31, 10), 1), ((1, 1, 2), 2), ((5, 40, 3), 3), ((2, 200, 6), 4), ((60, 5), 5)],
)
def test_random_probabilities_match_classification_metrics(shape: tuple[int, ...], seed: int) -> None:
    num_classes = shape[-1]
    probs = random_probs(shape, seed)
    target = random_target(shape[:-1], num_classes, seed)
    assert_matches_reference(probs, target, num_classes)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_single_row(num_classes: int) -> None:
    probs = random_probs((4, 1, num_classes), 7)
    got = assert_matches_reference(probs, random_target((4, 1), num_classes, 7), num_classes)
    assert torch.isnan(got["auroc"]).all()


@pytest.mark.parametrize("classes", [[0, 2], [1, 3, 4], [4], [0]])
def test_absent_classes(classes: list[int]) -> None:
    probs = random_probs((4, 60, 5), 8)
    target = random_target((4, 60), 5, 8, classes=classes)
    got = assert_matches_reference(probs, target, 5)
    if len(classes) == 1:
        assert torch.isnan(got["auroc"]).all()


@pytest.mark.parametrize("num_classes", [2, 3, 4])
def test_one_class_present_gives_nan_auroc(num_classes: int) -> None:
    probs = random_probs((3, 25, num_classes), 9)
    target = torch.full((25,), num_classes - 1)
    got = assert_matches_reference(probs, target, num_classes)
    assert torch.isnan(got["auroc"]).all()


def test_binary_auroc_is_class_one_when_rows_do_not_sum_to_one() -> None:
    # Independent columns: class 0's one-vs-rest AUROC differs from class 1's; metrics.py reports class 1's.
    rng = np.random.default_rng(10)
    probs = torch.tensor(rng.random((6, 40, 2)), dtype=torch.float32)
    target = random_target((6, 40), 2, 10)
    got = assert_matches_reference(probs, target, 2)
    for m in range(6):
        expected = roc_auc_score(target[m].numpy(), probs[m, :, 1].double().numpy())
        assert float(got["auroc"][m]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("num_classes", [2, 3, 7])
@pytest.mark.parametrize("decimals", [0, 1])
def test_many_ties_match(num_classes: int, decimals: int) -> None:
    probs = random_probs((5, 80, num_classes), 11 + num_classes)
    probs = torch.round(probs, decimals=decimals)  # exact ties in scores, argmax ties, all-zero rows
    probs[1] = 1.0 / num_classes  # a member whose rows are all equal
    probs[2, ::3] = 0.5
    target = random_target((5, 80), num_classes, 11)
    assert_matches_reference(probs, target, num_classes)


def test_argmax_ties_take_first_maximum() -> None:
    probs = torch.tensor([[[0.4, 0.4, 0.2], [0.1, 0.45, 0.45], [1 / 3, 1 / 3, 1 / 3], [0.2, 0.3, 0.5]]])
    target = torch.tensor([1, 2, 0, 2])
    got = assert_matches_reference(probs, target, 3)
    # predictions 0, 1, 0, 2: rows 2 and 3 right
    assert float(got["accuracy"][0]) == pytest.approx(0.5)
    # class 0: tp 1 fp 1 fn 0 -> 2/3; class 1: tp 0 fp 1 fn 1 -> 0; class 2: tp 1 fp 0 fn 1 -> 2/3
    assert float(got["f1_macro"][0]) == pytest.approx((2 / 3 + 0 + 2 / 3) / 3, abs=1e-6)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_one_hot_probabilities(num_classes: int) -> None:
    target = random_target((3, 30), num_classes, 12)
    pred = random_target((3, 30), num_classes, 13)
    probs = torch.nn.functional.one_hot(pred, num_classes).float()
    got = assert_matches_reference(probs, target, num_classes)
    # every confidence is 1.0 (own bin): ECE = 1 - accuracy
    torch.testing.assert_close(got["ece"], 1.0 - got["accuracy"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_confidences_on_bin_edges(num_classes: int) -> None:
    edges = torch.linspace(0, 1, ECE_BINS + 1)
    # top-label confidences exactly on the float32 edges and on float32(k / 15), which differ for some k
    tops = torch.cat([edges, torch.tensor([k / 15 for k in range(16)]), torch.tensor([0.5, 0.2, 0.4, 0.6, 0.8])])
    tops = tops[tops >= 1.0 / num_classes]
    n = len(tops)
    rest = (1.0 - tops) / (num_classes - 1)
    probs = rest[:, None].repeat(1, num_classes)
    pred = torch.arange(n) % num_classes
    probs[torch.arange(n), pred] = tops
    target = torch.where(torch.arange(n) % 3 == 0, pred, (pred + 1) % num_classes)
    batch = torch.stack([probs, probs.flip(0)])
    got = assert_matches_reference(batch, torch.stack([target, target.flip(0)]), num_classes)
    expected = np_ece(probs.double().numpy(), target.numpy())
    assert float(got["ece"][0]) == pytest.approx(expected, abs=1e-6)
    assert float(got["ece"][1]) == pytest.approx(expected, abs=1e-6)


def test_logit_members_are_softmaxed_like_torchmetrics() -> None:
    # torchmetrics treats a slice with a value outside [0, 1] as logits (softmax for ECE and AUROC).
    probs = random_probs((4, 30, 3), 14)
    probs[1] = torch.randn(30, 3, generator=torch.Generator().manual_seed(0)) * 3
    probs[3, 0, 0] = 1.5
    assert_matches_reference(probs, random_target((4, 30), 3, 14), 3)


def test_nan_in_one_member_leaves_the_others_alone() -> None:
    # A NaN (either sign) must not leak into the neighbouring columns of the shared flat sort.
    probs = random_probs((4, 40, 3), 15)
    target = random_target((40,), 3, 15)
    clean = batch_classification_metrics(probs, target, 3)
    probs[2, 5, 1] = float("nan")
    probs[2, 7, 2] = -float("nan")
    dirty = batch_classification_metrics(probs, target, 3)
    for key in METRICS:
        torch.testing.assert_close(dirty[key][[0, 1, 3]], clean[key][[0, 1, 3]], atol=0, rtol=0)


# --------------------------------------------------------------------------- against scikit-learn


@pytest.mark.parametrize(("num_classes", "n", "seed"), [(2, 300, 20), (3, 500, 21), (6, 400, 22), (4, 2000, 23)])
def test_against_sklearn_float64(num_classes: int, n: int, seed: int) -> None:
    members = 3
    probs = random_probs((members, n, num_classes), seed).double()
    probs[2] = torch.round(probs[2], decimals=2).float().double()  # many ties, still float32-exact
    target = random_target((members, n), num_classes, seed)
    target[1, : n // 2] = 0  # unbalanced
    got = batch_classification_metrics(probs, target, num_classes)
    for m in range(members):
        p, t = probs[m].numpy(), target[m].numpy()
        pred = p.argmax(axis=1)
        labels = np.union1d(t, pred)
        assert float(got["accuracy"][m]) == pytest.approx(accuracy_score(t, pred), abs=1e-6)
        expected_f1 = f1_score(t, pred, labels=labels, average="macro", zero_division=0)
        assert float(got["f1_macro"][m]) == pytest.approx(expected_f1, abs=1e-6)
        if num_classes == 2:
            expected_auroc = roc_auc_score(t, p[:, 1])
        else:
            expected_auroc = np.mean([roc_auc_score(t == c, p[:, c]) for c in range(num_classes)])
        assert float(got["auroc"][m]) == pytest.approx(expected_auroc, abs=1e-6)
        assert float(got["ece"][m]) == pytest.approx(np_ece(p, t), abs=1e-6)


def test_auroc_hand_computed_with_ties() -> None:
    # class 1 scores: positives 0.4, 0.8, 0.4 vs negatives 0.4, 0.1. Pairs (pos, neg): (0.4, 0.4) tie 1/2,
    # (0.4, 0.1) won, (0.8, 0.4) won, (0.8, 0.1) won, (0.4, 0.4) tie 1/2, (0.4, 0.1) won -> 5 / 6
    p1 = torch.tensor([0.4, 0.8, 0.4, 0.4, 0.1])
    probs = torch.stack([1 - p1, p1], dim=1)[None]
    got = batch_classification_metrics(probs, torch.tensor([1, 1, 1, 0, 0]), 2)
    assert float(got["auroc"][0]) == pytest.approx(5 / 6, abs=1e-6)


def test_ece_hand_computed_float32_edges() -> None:
    # conf 0.4 (right) and 0.35 (wrong): the float32 edge linspace(0, 1, 16)[6] is 0.40000004 > float32(0.4),
    # so both fall in bin 5 = [1/3, 0.4): |1/2 - 0.375|. Exact edges would separate them: 0.6 and 0.35.
    # conf 1.0 (wrong) has a bin of its own, apart from conf 0.95 (right) in bin 14 = [14/15, 1);
    # conf 0.5 (a tie, predicts class 0, right) is alone in bin 7.
    probs = torch.tensor(
        [
            [0.4, 0.3, 0.2, 0.1],
            [0.35, 0.25, 0.25, 0.15],
            [0.0, 1.0, 0.0, 0.0],
            [0.95, 0.05, 0.0, 0.0],
            [0.5, 0.5, 0.0, 0.0],
        ]
    )
    target = torch.tensor([0, 1, 2, 0, 0])
    expected = 2 / 5 * abs(0.5 - (0.4 + 0.35) / 2) + 1 / 5 * abs(0.0 - 1.0) + 1 / 5 * abs(1.0 - 0.95) + 1 / 5 * 0.5
    got = batch_classification_metrics(probs[None], target, 4)
    assert float(got["ece"][0]) == pytest.approx(expected, abs=1e-6)
    assert float(classification_metrics(probs, target, 4)["ece"]) == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------------------- shapes and dtypes


def test_target_broadcasts_over_leading_dims() -> None:
    probs = random_probs((3, 4, 25, 5), 30)
    target = random_target((25,), 5, 30)
    got = assert_matches_reference(probs, target, 5)
    expanded = batch_classification_metrics(probs, target.expand(3, 4, 25), 5)
    per_member = batch_classification_metrics(probs, random_target((4, 25), 5, 31), 5)
    assert_matches_reference(probs, random_target((4, 25), 5, 31), 5)
    for key in METRICS:
        torch.testing.assert_close(got[key], expanded[key], equal_nan=True)
        assert per_member[key].shape == (3, 4)


def test_float64_input_and_shapes() -> None:
    probs = random_probs((2, 3, 20, 4), 32)
    target = random_target((2, 3, 20), 4, 32)
    as32 = batch_classification_metrics(probs, target, 4)
    as64 = batch_classification_metrics(probs.double(), target.int(), 4)
    for key in METRICS:
        assert as64[key].shape == (2, 3) and as64[key].dtype == torch.float64
        torch.testing.assert_close(as64[key], as32[key], atol=0, rtol=0)
    single = batch_classification_metrics(probs[0, 0], target[0, 0], 4)
    assert all(v.shape == () for v in single.values())
    ref = torchmetrics_classification_metrics(probs[0, 0], target[0, 0], 4)
    for key in METRICS:
        assert float(single[key]) == pytest.approx(float(ref[key]), abs=1e-6)


def test_row_order_does_not_matter() -> None:
    probs = torch.round(random_probs((4, 90, 3), 33), decimals=1)
    target = random_target((90,), 3, 33)
    perm = torch.randperm(90, generator=torch.Generator().manual_seed(0))
    a = batch_classification_metrics(probs, target, 3)
    b = batch_classification_metrics(probs[:, perm], target[perm], 3)
    for key in METRICS:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_wrong_number_of_classes_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        batch_classification_metrics(torch.rand(2, 5, 3), torch.zeros(5, dtype=torch.long), 4)


def test_count_ratios_are_the_float64_fractions() -> None:
    """31 of 50 right is 0.62 exactly as Python's 31 / 50, not float32's 0.6200000047683716 (what MLflow and
    summary.json would show); F1 and AUROC are ratios of counts too, checked against scikit-learn's float64."""
    from sklearn.metrics import f1_score, roc_auc_score

    rng = np.random.default_rng(7)
    target = np.array([0] * 25 + [1] * 25)
    pred = target.copy()
    pred[rng.choice(50, size=19, replace=False)] ^= 1  # 31 right
    score = np.where(pred == 1, 0.8, 0.3) + rng.integers(0, 3, size=50) * 0.05
    probs = torch.tensor(np.stack([1 - score, score], axis=1), dtype=torch.float32)
    got = {k: float(v) for k, v in batch_classification_metrics(probs, torch.tensor(target), 2).items()}
    assert got["accuracy"] == 31 / 50 == 0.62
    assert got["ece"] == round(got["ece"], 8)  # to the precision float32 confidences hold, no noise digits
    # float64 rounding of a different summation order at most; float32 noise would be ~1e-8
    assert got["f1_macro"] == pytest.approx(f1_score(target, pred, average="macro"), rel=1e-15, abs=0)
    assert got["auroc"] == pytest.approx(roc_auc_score(target, probs[:, 1].double().numpy()), rel=1e-15, abs=0)
