"""The Teacher protocol and the teacher registry.

A teacher follows the scikit-learn contract: ``fit(x, y) -> self``, fitted state ends in ``_``,
and ``logits(x)`` returns an ``[N, num_classes]`` array in class order ``0..K-1``
(log-probabilities are valid logits). Teachers know nothing of the training engine.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from distill.registry import Registry

__all__ = [
    "Teacher",
    "NotFittedError",
    "TEACHERS",
    "register_teacher",
    "list_teachers",
    "create_teacher",
    "probabilities_to_logits",
    "PROBABILITY_FLOOR",
]

#: Probabilities are clamped to at least this before the log, so 0 gives a finite logit.
PROBABILITY_FLOOR = 1e-12


@runtime_checkable
class Teacher(Protocol):
    """What the engine needs of a teacher."""

    num_classes: int

    def fit(self, x: np.ndarray, y: np.ndarray) -> "Teacher": ...

    def logits(self, x: np.ndarray) -> np.ndarray: ...


class NotFittedError(RuntimeError):
    """A teacher was asked for predictions before ``fit``."""


TEACHERS: Registry[Callable[..., Teacher]] = Registry("teacher")


def register_teacher(name: str) -> Callable[[Callable[..., Teacher]], Callable[..., Teacher]]:
    """Decorator: register a teacher factory under ``name`` (twice is an error)."""
    return TEACHERS.register(name)


def list_teachers() -> list[str]:
    """Registered teacher kinds."""
    _load_builtin()
    return TEACHERS.names()


def create_teacher(kind: str, **kwargs: Any) -> Teacher:
    """Build the teacher registered as ``kind``; unknown kinds list the registered ones."""
    _load_builtin()
    return TEACHERS.get(kind)(**kwargs)


def _load_builtin() -> None:
    import distill.teachers.gaussian_process  # noqa: F401  (registers gaussian_process and sklearn)
    import distill.teachers.network  # noqa: F401  (registers network)


def probabilities_to_logits(proba: np.ndarray) -> np.ndarray:
    """``log(p)`` with ``p`` clamped to ``[PROBABILITY_FLOOR, 1]``: finite for p = 0 or 1."""
    return np.log(np.clip(np.asarray(proba, dtype=np.float64), PROBABILITY_FLOOR, 1.0))
