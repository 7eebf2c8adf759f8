"""Tests of the loss modules (distill.losses.hard, distill.losses.metric) and of the tests' oracles
(tests/oracles.py) against an independent float64 NumPy reference and PyTorch's built-ins.

The ``np_*`` functions below are written from the papers' / PyTorch documentation's formulas
in plain NumPy (scipy.special for log-sum-exp and log-sigmoid); they share no code with
``distill.losses``. ``tests/fixtures/loss_golden.json`` pins each loss's value on fixed small
inputs; regenerate it from the NumPy reference with ``PYTHONPATH=. python tests/test_losses.py``.
"""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import expit, log_expit, logsumexp
from torch import nn

from distill.losses import hard, metric
from distill.losses.hard import (
    HARD_LOSSES,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    FocalLoss,
    SymmetricCrossEntropyLoss,
    create_loss,
    list_losses,
)
from distill.losses.metric import MarginRankingLoss, TripletMarginLoss
from distill.students import num_outputs_for
from tests import oracles
from tests.oracles import KLDivLoss, NumpyCrossEntropyLoss

GOLDEN = Path(__file__).parent / "fixtures" / "loss_golden.json"
REDUCTIONS = ("mean", "sum", "none")
F64 = torch.float64


# --------------------------------------------------------------------------- NumPy reference


def np_reduce(per: np.ndarray, reduction: str, denom: float | None = None):
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / (per.size if denom is None else denom)


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    return x - logsumexp(x, axis=1, keepdims=True)


def np_ce(x, y, weight=None, reduction="mean", label_smoothing=0.0):
    """-sum_k q_k w_k log p_k with q the smoothed one-hot target; mean / sum_i w_{y_i}."""
    x, y = np.asarray(x, float), np.asarray(y)
    n, c = x.shape
    w = np.ones(c) if weight is None else np.asarray(weight, float)
    q = np.full((n, c), label_smoothing / c)
    q[np.arange(n), y] += 1.0 - label_smoothing
    per = -(q * w[None, :] * np_log_softmax(x)).sum(axis=1)
    return np_reduce(per, reduction, None if weight is None else w[y].sum())


def np_bce(x, y, weight=None, pos_weight=None, reduction="mean"):
    """-w [pw y log sigma(x) + (1 - y) log sigma(-x)]; plain mean."""
    x, y = np.asarray(x, float).reshape(-1), np.asarray(y, float).reshape(-1)
    pw = 1.0 if pos_weight is None else float(np.asarray(pos_weight).reshape(()))
    w = 1.0 if weight is None else np.asarray(weight, float).reshape(-1)
    per = -w * (pw * y * log_expit(x) + (1.0 - y) * log_expit(-x))
    return np_reduce(per, reduction)


def np_kl(inp, target, reduction="mean", log_target=False):
    inp, t = np.asarray(inp, float), np.asarray(target, float)
    p = np.exp(t) if log_target else t
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p = t if log_target else np.log(p)
        per = np.where(p > 0, p * (log_p - inp), 0.0)
    if reduction == "batchmean":
        return per.sum() / inp.shape[0]
    return np_reduce(per, reduction)


def np_focal_binary(x, y, gamma=2.0, alpha=None, reduction="mean"):
    """-alpha_t (1 - p_t)^gamma log p_t, with the BCE as -log p_t (soft targets allowed)."""
    x, y = np.asarray(x, float).reshape(-1), np.asarray(y, float).reshape(-1)
    ce = -(y * log_expit(x) + (1.0 - y) * log_expit(-x))
    one_minus_pt = y * expit(-x) + (1.0 - y) * expit(x)
    if alpha is None:
        a_t = 1.0
    elif np.ndim(alpha) == 0:
        a_t = alpha * y + (1.0 - alpha) * (1.0 - y)
    else:
        a_t = alpha[1] * y + alpha[0] * (1.0 - y)
    per = a_t * one_minus_pt**gamma * ce
    return np_reduce(per, reduction)


def np_focal_multiclass(x, y, gamma=2.0, alpha=None, reduction="mean"):
    x, y = np.asarray(x, float), np.asarray(y)
    n = x.shape[0]
    log_p = np_log_softmax(x)
    p = np.exp(log_p)
    others = p.copy()
    others[np.arange(n), y] = 0.0
    one_minus_pt = others.sum(axis=1)
    if alpha is None:
        a_t = 1.0
    elif np.ndim(alpha) == 0:
        a_t = float(alpha)
    else:
        a_t = np.asarray(alpha, float)[y]
    per = -a_t * one_minus_pt**gamma * log_p[np.arange(n), y]
    return np_reduce(per, reduction)


def np_sce(x, y, alpha=0.1, beta=1.0, clamp=1e-4, weight=None, reduction="mean"):
    """alpha CE + beta RCE, RCE = -sum_k p_k log clip(onehot, clamp, 1)_k."""
    x, y = np.asarray(x, float), np.asarray(y)
    n, c = x.shape
    log_p = np_log_softmax(x)
    q = np.clip(np.eye(c)[y], clamp, 1.0)
    ce = -log_p[np.arange(n), y]
    rce = -(np.exp(log_p) * np.log(q)).sum(axis=1)
    w = np.ones(c) if weight is None else np.asarray(weight, float)
    per = w[y] * (alpha * ce + beta * rce)
    return np_reduce(per, reduction, None if weight is None else w[y].sum())


def np_margin_ranking(x1, x2, y, margin=0.0, reduction="mean"):
    x1, x2, y = (np.asarray(a, float) for a in (x1, x2, y))
    return np_reduce(np.maximum(0.0, -y * (x1 - x2) + margin), reduction)


def np_triplet(a, pos, neg, margin=1.0, p=2.0, eps=1e-6, swap=False, reduction="mean"):
    a, pos, neg = (np.asarray(t, float) for t in (a, pos, neg))

    def dist(u, v):
        return (np.abs(u - v + eps) ** p).sum(axis=-1) ** (1.0 / p)

    d_neg = dist(a, neg)
    if swap:
        d_neg = np.minimum(d_neg, dist(pos, neg))
    return np_reduce(np.maximum(0.0, dist(a, pos) - d_neg + margin), reduction)


# --------------------------------------------------------------------------- helpers


def t64(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, float), dtype=F64)


def assert_close(ours: torch.Tensor, ref, *, rtol: float = 1e-12, atol: float = 1e-12) -> None:
    np.testing.assert_allclose(ours.detach().numpy(), np.asarray(ref, float), rtol=rtol, atol=atol)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def multiclass_batch(extreme: bool, n: int = 7, c: int = 4, seed: int = 0):
    rng = _rng(seed)
    x = rng.normal(scale=2.0, size=(n, c))
    if extreme:
        x[0] = [50.0, -50.0, 0.0, 10.0][:c] + [0.0] * max(0, c - 4)
        x[1, :] = -50.0
        x[1, 2 % c] = 50.0
        x[2] = np.where(np.arange(c) % 2 == 0, 50.0, -50.0)
    y = rng.integers(0, c, size=n)
    y[0], y[1] = 1, 2 % c  # one badly wrong, one confidently right
    return x, y


def binary_batch(extreme: bool, n: int = 8, seed: int = 1):
    rng = _rng(seed)
    x = rng.normal(scale=2.0, size=n)
    y = rng.integers(0, 2, size=n).astype(float)
    if extreme:
        x[:4] = [50.0, -50.0, 50.0, -50.0]
        y[:4] = [1.0, 1.0, 0.0, 0.0]
    return x, y


CLASS_WEIGHT = [0.5, 2.0, 1.0, 3.0]


# --------------------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_matches_numpy_and_torch(extreme, reduction, weighted, smoothing):
    x, y = multiclass_batch(extreme)
    w = CLASS_WEIGHT if weighted else None
    loss = CrossEntropyLoss(weight=None if w is None else t64(w), reduction=reduction,
                            label_smoothing=smoothing)
    ours = loss(t64(x), torch.as_tensor(y))
    assert_close(ours, np_ce(x, y, w, reduction, smoothing))
    ref = nn.CrossEntropyLoss(weight=None if w is None else t64(w), reduction=reduction,
                              label_smoothing=smoothing)(t64(x), torch.as_tensor(y))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    assert ours.shape == ((7,) if reduction == "none" else ())


def test_cross_entropy_sequence_weight_and_float32():
    x, y = multiclass_batch(False)
    ours = CrossEntropyLoss(weight=CLASS_WEIGHT)(torch.tensor(x, dtype=torch.float32), torch.as_tensor(y))
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(np_ce(x, y, CLASS_WEIGHT), rel=1e-5)


def test_cross_entropy_rejects_bad_shapes_and_targets():
    loss = CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        loss(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class indices"):
        loss(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="weight has 3 entries"):
        CrossEntropyLoss(weight=[1.0, 2.0, 3.0])(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyLoss(label_smoothing=1.5)


# --------------------------------------------------------------------------- NumPy cross-entropy


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("extreme", [False, True])
def test_numpy_cross_entropy_equals_torch_value_and_gradient(reduction, weighted, extreme):
    x, y = multiclass_batch(extreme)
    w = t64(CLASS_WEIGHT) if weighted else None
    a = t64(x).requires_grad_()
    b = t64(x).requires_grad_()
    ours = NumpyCrossEntropyLoss(weight=w, reduction=reduction)(a, torch.as_tensor(y))
    ref = nn.CrossEntropyLoss(weight=w, reduction=reduction)(b, torch.as_tensor(y))
    assert ours.dtype == F64 and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    upstream = torch.linspace(0.5, 2.0, 7, dtype=F64) if reduction == "none" else torch.tensor(1.7, dtype=F64)
    ours.backward(upstream)
    ref.backward(upstream)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-10)
    assert_close(ours, np_ce(x, y, None if w is None else CLASS_WEIGHT, reduction), rtol=1e-12)


def test_numpy_cross_entropy_float32_keeps_dtype():
    x, y = multiclass_batch(False)
    a = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    out = NumpyCrossEntropyLoss()(a, torch.as_tensor(y))
    out.backward()
    assert out.dtype == torch.float32 and a.grad.dtype == torch.float32
    assert out.item() == pytest.approx(np_ce(x, y), rel=1e-6)


def test_numpy_cross_entropy_rejects_non_cpu_tensors():
    loss = NumpyCrossEntropyLoss()
    x = torch.zeros(3, 2, device="meta")
    with pytest.raises(ValueError, match="computes in NumPy and takes CPU tensors; got a tensor on meta; "
                                         "use CrossEntropyLoss"):
        loss(x, torch.zeros(3, dtype=torch.long, device="meta"))
    # A CUDA tensor goes through the same device check; the message names its device.
    fake_cuda = types.SimpleNamespace(device=torch.device("cuda:0"))
    with pytest.raises(ValueError) as info:
        oracles._check_cpu(fake_cuda)
    assert str(info.value) == ("NumpyCrossEntropyLoss computes in NumPy and takes CPU tensors; "
                               "got a tensor on cuda:0; use CrossEntropyLoss")


# --------------------------------------------------------------------------- BCE


@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("pos_weight", [None, 3.0])
@pytest.mark.parametrize("column", [False, True])
def test_bce_matches_numpy_and_torch(extreme, reduction, weighted, pos_weight, column):
    x, y = binary_batch(extreme)
    w = np.linspace(0.5, 2.0, x.size) if weighted else None
    shape = (-1, 1) if column else (-1,)
    xt, yt = t64(x).reshape(shape), t64(y).reshape(shape)
    wt = None if w is None else t64(w).reshape(shape)
    pwt = None if pos_weight is None else torch.tensor([pos_weight], dtype=F64)
    ours = BCEWithLogitsLoss(weight=wt, pos_weight=pwt, reduction=reduction)(xt, yt)
    assert_close(ours, np_bce(x, y, w, pos_weight, reduction))
    ref = nn.BCEWithLogitsLoss(weight=wt, pos_weight=pwt, reduction=reduction)(xt, yt)
    torch.testing.assert_close(ours, ref.reshape(ours.shape), rtol=1e-12, atol=1e-12)
    assert ours.shape == ((x.size,) if reduction == "none" else ())


def test_bce_accepts_float_pos_weight_and_int_targets():
    x, y = binary_batch(False)
    ours = BCEWithLogitsLoss(pos_weight=2.5)(t64(x), torch.as_tensor(y.astype(np.int64)))
    assert_close(ours, np_bce(x, y, pos_weight=2.5))
    with pytest.raises(ValueError, match="one logit per row"):
        BCEWithLogitsLoss()(torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="pos_weight"):
        BCEWithLogitsLoss(pos_weight=torch.ones(2))
    with pytest.raises(ValueError, match="weight must be"):
        BCEWithLogitsLoss(weight=torch.ones(5))(torch.zeros(3), torch.zeros(3))


# --------------------------------------------------------------------------- KL


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss:UserWarning")
@pytest.mark.parametrize("reduction", ("mean", "batchmean", "sum", "none"))
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_matches_numpy_and_torch(reduction, log_target):
    rng = _rng(3)
    inp = np_log_softmax(rng.normal(scale=3.0, size=(5, 4)))
    target = np.exp(np_log_softmax(rng.normal(scale=3.0, size=(5, 4))))
    target[0] = [0.0, 0.5, 0.5, 0.0]  # zero probabilities: 0 log 0 = 0
    tgt = np.log(target, where=target > 0, out=np.full_like(target, -np.inf)) if log_target else target
    ours = KLDivLoss(reduction=reduction, log_target=log_target)(t64(inp), t64(tgt))
    assert_close(ours, np_kl(inp, tgt, reduction, log_target))
    if log_target:  # torch computes exp(-inf) * (-inf - x) = nan for a zero target; we give 0.
        tgt = np.where(np.isinf(tgt), -1e300, tgt)
    ref = nn.KLDivLoss(reduction=reduction, log_target=log_target)(t64(inp), t64(tgt))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_kl_div_zero_target_against_minus_inf_input():
    inp = torch.tensor([[0.0, -math.inf]], dtype=F64, requires_grad=True)
    out = KLDivLoss(reduction="sum")(inp, torch.tensor([[1.0, 0.0]], dtype=F64))
    out.backward()
    assert out.item() == 0.0
    assert torch.isfinite(inp.grad).all()
    with pytest.raises(ValueError, match="batchmean"):
        KLDivLoss(reduction="avg")


# --------------------------------------------------------------------------- focal


@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha", [None, 0.25, (0.3, 0.8)])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_binary_matches_numpy(extreme, reduction, alpha, gamma):
    x, y = binary_batch(extreme)
    loss = FocalLoss(gamma=gamma, alpha=alpha, reduction=reduction)
    assert_close(loss(t64(x), t64(y)), np_focal_binary(x, y, gamma, alpha, reduction), rtol=1e-11)
    assert_close(loss(t64(x)[:, None], t64(y)[:, None]), np_focal_binary(x, y, gamma, alpha, reduction), rtol=1e-11)


def test_focal_binary_soft_targets():
    x, _ = binary_batch(False)
    y = np.linspace(0.0, 1.0, x.size)
    assert_close(FocalLoss(alpha=0.3)(t64(x), t64(y)), np_focal_binary(x, y, 2.0, 0.3), rtol=1e-11)


@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha", [None, 0.25, CLASS_WEIGHT])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_multiclass_matches_numpy(extreme, reduction, alpha, gamma):
    x, y = multiclass_batch(extreme)
    loss = FocalLoss(gamma=gamma, alpha=alpha if alpha is None or np.ndim(alpha) == 0 else t64(alpha),
                     reduction=reduction)
    assert_close(loss(t64(x), torch.as_tensor(y)), np_focal_multiclass(x, y, gamma, alpha, reduction), rtol=1e-11)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_focal_gamma_zero_is_alpha_weighted_bce(reduction, alpha):
    x, y = binary_batch(True)
    ours = FocalLoss(gamma=0.0, alpha=alpha, reduction=reduction)(t64(x), t64(y))
    w = None if alpha is None else t64(alpha * y + (1 - alpha) * (1 - y))
    ref = nn.BCEWithLogitsLoss(weight=w, reduction=reduction)(t64(x), t64(y))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alpha", [None, CLASS_WEIGHT])
def test_focal_gamma_zero_is_weighted_ce(alpha):
    x, y = multiclass_batch(True)
    w = None if alpha is None else t64(alpha)
    yt = torch.as_tensor(y)
    per_row = FocalLoss(gamma=0.0, alpha=w, reduction="none")(t64(x), yt)
    torch.testing.assert_close(per_row, nn.CrossEntropyLoss(weight=w, reduction="none")(t64(x), yt),
                               rtol=1e-12, atol=1e-12)
    total = FocalLoss(gamma=0.0, alpha=w, reduction="sum")(t64(x), yt)
    torch.testing.assert_close(total, nn.CrossEntropyLoss(weight=w, reduction="sum")(t64(x), yt),
                               rtol=1e-12, atol=1e-12)
    # "mean" is the plain mean over rows, also with per-class alpha (documented).
    mean = FocalLoss(gamma=0.0, alpha=w, reduction="mean")(t64(x), yt)
    torch.testing.assert_close(mean, total / len(y), rtol=1e-12, atol=1e-12)


def test_focal_validation():
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=1.5)
    with pytest.raises(ValueError, match="2 per-class"):
        FocalLoss(alpha=[0.2, 0.3, 0.5])(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="weight has 3 entries"):
        FocalLoss(alpha=[0.2, 0.3, 0.5])(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))


# --------------------------------------------------------------------------- symmetric CE


@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("params", [{}, {"alpha": 0.5, "beta": 0.3, "clamp": 1e-2}])
def test_sce_matches_numpy(extreme, reduction, weighted, params):
    x, y = multiclass_batch(extreme)
    w = CLASS_WEIGHT if weighted else None
    ours = SymmetricCrossEntropyLoss(**params, reduction=reduction, weight=None if w is None else t64(w))(
        t64(x), torch.as_tensor(y))
    assert_close(ours, np_sce(x, y, **params, weight=w, reduction=reduction), rtol=1e-11)


def test_sce_rce_closed_form():
    x, y = multiclass_batch(False)
    p = np.exp(np_log_softmax(x))[np.arange(len(y)), y]
    ours = SymmetricCrossEntropyLoss(alpha=0.0, beta=1.0, clamp=1e-4, reduction="none")(t64(x), torch.as_tensor(y))
    assert_close(ours, -math.log(1e-4) * (1.0 - p))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_sce_with_beta_zero_is_cross_entropy(reduction, weighted):
    x, y = multiclass_batch(True)
    w = t64(CLASS_WEIGHT) if weighted else None
    ours = SymmetricCrossEntropyLoss(alpha=1.0, beta=0.0, reduction=reduction, weight=w)(t64(x), torch.as_tensor(y))
    ref = nn.CrossEntropyLoss(weight=w, reduction=reduction)(t64(x), torch.as_tensor(y))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_sce_validation():
    with pytest.raises(ValueError, match="clamp"):
        SymmetricCrossEntropyLoss(clamp=0.0)
    with pytest.raises(ValueError, match="beta"):
        SymmetricCrossEntropyLoss(beta=-1.0)


# --------------------------------------------------------------------------- metric learning


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("margin", [0.0, 0.7])
def test_margin_ranking_matches_numpy_and_torch(reduction, margin):
    rng = _rng(4)
    x1, x2 = rng.normal(size=9), rng.normal(size=9)
    y = rng.choice([-1.0, 1.0], size=9)
    ours = MarginRankingLoss(margin=margin, reduction=reduction)(t64(x1), t64(x2), t64(y))
    assert_close(ours, np_margin_ranking(x1, x2, y, margin, reduction))
    ref = nn.MarginRankingLoss(margin=margin, reduction=reduction)(t64(x1), t64(x2), t64(y))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_triplet_matches_numpy_and_torch(reduction, swap, p):
    rng = _rng(5)
    a, pos, neg = (rng.normal(size=(6, 5)) for _ in range(3))
    neg[0] = pos[0] + 0.1  # a case where the swap changes the negative distance
    kwargs = dict(margin=1.0, p=p, eps=1e-6, swap=swap, reduction=reduction)
    ours = TripletMarginLoss(**kwargs)(t64(a), t64(pos), t64(neg))
    assert_close(ours, np_triplet(a, pos, neg, **kwargs))
    ref = nn.TripletMarginLoss(**kwargs)(t64(a), t64(pos), t64(neg))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_triplet_eps_is_added_to_the_difference():
    a = torch.zeros(1, 3, dtype=F64)
    # d(a, a) = ||eps * 1||_2 = eps * sqrt(3), not 0 and not eps.
    out = TripletMarginLoss(margin=0.0, eps=1e-3, reduction="sum")(a, a, a + 10.0)
    assert out.item() == 0.0
    out = TripletMarginLoss(margin=1.0, eps=1e-3, reduction="sum")(a, a, a)
    assert out.item() == pytest.approx(1.0 + 1e-3 * math.sqrt(3) - np.linalg.norm([1e-3] * 3))


# --------------------------------------------------------------------------- gradients


def _gradcheck_cases():
    x, y = multiclass_batch(False, n=4, c=3, seed=7)
    xb, yb = binary_batch(False, n=5, seed=8)
    yt = torch.as_tensor(y)
    w3 = t64([0.5, 2.0, 1.5])
    rng = _rng(9)
    inp = t64(np_log_softmax(rng.normal(size=(3, 4))))
    tgt = t64(np.exp(np_log_softmax(rng.normal(size=(3, 4)))))
    a, pos, neg = (t64(rng.normal(size=(4, 3))) for _ in range(3))
    x1, x2 = t64(rng.normal(size=6)), t64(rng.normal(size=6))
    ry = t64(rng.choice([-1.0, 1.0], size=6))
    return {
        "ce": (CrossEntropyLoss(weight=w3, label_smoothing=0.1), [t64(x)], [yt]),
        "numpy_ce": (NumpyCrossEntropyLoss(weight=w3), [t64(x)], [yt]),
        "bce": (BCEWithLogitsLoss(weight=t64(np.linspace(0.5, 1.5, 5)), pos_weight=2.0), [t64(xb)], [t64(yb)]),
        "kl": (KLDivLoss(reduction="batchmean"), [inp, tgt], []),
        "kl_log_target": (KLDivLoss(reduction="sum", log_target=True), [inp, tgt.log()], []),
        "focal_binary": (FocalLoss(gamma=2.0, alpha=0.25), [t64(xb)], [t64(yb)]),
        "focal_binary_soft": (FocalLoss(gamma=0.5), [t64(xb)], [t64(np.linspace(0.1, 0.9, 5))]),
        "focal_multiclass": (FocalLoss(gamma=1.5, alpha=w3), [t64(x)], [yt]),
        "sce": (SymmetricCrossEntropyLoss(weight=w3), [t64(x)], [yt]),
        "margin_ranking": (MarginRankingLoss(margin=0.3), [x1, x2], [ry]),
        "triplet": (TripletMarginLoss(margin=2.0, swap=True, p=3.0), [a, pos, neg], []),
    }


@pytest.mark.parametrize("name", list(_gradcheck_cases()))
def test_gradcheck(name):
    loss, differentiable, fixed = _gradcheck_cases()[name]
    inputs = [t.clone().requires_grad_() for t in differentiable]
    assert torch.autograd.gradcheck(lambda *args: loss(*args, *fixed), inputs, eps=1e-6, atol=1e-7)
    # Per-row outputs too (every row's gradient, not only the mean's).
    if name != "kl" and name != "kl_log_target":
        loss.reduction = "none"
        assert torch.autograd.gradcheck(lambda *args: loss(*args, *fixed), inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_finite_values_and_gradients_at_extreme_logits(dtype):
    x = torch.tensor([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, -1000.0], [1000.0, 1000.0, -1000.0]], dtype=dtype)
    y = torch.tensor([0, 2, 1])
    xb = torch.tensor([1000.0, -1000.0, 1000.0, -1000.0], dtype=dtype)
    yb = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=dtype)
    cases = [
        (CrossEntropyLoss(label_smoothing=0.1), x, y),
        (NumpyCrossEntropyLoss(), x, y),
        (BCEWithLogitsLoss(pos_weight=3.0), xb, yb),
        (FocalLoss(gamma=2.0, alpha=0.25), xb, yb),
        (FocalLoss(gamma=0.5), xb, yb),
        (FocalLoss(gamma=2.0, alpha=[1.0, 2.0, 3.0]), x, y),
        (FocalLoss(gamma=0.5), x, y),
        (SymmetricCrossEntropyLoss(), x, y),
    ]
    for loss, logits, target in cases:
        inp = logits.clone().requires_grad_()
        out = loss(inp, target)
        out.backward()
        assert torch.isfinite(out), type(loss).__name__
        assert torch.isfinite(inp.grad).all(), type(loss).__name__
    # The exact values: CE row 0 is 0, row 1 is 2000, row 2 (a tie at 1000) is log 2.
    per_row = CrossEntropyLoss(reduction="none")(x.to(F64), y)
    torch.testing.assert_close(per_row, t64([0.0, 2000.0, math.log(2.0)]), rtol=1e-12, atol=1e-12)
    bce = BCEWithLogitsLoss(reduction="none")(xb.to(F64), yb.to(F64))
    torch.testing.assert_close(bce, t64([0.0, 1000.0, 1000.0, 0.0]))


# --------------------------------------------------------------------------- golden values

# name -> (module, constructor kwargs, NumPy reference, inputs in forward order).
# The inputs are also stored in the JSON, which is what the test reads.
_GOLDEN_LOGITS = [[2.0, -1.0, 0.5], [0.1, 0.2, -0.3], [50.0, -50.0, 0.0], [-3.0, 4.0, 1.5]]
_GOLDEN_LABELS = [0, 2, 1, 1]
_GOLDEN_WEIGHT = [0.5, 2.0, 1.25]
_GOLDEN_BIN_LOGITS = [1.5, -0.7, 50.0, -50.0, 0.25]
_GOLDEN_BIN_TARGETS = [1.0, 0.0, 0.0, 1.0, 1.0]
_GOLDEN_LOG_Q = [[-0.5, -1.5, -2.0], [-1.2, -0.4, -3.0]]
_GOLDEN_P = [[0.25, 0.5, 0.25], [0.0, 0.9, 0.1]]
_GOLDEN_A = [[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]]
_GOLDEN_POS = [[0.1, 1.2], [1.0, -1.5], [3.0, 3.0]]
_GOLDEN_NEG = [[0.3, 0.8], [2.2, -0.4], [0.4, 0.6]]

_F, _I = "float64", "int64"
_MC = [(_F, _GOLDEN_LOGITS), (_I, _GOLDEN_LABELS)]
_BIN = [(_F, _GOLDEN_BIN_LOGITS), (_F, _GOLDEN_BIN_TARGETS)]
_TRIPLE = [(_F, _GOLDEN_A), (_F, _GOLDEN_POS), (_F, _GOLDEN_NEG)]

_GOLDEN_SPECS = {
    "ce": ("CrossEntropyLoss", {}, _MC, lambda a: np_ce(*a)),
    "ce_weight_smoothing": ("CrossEntropyLoss", {"weight": _GOLDEN_WEIGHT, "label_smoothing": 0.15}, _MC,
                            lambda a: np_ce(*a, _GOLDEN_WEIGHT, "mean", 0.15)),
    "numpy_ce_weight": ("NumpyCrossEntropyLoss", {"weight": _GOLDEN_WEIGHT}, _MC,
                        lambda a: np_ce(*a, _GOLDEN_WEIGHT)),
    "bce": ("BCEWithLogitsLoss", {}, _BIN, lambda a: np_bce(*a)),
    "bce_weight_pos_weight": ("BCEWithLogitsLoss", {"weight": [1.0, 0.5, 2.0, 1.5, 0.25], "pos_weight": [2.5]},
                              _BIN, lambda a: np_bce(*a, [1.0, 0.5, 2.0, 1.5, 0.25], 2.5)),
    "kl": ("KLDivLoss", {}, [(_F, _GOLDEN_LOG_Q), (_F, _GOLDEN_P)], lambda a: np_kl(*a)),
    "kl_batchmean": ("KLDivLoss", {"reduction": "batchmean"}, [(_F, _GOLDEN_LOG_Q), (_F, _GOLDEN_P)],
                     lambda a: np_kl(*a, "batchmean")),
    "focal_binary": ("FocalLoss", {"gamma": 2.0, "alpha": 0.25}, _BIN, lambda a: np_focal_binary(*a, 2.0, 0.25)),
    "focal_multiclass": ("FocalLoss", {"gamma": 1.5, "alpha": _GOLDEN_WEIGHT}, _MC,
                         lambda a: np_focal_multiclass(*a, 1.5, _GOLDEN_WEIGHT)),
    "sce": ("SymmetricCrossEntropyLoss", {}, _MC, lambda a: np_sce(*a)),
    "sce_custom": ("SymmetricCrossEntropyLoss", {"alpha": 0.5, "beta": 2.0, "clamp": 0.01}, _MC,
                   lambda a: np_sce(*a, 0.5, 2.0, 0.01)),
    "margin_ranking": ("MarginRankingLoss", {"margin": 0.5},
                       [(_F, [0.3, -1.0, 2.0, 0.0]), (_F, [0.1, 0.5, 2.5, 0.0]), (_F, [1.0, -1.0, 1.0, -1.0])],
                       lambda a: np_margin_ranking(*a, 0.5)),
    "triplet": ("TripletMarginLoss", {"margin": 1.0}, _TRIPLE, lambda a: np_triplet(*a)),
    "triplet_swap_p1": ("TripletMarginLoss", {"margin": 1.0, "p": 1.0, "swap": True}, _TRIPLE,
                        lambda a: np_triplet(*a, p=1.0, swap=True)),
}

_TENSOR_KWARGS = ("weight", "pos_weight")


def _golden_document() -> dict:
    cases = []
    for name, (cls, kwargs, args, ref) in _GOLDEN_SPECS.items():
        value = float(ref([np.asarray(data, dtype=dtype) for dtype, data in args]))
        cases.append({"name": name, "loss": cls, "kwargs": kwargs,
                      "args": [{"dtype": dtype, "data": data} for dtype, data in args], "value": value})
    return {"description": "distill.losses.hard values (reduction 'mean' unless given) on fixed inputs, "
                           "from the float64 NumPy reference in tests/test_losses.py",
            "cases": cases}


def _load_golden() -> list[dict]:
    if not GOLDEN.exists():  # while regenerating; test_golden_file_covers_every_loss_class fails
        return []
    return json.loads(GOLDEN.read_text())["cases"]


def test_golden_file_covers_every_loss_class():
    classes = {case["loss"] for case in _load_golden()}
    assert classes == {"CrossEntropyLoss", "NumpyCrossEntropyLoss", "BCEWithLogitsLoss", "KLDivLoss", "FocalLoss",
                       "SymmetricCrossEntropyLoss", "MarginRankingLoss", "TripletMarginLoss"}


def _loss_class(name: str) -> type:
    """A golden case's loss class: a module of distill.losses, or a tests' oracle."""
    for module in (hard, metric, oracles):
        if hasattr(module, name):
            return getattr(module, name)
    raise AssertionError(f"no loss class {name}")


@pytest.mark.parametrize("case", _load_golden(), ids=lambda c: c["name"])
def test_golden_values(case):
    kwargs = {k: (torch.tensor(v, dtype=F64) if k in _TENSOR_KWARGS else v) for k, v in case["kwargs"].items()}
    loss = _loss_class(case["loss"])(**kwargs)
    args = [torch.tensor(a["data"], dtype=getattr(torch, a["dtype"])) for a in case["args"]]
    out = loss(*args)
    assert out.shape == ()
    assert out.item() == pytest.approx(case["value"], rel=1e-12, abs=1e-12)
    # The reference that produced the file still reproduces it.
    _, _, _, ref = _GOLDEN_SPECS[case["name"]]
    assert float(ref([a.numpy() for a in args])) == pytest.approx(case["value"], rel=1e-13, abs=1e-13)


# --------------------------------------------------------------------------- registry


def test_list_losses_and_one_logit_losses():
    assert list_losses() == ["bce", "ce", "focal", "label_smoothing", "sce"]
    assert list_losses() == HARD_LOSSES.names()
    one_logit = tuple(name for name in list_losses() if num_outputs_for(2, name) == 1)
    assert one_logit == ("bce", "focal")


def test_create_loss_builds_configured_modules():
    w = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    ce = create_loss("ce", 3, weight=w, label_smoothing=0.05)
    assert isinstance(ce, CrossEntropyLoss) and ce.label_smoothing == 0.05
    torch.testing.assert_close(ce.weight, w)
    ls = create_loss("label_smoothing", 3)
    assert isinstance(ls, CrossEntropyLoss) and ls.label_smoothing == 0.1
    assert create_loss("label_smoothing", 3, smoothing=0.2).label_smoothing == 0.2
    bce = create_loss("bce", 2, pos_weight=torch.tensor(4.0), reduction="none")
    assert isinstance(bce, BCEWithLogitsLoss) and bce.pos_weight.item() == 4.0 and bce.reduction == "none"
    focal = create_loss("focal", 3, weight=w, gamma=1.0)
    assert isinstance(focal, FocalLoss) and focal.gamma == 1.0
    torch.testing.assert_close(focal.alpha, w)
    assert create_loss("focal", 3, weight=w, alpha=0.5).alpha_scalar == 0.5  # explicit alpha wins
    sce = create_loss("sce", 3, alpha=0.2, beta=0.5, clamp=1e-3)
    assert isinstance(sce, SymmetricCrossEntropyLoss) and (sce.alpha, sce.beta, sce.clamp) == (0.2, 0.5, 1e-3)


def test_create_loss_focal_pos_weight_scales_the_positive_class():
    focal = create_loss("focal", 2, pos_weight=torch.tensor(3.0, dtype=F64), alpha=0.25)
    torch.testing.assert_close(focal.alpha, t64([0.75, 0.75]))
    x, y = binary_batch(False)
    assert_close(focal(t64(x), t64(y)), np_focal_binary(x, y, 2.0, (0.75, 0.75)))
    torch.testing.assert_close(create_loss("focal", 2, pos_weight=torch.tensor(2.0, dtype=F64)).alpha, t64([1.0, 2.0]))


def test_create_loss_errors():
    with pytest.raises(ValueError, match=r"unknown hard loss 'hinge'; registered: bce, ce, focal, label_smoothing, sce"):
        create_loss("hinge", 3)
    with pytest.raises(ValueError) as info:
        create_loss("focal", 3, gama=2.0, beta=1.0)
    msg = str(info.value)
    assert "objective.hard_params.gama" in msg and "objective.hard_params.beta" in msg
    assert "accepted: objective.hard_params.gamma, objective.hard_params.alpha" in msg
    with pytest.raises(ValueError, match="objective.hard_params.label_smoothing"):
        create_loss("label_smoothing", 3, label_smoothing=0.1)  # this one is called "smoothing"
    with pytest.raises(ValueError, match="accepted: \\(none\\)"):
        create_loss("bce", 2, gamma=1.0)
    with pytest.raises(ValueError, match="num_classes = 2"):
        create_loss("bce", 3)
    with pytest.raises(ValueError, match="pos_weight, not per-class weight"):
        create_loss("bce", 2, weight=torch.ones(2))
    with pytest.raises(ValueError, match="does not take pos_weight"):
        create_loss("ce", 3, pos_weight=torch.tensor(2.0))
    with pytest.raises(ValueError, match="one entry per class \\(3\\)"):
        create_loss("sce", 3, weight=torch.ones(2))
    with pytest.raises(ValueError, match="num_classes >= 2"):
        create_loss("ce", 1)
    with pytest.raises(ValueError, match="gamma"):
        create_loss("focal", 3, gamma=-2.0)


if __name__ == "__main__":  # regenerate the golden file from the NumPy reference
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    doc = _golden_document()
    cases = ",\n".join("  " + json.dumps(case) for case in doc["cases"])
    GOLDEN.write_text(f'{{\n "description": {json.dumps(doc["description"])},\n "cases": [\n{cases}\n ]\n}}\n')
    print(f"wrote {GOLDEN}")
