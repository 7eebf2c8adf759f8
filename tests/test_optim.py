"""The lean optimizers and schedules against torch.optim and torch.optim.lr_scheduler."""

from __future__ import annotations

import pytest
import torch

from distill.engine.optim import LeanOptimizer, learning_rate


@pytest.mark.parametrize(("kind", "kwargs"), [
    ("sgd", {}),
    ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.5, "weight_decay": 0.01}),
    ("adam", {}),
    ("adam", {"weight_decay": 0.05}),
    ("adamw", {"weight_decay": 0.05}),
])
def test_updates_match_torch_optim(kind: str, kwargs: dict) -> None:
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)]
    ours = [p.clone() for p in start]
    theirs = [p.clone().requires_grad_(True) for p in start]
    reference = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind](
        theirs, lr=0.03, **kwargs)
    lean = LeanOptimizer(ours, kind, 0.03, **kwargs)
    for step in range(40):
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) * (step % 5 + 0.1) for p in start]
        for p, q, grad in zip(ours, theirs, grads, strict=True):
            p.grad = grad.clone()
            q.grad = grad.clone()
        if step == 20:  # a schedule changes the rate between steps
            lean.lr = 0.01
            for group in reference.param_groups:
                group["lr"] = 0.01
        lean.step()
        reference.step()
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q.detach(), rtol=1e-12, atol=1e-12)


def test_a_parameter_without_gradient_is_left_alone() -> None:
    p, q = torch.ones(3), torch.ones(3)
    q.grad = torch.ones(3)
    LeanOptimizer([p, q], "adam", 0.1).step()
    assert torch.equal(p, torch.ones(3))
    assert not torch.equal(q, torch.ones(3))


def test_unknown_optimizer_and_schedule_are_named() -> None:
    with pytest.raises(ValueError, match="train.optimizer"):
        LeanOptimizer([torch.zeros(1)], "rmsprop", 0.1)
    with pytest.raises(ValueError, match="train.scheduler"):
        learning_rate(0.1, 1, "linear", 10)


@pytest.mark.parametrize(("schedule", "make"), [
    ("cosine", lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=17)),
    ("step", lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.3)),
    ("none", None),
])
def test_schedules_match_torch_schedulers(schedule: str, make) -> None:
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.2)
    scheduler = make(opt) if make is not None else None
    for epoch in range(1, 18):
        expected = opt.param_groups[0]["lr"]
        assert learning_rate(0.2, epoch, schedule, 17, step_size=4, gamma=0.3) == pytest.approx(expected, rel=1e-12,
                                                                                                 abs=1e-15)
        opt.step()
        if scheduler is not None:
            scheduler.step()
    assert learning_rate(0.2, 1, "cosine", 17) == 0.2
    assert learning_rate(0.2, 18, "cosine", 17) == pytest.approx(0.0, abs=1e-15)  # a full half period
    assert learning_rate(1.0, 9, "step", 17, step_size=4, gamma=0.5) == 0.25
