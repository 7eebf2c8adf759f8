"""The closed-form step loss of ``MemberObjective`` against autograd through the reference definition."""

from __future__ import annotations

import pytest
import torch

from distill.losses.fused import MemberObjective
from distill.losses.objective import distillation_loss, hard_loss

WEIGHTS = [0.0, 0.7, 2.5]
TEMPERATURES = {"unit": [1.0, 1.0, 1.0], "shared": [2.0, 2.0, 2.0], "per_member": [1.0, 0.3, 4.0]}
# (student outputs, teacher columns): binary with a one- or two-column teacher, multiclass with 2 and 4 classes.
KINDS = [(1, 1), (1, 2), (2, 2), (4, 4)]


def _problem(outputs: int, columns: int, direction: str, temperatures: list[float], *, weights=WEIGHTS,
             teacher: bool = True, seed: int = 0, dtype: torch.dtype = torch.float64):
    """An objective over ``len(weights)`` members, outputs ``z`` and batch indices ``idx``.

    Member 0 has no labelled row in its batch; member 1's batch repeats one row; kl_weight 0 for member 0.
    """
    g = torch.Generator().manual_seed(seed)
    m, n, b = len(weights), 12, 7
    classes = max(outputs, 2)
    targets = torch.randint(0, classes, (m, n), generator=g)
    labelled = torch.rand(m, n, generator=g) < 0.6
    labelled[0] = False
    teacher_logits = torch.randn(m, n, columns, generator=g, dtype=torch.float64) * 3  # drawn either way: same data
    idx = torch.randint(0, n, (m, b), generator=g)
    if m > 1:
        idx[1] = idx[1, 0]  # one row, seven times
        labelled[1, idx[1, 0]] = True
    targets[~labelled & (torch.rand(m, n, generator=g) < 0.5)] = -1  # unlabelled rows may carry anything
    teacher_logits = teacher_logits if teacher else None
    objective = MemberObjective(targets, labelled, teacher_logits, weights, temperatures[:m], direction, outputs,
                                dtype=dtype)
    z = (torch.randn(m, b, outputs, generator=g, dtype=torch.float64) * 3).to(dtype).requires_grad_()
    return objective, z, idx, (targets, labelled, teacher_logits)


def _reference(z: torch.Tensor, idx: torch.Tensor, data, weights, temperatures, direction: str) -> torch.Tensor:
    """``distillation_loss`` member by member, through ordinary autograd."""
    targets, labelled, teacher = data
    losses = []
    for i in range(z.shape[0]):
        student = z[i] if z.shape[-1] > 1 else z[i, :, 0]
        rows = idx[i]
        if teacher is None:
            losses.append(hard_loss(student, targets[i, rows], labelled[i, rows]))
            continue
        losses.append(distillation_loss(student, teacher[i, rows].to(z.dtype), targets[i, rows],
                                        kl_weight=weights[i], temperature=temperatures[i], direction=direction,
                                        labelled_mask=labelled[i, rows]))
    return torch.stack(losses)


@pytest.mark.parametrize("temps", list(TEMPERATURES))
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize(("outputs", "columns"), KINDS)
def test_gradcheck(outputs: int, columns: int, direction: str, temps: str) -> None:
    objective, z, idx, _ = _problem(outputs, columns, direction, TEMPERATURES[temps])
    assert torch.autograd.gradcheck(lambda x: objective(x, idx), (z,))


@pytest.mark.parametrize("teacher", [False, True])
@pytest.mark.parametrize(("outputs", "columns"), KINDS)
def test_gradcheck_hard_only(outputs: int, columns: int, teacher: bool) -> None:
    # No teacher, or a teacher with every kl_weight 0: the hard term alone.
    objective, z, idx, _ = _problem(outputs, columns, "forward", TEMPERATURES["per_member"], weights=[0.0, 0.0, 0.0],
                                    teacher=teacher)
    assert not objective.use_teacher
    assert torch.autograd.gradcheck(lambda x: objective(x, idx), (z,))


@pytest.mark.parametrize("members", [1, 3])
@pytest.mark.parametrize("temps", list(TEMPERATURES))
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize(("outputs", "columns"), KINDS)
def test_value_and_gradient_equal_distillation_loss(outputs: int, columns: int, direction: str, temps: str,
                                                    members: int) -> None:
    weights = WEIGHTS[-members:]
    temperatures = TEMPERATURES[temps][-members:]
    objective, z, idx, data = _problem(outputs, columns, direction, temperatures, weights=weights, seed=members)
    scale = torch.linspace(0.5, 2.0, members, dtype=torch.float64)  # grad_output scales each member
    got = objective(z, idx)
    assert got.shape == (members,) and got.dtype == torch.float64
    (grad,) = torch.autograd.grad((got * scale).sum(), z)
    z_ref = z.detach().clone().requires_grad_()
    expected = _reference(z_ref, idx, data, weights, temperatures, direction)
    (grad_ref,) = torch.autograd.grad((expected * scale).sum(), z_ref)
    torch.testing.assert_close(got.detach(), expected.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("zero", [0, 1])  # member 0 has no labelled row in its batch, member 1 has
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize(("outputs", "columns"), KINDS)
def test_member_without_kl_weight_gets_exactly_the_hard_gradient(outputs: int, columns: int, direction: str,
                                                                  dtype: torch.dtype, zero: int) -> None:
    weights = [0.0, 0.7, 2.5] if zero == 0 else [0.7, 0.0, 2.5]
    temperatures = TEMPERATURES["per_member"]
    objective, z, idx, _ = _problem(outputs, columns, direction, temperatures, weights=weights, dtype=dtype, seed=3)
    plain, z_plain, _, _ = _problem(outputs, columns, direction, temperatures, weights=weights, teacher=False,
                                    dtype=dtype, seed=3)
    assert objective.use_teacher and not plain.use_teacher
    loss = objective(z, idx)
    (grad,) = torch.autograd.grad(loss.sum(), z)
    hard = plain(z_plain, idx)
    (grad_hard,) = torch.autograd.grad(hard.sum(), z_plain)
    assert torch.equal(loss[zero], hard[zero])
    assert torch.equal(grad[zero], grad_hard[zero])
    if zero == 0:  # no labelled row: no gradient at all
        assert torch.equal(grad[0], torch.zeros_like(grad[0]))
    else:
        assert grad[zero].abs().sum() > 0
    # The hard-only gradient is that of autograd through ``hard``.
    z_auto = z_plain.detach().clone().requires_grad_()
    (grad_auto,) = torch.autograd.grad(plain.hard(z_auto, plain.rows(idx)).sum(), z_auto)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(grad_hard, grad_auto, rtol=tol, atol=tol)


@pytest.mark.parametrize("temps", list(TEMPERATURES))
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize(("outputs", "columns"), KINDS)
def test_float32_values_are_those_of_the_autograd_ops(outputs: int, columns: int, direction: str, temps: str) -> None:
    # The step loss recomputes ``hard + coef * kl`` with the same ops: the values agree bit for bit.
    objective, z, idx, _ = _problem(outputs, columns, direction, TEMPERATURES[temps], dtype=torch.float32, seed=5)
    rows = objective.rows(idx)
    loss = objective(z, idx)
    (grad,) = torch.autograd.grad(loss.sum(), z)
    expected = objective.hard(z, rows) + objective.coef * objective.kl(z, rows)
    (grad_ref,) = torch.autograd.grad(expected.sum(), z)
    assert loss.dtype == torch.float32
    assert torch.equal(loss.detach(), expected.detach())
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-6)


def test_float64_by_assignment_still_works() -> None:
    # The pattern of tests/test_batched.py: float32 constants converted afterwards.
    objective, z, idx, data = _problem(4, 4, "forward", TEMPERATURES["per_member"], dtype=torch.float32)
    objective.packed = objective.packed.double()
    objective.coef = objective.coef.double()
    z = z.detach().double().requires_grad_()
    got = objective(z, idx)
    (grad,) = torch.autograd.grad(got.sum(), z)
    z_ref = z.detach().clone().requires_grad_()
    expected = _reference(z_ref, idx, data, WEIGHTS, TEMPERATURES["per_member"], "forward")
    (grad_ref,) = torch.autograd.grad(expected.sum(), z_ref)
    torch.testing.assert_close(got.detach(), expected.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("outputs", "columns"), [(1, 2), (4, 4)])
def test_hard_argument_keeps_the_autograd_path(outputs: int, columns: int) -> None:
    temperature = [0.5]
    objective, z, idx, data = _problem(outputs, columns, "reverse", temperature, weights=[1.3])
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    hard = (scale * z.square().mean()).reshape(1)  # a stand-in for a configured criterion
    got = objective(z, idx, hard)
    assert "StepLoss" not in type(got.grad_fn).__name__
    grad_z, grad_scale = torch.autograd.grad(got.sum(), (z, scale))
    z_ref = z.detach().clone().requires_grad_()
    scale_ref = scale.detach().clone().requires_grad_()
    _, _, teacher = data
    student = z_ref[0] if outputs > 1 else z_ref[0, :, 0]
    expected = (scale_ref * z_ref.square().mean()
                + distillation_loss(student, teacher[0, idx[0]], None, kl_weight=1.3, temperature=0.5,
                                    direction="reverse"))
    grad_z_ref, grad_scale_ref = torch.autograd.grad(expected, (z_ref, scale_ref))
    torch.testing.assert_close(got.detach(), expected.detach().reshape(1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad_z, grad_z_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad_scale, grad_scale_ref, rtol=1e-10, atol=1e-10)


def test_without_grad_and_double_backward() -> None:
    objective, z, idx, _ = _problem(4, 4, "forward", TEMPERATURES["per_member"])
    loss = objective(z, idx)
    with torch.no_grad():
        assert torch.equal(objective(z, idx), loss.detach())
    detached = objective(z.detach(), idx)
    assert detached.grad_fn is None and torch.equal(detached, loss.detach())
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(objective(z, idx).sum(), z, create_graph=True)


@pytest.mark.parametrize("members", [1, 3])
def test_rows_gathers_each_members_rows(members: int) -> None:
    objective, _, idx, _ = _problem(4, 4, "forward", TEMPERATURES["per_member"], weights=WEIGHTS[:members])
    expected = torch.stack([objective.packed[i, idx[i]] for i in range(members)])
    assert torch.equal(objective.rows(idx), expected)
    assert torch.equal(objective.rows(idx.int()), expected)


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize(("outputs", "columns"), KINDS)
def test_parts_are_the_hard_loss_and_the_weighted_kl_term(outputs: int, columns: int, direction: str,
                                                          grad: bool) -> None:
    """What the engine logs as ``train_hard_loss`` and ``train_kl_term``: each member's hard loss alone (the
    reference's ``hard_loss``) and ``distillation_loss`` minus it; they add up to the step's loss, and a member
    with kl_weight 0 has a KL term of exactly 0."""
    temperatures = TEMPERATURES["per_member"]
    objective, z, idx, data = _problem(outputs, columns, direction, temperatures)
    targets, labelled, _ = data
    with torch.set_grad_enabled(grad):
        loss = objective(z if grad else z.detach(), idx)
    hard, kl_term = objective.parts(loss.detach())
    total = _reference(z.detach(), idx, data, WEIGHTS, temperatures, direction)
    expected_hard = torch.stack([hard_loss(z[i].detach() if outputs > 1 else z[i, :, 0].detach(),
                                           targets[i, idx[i]], labelled[i, idx[i]]) for i in range(len(WEIGHTS))])
    torch.testing.assert_close(hard, expected_hard, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kl_term, total - expected_hard, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hard + kl_term, loss.detach(), rtol=1e-12, atol=1e-12)
    assert kl_term[0].item() == 0.0 and bool((kl_term[1:] > 0).all())
    assert objective.parts(loss.detach()).tolist() == [loss.detach().tolist(), [0.0] * len(WEIGHTS)]  # read once


def test_parts_without_a_teacher_are_the_loss_and_zero() -> None:
    objective, z, idx, data = _problem(2, 2, "forward", TEMPERATURES["unit"], teacher=False)
    loss = objective(z, idx)
    hard, kl_term = objective.parts(loss.detach())
    torch.testing.assert_close(hard, _reference(z.detach(), idx, data, WEIGHTS, TEMPERATURES["unit"], "forward"))
    assert kl_term.tolist() == [0.0] * len(WEIGHTS)
