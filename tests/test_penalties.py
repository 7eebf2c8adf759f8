"""The L1 / L2 penalties (distill.losses.penalties) against hand computations, through both ways the
engine trains: ``SingleMember.penalty`` (one module) and ``StackedMembers.penalty`` (``[M, P]`` weights)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.engine.members import SingleMember, StackedMembers
from distill.losses.penalties import penalised_weights, penalty_mask, weight_penalty

F64 = torch.float64


def _set(layer: nn.Linear, weight: list[list[float]], bias: float) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.fill_(bias)


def _bn_model() -> nn.Sequential:
    """Weights 1, -2, 0.5, 0, 3, -1 and -4, 2; biases and batch-norm parameters far from 0 (never penalised)."""
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), nn.ReLU(), nn.Linear(2, 1))
    _set(model[0], [[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], 100.0)
    with torch.no_grad():
        model[1].weight.fill_(50.0)
        model[1].bias.fill_(-50.0)
    _set(model[3], [[-4.0, 2.0]], 7.0)
    return model


L1_BN = 1 + 2 + 0.5 + 0 + 3 + 1 + 4 + 2  # 13.5
L2_BN = 1 + 4 + 0.25 + 0 + 9 + 1 + 16 + 4  # 35.25


def test_penalty_mask_marks_weight_matrices_and_kernels_only():
    mask = penalty_mask([(2, 3), (2,), (1, 2), (1,), (1, 1, 2, 2), ()], dtype=F64, device=torch.device("cpu"))
    expected = [1.0] * 6 + [0.0] * 2 + [1.0] * 2 + [0.0] + [1.0] * 4 + [0.0]
    assert mask.tolist() == expected and mask.dtype == F64
    assert penalty_mask([], dtype=F64, device=torch.device("cpu")).shape == (0,)


def test_weight_penalty_by_hand():
    weights = torch.tensor([[1.0, -2.0, 3.0, -0.5], [0.0, 4.0, -1.0, 2.0]], dtype=F64)
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=F64)
    # member 0: |1| + |3| + |-0.5| = 4.5, 1 + 9 + 0.25 = 10.25; member 1: 0 + 1 + 2 = 3, 0 + 1 + 4 = 5
    assert weight_penalty(weights, 1.0, 0.0, mask).tolist() == [4.5, 3.0]
    assert weight_penalty(weights, 0.0, 1.0, mask).tolist() == [10.25, 5.0]
    assert weight_penalty(weights, 0.1, 0.01, mask).tolist() == pytest.approx([0.45 + 0.1025, 0.3 + 0.05], abs=1e-15)
    # no mask: every entry counts
    assert weight_penalty(weights, 1.0, 1.0).tolist() == [6.5 + 14.25, 7.0 + 21.0]
    assert weight_penalty(weights, 0.0, 0.0, mask).tolist() == [0.0, 0.0]


def test_single_member_penalty_skips_biases_and_norm_parameters():
    model = _bn_model()
    torch.testing.assert_close(penalised_weights(model), torch.tensor([[1.0, -2.0, 0.5, 0.0, 3.0, -1.0, -4.0, 2.0]]))
    single = SingleMember(model)
    assert single.penalty(1.0, 0.0).tolist() == [pytest.approx(L1_BN)]
    assert single.penalty(0.0, 1.0).tolist() == [pytest.approx(L2_BN)]
    assert single.penalty(0.3, 0.02).tolist() == [pytest.approx(0.3 * L1_BN + 0.02 * L2_BN)]
    single.penalty(0.0, 1.0).sum().backward()
    assert model[0].bias.grad is None and model[1].weight.grad is None and model[1].bias.grad is None
    torch.testing.assert_close(model[3].weight.grad, torch.tensor([[-8.0, 4.0]]))  # d(w^2)/dw = 2w
    torch.testing.assert_close(model[0].weight.grad, 2 * model[0].weight.detach())


def test_stacked_members_penalty_by_hand_and_as_each_single_member():
    models = []
    for scale in (1.0, -0.5):
        model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1))
        _set(model[0], [[scale * 1.0, -2.0, 0.5], [0.0, 3.0, scale * -1.0]], 100.0)
        _set(model[2], [[-4.0, scale * 2.0]], 7.0)
        models.append(model)
    # member 1: weights -0.5, -2, 0.5, 0, 3, 0.5, -4, -1
    l1 = [13.5, 0.5 + 2 + 0.5 + 0 + 3 + 0.5 + 4 + 1]
    l2 = [35.25, 0.25 + 4 + 0.25 + 0 + 9 + 0.25 + 16 + 1]
    stacked = StackedMembers(models)
    torch.testing.assert_close(stacked.penalty(1.0, 0.0), torch.tensor(l1))
    torch.testing.assert_close(stacked.penalty(0.0, 1.0), torch.tensor(l2))
    both = stacked.penalty(0.3, 0.02)
    torch.testing.assert_close(both, torch.tensor([0.3 * a + 0.02 * b for a, b in zip(l1, l2, strict=True)]))
    for i, model in enumerate(models):
        torch.testing.assert_close(SingleMember(model).penalty(0.3, 0.02), both[i : i + 1])
    # The gradient: l1 sign(w) + 2 l2 w on weights, exactly 0 on biases.
    both.sum().backward()
    expected = 0.3 * stacked.weights.detach().sign() + 0.04 * stacked.weights.detach()
    expected = expected * stacked.weight_mask
    torch.testing.assert_close(stacked.weights.grad, expected)
    biases = [6, 7, 10]  # flat offsets of the two biases (2 + 1 entries)
    assert stacked.weights.grad[:, biases].eq(0).all()


def test_penalty_without_weights_is_zero():
    assert weight_penalty(penalised_weights(nn.Sequential()), 1.0, 1.0).tolist() == [0.0]
    assert weight_penalty(penalised_weights(nn.BatchNorm1d(3)), 1.0, 1.0).tolist() == [0.0]
