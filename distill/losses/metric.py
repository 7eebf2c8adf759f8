"""The metric-learning term's loss modules (``objective.metric_loss``), PyTorch's semantics.

``distill.losses.objective.metric_loss`` mines the (anchor, positive, negative) triples inside a
batch and scores them with these: ``margin_ranking`` with :class:`MarginRankingLoss`, ``triplet`` with
:class:`TripletMarginLoss`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.losses.conventions import check_float, check_reduction, reduce_rows

__all__ = ["MarginRankingLoss", "TripletMarginLoss"]


class MarginRankingLoss(nn.Module):
    """Margin ranking loss, as ``torch.nn.MarginRankingLoss`` (see its documentation).

    .. math:: \\ell = \\max(0,\\; -y\\,(x_1 - x_2) + \\mathrm{margin})

    with :math:`y = 1` when :math:`x_1` should rank higher and :math:`y = -1` otherwise: the
    large-margin ranking hinge of Herbrich, Graepel and Obermayer (2000), "Large Margin Rank
    Boundaries for Ordinal Regression". ``"none"`` is elementwise, ``"mean"`` the mean over all elements.

    Args:
        margin: the margin.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(self, margin: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        self.margin = check_float("margin", margin)
        self.reduction = check_reduction(reduction)

    def forward(self, input1: Tensor, input2: Tensor, target: Tensor) -> Tensor:
        if not (input1.shape == input2.shape == target.shape):
            raise ValueError(
                "MarginRankingLoss: input1, input2 and target must have the same shape, got "
                f"{tuple(input1.shape)}, {tuple(input2.shape)} and {tuple(target.shape)}"
            )
        y = target.to(device=input1.device, dtype=input1.dtype)
        return reduce_rows(torch.clamp_min(-y * (input1 - input2) + self.margin, 0.0), self.reduction)


class TripletMarginLoss(nn.Module):
    """Triplet margin loss, as ``torch.nn.TripletMarginLoss`` (see its documentation).

    .. math::

        \\ell_i = \\max(0,\\; d(a_i, p_i) - d(a_i, n_i) + \\mathrm{margin}), \\qquad
        d(u, v) = \\lVert u - v + \\epsilon \\rVert_p

    (Schroff, Kalenichenko and Philbin 2015, "FaceNet: A Unified Embedding for Face Recognition and
    Clustering"), with ``eps`` added to the difference, as ``torch.nn.functional.pairwise_distance`` does.
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
        self.margin = check_float("margin", margin)
        self.p = check_float("p", p, low=0.0, low_open=True)
        self.eps = check_float("eps", eps, low=0.0)
        self.swap = bool(swap)
        self.reduction = check_reduction(reduction)

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
        return reduce_rows(torch.clamp_min(d_pos - d_neg + self.margin, 0.0), self.reduction)
