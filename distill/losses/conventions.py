"""PyTorch's loss conventions, shared by every loss module of ``distill.losses``.

A loss module takes ``reduction`` in ``"mean"``, ``"sum"`` or ``"none"`` and checks its numeric
arguments when it is built; these are the one copy of those checks and of the reduction itself.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["is_number", "check_reduction", "check_float", "as_vector", "reduce_rows"]

#: The reductions every loss module accepts.
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


def is_number(x: object) -> bool:
    """True for Python / NumPy real scalars (not tensors, not bools)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_reduction(reduction: str, allowed: Sequence[str] = REDUCTIONS) -> str:
    """``reduction`` itself when it is one of ``allowed``; a ValueError naming them otherwise."""
    if reduction not in allowed:
        raise ValueError(
            f"reduction must be one of {', '.join(repr(r) for r in allowed)}, got {reduction!r}"
        )
    return reduction


def check_float(name: str, value: object, *, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (v <= low if low_open else v < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")
    return v


def as_vector(name: str, value: object) -> Tensor | None:
    """A detached 1-D floating tensor from a tensor (kept on its device) or a sequence / array (float64 on
    the CPU, exactly); None stays None."""
    if value is None:
        return None
    t = value if isinstance(value, Tensor) else torch.as_tensor(value, dtype=torch.float64)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.ndim != 1:
        raise ValueError(f"{name} must be a 1-D tensor with one entry per class, got shape {tuple(t.shape)}")
    return t.detach()


def reduce_rows(per_row: Tensor, reduction: str, denominator: Tensor | None = None) -> Tensor:
    """``"none"``: ``per_row``; ``"sum"``: its sum; ``"mean"``: the sum over ``denominator`` (the plain mean without)."""
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    if denominator is None:
        return per_row.mean()
    return per_row.sum() / denominator
