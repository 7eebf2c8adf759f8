"""Loss functions for the hard (supervised) term, metric learning and weight penalties.

Every loss is an :class:`torch.nn.Module` that follows PyTorch's conventions: ``forward``
takes the input (logits, log-probabilities or embeddings) first and the target second, and
``reduction`` is ``"mean"``, ``"sum"`` or ``"none"``. ``"none"`` returns one value per row
(``[N]``; per element for :class:`KLDivLoss` and :class:`MarginRankingLoss`, as in PyTorch).
Class weights follow PyTorch's weighted-mean convention: with ``weight`` set, ``"mean"``
divides the sum of the weighted per-row losses by the sum of the targets' weights
:math:`\\sum_i w_{y_i}`, exactly like :class:`torch.nn.CrossEntropyLoss` (the exceptions --
BCE's per-element ``weight`` and the focal loss's ``alpha`` -- are stated where they occur).

Everything is computed in log-space (log-sum-exp, ``logsigmoid``), never as the log of a
probability that can underflow, so values and gradients are finite for logits of any
magnitude (tested at :math:`\\pm 1000`). Nothing calls ``.item()`` inside ``forward``.

The hard losses selectable in a config (``objective.hard``) are in :data:`HARD_LOSSES`;
:func:`create_loss` builds one and checks its ``objective.hard_params``. More come from
:func:`register_loss` in code and from installed packages' entry points in group ``distill.losses.hard``.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from distill.registry import Registry

__all__ = [
    "CrossEntropyLoss",
    "NumpyCrossEntropyLoss",
    "BCEWithLogitsLoss",
    "KLDivLoss",
    "FocalLoss",
    "SymmetricCrossEntropyLoss",
    "MarginRankingLoss",
    "TripletMarginLoss",
    "l1_penalty",
    "l2_penalty",
    "HARD_LOSSES",
    "ONE_LOGIT_LOSSES",
    "list_losses",
    "create_loss",
    "register_loss",
]

#: The reductions every loss accepts (KLDivLoss adds ``"batchmean"``).
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")
#: Hard losses that accept a single binary logit per row (``[N]`` / ``[N, 1]``).
ONE_LOGIT_LOSSES: tuple[str, ...] = ("bce", "focal")


# --------------------------------------------------------------------------- helpers


def _is_number(x: object) -> bool:
    """True for Python / NumPy real scalars (not tensors, not bools)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_reduction(reduction: str, allowed: Sequence[str] = REDUCTIONS) -> str:
    if reduction not in allowed:
        raise ValueError(
            f"reduction must be one of {', '.join(repr(r) for r in allowed)}, got {reduction!r}"
        )
    return reduction


def _check_float(name: str, value: object, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if not _is_number(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)  # type: ignore[arg-type]
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (v <= low if low_open else v < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")
    return v


def _as_vector(name: str, value: Tensor | Sequence[float] | None) -> Tensor | None:
    """A 1-D floating tensor (kept on its device; a sequence becomes float64 on the CPU, exactly)."""
    if value is None:
        return None
    t = value if isinstance(value, Tensor) else torch.as_tensor(value, dtype=torch.float64)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.ndim != 1:
        raise ValueError(f"{name} must be a 1-D tensor with one entry per class, got shape {tuple(t.shape)}")
    return t.detach()


def _reduce(per_row: Tensor, reduction: str, denominator: Tensor | None = None) -> Tensor:
    """``"none"`` -> ``per_row``; ``"sum"``; ``"mean"`` -> sum / denominator (or the plain mean)."""
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    if denominator is None:
        return per_row.mean()
    return per_row.sum() / denominator


def _check_logits_2d(input: Tensor, target: Tensor, who: str) -> None:
    if input.ndim != 2 or input.shape[1] < 1:
        raise ValueError(f"{who} takes input logits of shape [N, C], got {tuple(input.shape)}")
    if target.ndim != 1 or target.shape[0] != input.shape[0]:
        raise ValueError(
            f"{who} takes target class indices of shape [{input.shape[0]}], got {tuple(target.shape)}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"{who} takes integer class indices as target, got dtype {target.dtype}")


def _weighted_log_probs(loss: nn.Module, input: Tensor, target: Tensor) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Checked inputs of a class-weighted loss: long targets, class weights, log-softmax and per-row NLL."""
    _check_logits_2d(input, target, type(loss).__name__)
    target = target.to(device=input.device, dtype=torch.long)
    weight = _class_weight(loss.weight, input, type(loss).__name__)
    log_p = _log_softmax(input)
    return target, weight, log_p, -log_p.gather(1, target[:, None])[:, 0]


def _class_weight(weight: Tensor | None, input: Tensor, who: str) -> Tensor | None:
    if weight is None:
        return None
    if weight.shape[0] != input.shape[1]:
        raise ValueError(
            f"{who}: weight has {weight.shape[0]} entries but the input has {input.shape[1]} classes"
        )
    return weight.to(device=input.device, dtype=input.dtype)


def _log_softmax(input: Tensor) -> Tensor:
    """:math:`\\log\\mathrm{softmax}(x)_k = x_k - \\log\\sum_j e^{x_j}` along the last dim."""
    return input - torch.logsumexp(input, dim=-1, keepdim=True)


def _log_one_minus_p_target(log_p: Tensor, target: Tensor) -> Tensor:
    """:math:`\\log(1 - p_y) = \\log\\sum_{k \\ne y} p_k`, without cancellation.

    ``1 - exp(log p_y)`` loses everything when :math:`p_y \\to 1`; the log-sum-exp of the
    other classes' log-probabilities is exact and finite for any finite logits.
    """
    onehot = F.one_hot(target, log_p.shape[-1]).to(torch.bool)
    others = torch.where(onehot, torch.full_like(log_p, -math.inf), log_p)
    return torch.logsumexp(others, dim=-1)


def _binary_shapes(input: Tensor, target: Tensor, who: str) -> tuple[Tensor, Tensor]:
    """Flatten a one-logit input ``[N]`` / ``[N, 1]`` and its target to ``[N]``."""
    if not (input.ndim == 1 or (input.ndim == 2 and input.shape[1] == 1)):
        raise ValueError(f"{who} takes one logit per row, shape [N] or [N, 1], got {tuple(input.shape)}")
    n = input.shape[0]
    if not (target.ndim == 1 or (target.ndim == 2 and target.shape[1] == 1)) or target.shape[0] != n:
        raise ValueError(f"{who}: target must have shape [{n}] or [{n}, 1], got {tuple(target.shape)}")
    return input.reshape(n), target.reshape(n).to(input.dtype)


def _broadcast_to_rows(name: str, value: Tensor | None, n: int, like: Tensor) -> Tensor | None:
    """A scalar / ``[1]`` / ``[N]`` / ``[N, 1]`` tensor as something broadcastable to ``[N]``."""
    if value is None:
        return None
    v = value.to(device=like.device, dtype=like.dtype)
    if v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim > 1 or (v.ndim == 1 and v.shape[0] not in (1, n)):
        raise ValueError(f"{name} must be a scalar, [1], [{n}] or [{n}, 1], got shape {tuple(value.shape)}")
    return v


# --------------------------------------------------------------------------- cross-entropy


class CrossEntropyLoss(nn.Module):
    """Cross-entropy of ``[N, C]`` logits against class indices, with label smoothing.

    With :math:`\\log p_{ik} = x_{ik} - \\log\\sum_j e^{x_{ij}}` (log-sum-exp, stable for any
    logits), class weights :math:`w` (all 1 when ``weight`` is None) and smoothing
    :math:`\\varepsilon`, the loss of row :math:`i` is

    .. math::

        \\ell_i = (1 - \\varepsilon)\\, w_{y_i} (-\\log p_{i y_i})
                  + \\frac{\\varepsilon}{C} \\sum_{k=1}^{C} w_k (-\\log p_{ik})

    i.e. the cross-entropy against the smoothed target :math:`(1-\\varepsilon)\\,\\mathbb{1}_{y}
    + \\varepsilon / C` (Szegedy et al. 2016, "Rethinking the Inception Architecture for
    Computer Vision", section 7), with each class's term weighted by its own weight as in
    PyTorch. ``"mean"`` is :math:`\\sum_i \\ell_i / \\sum_i w_{y_i}` (the plain mean without
    weights), ``"sum"`` is :math:`\\sum_i \\ell_i` and ``"none"`` returns :math:`\\ell` ``[N]``.
    This equals ``torch.nn.CrossEntropyLoss(weight, label_smoothing=ε)`` (see its
    documentation) including the smoothing-weight interaction.

    Args:
        weight: ``[C]`` class weights, or None.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        label_smoothing: :math:`\\varepsilon \\in [0, 1]`.
    """

    def __init__(self, weight: Tensor | Sequence[float] | None = None, reduction: str = "mean",
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction)
        self.label_smoothing = _check_float("label_smoothing", label_smoothing, low=0.0, high=1.0)
        self.register_buffer("weight", _as_vector("weight", weight))
        self.weight: Tensor | None

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        target, weight, log_p, nll = _weighted_log_probs(self, input, target)
        w_y = weight[target] if weight is not None else None
        per_row = nll if w_y is None else w_y * nll
        eps = self.label_smoothing
        if eps > 0.0:
            smooth = -(log_p if weight is None else log_p * weight).sum(dim=1)
            per_row = (1.0 - eps) * per_row + (eps / input.shape[1]) * smooth
        return _reduce(per_row, self.reduction, None if w_y is None else w_y.sum())


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
        self.reduction = _check_reduction(reduction)
        self.register_buffer("weight", _as_vector("weight", weight))
        self.weight: Tensor | None

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        for t in (input, target, self.weight):
            _check_cpu(t)
        _check_logits_2d(input, target, type(self).__name__)
        if self.weight is not None and self.weight.shape[0] != input.shape[1]:
            raise ValueError(
                f"NumpyCrossEntropyLoss: weight has {self.weight.shape[0]} entries but the input has "
                f"{input.shape[1]} classes"
            )
        return _NumpyCrossEntropyFunction.apply(input, target, self.weight, self.reduction)


# --------------------------------------------------------------------------- binary


class BCEWithLogitsLoss(nn.Module):
    """Binary cross-entropy on one logit per row, in the stable log-sum-exp form.

    For logit :math:`x`, target :math:`y \\in [0, 1]`, ``pos_weight`` :math:`p_w` and
    per-row ``weight`` :math:`w`:

    .. math::

        \\ell = -w\\,[p_w\\, y \\log\\sigma(x) + (1 - y)\\log(1 - \\sigma(x))]
              = w\\,[(1 - y)\\, x + (1 + (p_w - 1)\\, y)\\, \\mathrm{softplus}(-x)]

    with :math:`\\mathrm{softplus}(-x) = -\\log\\sigma(x)` from ``logsigmoid`` (exact for any
    :math:`x`), as in ``torch.nn.BCEWithLogitsLoss`` (see its documentation). ``weight``
    rescales each row (a scalar or ``[N]``), as in PyTorch, and ``"mean"`` is the plain mean
    over rows, also as in PyTorch (it is not a class weight, so there is no weighted mean).

    Args:
        weight: per-row weights (scalar, ``[1]``, ``[N]`` or ``[N, 1]``), or None.
        pos_weight: the positive class's weight :math:`p_w` (scalar or ``[1]``), or None.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``[N]``, also for an ``[N, 1]``
            input -- PyTorch would keep ``[N, 1]``).

    Shapes: input ``[N]`` or ``[N, 1]`` logits; target ``[N]`` or ``[N, 1]`` (any dtype).
    """

    def __init__(self, weight: Tensor | None = None, pos_weight: Tensor | float | None = None,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction)
        if pos_weight is not None and not isinstance(pos_weight, Tensor):
            pos_weight = torch.tensor(_check_float("pos_weight", pos_weight, low=0.0), dtype=torch.float64)
        if pos_weight is not None and pos_weight.numel() != 1:
            raise ValueError(f"pos_weight must be a scalar or [1] for one logit, got shape {tuple(pos_weight.shape)}")
        if weight is not None and not isinstance(weight, Tensor):
            weight = torch.as_tensor(weight, dtype=torch.float64)
        self.register_buffer("weight", weight.detach() if weight is not None else None)
        self.register_buffer("pos_weight", pos_weight.detach().reshape(()) if pos_weight is not None else None)
        self.weight: Tensor | None
        self.pos_weight: Tensor | None

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        x, y = _binary_shapes(input, target, type(self).__name__)
        softplus_neg_x = -F.logsigmoid(x)
        if self.pos_weight is None:
            per_row = (1.0 - y) * x + softplus_neg_x
        else:
            pw = self.pos_weight.to(device=x.device, dtype=x.dtype)
            per_row = (1.0 - y) * x + (1.0 + (pw - 1.0) * y) * softplus_neg_x
        w = _broadcast_to_rows("weight", self.weight, x.shape[0], x)
        if w is not None:
            per_row = per_row * w
        return _reduce(per_row, self.reduction)


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
        return _reduce(terms, self.reduction)


# --------------------------------------------------------------------------- focal


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection"), binary or multiclass.

    .. math:: \\ell_i = -\\alpha_{t}\\,(1 - p_t)^{\\gamma} \\log p_t

    where :math:`p_t` is the probability given to the true class.

    * **binary** (input ``[N]`` or ``[N, 1]``, one logit :math:`x`, target :math:`y \\in
      [0, 1]`): :math:`\\log p_t = y \\log\\sigma(x) + (1-y)\\log\\sigma(-x)` (the BCE, so
      soft targets are allowed) and :math:`1 - p_t = y\\,\\sigma(-x) + (1-y)\\,\\sigma(x)`;
      ``alpha`` a float is the positive class's weight, :math:`\\alpha_t = \\alpha y +
      (1-\\alpha)(1-y)`; a length-2 per-class ``alpha`` gives :math:`\\alpha_t = \\alpha_1 y +
      \\alpha_0 (1-y)`.
    * **multiclass** (input ``[N, C]``, integer targets ``[N]``): :math:`\\log p_t` from
      log-sum-exp and :math:`\\log(1 - p_t) = \\log\\sum_{k\\ne y} p_k`; ``alpha`` a float
      scales every class, a ``[C]`` sequence / tensor gives :math:`\\alpha_t = \\alpha_{y}`.

    ``alpha=None`` means :math:`\\alpha_t = 1`. The modulating factor is computed as
    :math:`\\exp(\\gamma \\log(1 - p_t))` from log-probabilities (``logsigmoid`` /
    log-sum-exp), never from ``1 - p`` of an underflowed probability, so the value and its
    gradient are finite at logits of :math:`\\pm 1000`. With :math:`\\gamma = 0` the loss is the
    :math:`\\alpha`-weighted BCE / cross-entropy per row.

    ``"mean"`` is the plain mean over the N rows, :math:`\\frac{1}{N}\\sum_i \\ell_i`, also with
    a per-class ``alpha`` (as in the paper and torchvision's ``sigmoid_focal_loss``; not
    divided by :math:`\\sum_i \\alpha_{y_i}`, unlike ``nn.CrossEntropyLoss(weight)``).

    Args:
        gamma: focusing parameter :math:`\\gamma \\ge 0`.
        alpha: None, a float in ``[0, 1]``, or per-class weights (sequence / 1-D tensor).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``[N]``).
    """

    def __init__(self, gamma: float = 2.0, alpha: float | Sequence[float] | Tensor | None = None,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.gamma = _check_float("gamma", gamma, low=0.0)
        self.reduction = _check_reduction(reduction)
        self.alpha_scalar: float | None = None
        alpha_vector = None
        if alpha is not None and _is_number(alpha):
            self.alpha_scalar = _check_float("alpha", alpha, low=0.0, high=1.0)
        elif alpha is not None:
            if isinstance(alpha, (str, bytes)):
                raise TypeError(f"alpha must be a float or per-class weights, got {alpha!r}")
            alpha_vector = _as_vector("alpha", alpha)
        self.register_buffer("alpha", alpha_vector)
        self.alpha: Tensor | None

    def _modulate(self, log_one_minus_pt: Tensor) -> Tensor:
        if self.gamma == 0.0:
            return torch.ones_like(log_one_minus_pt)
        return torch.exp(self.gamma * log_one_minus_pt)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if input.ndim == 2 and input.shape[1] >= 2:
            per_row = self._multiclass(input, target)
        else:
            per_row = self._binary(input, target)
        return _reduce(per_row, self.reduction)

    def _binary(self, input: Tensor, target: Tensor) -> Tensor:
        x, y = _binary_shapes(input, target, type(self).__name__)
        log_sig, log_sig_neg = F.logsigmoid(x), F.logsigmoid(-x)
        ce = -(y * log_sig + (1.0 - y) * log_sig_neg)
        # log(1 - p_t) = log(y sigma(-x) + (1 - y) sigma(x)); log(0) = -inf drops a term.
        log_one_minus_pt = torch.logaddexp(torch.log(y) + log_sig_neg, torch.log1p(-y) + log_sig)
        per_row = self._modulate(log_one_minus_pt) * ce
        if self.alpha_scalar is not None:
            a = self.alpha_scalar
            per_row = (a * y + (1.0 - a) * (1.0 - y)) * per_row
        elif self.alpha is not None:
            if self.alpha.shape[0] != 2:
                raise ValueError(
                    f"FocalLoss: a one-logit (binary) input takes a float alpha or 2 per-class weights, "
                    f"got {self.alpha.shape[0]}"
                )
            a = self.alpha.to(device=x.device, dtype=x.dtype)
            per_row = (a[1] * y + a[0] * (1.0 - y)) * per_row
        return per_row

    def _multiclass(self, input: Tensor, target: Tensor) -> Tensor:
        _check_logits_2d(input, target, type(self).__name__)
        target = target.to(device=input.device, dtype=torch.long)
        log_p = _log_softmax(input)
        log_pt = log_p.gather(1, target[:, None])[:, 0]
        per_row = -self._modulate(_log_one_minus_p_target(log_p, target)) * log_pt
        if self.alpha_scalar is not None:
            per_row = self.alpha_scalar * per_row
        elif self.alpha is not None:
            alpha = _class_weight(self.alpha, input, type(self).__name__)
            per_row = alpha[target] * per_row  # type: ignore[index]
        return per_row


# --------------------------------------------------------------------------- symmetric CE


class SymmetricCrossEntropyLoss(nn.Module):
    """Symmetric cross-entropy (Wang et al. 2019, ICCV, "Symmetric Cross Entropy for Robust
    Learning with Noisy Labels").

    .. math::

        \\ell_i = w_{y_i}\\,\\big(\\alpha\\,\\mathrm{CE}_i + \\beta\\,\\mathrm{RCE}_i\\big), \\qquad
        \\mathrm{CE}_i = -\\log p_{i y_i}, \\qquad
        \\mathrm{RCE}_i = -\\sum_k p_{ik} \\log q_{ik} = -\\log(A)\\,(1 - p_{i y_i})

    where :math:`q` is the one-hot target clamped to ``[A, 1]`` with :math:`A` = ``clamp``
    (the paper's :math:`A = \\log 10^{-4}` choice is ``clamp=1e-4``). :math:`\\log p` comes from
    log-sum-exp and :math:`1 - p_y = \\exp\\log\\sum_{k \\ne y} p_k` (no cancellation). With
    ``beta=0`` and ``alpha=1`` this is :class:`CrossEntropyLoss`. Class weights (all 1 when
    None) scale each row by its target's weight and ``"mean"`` divides by
    :math:`\\sum_i w_{y_i}`, PyTorch's cross-entropy convention (the plain mean without weights).

    Args:
        alpha: weight of the cross-entropy term.
        beta: weight of the reverse cross-entropy term.
        clamp: :math:`A \\in (0, 1]`, the floor of the one-hot target inside the log.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``[N]``).
        weight: ``[C]`` class weights, or None.
    """

    def __init__(self, alpha: float = 0.1, beta: float = 1.0, clamp: float = 1e-4,
                 reduction: str = "mean", weight: Tensor | Sequence[float] | None = None) -> None:
        super().__init__()
        self.alpha = _check_float("alpha", alpha, low=0.0)
        self.beta = _check_float("beta", beta, low=0.0)
        self.clamp = _check_float("clamp", clamp, low=0.0, high=1.0, low_open=True)
        self.reduction = _check_reduction(reduction)
        self.register_buffer("weight", _as_vector("weight", weight))
        self.weight: Tensor | None

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        target, weight, log_p, ce = _weighted_log_probs(self, input, target)
        one_minus_py = torch.exp(_log_one_minus_p_target(log_p, target))
        rce = -math.log(self.clamp) * one_minus_py
        per_row = self.alpha * ce + self.beta * rce
        if weight is None:
            return _reduce(per_row, self.reduction)
        w_y = weight[target]
        return _reduce(w_y * per_row, self.reduction, w_y.sum())


# --------------------------------------------------------------------------- metric learning


class MarginRankingLoss(nn.Module):
    """Margin ranking loss, as ``torch.nn.MarginRankingLoss`` (see its documentation).

    .. math:: \\ell = \\max(0,\\; -y\\,(x_1 - x_2) + \\mathrm{margin})

    with :math:`y = 1` when :math:`x_1` should rank higher and :math:`y = -1` otherwise.
    ``"none"`` is elementwise, ``"mean"`` the mean over all elements.

    Args:
        margin: the margin.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(self, margin: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        self.margin = _check_float("margin", margin)
        self.reduction = _check_reduction(reduction)

    def forward(self, input1: Tensor, input2: Tensor, target: Tensor) -> Tensor:
        if not (input1.shape == input2.shape == target.shape):
            raise ValueError(
                "MarginRankingLoss: input1, input2 and target must have the same shape, got "
                f"{tuple(input1.shape)}, {tuple(input2.shape)} and {tuple(target.shape)}"
            )
        y = target.to(device=input1.device, dtype=input1.dtype)
        return _reduce(torch.clamp_min(-y * (input1 - input2) + self.margin, 0.0), self.reduction)


class TripletMarginLoss(nn.Module):
    """Triplet margin loss, as ``torch.nn.TripletMarginLoss`` (see its documentation).

    .. math::

        \\ell_i = \\max(0,\\; d(a_i, p_i) - d(a_i, n_i) + \\mathrm{margin}), \\qquad
        d(u, v) = \\lVert u - v + \\epsilon \\rVert_p

    with ``eps`` added to the difference, as ``torch.nn.functional.pairwise_distance`` does.
    With ``swap=True`` the negative distance is :math:`\\min(d(a, n), d(p, n))`, the distance
    swap of Balntas et al. 2016, "Learning local feature descriptors with triplets and shallow
    convolutional neural networks" (BMVC).

    Args:
        margin: the margin.
        p: the norm degree (> 0).
        eps: added to the differences, for a non-zero norm.
        swap: use the distance swap.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``[N]``).

    Shapes: anchor, positive and negative ``[N, D]`` (or ``[D]``).
    """

    def __init__(self, margin: float = 1.0, p: float = 2.0, eps: float = 1e-6, swap: bool = False,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.margin = _check_float("margin", margin)
        self.p = _check_float("p", p, low=0.0, low_open=True)
        self.eps = _check_float("eps", eps, low=0.0)
        self.swap = bool(swap)
        self.reduction = _check_reduction(reduction)

    def _distance(self, u: Tensor, v: Tensor) -> Tensor:
        return torch.linalg.vector_norm(u - v + self.eps, ord=self.p, dim=-1)

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        if not (anchor.shape == positive.shape == negative.shape) or anchor.ndim not in (1, 2):
            raise ValueError(
                "TripletMarginLoss: anchor, positive and negative must have the same shape [N, D] "
                f"or [D], got {tuple(anchor.shape)}, {tuple(positive.shape)} and {tuple(negative.shape)}"
            )
        d_pos = self._distance(anchor, positive)
        d_neg = self._distance(anchor, negative)
        if self.swap:
            d_neg = torch.minimum(d_neg, self._distance(positive, negative))
        return _reduce(torch.clamp_min(d_pos - d_neg + self.margin, 0.0), self.reduction)


# --------------------------------------------------------------------------- penalties


def _weights(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.ndim >= 2]


def _zero(model: nn.Module) -> Tensor:
    first = next(iter(model.parameters()), None)
    if first is None:
        return torch.zeros(())
    return torch.zeros((), dtype=first.dtype, device=first.device)


def l1_penalty(model: nn.Module) -> Tensor:
    """:math:`\\sum |w|` over the model's weight matrices and kernels only.

    Only parameters with ``ndim >= 2`` (Linear / Conv weights, embeddings) are penalised;
    biases and normalisation layers' 1-D scales and shifts never are (penalising them only
    shifts the decision function's offset). A model without such parameters gives 0.

    Returns:
        A 0-dim tensor attached to the graph (the parameters' dtype and device).
    """
    terms = [p.abs().sum() for p in _weights(model)]
    return torch.stack(terms).sum() if terms else _zero(model)


def l2_penalty(model: nn.Module) -> Tensor:
    """:math:`\\sum w^2` over the model's weight matrices and kernels only (no 1/2 factor).

    Like :func:`l1_penalty`, only parameters with ``ndim >= 2`` count: biases and
    normalisation layers' 1-D parameters are never penalised. A model without such
    parameters gives 0.

    Returns:
        A 0-dim tensor attached to the graph (the parameters' dtype and device).
    """
    terms = [p.square().sum() for p in _weights(model)]
    return torch.stack(terms).sum() if terms else _zero(model)


# --------------------------------------------------------------------------- registry

LossFactory = Callable[..., nn.Module]



def _factory_problem(obj: Any) -> str | None:
    """Why ``obj`` cannot be a hard-loss factory (None: it takes the built-in factories' arguments).

    A factory is called as ``factory(num_classes, weight=..., pos_weight=..., reduction=..., **hard_params)``
    and returns an ``nn.Module`` whose ``forward(logits [N, K], targets [N])`` gives ``[N]`` with
    ``reduction="none"``. Checked from the signature alone: nothing is called.
    """
    if inspect.isclass(obj) and not issubclass(obj, nn.Module):
        return f"names the class {obj.__qualname__}, which is neither an nn.Module subclass nor a loss factory"
    if not callable(obj):
        return f"names a {type(obj).__name__} value, not a loss factory"
    try:
        inspect.signature(obj).bind(2, weight=None, pos_weight=None, reduction="none")
    except TypeError as exc:
        return (f"does not take the hard-loss factory arguments (num_classes, *, weight=None, pos_weight=None, "
                f"reduction='mean', **params): {exc}")
    except ValueError:  # no signature to read (a builtin): it will be called and its result checked
        return None
    return None


#: Hard-loss factories for ``objective.hard``:
#: ``(num_classes, *, weight=None, pos_weight=None, reduction="mean", **params) -> nn.Module``.
HARD_LOSSES: Registry[LossFactory] = Registry("hard loss", group="distill.losses.hard", accepts=_factory_problem,
                                              reserved=("auto",))


def register_loss(name: str, factory: LossFactory | None = None) -> Any:
    """Register a hard-loss factory under ``name`` for ``objective.hard`` (twice is an error).

    The factory takes ``(num_classes, *, weight=None, pos_weight=None, reduction="mean", **params)``
    (``params``: ``objective.hard_params``) and returns an ``nn.Module`` called as
    ``loss(logits [N, K], targets [N])``. A decorator when ``factory`` is omitted.
    """
    return HARD_LOSSES.register_checked(name, factory, _factory_problem, "register_loss")

_PARAM_PREFIX = "objective.hard_params."


def _check_params(name: str, params: dict[str, Any], accepted: Sequence[str]) -> None:
    unknown = sorted(k for k in params if k not in accepted)
    if unknown:
        raise ValueError(
            f"unknown {'parameter' if len(unknown) == 1 else 'parameters'} for hard loss '{name}': "
            f"{', '.join(_PARAM_PREFIX + k for k in unknown)}; accepted: "
            f"{', '.join(_PARAM_PREFIX + k for k in accepted) or '(none)'}"
        )


def _check_num_classes(name: str, num_classes: int) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"hard loss '{name}' needs num_classes >= 2, got {num_classes!r}")


def _check_weight_len(name: str, weight: Tensor | None, num_classes: int) -> Tensor | None:
    w = _as_vector("weight", weight)
    if w is not None and w.shape[0] != num_classes:
        raise ValueError(f"hard loss '{name}': weight needs one entry per class ({num_classes}), got {w.shape[0]}")
    return w


def _no_pos_weight(name: str, pos_weight: Tensor | None) -> None:
    if pos_weight is not None:
        raise ValueError(
            f"hard loss '{name}' does not take pos_weight (it applies to one-logit bce / focal); "
            "use class weights"
        )


@HARD_LOSSES.register("ce")
def _make_ce(num_classes: int, *, weight: Tensor | None = None, pos_weight: Tensor | None = None,
             reduction: str = "mean", **params: Any) -> nn.Module:
    """Cross-entropy (:class:`CrossEntropyLoss`); params: ``label_smoothing``."""
    _check_num_classes("ce", num_classes)
    _check_params("ce", params, ("label_smoothing",))
    _no_pos_weight("ce", pos_weight)
    return CrossEntropyLoss(weight=_check_weight_len("ce", weight, num_classes), reduction=reduction,
                            label_smoothing=params.get("label_smoothing", 0.0))


@HARD_LOSSES.register("label_smoothing")
def _make_label_smoothing(num_classes: int, *, weight: Tensor | None = None,
                          pos_weight: Tensor | None = None, reduction: str = "mean",
                          **params: Any) -> nn.Module:
    """Label-smoothed cross-entropy; params: ``smoothing`` (default 0.1)."""
    _check_num_classes("label_smoothing", num_classes)
    _check_params("label_smoothing", params, ("smoothing",))
    _no_pos_weight("label_smoothing", pos_weight)
    return CrossEntropyLoss(weight=_check_weight_len("label_smoothing", weight, num_classes),
                            reduction=reduction, label_smoothing=params.get("smoothing", 0.1))


@HARD_LOSSES.register("bce")
def _make_bce(num_classes: int, *, weight: Tensor | None = None, pos_weight: Tensor | None = None,
              reduction: str = "mean", **params: Any) -> nn.Module:
    """Binary cross-entropy on one logit (:class:`BCEWithLogitsLoss`); takes ``pos_weight``."""
    if num_classes != 2:
        raise ValueError(f"hard loss 'bce' is binary and needs num_classes = 2, got {num_classes!r}")
    _check_params("bce", params, ())
    if weight is not None:
        raise ValueError("hard loss 'bce' (one logit) takes pos_weight, not per-class weight")
    return BCEWithLogitsLoss(pos_weight=pos_weight, reduction=reduction)


@HARD_LOSSES.register("focal")
def _make_focal(num_classes: int, *, weight: Tensor | None = None, pos_weight: Tensor | None = None,
                reduction: str = "mean", **params: Any) -> nn.Module:
    """Focal loss; params ``gamma``, ``alpha``. ``weight`` becomes ``alpha`` when ``alpha`` is not given.

    ``pos_weight`` (binary only) multiplies the positive class's alpha: the per-class alpha
    becomes ``[a_0, a_1 * pos_weight]`` (``[1, pos_weight]`` with no alpha, ``[1 - a, a *
    pos_weight]`` for a float ``a``).
    """
    _check_num_classes("focal", num_classes)
    _check_params("focal", params, ("gamma", "alpha"))
    alpha = params.get("alpha")
    if alpha is None and weight is not None:
        alpha = _check_weight_len("focal", weight, num_classes)
    elif alpha is not None and not _is_number(alpha):
        alpha = _as_vector("alpha", alpha)
        if alpha.shape[0] != num_classes:  # type: ignore[union-attr]
            raise ValueError(f"hard loss 'focal': alpha needs one entry per class ({num_classes}), "
                             f"got {alpha.shape[0]}")  # type: ignore[union-attr]
    if pos_weight is not None:
        if num_classes != 2:
            raise ValueError(f"hard loss 'focal' takes pos_weight only for a binary problem, got "
                             f"{num_classes} classes")
        pw = torch.as_tensor(pos_weight).detach().reshape(())
        if not pw.is_floating_point():
            pw = pw.to(torch.float64)
        if alpha is None:
            base = torch.ones(2, dtype=pw.dtype, device=pw.device)
        elif _is_number(alpha):
            a = _check_float("alpha", alpha, low=0.0, high=1.0)
            base = torch.tensor([1.0 - a, a], dtype=pw.dtype, device=pw.device)
        else:
            base = alpha.to(device=pw.device, dtype=pw.dtype)  # type: ignore[union-attr]
        alpha = base * torch.stack((torch.ones_like(pw), pw))
    return FocalLoss(gamma=params.get("gamma", 2.0), alpha=alpha, reduction=reduction)


@HARD_LOSSES.register("sce")
def _make_sce(num_classes: int, *, weight: Tensor | None = None, pos_weight: Tensor | None = None,
              reduction: str = "mean", **params: Any) -> nn.Module:
    """Symmetric cross-entropy; params ``alpha``, ``beta``, ``clamp``."""
    _check_num_classes("sce", num_classes)
    _check_params("sce", params, ("alpha", "beta", "clamp"))
    _no_pos_weight("sce", pos_weight)
    kwargs = {k: params[k] for k in ("alpha", "beta", "clamp") if k in params}
    return SymmetricCrossEntropyLoss(**kwargs, reduction=reduction,
                                     weight=_check_weight_len("sce", weight, num_classes))


def list_losses() -> list[str]:
    """The registered hard-loss names (built-in, registered in code, installed entry points), sorted."""
    return HARD_LOSSES.names()


def create_loss(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the hard loss ``name`` for ``num_classes`` classes.

    ``kwargs`` are ``weight``, ``pos_weight``, ``reduction`` and the loss's own parameters
    (``objective.hard_params``).

    Raises:
        ValueError: for an unknown name (listing the registered ones), unknown parameters
            (naming them and listing the accepted ones) or invalid values.
    """
    try:
        factory = HARD_LOSSES.get(name)
    except KeyError:
        raise ValueError(f"unknown hard loss {name!r}; registered: {', '.join(list_losses())}") from None
    loss = factory(num_classes, **kwargs)
    if not isinstance(loss, nn.Module):
        raise ValueError(f"hard loss '{name}' built a {type(loss).__name__}, not an nn.Module")
    return loss
