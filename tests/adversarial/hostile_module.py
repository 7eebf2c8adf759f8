"""A module a hostile checkpoint would like distill to import: importing it leaves a trace.

``HOSTILE_MARKER`` (an environment variable) names the file that the import creates; the tests check
that no file can make distill import this module, and that a user who names it can.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

if os.environ.get("HOSTILE_MARKER"):
    Path(os.environ["HOSTILE_MARKER"]).touch()


class Net(nn.Module):
    """A plain MLP-shaped student, so a checkpoint naming it rebuilds when the user trusts it."""

    def __init__(self, in_features: int, num_outputs: int, hidden: int | list[int] = 8, activation: str = "relu") -> None:
        super().__init__()
        hidden = hidden[0] if isinstance(hidden, list) else hidden
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_outputs))

    def forward(self, x):  # noqa: D102
        return self.body(x.reshape(x.shape[0], -1))


class NotAClassifier:
    """Has ``fit`` but no ``predict_proba``: not what ``teacher.estimator`` may name."""

    def __init__(self, command: str = "") -> None:
        os.system(command)  # noqa: S605 - what a class that is not a classifier might do when built

    def fit(self, x, y):  # noqa: D102
        return self


class Trap(type):
    """A metaclass whose attribute lookups run code: reading ``fit`` must not go through it."""

    def __getattr__(cls, name: str):
        if os.environ.get("HOSTILE_MARKER"):
            Path(os.environ["HOSTILE_MARKER"] + ".getattr").touch()
        raise AttributeError(name)


class TrapClassifier(metaclass=Trap):
    """No fit / predict_proba of its own; its metaclass would run code if asked for them."""
