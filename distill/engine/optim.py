"""SGD, Adam and AdamW for the step loop, and the learning-rate schedules, without per-call machinery.

``torch.optim`` spends tens of microseconds per ``step()`` on hooks, profiling and dispatch before
the arithmetic; a few-shot step of a tiny student costs about as much in total. These are the same
update formulas as ``torch.optim``'s single-tensor implementations (checked against them in
``tests/test_optim.py``), applied to the engine's one or few flat parameter tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["LeanOptimizer", "learning_rate"]

OPTIMIZERS = ("sgd", "adam", "adamw")


class LeanOptimizer:
    """``sgd`` (momentum, L2 weight decay), ``adam`` (L2 weight decay) or ``adamw`` (decoupled decay).

    Defaults as ``torch.optim``: betas (0.9, 0.999), eps 1e-8, no dampening, no Nesterov.
    ``lr`` may be changed between steps (the schedule sets it once per epoch).
    """

    def __init__(self, params: Sequence[Tensor], kind: str, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if kind not in OPTIMIZERS:
            raise ValueError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {kind!r}")
        self.params = list(params)
        self.kind = kind
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)
        self.steps = 0
        self.buffers: list[Tensor | None] = [None] * len(self.params)
        self.exp_avg = [torch.zeros_like(p) for p in self.params] if kind != "sgd" else []
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params] if kind != "sgd" else []

    def state_dict(self) -> dict[str, Any]:
        """Step count and per-parameter buffers (tensors and numbers only)."""
        def copied(tensors: list[Any]) -> list[Any]:
            return [t.clone() if isinstance(t, Tensor) else t for t in tensors]

        return {"kind": self.kind, "steps": self.steps, "buffers": copied(self.buffers),
                "exp_avg": copied(self.exp_avg), "exp_avg_sq": copied(self.exp_avg_sq)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["kind"] != self.kind:
            raise ValueError(f"optimizer state is for {state['kind']!r}, not {self.kind!r}")
        device = self.params[0].device if self.params else None

        def moved(tensors: list[Any]) -> list[Any]:
            return [t.to(device) if isinstance(t, Tensor) else t for t in tensors]

        self.steps = int(state["steps"])
        self.buffers = moved(state["buffers"])
        self.exp_avg, self.exp_avg_sq = moved(state["exp_avg"]), moved(state["exp_avg_sq"])

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        self.steps += 1
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if self.kind == "sgd":
                self._sgd(i, p, p.grad)
            else:
                self._adam(i, p, p.grad)

    def _sgd(self, i: int, p: Tensor, grad: Tensor) -> None:
        if self.weight_decay != 0:
            grad = grad.add(p, alpha=self.weight_decay)
        if self.momentum != 0:
            buf = self.buffers[i]
            if buf is None:
                buf = self.buffers[i] = torch.clone(grad).detach()
            else:
                buf.mul_(self.momentum).add_(grad)
            grad = buf
        p.add_(grad, alpha=-self.lr)

    def _adam(self, i: int, p: Tensor, grad: Tensor) -> None:
        if self.kind == "adamw":
            p.mul_(1 - self.lr * self.weight_decay)
        elif self.weight_decay != 0:
            grad = grad.add(p, alpha=self.weight_decay)
        exp_avg, exp_avg_sq = self.exp_avg[i], self.exp_avg_sq[i]
        exp_avg.lerp_(grad, 1 - self.beta1)
        exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        bias_correction1 = 1 - self.beta1**self.steps
        bias_correction2 = 1 - self.beta2**self.steps
        denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(self.eps)
        p.addcdiv_(exp_avg, denom, value=-self.lr / bias_correction1)


def learning_rate(base: float, epoch: int, schedule: str, epochs: int, step_size: int = 30,
                  gamma: float = 0.1) -> float:
    """The rate of 1-based ``epoch``: ``none``; ``step`` (times ``gamma`` every ``step_size`` epochs);
    ``cosine`` (annealed to 0 over ``epochs``, as ``CosineAnnealingLR(T_max=epochs)``)."""
    done = epoch - 1
    if schedule == "step":
        return base * gamma ** (done // step_size)
    if schedule == "cosine":
        return base * (1 + math.cos(math.pi * done / epochs)) / 2
    if schedule == "none":
        return base
    raise ValueError(f"train.scheduler must be one of none, cosine, step, got {schedule!r}")
