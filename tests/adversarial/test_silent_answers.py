"""Issue #13 point 5: no input gives a wrong answer silently.

- stacked and one-at-a-time fits agree on every outcome, at extreme temperatures too, and the
  baseline (``kl_weight = 0``) never depends on KL-term arithmetic;
- labels: distinct label values are never merged into one class, and unusable label columns are
  named in words a user understands;
- features: values finite in float64 but not in float32 (the student's dtype), raw or once scaled,
  are an error naming the column and the row, in ``run`` and in ``predict``;
- sweeps: only keys that the protocol varies per value may be swept.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

from distill.engine import EvaluationRows, FitSettings, TrainingRows, fit, fit_many
from distill.member_objective import MemberObjective
from distill.objective import distillation_loss
from students import build

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.filterwarnings("ignore:No (positive|negative) samples in targets:UserWarning")


# --------------------------------------------------------------------------- stacked vs one at a time


def _rows(k: int, n: int = 24, labelled: int = 8) -> tuple[TrainingRows, EvaluationRows]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % k
    x = torch.randn(n, 3, generator=g) + y[:, None].float()
    mask = torch.zeros(n, dtype=torch.bool)
    mask[:labelled] = True
    teacher = torch.randn(n, k, generator=g) * 2 + 3 * torch.nn.functional.one_hot(y, k)
    train = TrainingRows(x=x, targets=torch.where(mask, y, torch.full_like(y, -1)), labelled=mask,
                         teacher_logits=teacher)
    return train, EvaluationRows(torch.randn(12, 3, generator=g), torch.arange(12) % k)


def _student(k: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build("mlp", (3,), k, num_outputs=1 if k == 2 else k, hidden=[6], activation="tanh")


def _fits(k: int, temperature: float, weights: list[float], direction: str, stacked: bool):
    settings = [FitSettings(epochs=4, batch_size=4, lr=0.01, kl_weight=w, temperature=temperature,
                            direction=direction, seed=0) for w in weights]
    data = [_rows(k) for _ in weights]
    models = [_student(k) for _ in weights]
    if stacked:
        results = fit_many(models, [t for t, _ in data], settings, num_classes=k, validations=[v for _, v in data])
    else:
        results = [fit(m, t, s, num_classes=k, validation=v) for m, (t, v), s in zip(models, data, settings,
                                                                                        strict=True)]
    return results, models


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("temperature", [1e-6, 1e-3, 1e3, 1e-38, 1e30])
def test_stacked_and_one_at_a_time_agree_on_every_outcome(k: int, direction: str, temperature: float) -> None:
    weights = [0.0, 0.1, 1.0]
    # At T = 1e3 the KL is O(1 / T^2) computed from float32 log-probabilities and multiplied by T^2:
    # the two paths' last-bit differences in the forward show up at the 1e-3 level, no more.
    rel = 1e-2 if temperature > 1 else 1e-4
    together, stacked_models = _fits(k, temperature, weights, direction, stacked=True)
    alone, single_models = _fits(k, temperature, weights, direction, stacked=False)
    for w, a, b, ma, mb in zip(weights, together, alone, stacked_models, single_models, strict=True):
        assert (a.status, a.diverged_at, a.stopped_epoch) == (b.status, b.diverged_at, b.stopped_epoch), w
        for ra, rb in zip(a.history, b.history, strict=True):
            for key in ra:
                assert ra[key] == pytest.approx(rb[key], rel=rel, abs=1e-5, nan_ok=True), (w, key)
        for pa, pb in zip(ma.parameters(), mb.parameters(), strict=True):
            torch.testing.assert_close(pa, pb, atol=1e-4, rtol=rel, equal_nan=True)
    # The baseline member always completes: its loss has no KL term at all.
    assert together[0].status == "completed"


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_the_stacked_baseline_is_bit_for_bit_the_same_at_every_temperature(k: int, direction: str) -> None:
    reference = None
    for temperature in (1.0, 1e-6, 1e-3, 1e3, 1e-38, 1e-45, 1e30):
        results, models = _fits(k, temperature, [0.0, 0.5], direction, stacked=True)
        weights = [p.detach().clone() for p in models[0].parameters()]
        losses = [h["train_loss"] for h in results[0].history]
        if reference is None:
            reference = (weights, losses)
            continue
        assert losses == reference[1], temperature
        for a, b in zip(weights, reference[0], strict=True):
            assert torch.equal(a, b), temperature


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_a_member_without_kl_weight_gets_exactly_the_hard_loss_and_its_gradient(k: int, direction: str) -> None:
    """A member with w = 0 in a stack equals the same member alone (no teacher at all), at T = 1e-40."""
    g = torch.Generator().manual_seed(1)
    n, classes = 6, max(k, 2)
    targets = torch.randint(0, classes, (2, n), generator=g)
    labelled = torch.ones(2, n, dtype=torch.bool)
    teacher = torch.randn(2, n, classes, generator=g) * 5
    z = (torch.randn(2, n, k, generator=g) * 3).requires_grad_()
    idx = torch.arange(n).expand(2, n)
    stacked = MemberObjective(targets, labelled, teacher, [0.0, 1.0], [1e-40, 1e-40], direction, k)
    stacked(z, idx).sum().backward()
    alone_z = z.detach()[:1].clone().requires_grad_()
    alone = MemberObjective(targets[:1], labelled[:1], None, [0.0], [1e-40], direction, k)
    loss = alone(alone_z, idx[:1])
    loss.sum().backward()
    assert torch.equal(stacked(z.detach(), idx)[0], loss.detach()[0])
    assert torch.equal(z.grad[0], alone_z.grad[0])


def test_the_reference_objective_selects_the_hard_term_for_a_zero_weight_tensor() -> None:
    student = torch.tensor([[1e30, 0.0, -1e30]])
    teacher = torch.tensor([[0.0, 1e30, 0.0]])
    targets = torch.tensor([1])
    hard = distillation_loss(student, teacher, targets, kl_weight=0.0, temperature=1e-38)
    as_tensor = distillation_loss(student, teacher, targets, kl_weight=torch.tensor(0.0), temperature=1e-38)
    assert torch.isfinite(hard) and torch.equal(as_tensor, hard)
