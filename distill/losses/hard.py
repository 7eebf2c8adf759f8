"""The hard (supervised) term's loss modules and the registry ``objective.hard`` selects from.

Every loss is an :class:`torch.nn.Module` that follows PyTorch's conventions: ``forward``
takes the input (logits) first and the target second, and ``reduction`` is ``"mean"``,
``"sum"`` or ``"none"`` (``"none"`` returns one value per row, ``[N]``). Class weights follow
PyTorch's weighted-mean convention: with ``weight`` set, ``"mean"`` divides the sum of the
weighted per-row losses by the sum of the targets' weights :math:`\\sum_i w_{y_i}`, exactly like
:class:`torch.nn.CrossEntropyLoss` (the exceptions -- BCE's per-row ``weight`` and the focal
loss's ``alpha`` -- are stated where they occur).

Everything is computed in log-space (log-sum-exp, ``logsigmoid``), never as the log of a
probability that can underflow, so values and gradients are finite for logits of any
magnitude (tested at :math:`\\pm 1000`). Nothing calls ``.item()`` inside ``forward``.

The hard losses selectable in a config (``objective.hard``) are in :data:`HARD_LOSSES`;
:func:`create_loss` builds one and checks its ``objective.hard_params``. More come from
:func:`register_loss` in code and from installed packages' entry points in group ``distill.losses.hard``.

Public or oracle: this module is the public hard-loss library, the four modules the registered names
build (``ce`` / ``label_smoothing``: :class:`CrossEntropyLoss`, ``bce``: :class:`BCEWithLogitsLoss`,
``focal``: :class:`FocalLoss`, ``sce``: :class:`SymmetricCrossEntropyLoss`). Reference implementations
the package never runs (the NumPy cross-entropy, an ``nn.KLDivLoss`` re-implementation) are the tests'
oracles, in tests/oracles.py. The metric-learning modules are in ``distill.losses.metric``, the L1 / L2
penalties in ``distill.losses.penalties``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.losses.conventions import as_vector, check_float, check_reduction, is_number, reduce_rows
from distill.losses.registry import HARD_LOSSES, list_losses, register_loss

__all__ = [
    "CrossEntropyLoss",
    "BCEWithLogitsLoss",
    "FocalLoss",
    "SymmetricCrossEntropyLoss",
    "HARD_LOSSES",
    "list_losses",
    "create_loss",
    "register_loss",
]


# --------------------------------------------------------------------------- helpers


def _check_logits_2d(input: Tensor, target: Tensor, who: str) -> None:
    if input.ndim != 2 or input.shape[1] < 1:
        raise ValueError(f"{who} takes input logits of shape [N, C], got {tuple(input.shape)}")
    if target.ndim != 1 or target.shape[0] != input.shape[0]:
        raise ValueError(
            f"{who} takes target class indices of shape [{input.shape[0]}], got {tuple(target.shape)}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"{who} takes integer class indices as target, got dtype {target.dtype}")


def _weighted_log_probs(who: str, weight: Tensor | None, input: Tensor,
                        target: Tensor) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Checked inputs of a class-weighted loss: long targets, class weights, log-softmax and per-row NLL."""
    _check_logits_2d(input, target, who)
    target = target.to(device=input.device, dtype=torch.long)
    weight = None if weight is None else _class_weight(weight, input, who)
    log_p = _log_softmax(input)
    return target, weight, log_p, -log_p.gather(1, target[:, None])[:, 0]


def _class_weight(weight: Tensor, input: Tensor, who: str) -> Tensor:
    """``weight`` ``[C]`` in the input's dtype and device, checked against its C classes."""
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
        self.reduction = check_reduction(reduction)
        self.label_smoothing = check_float("label_smoothing", label_smoothing, low=0.0, high=1.0)
        self.register_buffer("weight", as_vector("weight", weight))
        self.weight: Tensor | None

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        target, weight, log_p, nll = _weighted_log_probs(type(self).__name__, self.weight, input, target)
        w_y = weight[target] if weight is not None else None
        per_row = nll if w_y is None else w_y * nll
        eps = self.label_smoothing
        if eps > 0.0:
            smooth = -(log_p if weight is None else log_p * weight).sum(dim=1)
            per_row = (1.0 - eps) * per_row + (eps / input.shape[1]) * smooth
        return reduce_rows(per_row, self.reduction, None if w_y is None else w_y.sum())


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
        self.reduction = check_reduction(reduction)
        if pos_weight is not None and not isinstance(pos_weight, Tensor):
            pos_weight = torch.tensor(check_float("pos_weight", pos_weight, low=0.0), dtype=torch.float64)
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
        return reduce_rows(per_row, self.reduction)




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
        self.gamma = check_float("gamma", gamma, low=0.0)
        self.reduction = check_reduction(reduction)
        self.alpha_scalar: float | None = None
        alpha_vector = None
        if alpha is not None and is_number(alpha):
            self.alpha_scalar = check_float("alpha", alpha, low=0.0, high=1.0)
        elif isinstance(alpha, (str, bytes)):
            raise TypeError(f"alpha must be a float or per-class weights, got {alpha!r}")
        elif alpha is not None:
            alpha_vector = as_vector("alpha", alpha)
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
        return reduce_rows(per_row, self.reduction)

    def _binary(self, input: Tensor, target: Tensor) -> Tensor:
        x, y = _binary_shapes(input, target, type(self).__name__)
        log_sig, log_sig_neg = F.logsigmoid(x), F.logsigmoid(-x)
        ce = -(y * log_sig + (1.0 - y) * log_sig_neg)
        # log(1 - p_t) = log(y sigma(-x) + (1 - y) sigma(x)); log(0) = -inf drops a term.
        log_one_minus_pt = torch.logaddexp(torch.log(y) + log_sig_neg, torch.log1p(-y) + log_sig)
        per_row = self._modulate(log_one_minus_pt) * ce
        if self.alpha_scalar is not None:
            a_pos = self.alpha_scalar
            per_row = (a_pos * y + (1.0 - a_pos) * (1.0 - y)) * per_row
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
            per_row = alpha[target] * per_row
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
        self.alpha = check_float("alpha", alpha, low=0.0)
        self.beta = check_float("beta", beta, low=0.0)
        self.clamp = check_float("clamp", clamp, low=0.0, high=1.0, low_open=True)
        self.reduction = check_reduction(reduction)
        self.register_buffer("weight", as_vector("weight", weight))
        self.weight: Tensor | None

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        target, weight, log_p, ce = _weighted_log_probs(type(self).__name__, self.weight, input, target)
        one_minus_py = torch.exp(_log_one_minus_p_target(log_p, target))
        rce = -math.log(self.clamp) * one_minus_py
        per_row = self.alpha * ce + self.beta * rce
        if weight is None:
            return reduce_rows(per_row, self.reduction)
        w_y = weight[target]
        return reduce_rows(w_y * per_row, self.reduction, w_y.sum())




# --------------------------------------------------------------------------- registry
# HARD_LOSSES, register_loss and list_losses live in distill.losses.registry (torch-free: config
# validation and ``distill list`` read the names without importing torch); the built-ins register below.

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
    w = as_vector("weight", weight)
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


def _focal_alpha(num_classes: int, alpha: object, weight: Tensor | None,
                 pos_weight: Tensor | None) -> float | Tensor | None:
    """The focal loss's alpha: ``objective.hard_params.alpha``, else the class weights; ``pos_weight``
    multiplies the positive class's entry (``[1, pos_weight]`` with neither, ``[1 - a, a * pos_weight]``
    for a float ``a``)."""
    chosen: float | Tensor | None
    if alpha is None:
        chosen = _check_weight_len("focal", weight, num_classes)
    elif is_number(alpha):
        chosen = check_float("alpha", alpha, low=0.0, high=1.0)
    else:
        chosen = as_vector("alpha", alpha)
        if chosen is not None and chosen.shape[0] != num_classes:
            raise ValueError(f"hard loss 'focal': alpha needs one entry per class ({num_classes}), "
                             f"got {chosen.shape[0]}")
    if pos_weight is None:
        return chosen
    if num_classes != 2:
        raise ValueError(f"hard loss 'focal' takes pos_weight only for a binary problem, got "
                         f"{num_classes} classes")
    pw = torch.as_tensor(pos_weight).detach().reshape(())
    if not pw.is_floating_point():
        pw = pw.to(torch.float64)
    if chosen is None:
        base = torch.ones(2, dtype=pw.dtype, device=pw.device)
    elif isinstance(chosen, float):
        base = torch.tensor([1.0 - chosen, chosen], dtype=pw.dtype, device=pw.device)
    else:
        base = chosen.to(device=pw.device, dtype=pw.dtype)
    return base * torch.stack((torch.ones_like(pw), pw))


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
    alpha = _focal_alpha(num_classes, params.get("alpha"), weight, pos_weight)
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
