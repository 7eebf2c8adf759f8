"""A multilayer perceptron student: the seed post's 30 -> 10 -> 10 -> 1 network and its kin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from distill.students import StudentArgumentError, register_student

__all__ = ["MLP", "ACTIVATIONS"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


@register_student("mlp")
class MLP(nn.Module):
    """Fully connected layers with one activation between them (and optional dropout).

    Args:
        in_features: input width (inputs of any shape are flattened).
        num_outputs: 1 for a binary student (one logit), C for a multiclass one.
        hidden: widths of the hidden layers, e.g. ``[10, 10]``; empty for logistic regression.
        activation: ``relu``, ``gelu``, ``tanh`` or ``sigmoid``.
        dropout: dropout probability after each hidden activation.
    """

    def __init__(
        self,
        in_features: int,
        num_outputs: int,
        hidden: Sequence[int] = (64,),
        activation: Literal["relu", "gelu", "tanh", "sigmoid"] = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(hidden, int) and not isinstance(hidden, bool):
            hidden = [hidden]
        if not isinstance(hidden, (list, tuple)) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden
        ):
            raise StudentArgumentError(
                f"student.hidden must be a list of positive integers, got {hidden!r}", key="student.hidden"
            )
        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            raise StudentArgumentError(
                f"student.activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}",
                key="student.activation",
            )
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise StudentArgumentError(f"student.dropout must be in [0, 1), got {dropout!r}", key="student.dropout")
        layers: list[nn.Module] = []
        width = int(in_features)
        for h in hidden:
            layers.append(nn.Linear(width, h))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's activations (for ``objective.metric_loss``); the input if no hidden layer."""
        return self.net[:-1](x.flatten(1))
