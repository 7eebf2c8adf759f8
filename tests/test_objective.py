"""Tests of distill.losses.objective against an independent float64 NumPy reference.

The reference below uses only NumPy/SciPy (``logsumexp``, ``log_expit``); no torch loss is
called on the reference side. The tests' oracles (tests/oracles.py: a NumPy cross-entropy and
``nn.KLDivLoss``'s semantics) check the validation loss and the tempered KL a second way.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import log_expit, logsumexp

from distill.losses.objective import distillation_loss, hard_loss, kl_divergence, validation_loss
from tests.oracles import KLDivLoss, NumpyCrossEntropyLoss

# --------------------------------------------------------------------------- NumPy reference


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    return x - logsumexp(x, axis=-1, keepdims=True)


def np_student_logp(s: np.ndarray, temperature: float) -> np.ndarray:
    """[N, K] log-probabilities of the tempered student (K = 2 for a one-logit student)."""
    if s.ndim == 1 or s.shape[1] == 1:
        z = s.reshape(-1) / temperature
        return np.stack([log_expit(-z), log_expit(z)], axis=-1)
    return np_log_softmax(s / temperature)


def np_teacher_logp(t: np.ndarray, temperature: float) -> np.ndarray:
    """[N, K] log-probabilities of the tempered teacher."""
    if t.ndim == 1 or t.shape[1] == 1:
        a = t.reshape(-1) / temperature
        return np.stack([log_expit(-a), log_expit(a)], axis=-1)
    return np_log_softmax(t / temperature)  # [N, 2] or [N, C]: softmax(t / T)


def np_kl(s: np.ndarray, t: np.ndarray, temperature: float, direction: str) -> float:
    lq = np_student_logp(s, temperature)
    lp = np_teacher_logp(t, temperature)
    if direction == "reverse":
        lp, lq = lq, lp
    p = np.exp(lp)
    return float(np.mean(np.sum(p * (lp - lq), axis=-1)))


def np_hard(s: np.ndarray, y: np.ndarray | None, mask: np.ndarray | None = None) -> float:
    n = s.shape[0]
    if y is None:
        return 0.0
    mask = np.ones(n, dtype=bool) if mask is None else mask
    if not mask.any():
        return 0.0
    if s.ndim == 1 or s.shape[1] == 1:
        z = s.reshape(-1)[mask]
        yy = y.reshape(-1)[mask].astype(np.float64)
        per_row = -(yy * log_expit(z) + (1.0 - yy) * log_expit(-z))
    else:
        lq = np_log_softmax(s[mask])
        per_row = -lq[np.arange(lq.shape[0]), y[mask].astype(np.int64)]
    return float(per_row.mean())


def np_loss(s, t, y, *, w, temperature, direction, mask=None) -> float:
    return np_hard(s, y, mask) + w * temperature**2 * np_kl(s, t, temperature, direction)


# --------------------------------------------------------------------------- data


KINDS = ["binary_one_logit", "binary_two_col_logprob", "multiclass3", "multiclass10"]
N = 17


def make_case(kind: str, scale: str, seed: int = 0):
    """Return (student [np], teacher [np], targets [np int]) for a kind of problem."""
    rng = np.random.default_rng(seed)

    def logits(*shape):
        if scale == "extreme":
            return rng.choice([-100.0, 100.0], size=shape) + rng.normal(0, 1e-3, size=shape)
        return rng.normal(0.0, 2.5, size=shape)

    if kind == "binary_one_logit":
        s = logits(N, 1)
        t = logits(N)
        y = rng.integers(0, 2, size=N)
    elif kind == "binary_two_col_logprob":
        s = logits(N)
        t = np_log_softmax(logits(N, 2))  # teacher given as log-probabilities
        y = rng.integers(0, 2, size=N)
    else:
        c = 3 if kind == "multiclass3" else 10
        s = logits(N, c)
        t = logits(N, c)
        y = rng.integers(0, c, size=N)
    return s, t, y


def tt(x: np.ndarray, dtype=torch.float64, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype, requires_grad=requires_grad)


def assert_close(actual: torch.Tensor, expected: float, rel: float = 1e-6, abs_: float = 1e-12) -> None:
    a = float(actual.detach())
    assert np.isfinite(a)
    assert a == pytest.approx(expected, rel=rel, abs=abs_), (a, expected)


# --------------------------------------------------------------------------- value vs reference


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.5])
@pytest.mark.parametrize("scale", ["random", "extreme"])
def test_loss_matches_reference(kind, direction, temperature, scale):
    s, t, y = make_case(kind, scale)
    st = tt(s, requires_grad=True)
    loss = distillation_loss(
        st, tt(t), torch.tensor(y), kl_weight=0.7, temperature=temperature, direction=direction
    )
    assert loss.ndim == 0 and loss.dtype == torch.float64
    assert_close(loss, np_loss(s, t, y, w=0.7, temperature=temperature, direction=direction))
    loss.backward()
    assert st.grad is not None and torch.isfinite(st.grad).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.5])
@pytest.mark.parametrize("scale", ["random", "extreme"])
def test_kl_divergence_matches_reference(kind, direction, temperature, scale):
    s, t, _ = make_case(kind, scale, seed=1)
    kl = kl_divergence(tt(s), tt(t), temperature=temperature, direction=direction)
    expected = np_kl(s, t, temperature, direction)
    assert_close(kl, expected)
    assert float(kl) >= -1e-12


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", ["random", "extreme"])
def test_hard_loss_matches_reference(kind, scale):
    s, _, y = make_case(kind, scale, seed=2)
    assert_close(hard_loss(tt(s), torch.tensor(y)), np_hard(s, y))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_thousand_logits_finite(kind, direction):
    s, t, y = make_case(kind, "extreme", seed=3)
    s, t = s * 10.0, t * 10.0  # about +-1000
    if kind == "binary_two_col_logprob":
        t = np_log_softmax(t)
    st = tt(s, requires_grad=True)
    loss = distillation_loss(
        st, tt(t), torch.tensor(y), kl_weight=1.3, temperature=2.0, direction=direction
    )
    assert_close(loss, np_loss(s, t, y, w=1.3, temperature=2.0, direction=direction))
    loss.backward()
    assert torch.isfinite(st.grad).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_float32_extreme_logits_finite(kind, direction):
    s, t, y = make_case(kind, "extreme", seed=4)
    st = tt(s, dtype=torch.float32, requires_grad=True)
    loss = distillation_loss(
        st,
        tt(t, dtype=torch.float32),
        torch.tensor(y),
        kl_weight=0.5,
        temperature=2.0,
        direction=direction,
    )
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(st.grad).all()
    expected = np_loss(s, t, y, w=0.5, temperature=2.0, direction=direction)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4, abs=1e-4)



@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
@pytest.mark.parametrize("scale", ["random", "extreme"])
def test_kl_divergence_matches_kl_div_oracle(kind, direction, temperature, scale):
    """KL(p || q) is ``nn.KLDivLoss(batchmean)(log q, p)``: the oracle gets NumPy's tempered log-probabilities."""
    s, t, _ = make_case(kind, scale, seed=11)
    log_q, log_p = tt(np_student_logp(s, temperature)), tt(np_teacher_logp(t, temperature))
    if direction == "reverse":
        log_p, log_q = log_q, log_p
    kl = kl_divergence(tt(s), tt(t), temperature=temperature, direction=direction)
    oracle = KLDivLoss(reduction="batchmean")(log_q, log_p.exp())
    oracle_log_target = KLDivLoss(reduction="batchmean", log_target=True)(log_q, log_p)
    torch.testing.assert_close(kl, oracle, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(kl, oracle_log_target, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- validation loss


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", ["random", "extreme"])
def test_validation_loss_matches_reference_and_numpy_oracle(kind, scale):
    s, _, y = make_case(kind, scale, seed=12)
    logits = s.reshape(N, -1)  # [N, 1] for one binary logit, [N, C] otherwise
    z = tt(logits, requires_grad=True)
    value = validation_loss(z, torch.tensor(y))
    assert value.shape == () and value.dtype == torch.float64
    assert_close(value, np_hard(logits, y), rel=1e-12)
    (grad,) = torch.autograd.grad(value, z)
    if logits.shape[1] > 1:  # the NumPy cross-entropy oracle: value and gradient
        z_ref = tt(logits, requires_grad=True)
        ref = NumpyCrossEntropyLoss()(z_ref, torch.tensor(y))
        (grad_ref,) = torch.autograd.grad(ref, z_ref)
        torch.testing.assert_close(value, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-12)
    else:  # d/dz of the mean BCE: (sigmoid(z) - y) / N
        expected = (1.0 / (1.0 + np.exp(-logits[:, 0])) - y) / N
        np.testing.assert_allclose(grad[:, 0].numpy(), expected, rtol=1e-12, atol=1e-15)
    # A one-logit student's outputs may come without the class axis.
    if logits.shape[1] == 1:
        torch.testing.assert_close(validation_loss(tt(logits[:, 0]), torch.tensor(y)), value.detach())


@pytest.mark.parametrize("kind", KINDS)
def test_validation_loss_is_the_hard_term_on_every_row(kind):
    s, _, y = make_case(kind, "random", seed=13)
    for dtype in (torch.float32, torch.float64):
        z = tt(s, dtype=dtype)
        student = z if z.ndim == 2 else z[:, None]
        assert torch.equal(validation_loss(student, torch.tensor(y)), hard_loss(z, torch.tensor(y)))


@pytest.mark.parametrize("outputs", [1, 3])
def test_validation_loss_per_member_and_per_row(outputs):
    """Stacked students ``[M, N, K]``: one loss per member; ``"none"``: one per row."""
    rng = np.random.default_rng(14)
    m = 3
    s = rng.normal(0.0, 3.0, size=(m, N, outputs))
    y = rng.integers(0, max(outputs, 2), size=(m, N))
    per_member = validation_loss(tt(s), torch.tensor(y))
    per_row = validation_loss(tt(s), torch.tensor(y), reduction="none")
    assert per_member.shape == (m,) and per_row.shape == (m, N)
    for i in range(m):
        assert_close(per_member[i], np_hard(s[i], y[i]), rel=1e-12)
        for j in (0, N - 1):
            assert_close(per_row[i, j], np_hard(s[i, j : j + 1], y[i, j : j + 1]), rel=1e-12)
    torch.testing.assert_close(per_row.mean(-1), per_member, rtol=1e-15, atol=0.0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_tuning_trials_loss_is_the_validation_loss(kind):
    from distill.experiment.tune import _validation_value

    s, _, y = make_case(kind, "random", seed=15)
    logits = s.reshape(N, -1)
    classes = max(logits.shape[1], 2)
    value = _validation_value(tt(logits), torch.tensor(y), classes, "loss")
    assert value == pytest.approx(np_hard(logits, y), rel=1e-12)
    if logits.shape[1] == 1:  # a student that returns [N] for one logit
        assert _validation_value(tt(logits[:, 0]), torch.tensor(y), 2, "loss") == value


def test_validation_loss_rejects_mismatched_targets_and_reductions():
    z = torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"without the class axis, \(4,\), got \(5,\)"):
        validation_loss(z, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        validation_loss(z, torch.zeros(4, dtype=torch.long), reduction="sum")  # type: ignore[arg-type]

# --------------------------------------------------------------------------- labelled masks


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_labelled_mask_ignores_unlabelled_rows(kind, direction):
    s, t, y = make_case(kind, "random", seed=5)
    rng = np.random.default_rng(5)
    mask = rng.random(N) < 0.5
    mask[0], mask[1] = True, False  # at least one of each
    y_minus = np.where(mask, y, -1)
    y_other = np.where(mask, y, 1)
    st = tt(s, requires_grad=True)
    kw = dict(kl_weight=0.9, temperature=2.0, direction=direction)
    loss = distillation_loss(
        st, tt(t), torch.tensor(y_minus), labelled_mask=torch.tensor(mask), **kw
    )
    other = distillation_loss(
        tt(s), tt(t), torch.tensor(y_other), labelled_mask=torch.tensor(mask), **kw
    )
    expected = np_loss(s, t, y, w=0.9, temperature=2.0, direction=direction, mask=mask)
    assert_close(loss, expected)
    assert float(loss.detach()) == float(other)
    # The hard term really is restricted: it differs from the all-rows value.
    assert abs(np_hard(s, y, mask) - np_hard(s, y)) > 1e-6
    loss.backward()
    assert torch.isfinite(st.grad).all()


@pytest.mark.parametrize("kind", KINDS)
def test_labelled_mask_float_targets_with_nan_outside_mask(kind):
    s, t, y = make_case(kind, "random", seed=6)
    mask = np.arange(N) % 3 != 0
    y_nan = np.where(mask, y.astype(np.float64), np.nan)
    st = tt(s, requires_grad=True)
    loss = distillation_loss(
        st, tt(t), torch.tensor(y_nan), kl_weight=0.4, temperature=1.0,
        labelled_mask=torch.tensor(mask),
    )
    assert_close(loss, np_loss(s, t, y, w=0.4, temperature=1.0, direction="forward", mask=mask))
    loss.backward()
    assert torch.isfinite(st.grad).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [1.0, 4.5])
def test_no_labelled_rows_gives_pure_kl_term(kind, temperature):
    s, t, _ = make_case(kind, "random", seed=7)
    y = -np.ones(N, dtype=np.int64)
    st = tt(s, requires_grad=True)
    loss = distillation_loss(
        st, tt(t), torch.tensor(y), kl_weight=0.6, temperature=temperature,
        labelled_mask=torch.zeros(N, dtype=torch.bool),
    )
    expected = 0.6 * temperature**2 * np_kl(s, t, temperature, "forward")
    assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(st.grad).all()

    none_targets = distillation_loss(tt(s), tt(t), None, kl_weight=0.6, temperature=temperature)
    assert_close(none_targets, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_no_labelled_rows_hard_loss_is_zero_not_nan(kind):
    s, _, _ = make_case(kind, "random", seed=8)
    st = tt(s, requires_grad=True)
    h = hard_loss(st, torch.full((N,), -1), torch.zeros(N, dtype=torch.bool))
    assert float(h.detach()) == 0.0
    h.backward()
    assert torch.equal(st.grad, torch.zeros_like(st))
    h_none = hard_loss(tt(s, requires_grad=True), None)
    assert float(h_none.detach()) == 0.0 and h_none.requires_grad


# --------------------------------------------------------------------------- KL == 0 cases


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.5])
@pytest.mark.parametrize("scale", ["random", "extreme"])
def test_kl_zero_binary_student_matches_two_col_teacher(direction, temperature, scale):
    _, t, _ = make_case("binary_two_col_logprob", scale, seed=9)
    t_torch = tt(t)
    student = t_torch[:, 1] - t_torch[:, 0]
    kl = kl_divergence(student, t_torch, temperature=temperature, direction=direction)
    assert abs(float(kl)) < 1e-12
    # Same with a one-logit teacher and an [N, 1] student.
    kl1 = kl_divergence(
        student[:, None], student.clone(), temperature=temperature, direction=direction
    )
    assert abs(float(kl1)) < 1e-12


@pytest.mark.parametrize("kind", ["multiclass3", "multiclass10"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.5])
@pytest.mark.parametrize("scale", ["random", "extreme"])
def test_kl_zero_multiclass_shifted_student(kind, direction, temperature, scale):
    _, t, y = make_case(kind, scale, seed=10)
    shift = np.random.default_rng(10).normal(0.0, 3.0, size=(N, 1))
    s = t + shift
    kl = kl_divergence(tt(s), tt(t), temperature=temperature, direction=direction)
    assert abs(float(kl)) < 1e-12
    # The full loss is then just the hard term.
    loss = distillation_loss(
        tt(s), tt(t), torch.tensor(y), kl_weight=3.0, temperature=temperature,
        direction=direction,
    )
    assert_close(loss, np_hard(s, y), rel=1e-9)


# --------------------------------------------------------------------------- weights / scaling


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_zero_kl_weight_is_hard_term(kind, direction):
    s, t, y = make_case(kind, "random", seed=11)
    mask = np.arange(N) % 2 == 0
    st, yt, mt = tt(s), torch.tensor(np.where(mask, y, -1)), torch.tensor(mask)
    loss = distillation_loss(
        st, tt(t), yt, kl_weight=0, temperature=3.0, direction=direction, labelled_mask=mt
    )
    assert torch.equal(loss, hard_loss(st, yt, mt))
    assert_close(loss, np_hard(s, y, mask))
    # A 0-dim tensor weight of 0 gives the same value.
    loss_t = distillation_loss(
        st, tt(t), yt, kl_weight=torch.tensor(0.0, dtype=torch.float64), temperature=3.0,
        direction=direction, labelled_mask=mt,
    )
    assert_close(loss_t, np_hard(s, y, mask), rel=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.5])
@pytest.mark.parametrize("weight", [0.25, 1.0, 5.0])
def test_temperature_squared_scaling(kind, direction, temperature, weight):
    s, t, y = make_case(kind, "random", seed=12)
    loss = distillation_loss(
        tt(s), tt(t), torch.tensor(y), kl_weight=weight, temperature=temperature,
        direction=direction,
    )
    hard = float(hard_loss(tt(s), torch.tensor(y)))
    soft = float(loss) - hard
    expected_soft = weight * temperature**2 * np_kl(s, t, temperature, direction)
    assert soft == pytest.approx(expected_soft, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_tensor_weight_and_temperature_match_floats(kind):
    s, t, y = make_case(kind, "random", seed=13)
    a = distillation_loss(tt(s), tt(t), torch.tensor(y), kl_weight=0.8, temperature=2.5)
    b = distillation_loss(
        tt(s), tt(t), torch.tensor(y),
        kl_weight=torch.tensor(0.8, dtype=torch.float64),
        temperature=torch.tensor(2.5, dtype=torch.float64),
    )
    assert b.ndim == 0
    assert float(a) == pytest.approx(float(b), rel=1e-14)


def test_binary_shapes_and_target_dtypes_agree():
    s, t, y = make_case("binary_one_logit", "random", seed=14)
    ref = np_loss(s, t, y, w=1.1, temperature=2.0, direction="forward")
    variants = [
        (tt(s), tt(t), torch.tensor(y)),  # [N, 1] student, [N] teacher, int targets
        (tt(s[:, 0]), tt(t[:, None]), torch.tensor(y, dtype=torch.float32)),
        (tt(s[:, 0]), tt(np.stack([np.zeros(N), t], axis=1)), torch.tensor(y, dtype=torch.bool)),
        (tt(s), tt(np.stack([-t / 2, t / 2], axis=1)), torch.tensor(y[:, None])),
    ]
    for st, tch, yt in variants:
        assert_close(distillation_loss(st, tch, yt, kl_weight=1.1, temperature=2.0), ref)


def test_two_output_student_is_multiclass():
    rng = np.random.default_rng(15)
    s, t = rng.normal(size=(N, 2)), rng.normal(size=(N, 2))
    y = rng.integers(0, 2, size=N)
    loss = distillation_loss(tt(s), tt(t), torch.tensor(y), kl_weight=0.5, temperature=2.0)
    assert_close(loss, np_loss(s, t, y, w=0.5, temperature=2.0, direction="forward"))
    with pytest.raises(ValueError, match="multiclass"):
        distillation_loss(tt(s), tt(t[:, 1]), torch.tensor(y), kl_weight=0.5)


# --------------------------------------------------------------------------- gradients


def _loss_fn(t, y, direction, temperature):
    def f(s):
        return distillation_loss(
            s, t, y, kl_weight=0.7, temperature=temperature, direction=direction
        )

    return f


@pytest.mark.parametrize("kind", ["binary_one_logit", "binary_two_col_logprob", "multiclass3"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_gradcheck(kind, direction):
    s, t, y = make_case(kind, "random", seed=16)
    st = tt(s, requires_grad=True)
    assert torch.autograd.gradcheck(
        _loss_fn(tt(t), torch.tensor(y), direction, 2.0), (st,), eps=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("kind", ["binary_one_logit", "multiclass10"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_gradient_matches_numpy_finite_difference(kind, direction):
    s, t, y = make_case(kind, "random", seed=17)
    mask = np.arange(N) % 4 != 1
    temperature, w = 1.7, 0.9

    def ref(x):
        return np_loss(x, t, y, w=w, temperature=temperature, direction=direction, mask=mask)

    fd = np.zeros_like(s)
    h = 1e-6
    for idx in np.ndindex(*s.shape):
        up, down = s.copy(), s.copy()
        up[idx] += h
        down[idx] -= h
        fd[idx] = (ref(up) - ref(down)) / (2 * h)

    st = tt(s, requires_grad=True)
    distillation_loss(
        st, tt(t), torch.tensor(np.where(mask, y, -1)), kl_weight=w, temperature=temperature,
        direction=direction, labelled_mask=torch.tensor(mask),
    ).backward()
    np.testing.assert_allclose(st.grad.numpy(), fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.5])
def test_forward_kl_gradient_closed_form(temperature):
    """d/ds [w T^2 KL(p||q)] = w T (q - p) / N (Hinton et al., 2015, eq. 2)."""
    s, t, _ = make_case("multiclass10", "random", seed=18)
    st = tt(s, requires_grad=True)
    w = 0.3
    distillation_loss(st, tt(t), None, kl_weight=w, temperature=temperature).backward()
    q = np.exp(np_log_softmax(s / temperature))
    p = np.exp(np_log_softmax(t / temperature))
    np.testing.assert_allclose(st.grad.numpy(), w * temperature * (q - p) / N, rtol=1e-9, atol=1e-14)


# --------------------------------------------------------------------------- errors


def _args():
    s, t, y = make_case("multiclass3", "random", seed=19)
    return tt(s), tt(t), torch.tensor(y)


def test_negative_kl_weight_raises():
    s, t, y = _args()
    with pytest.raises(ValueError, match=r"kl_weight must be >= 0, got -1"):
        distillation_loss(s, t, y, kl_weight=-1)


@pytest.mark.parametrize("bad", [0, -2.5])
def test_non_positive_temperature_raises(bad):
    s, t, y = _args()
    with pytest.raises(ValueError, match=rf"temperature must be > 0, got {bad}"):
        distillation_loss(s, t, y, kl_weight=1.0, temperature=bad)
    with pytest.raises(ValueError, match=rf"temperature must be > 0, got {bad}"):
        kl_divergence(s, t, temperature=bad)


def test_unknown_direction_raises():
    s, t, y = _args()
    with pytest.raises(ValueError, match="sideways") as info:
        distillation_loss(s, t, y, kl_weight=1.0, direction="sideways")  # type: ignore[arg-type]
    assert "forward" in str(info.value) and "reverse" in str(info.value)
    with pytest.raises(ValueError, match="sideways"):
        kl_divergence(s, t, direction="sideways")  # type: ignore[arg-type]


def test_multiclass_teacher_shape_mismatch_raises():
    s, t, y = _args()
    for bad_teacher in (t[:, :2], t[:, 0], t[:5]):
        with pytest.raises(ValueError, match="teacher_logits"):
            distillation_loss(s, bad_teacher, y, kl_weight=1.0)
        with pytest.raises(ValueError, match="teacher_logits"):
            distillation_loss(s, bad_teacher, y, kl_weight=0)


def test_binary_teacher_shape_mismatch_raises():
    s, _, y = make_case("binary_one_logit", "random")
    with pytest.raises(ValueError, match="teacher_logits"):
        distillation_loss(tt(s), torch.zeros(N, 3, dtype=torch.float64), torch.tensor(y), kl_weight=1.0)


def test_bad_mask_raises():
    s, t, y = _args()
    with pytest.raises(ValueError, match="bool"):
        distillation_loss(s, t, y, kl_weight=1.0, labelled_mask=torch.ones(N))
    with pytest.raises(ValueError, match="labelled_mask"):
        distillation_loss(s, t, y, kl_weight=1.0, labelled_mask=torch.ones(N - 1, dtype=torch.bool))
