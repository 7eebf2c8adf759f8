"""Reference implementations the tests check distill against (they are not part of the package): losses, and
torchmetrics' classification metrics.

Each loss is written from its formula, independently of ``distill.losses`` (no code shared with it), and is
itself checked against PyTorch's own loss and a NumPy formula in tests/test_losses.py:

* :class:`NumpyCrossEntropyLoss` -- cross-entropy with forward and backward in float64 NumPy: the
  oracle for the hard term and the validation loss (tests/test_objective.py);
* :class:`KLDivLoss` -- ``torch.nn.KLDivLoss``'s semantics with ``0 log 0 = 0``: the oracle for the
  tempered KL of the distillation objective (tests/test_objective.py);
* :func:`torchmetrics_classification_metrics` -- accuracy, macro-F1, AUROC and ECE by torchmetrics (what
  distill computed with before it used its own batched metrics): the oracle of
  ``distill.metrics.classification`` (tests/test_batch_metrics.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_calibration_error,
    multiclass_f1_score,
)

__all__ = ["NumpyCrossEntropyLoss", "KLDivLoss"]


def _check_reduction(reduction: str, allowed: Sequence[str]) -> str:
    if reduction not in allowed:
        raise ValueError(
            f"reduction must be one of {', '.join(repr(r) for r in allowed)}, got {reduction!r}"
        )
    return reduction


def _check_cpu(t: Any, who: str = "NumpyCrossEntropyLoss") -> None:
    """Raise a ValueError unless ``t`` lives on the CPU (NumPy cannot see other devices)."""
    if t is not None and t.device.type != "cpu":
        raise ValueError(
            f"{who} computes in NumPy and takes CPU tensors; got a tensor on {t.device}; "
            "use CrossEntropyLoss"
        )


class _NumpyCrossEntropyFunction(torch.autograd.Function):
    """Weighted cross-entropy whose forward and backward are computed in NumPy (float64)."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, target: Tensor, weight: Tensor | None,  # type: ignore[override]
                reduction: str) -> Tensor:
        x = input.detach().to(torch.float64).numpy()
        y = target.detach().to(torch.int64).numpy()
        n, c = x.shape
        if n and (y.min() < 0 or y.max() >= c):
            raise IndexError(f"target class indices must be in [0, {c}), got range [{y.min()}, {y.max()}]")
        shifted = x - x.max(axis=1, keepdims=True) if n else x
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        rows = np.arange(n)
        w_y = weight.detach().to(torch.float64).numpy()[y] if weight is not None else np.ones(n)
        per_row = -w_y * log_p[rows, y]
        if reduction == "none":
            out = per_row
        elif reduction == "sum":
            out = np.asarray(per_row.sum())
        else:
            out = np.asarray(per_row.sum() / w_y.sum()) if n else np.asarray(np.nan)
        ctx.softmax_minus_onehot = np.exp(log_p)
        ctx.softmax_minus_onehot[rows, y] -= 1.0
        ctx.w_y = w_y
        ctx.reduction = reduction
        ctx.dtype = input.dtype
        return torch.from_numpy(np.array(out, dtype=np.float64)).to(input.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        g = grad_output.detach().to(torch.float64).numpy()
        w_y = ctx.w_y
        if ctx.reduction == "none":
            coef = g * w_y
        elif ctx.reduction == "sum":
            coef = g * w_y
        else:
            coef = g * w_y / w_y.sum()
        grad = coef[:, None] * ctx.softmax_minus_onehot
        return torch.from_numpy(grad).to(ctx.dtype), None, None, None


class NumpyCrossEntropyLoss(nn.Module):
    """Cross-entropy computed in NumPy, forward and backward (a CPU reference implementation).

    The same loss as :class:`CrossEntropyLoss` without label smoothing,

    .. math:: \\ell_i = -w_{y_i} \\Big(x_{i y_i} - \\max_j x_{ij}
              - \\log\\sum_k e^{x_{ik} - \\max_j x_{ij}}\\Big),
              \\qquad \\frac{\\partial \\ell_i}{\\partial x_{ik}} = w_{y_i}(p_{ik} - [k = y_i]),

    with ``"mean"`` dividing by :math:`\\sum_i w_{y_i}` (PyTorch's ``nn.CrossEntropyLoss``
    convention). A :class:`torch.autograd.Function` computes both passes in float64 NumPy
    and casts back to the input's dtype, so in float64 the value and gradient agree with
    ``torch.nn.CrossEntropyLoss`` to round-off. Second derivatives are not supported.

    Args:
        weight: ``[C]`` class weights, or None.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Raises:
        ValueError: in ``forward``, for tensors not on the CPU.
    """

    def __init__(self, weight: Tensor | Sequence[float] | None = None, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction, ("mean", "sum", "none"))
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float64))
        self.weight: Tensor | None

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        for t in (input, target, self.weight):
            _check_cpu(t)
        if input.ndim != 2 or target.ndim != 1 or target.shape[0] != input.shape[0]:
            raise ValueError(f"NumpyCrossEntropyLoss takes [N, C] logits and [N] class indices, got "
                             f"{tuple(input.shape)} and {tuple(target.shape)}")
        if self.weight is not None and self.weight.shape[0] != input.shape[1]:
            raise ValueError(
                f"NumpyCrossEntropyLoss: weight has {self.weight.shape[0]} entries but the input has "
                f"{input.shape[1]} classes"
            )
        return _NumpyCrossEntropyFunction.apply(input, target, self.weight, self.reduction)


# --------------------------------------------------------------------------- KL


class KLDivLoss(nn.Module):
    """Pointwise KL divergence, PyTorch's ``nn.KLDivLoss`` semantics.

    ``input`` holds log-probabilities :math:`\\log q`; ``target`` holds probabilities
    :math:`p` (or :math:`\\log p` with ``log_target=True``). Elementwise

    .. math:: \\ell = p\\,(\\log p - \\log q), \\qquad 0 \\cdot \\log 0 = 0,

    so an element whose target probability is 0 contributes exactly 0 (even against
    :math:`\\log q = -\\infty`). Reductions as in ``torch.nn.KLDivLoss`` (see its
    documentation): ``"mean"`` averages over all elements, ``"batchmean"`` divides the sum
    by the batch size (the true KL per row), ``"sum"``, and ``"none"`` (elementwise).

    Args:
        reduction: ``"mean"``, ``"batchmean"``, ``"sum"`` or ``"none"``.
        log_target: whether ``target`` is given as log-probabilities.
    """

    def __init__(self, reduction: str = "mean", log_target: bool = False) -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction, ("mean", "batchmean", "sum", "none"))
        self.log_target = bool(log_target)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if tuple(input.shape) != tuple(target.shape):
            raise ValueError(
                f"KLDivLoss: input and target must have the same shape, got {tuple(input.shape)} "
                f"and {tuple(target.shape)}"
            )
        target = target.to(device=input.device, dtype=input.dtype)
        if self.log_target:
            p, log_p = target.exp(), target
        else:
            p = target
            log_p = torch.log(torch.where(p > 0, p, torch.ones_like(p)))
        terms = torch.where(p > 0, p * (log_p - input), torch.zeros_like(input))
        if self.reduction == "batchmean":
            return terms.sum() / (input.shape[0] if input.ndim > 0 else 1)
        if self.reduction == "none":
            return terms
        return terms.sum() if self.reduction == "sum" else terms.mean()


# --------------------------------------------------------------------------- classification metrics


def torchmetrics_classification_metrics(probs: Tensor, target: Tensor, num_classes: int) -> dict[str, Tensor]:
    """The metrics distill reports, computed by torchmetrics (what distill itself used before issue 17):
    accuracy, macro-F1, macro AUROC (over classes present with both outcomes) and ECE.

    Returns 0-dim tensors on the input's device, so callers read them all in one sync.
    AUROC is NaN when fewer than two classes are present in ``target``.
    """
    probs = probs.float()
    target = target.long()
    out = {
        "accuracy": multiclass_accuracy(probs, target, num_classes, average="micro", validate_args=False),
        "f1_macro": multiclass_f1_score(probs, target, num_classes, average="macro", validate_args=False),
        "ece": multiclass_calibration_error(probs, target, num_classes, n_bins=15, norm="l1", validate_args=False),
    }
    counts = torch.bincount(target, minlength=num_classes)
    scorable = (counts > 0) & (counts < target.numel())
    per_class = multiclass_auroc(probs, target, num_classes, average=None, validate_args=False)
    per_class = torch.where(scorable, per_class, torch.zeros_like(per_class))
    n = scorable.sum()
    out["auroc"] = torch.where(n >= 2, per_class.sum() / n.clamp(min=1), torch.full_like(per_class[0], float("nan")))
    if num_classes == 2:
        # With two classes both one-vs-rest AUROCs equal the binary AUROC; one present class suffices.
        out["auroc"] = torch.where(n >= 1, per_class[1], out["auroc"])
    return {k: out[k] for k in ("accuracy", "f1_macro", "auroc", "ece")}
