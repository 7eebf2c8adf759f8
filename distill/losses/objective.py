"""The distillation objective: a supervised (hard) term plus a tempered KL term.

The loss a student minimises is

.. math::

    L = H(y, s) + w \\, T^2 \\, \\mathrm{KL}_T

where ``H`` is the cross-entropy of the student against the hard labels (averaged over
the labelled rows only), ``w`` is ``kl_weight``, ``T`` is the temperature and
``KL_T`` is the KL divergence between the teacher's and the student's tempered
distributions (averaged over all rows). The :math:`T^2` factor follows Hinton, Vinyals
and Dean (2015), "Distilling the Knowledge in a Neural Network": the gradient of the
tempered KL scales as :math:`1/T^2`, so multiplying by :math:`T^2` keeps the relative
contribution of the soft and hard terms roughly unchanged when ``T`` is varied.

Two kinds of student are supported:

* **binary** -- one output logit per row, shape ``[N]`` or ``[N, 1]``. The hard term is
  binary cross-entropy with logits and the KL is between Bernoulli distributions. The
  teacher may give one logit (``[N]`` / ``[N, 1]``) or two columns of logits or
  log-probabilities (``[N, 2]``), which are reduced to the equivalent class-1 logit
  ``t[:, 1] - t[:, 0]`` (``softmax(t / T)`` equals ``sigmoid((t1 - t0) / T)``).
* **multiclass** -- ``[N, C]`` logits with ``C >= 2`` (a two-output student is
  multiclass, not binary). The hard term is cross-entropy and the KL is categorical;
  the teacher must be ``[N, C]`` too.

Everything is computed in log-space (``log_softmax`` / ``logsigmoid``), so the value and
the gradients are finite for any finite logits, and nothing calls ``.item()`` or
otherwise synchronises with the device.

Where each part of the loss is defined (the answer to "where is the loss?"):

* the step loss a student trains with is
  :math:`L + \\lambda_m L_\\mathrm{metric} + l_1 \\sum |w| + l_2 \\sum w^2`: :func:`distillation_loss`
  (here; :func:`hard_loss` + :func:`kl_divergence`, or a configured hard term through
  :class:`HardCriterion` built from ``distill.losses.hard``), :func:`metric_loss` (here, with the
  modules of ``distill.losses.metric``) and ``distill.losses.penalties.weight_penalty``;
* ``distill.losses.fused.MemberObjective`` is the same :func:`distillation_loss`, precomputed and in
  closed form for the engine's stacked fits; tests/test_member_objective.py checks it against the
  functions here in float64;
* the validation loss (``val_loss``, a tuning trial's ``loss``, the held-out log-loss of KD
  selection) is :func:`validation_loss`, the per-row term of :func:`hard_loss` on labelled rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.conventions import is_number
from distill.losses.metric import MarginRankingLoss, TripletMarginLoss

__all__ = [
    "distillation_loss",
    "hard_loss",
    "kl_divergence",
    "HardCriterion",
    "metric_loss",
    "validation_loss",
    "DIRECTIONS",
]

#: The accepted values of ``direction``.
DIRECTIONS: tuple[str, ...] = ("forward", "reverse")

Direction = Literal["forward", "reverse"]


# --------------------------------------------------------------------------- validation


def _check_temperature(temperature: float | Tensor) -> None:
    if is_number(temperature):
        t = float(temperature)
        if not (t > 0):
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not math.isfinite(t):
            raise ValueError(f"temperature must be finite, got {temperature!r}")
    elif not isinstance(temperature, Tensor):
        raise TypeError(
            f"temperature must be a number or a tensor, got {type(temperature).__name__}"
        )


def _check_kl_weight(kl_weight: float | Tensor) -> None:
    if is_number(kl_weight):
        w = float(kl_weight)
        if not (w >= 0):
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight!r}")
        if not math.isfinite(w):
            raise ValueError(f"kl_weight must be finite, got {kl_weight!r}")
    elif not isinstance(kl_weight, Tensor):
        raise TypeError(f"kl_weight must be a number or a tensor, got {type(kl_weight).__name__}")


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(
            f"direction must be one of {', '.join(repr(d) for d in DIRECTIONS)}, got {direction!r}"
        )


def _is_binary(student_logits: Tensor) -> bool:
    """Classify the student: one output logit is binary, ``[N, C>=2]`` is multiclass."""
    if student_logits.ndim == 1:
        return True
    if student_logits.ndim == 2:
        if student_logits.shape[1] == 1:
            return True
        if student_logits.shape[1] >= 2:
            return False
    raise ValueError(
        "student_logits must have shape [N] or [N, 1] (binary) or [N, C] with C >= 2 "
        f"(multiclass), got {tuple(student_logits.shape)}"
    )


def _binary_teacher_logit(teacher_logits: Tensor, n: int) -> Tensor:
    """Reduce a binary teacher (``[N]``, ``[N, 1]`` or ``[N, 2]``) to one class-1 logit ``[N]``."""
    shape = tuple(teacher_logits.shape)
    if teacher_logits.ndim == 1 and shape[0] == n:
        return teacher_logits
    if teacher_logits.ndim == 2 and shape[0] == n and shape[1] == 1:
        return teacher_logits[:, 0]
    if teacher_logits.ndim == 2 and shape[0] == n and shape[1] == 2:
        # softmax(t / T)[1] == sigmoid((t1 - t0) / T) for logits and log-probabilities alike.
        return teacher_logits[:, 1] - teacher_logits[:, 0]
    raise ValueError(
        f"for a binary student with {n} rows, teacher_logits must have shape [{n}], [{n}, 1] "
        f"or [{n}, 2], got {shape}"
    )


def _check_multiclass_teacher(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if tuple(teacher_logits.shape) != tuple(student_logits.shape):
        raise ValueError(
            "for a multiclass student, teacher_logits must have the student's shape "
            f"{tuple(student_logits.shape)}, got {tuple(teacher_logits.shape)}"
        )


def _labelled_mask(mask: Tensor | None, n: int, device: torch.device) -> Tensor | None:
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise ValueError(f"labelled_mask must be a bool tensor, got dtype {mask.dtype}")
    if mask.ndim != 1 or mask.shape[0] != n:
        raise ValueError(f"labelled_mask must have shape [{n}], got {tuple(mask.shape)}")
    return mask.to(device)


def _row_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """The hard loss of each row: BCE with logits when the class axis has one logit, cross-entropy otherwise.

    ``logits`` ``[..., N, K]``, ``targets`` ``[..., N]`` (0/1 for ``K = 1``, class indices for ``K >= 2``);
    the result is ``[..., N]``. The one place the per-row formula of :func:`hard_loss` is written.
    """
    if logits.shape[-1] == 1:
        return F.binary_cross_entropy_with_logits(logits[..., 0], targets.to(logits.dtype), reduction="none")
    k = logits.shape[-1]
    per_row = F.cross_entropy(logits.reshape(-1, k), targets.reshape(-1).long(), reduction="none")
    return per_row.view(targets.shape)


# --------------------------------------------------------------------------- public API


def hard_loss(
    student_logits: Tensor,
    targets: Tensor | None,
    labelled_mask: Tensor | None = None,
) -> Tensor:
    """Supervised loss of the student against hard labels, averaged over the labelled rows.

    For a binary student (one logit ``z`` per row, shape ``[N]`` or ``[N, 1]``) this is the
    binary cross-entropy with logits
    :math:`-[y \\log\\sigma(z) + (1-y)\\log\\sigma(-z)]`; for a multiclass student
    (``[N, C]``, ``C >= 2``) it is the cross-entropy :math:`-\\log\\mathrm{softmax}(z)_y`.
    The per-row losses are averaged over the rows where ``labelled_mask`` is True:

    .. math:: H = \\frac{\\sum_i m_i \\ell_i}{\\max(1, \\sum_i m_i)}

    Rows outside the mask may carry any target (e.g. ``-1``); they are replaced by a valid
    class before the loss is computed and contribute neither to the value nor to the
    gradient. With no labelled row (all-False mask, or ``targets=None``) the result is 0.

    Args:
        student_logits: ``[N]`` / ``[N, 1]`` (binary) or ``[N, C]`` (multiclass) logits.
        targets: ``[N]`` (or ``[N, 1]``) labels: 0/1 of any int or float dtype for a binary
            student, class indices in ``[0, C)`` for a multiclass one. ``None`` means no row
            is labelled.
        labelled_mask: bool ``[N]``; ``None`` means every row is labelled.

    Returns:
        A 0-dim tensor in ``student_logits``' dtype, attached to the autograd graph.

    Raises:
        ValueError: on inconsistent shapes or a non-bool mask.
    """
    binary = _is_binary(student_logits)
    n = student_logits.shape[0]
    if targets is None:
        # An empty slice keeps the zero attached to the graph (its gradient is 0, never NaN).
        return student_logits.narrow(0, 0, 0).sum()

    if targets.ndim == 2 and targets.shape[1] == 1:
        targets = targets[:, 0]
    if targets.ndim != 1 or targets.shape[0] != n:
        raise ValueError(f"targets must have shape [{n}], got {tuple(targets.shape)}")
    targets = targets.to(student_logits.device)
    mask = _labelled_mask(labelled_mask, n, student_logits.device)

    logits = student_logits.reshape(n, 1) if binary else student_logits
    y = targets.to(logits.dtype) if binary else targets.long()
    if mask is not None:
        y = torch.where(mask, y, torch.zeros_like(y))
    per_row = _row_losses(logits, y)

    if mask is None:
        return per_row.mean()
    total = torch.where(mask, per_row, torch.zeros_like(per_row)).sum()
    count = mask.sum().clamp(min=1).to(per_row.dtype)
    return total / count



def validation_loss(logits: Tensor, targets: Tensor, *, reduction: Literal["mean", "none"] = "mean") -> Tensor:
    """The hard loss on fully labelled held-out rows: what ``val_loss``, a tuning trial's ``loss`` and
    cross-validated KD selection minimise.

    The per-row term is :func:`hard_loss`'s (every row labelled, no configured criterion): for a
    one-logit student :math:`\\ell_i = -[y_i \\log\\sigma(z_i) + (1-y_i)\\log\\sigma(-z_i)]`, for ``K >= 2``
    outputs :math:`\\ell_i = -\\log\\mathrm{softmax}(z_i)_{y_i}`; ``"mean"`` gives
    :math:`\\frac{1}{N}\\sum_i \\ell_i` (the log-loss), ``"none"`` the :math:`\\ell_i`.

    Args:
        logits: ``[..., N, K]`` outputs (``K = 1``: one binary logit), or ``[..., N]`` one binary logit
            per row without the class axis (told apart by ``targets`` having the same shape). Leading
            axes are kept: ``[M, N, K]`` for M stacked students gives one loss per student.
        targets: ``[..., N]`` labels, 0/1 or class indices.
        reduction: ``"mean"`` over the rows, or ``"none"``.

    Returns:
        ``[...]`` (``"mean"``) or ``[..., N]`` (``"none"``), in ``logits``' dtype.

    Raises:
        ValueError: when ``targets`` is not ``logits``' shape without its class axis, or an unknown reduction.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if logits.shape == targets.shape:
        logits = logits.unsqueeze(-1)
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"targets must have the logits' shape without the class axis, {tuple(logits.shape[:-1])}, "
                         f"got {tuple(targets.shape)}")
    per_row = _row_losses(logits, targets.to(logits.device))
    return per_row if reduction == "none" else per_row.mean(-1)


def kl_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float | Tensor = 1.0,
    direction: Direction = "forward",
) -> Tensor:
    """Mean over rows of the KL divergence between tempered teacher and student distributions.

    With :math:`p = \\mathrm{softmax}(t / T)` (teacher) and
    :math:`q = \\mathrm{softmax}(s / T)` (student), per row

    * ``direction="forward"``: :math:`\\mathrm{KL}(p \\| q) = \\sum_c p_c(\\log p_c - \\log q_c)`
      (the choice of Hinton et al., 2015);
    * ``direction="reverse"``: :math:`\\mathrm{KL}(q \\| p) = \\sum_c q_c(\\log q_c - \\log p_c)`.

    For a binary student (one logit) the distributions are Bernoulli,
    :math:`q = \\sigma(z / T)`, and the teacher may be one logit or an ``[N, 2]`` array of
    logits / log-probabilities (reduced to the class-1 logit ``t1 - t0``). The log
    probabilities come from ``log_softmax`` / ``logsigmoid`` and the probabilities from
    ``exp`` of those, so the result is finite for any finite logits and a zero probability
    contributes exactly 0 (no ``0 * log 0``). The result is not multiplied by :math:`T^2`;
    :func:`distillation_loss` does that.

    Args:
        student_logits: ``[N]`` / ``[N, 1]`` (binary) or ``[N, C]`` (multiclass) logits.
        teacher_logits: ``[N]``, ``[N, 1]`` or ``[N, 2]`` for a binary student, ``[N, C]``
            for a multiclass one. Gradients flow into it if it requires them; detach it
            beforehand for a fixed teacher.
        temperature: ``T > 0``, a Python number or a 0-dim (broadcastable) tensor.
        direction: ``"forward"`` or ``"reverse"``.

    Returns:
        A 0-dim tensor: the per-row KL summed over classes, averaged over the N rows.

    Raises:
        ValueError: on a non-positive temperature, an unknown direction or mismatched shapes.
    """
    _check_temperature(temperature)
    _check_direction(direction)
    binary = _is_binary(student_logits)
    n = student_logits.shape[0]
    teacher_logits = teacher_logits.to(device=student_logits.device, dtype=student_logits.dtype)

    if binary:
        z = student_logits.reshape(n) / temperature
        a = _binary_teacher_logit(teacher_logits, n) / temperature
        # log sigma(-x), log sigma(x) as the two "classes" 0 and 1.
        log_q = torch.stack((F.logsigmoid(-z), F.logsigmoid(z)), dim=-1)
        log_p = torch.stack((F.logsigmoid(-a), F.logsigmoid(a)), dim=-1)
    else:
        _check_multiclass_teacher(student_logits, teacher_logits)
        log_q = F.log_softmax(student_logits / temperature, dim=-1)
        log_p = F.log_softmax(teacher_logits / temperature, dim=-1)

    if direction == "reverse":
        log_p, log_q = log_q, log_p
    # KL(p || q) = sum_c p_c (log p_c - log q_c); a zero p_c contributes exactly 0.
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=-1).mean()


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor | None,
    *,
    kl_weight: float | Tensor,
    temperature: float | Tensor = 1.0,
    direction: Direction = "forward",
    labelled_mask: Tensor | None = None,
    criterion: Callable[[Tensor, Tensor, Tensor | None], Tensor] | None = None,
) -> Tensor:
    """The knowledge-distillation loss ``hard + kl_weight * T**2 * KL``.

    .. math:: L = H(y, s) + w \\, T^2 \\, \\mathrm{KL}_T(\\cdot)

    ``H`` is :func:`hard_loss` (BCE for a one-logit student, cross-entropy for ``[N, C]``),
    averaged over the labelled rows; ``KL_T`` is :func:`kl_divergence` at temperature ``T``
    in the given ``direction``, averaged over all rows. The :math:`T^2` factor is from
    Hinton, Vinyals and Dean (2015), "Distilling the Knowledge in a Neural Network": the
    soft-target gradients scale as :math:`1/T^2`, so this keeps the balance between the two
    terms roughly independent of ``T``.

    Args:
        student_logits: ``[N]`` / ``[N, 1]`` (binary) or ``[N, C]``, ``C >= 2`` (multiclass).
            A two-output student is multiclass.
        teacher_logits: for a binary student ``[N]`` / ``[N, 1]`` (one logit) or ``[N, 2]``
            (logits or log-probabilities, used as the class-1 logit ``t1 - t0``); for a
            multiclass student ``[N, C]``.
        targets: hard labels ``[N]``, or ``None`` when no row is labelled.
        kl_weight: ``w >= 0``, a Python number or a 0-dim (broadcastable) tensor. When it is
            the Python number 0 the KL is not computed and the result is the hard term.
        temperature: ``T > 0``, a Python number or a 0-dim (broadcastable) tensor.
        direction: ``"forward"`` for KL(teacher || student), ``"reverse"`` for
            KL(student || teacher).
        criterion: a configured hard term (``HardCriterion``); None is BCE / CE as above.
        labelled_mask: bool ``[N]``; rows where it is False do not enter the hard term
            (their targets may be anything, e.g. ``-1``). ``None`` means all rows labelled.

    Returns:
        A 0-dim tensor in ``student_logits``' dtype.

    Raises:
        ValueError: ``kl_weight < 0``, ``temperature <= 0`` (checked for Python numbers
            only, to avoid a device sync), an unknown ``direction`` or mismatched shapes.
    """
    _check_kl_weight(kl_weight)
    _check_temperature(temperature)
    _check_direction(direction)

    if criterion is not None and targets is not None:
        hard = criterion(student_logits, targets, labelled_mask)  # a configured hard loss (focal, sce, ...)
    else:
        hard = hard_loss(student_logits, targets, labelled_mask)
    if is_number(kl_weight) and float(kl_weight) == 0.0:
        # Still validate the teacher's shape so a wrong teacher fails the same way at w = 0.
        if _is_binary(student_logits):
            _binary_teacher_logit(teacher_logits, student_logits.shape[0])
        else:
            _check_multiclass_teacher(student_logits, teacher_logits)
        return hard
    if not isinstance(kl_weight, Tensor):
        kl = kl_divergence(student_logits, teacher_logits, temperature=temperature, direction=direction)
        return hard + kl_weight * temperature**2 * kl
    # A tensor w = 0 selects the hard term, never 0 * KL (inf or NaN at an extreme temperature), and its
    # KL sees zeros, so no inf or NaN reaches the gradient either (where routes it, 0 * it would not).
    on = kl_weight > 0
    kl = kl_divergence(torch.where(on, student_logits, torch.zeros_like(student_logits)),
                       torch.where(on, teacher_logits, torch.zeros_like(teacher_logits)),
                       temperature=temperature, direction=direction)
    return torch.where(on, hard + kl_weight * temperature**2 * kl, hard)


class HardCriterion:
    """A configurable hard term: a per-row loss module (``reduction="none"``) averaged over labelled rows.

    .. math:: H = \\frac{\\sum_i m_i \\ell_i}{\\sum_i m_i v_{y_i}}

    with :math:`\\ell_i` the module's per-row loss (focal, symmetric CE, label smoothing ...: their
    formulas and papers are in ``distill.losses.hard``), :math:`m_i` the labelled mask and
    :math:`v` the class weights ``mean_weight`` (all 1 without): PyTorch's weighted-mean
    convention. Rows outside the mask contribute nothing, to the value or the gradient; a zero
    denominator gives 0.
    """

    def __init__(self, loss: torch.nn.Module, mean_weight: Tensor | None = None) -> None:
        self.loss = loss
        self.mean_weight = mean_weight

    def __call__(self, student_logits: Tensor, targets: Tensor, labelled_mask: Tensor | None = None) -> Tensor:
        n = student_logits.shape[0]
        mask = _labelled_mask(labelled_mask, n, student_logits.device)
        y = targets.reshape(n).to(student_logits.device).long()
        if mask is not None:
            y = torch.where(mask, y, torch.zeros_like(y))
        if _is_binary(student_logits):
            per_row = self.loss(student_logits.reshape(n), y.to(student_logits.dtype))
        else:
            per_row = self.loss(student_logits, y)
        per_row = per_row.reshape(n)
        weights = self.mean_weight.to(per_row)[y] if self.mean_weight is not None else torch.ones_like(per_row)
        if mask is not None:
            per_row = torch.where(mask, per_row, torch.zeros_like(per_row))
            weights = torch.where(mask, weights, torch.zeros_like(weights))
        denominator = weights.sum()
        return per_row.sum() / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def metric_loss(
    embeddings: Tensor,
    targets: Tensor,
    labelled_mask: Tensor,
    *,
    kind: Literal["triplet", "margin_ranking"],
    margin: float = 1.0,
) -> Tensor:
    """A metric-learning term over the labelled rows of a batch, mined inside the batch.

    With :math:`d` the Euclidean distance between embeddings and :math:`\\mu` the margin:

    * ``triplet``: batch-hard mining (Hermans, Beyer and Leibe 2017, "In Defense of the Triplet Loss
      for Person Re-Identification"): for each labelled anchor :math:`a` with a positive and a
      negative, :math:`\\max(0, \\max_p d(a, p) - \\min_n d(a, n) + \\mu)`, averaged over those
      anchors (through ``distill.losses.metric.TripletMarginLoss``, which adds its ``eps`` to the
      differences);
    * ``margin_ranking``: every valid (anchor, positive, negative) triple,
      :math:`\\max(0, d(a, p) - d(a, n) + \\mu)` averaged over the triples (through
      ``distill.losses.metric.MarginRankingLoss``, ranking :math:`d(a, n)` above :math:`d(a, p)`).

    A positive is another labelled row of the anchor's class, a negative a labelled row of another
    class. Anchors without a positive or a negative are skipped; no valid triple gives 0. No host
    synchronisation (masks, not boolean indexing).
    """
    e = embeddings.reshape(embeddings.shape[0], -1)
    n = e.shape[0]
    y = targets.reshape(n).long()
    m = labelled_mask.reshape(n)
    both = m[:, None] & m[None, :]
    same = (y[:, None] == y[None, :]) & both & ~torch.eye(n, dtype=torch.bool, device=e.device)
    diff = (y[:, None] != y[None, :]) & both
    d = torch.cdist(e, e)
    if kind == "triplet":
        pos = torch.where(same, d, torch.full_like(d, -1.0)).argmax(1)
        neg = torch.where(diff, d, torch.full_like(d, float("inf"))).argmin(1)
        valid = m & same.any(1) & diff.any(1)
        per_anchor = TripletMarginLoss(margin=margin, reduction="none")(e, e[pos], e[neg])
        per_anchor = torch.where(valid, per_anchor, torch.zeros_like(per_anchor))
        return per_anchor.sum() / valid.sum().clamp(min=1).to(per_anchor.dtype)
    triples = same[:, :, None] & diff[:, None, :]  # [a, p, n]
    x1 = d[:, None, :].expand(n, n, n)  # d(a, n)
    x2 = d[:, :, None].expand(n, n, n)  # d(a, p)
    per_triple = MarginRankingLoss(margin=margin, reduction="none")(
        x1.reshape(-1), x2.reshape(-1), torch.ones(n * n * n, dtype=e.dtype, device=e.device)
    ).reshape(n, n, n)
    per_triple = torch.where(triples, per_triple, torch.zeros_like(per_triple))
    return per_triple.sum() / triples.sum().clamp(min=1).to(per_triple.dtype)
