"""The L1 / L2 weight penalties (``objective.l1``, ``objective.l2``): one definition for one student
and for a stack of them.

For each member :math:`m` with flat weights :math:`w_m`,

.. math:: P_m = l_1 \\sum_j c_j |w_{mj}| + l_2 \\sum_j c_j w_{mj}^2

where :math:`c_j = 1` on weight matrices and kernels (parameters with ``ndim >= 2``: Linear / Conv
weights, embeddings) and 0 on biases and normalisation layers' 1-D scales and shifts, which are
never penalised (penalising them only shifts the decision function's offset). The L2 term has no
1/2 factor. L1 is the lasso penalty (Tibshirani 1996, "Regression Shrinkage and Selection via the
Lasso"); L2 the weight-decay penalty (Krogh and Hertz 1992, "A Simple Weight Decay Can Improve
Generalization"), here added to the loss rather than applied by the optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["penalty_mask", "penalised_weights", "weight_penalty"]


def _is_penalised(shape: Sequence[int]) -> bool:
    """Whether a parameter of this shape is penalised: weight matrices and kernels, not 1-D vectors."""
    return len(shape) >= 2


def penalty_mask(shapes: Sequence[Sequence[int]], *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The 0/1 coefficients :math:`c` ``[P]`` over parameters of these shapes laid out one after another."""
    parts = [torch.full((int(torch.Size(s).numel()),), float(_is_penalised(s)), dtype=dtype, device=device)
             for s in shapes]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=device)


def penalised_weights(model: nn.Module) -> Tensor:
    """The model's penalised parameters flattened into one ``[1, P]`` row (gradients flow back to them)."""
    weights = [p.reshape(1, -1) for p in model.parameters() if _is_penalised(p.shape)]
    if weights:
        return torch.cat(weights, dim=1)
    first = next(iter(model.parameters()), None)
    return torch.zeros((1, 0)) if first is None else first.new_zeros((1, 0))


def l1_penalty(weights: Tensor, mask: Tensor | None = None) -> Tensor:
    """:math:`\\sum_j c_j |w_{mj}|` per member: ``weights`` ``[M, P]``, ``mask`` :math:`c` ``[P]`` (None: all 1)."""
    magnitudes = weights.abs()
    return (magnitudes if mask is None else magnitudes * mask).sum(1)


def l2_penalty(weights: Tensor, mask: Tensor | None = None) -> Tensor:
    """:math:`\\sum_j c_j w_{mj}^2` per member (no 1/2 factor): ``weights`` ``[M, P]``, ``mask`` ``[P]`` or None."""
    squares = weights.square()
    return (squares if mask is None else squares * mask).sum(1)


def weight_penalty(weights: Tensor, l1: float, l2: float, mask: Tensor | None = None) -> Tensor:
    """:math:`P_m = l_1 \\sum_j c_j |w_{mj}| + l_2 \\sum_j c_j w_{mj}^2` per member ``[M]``.

    ``weights`` ``[M, P]`` are M members' flat parameters, ``mask`` the coefficients :math:`c` ``[P]``
    (:func:`penalty_mask`; None when ``weights`` holds only penalised entries, as from
    :func:`penalised_weights`). A term whose coefficient is 0 is not computed.
    """
    total = weights.new_zeros(weights.shape[0])
    if l1 > 0:
        total = total + l1 * l1_penalty(weights, mask)
    if l2 > 0:
        total = total + l2 * l2_penalty(weights, mask)
    return total
