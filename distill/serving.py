"""The student as a deployable model: raw features in, class probabilities out.

``student.pt`` (weights only, read with ``torch.load(weights_only=True)``) rebuilds it anywhere
distill is installed; the same module is what the MLflow run logs as its model.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import students
from distill.errors import UserError
from distill.metrics import probabilities

__all__ = ["ServableStudent", "load_checkpoint", "servable_from_checkpoint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "distill.student/1"


class ServableStudent(nn.Module):
    """``probabilities(student((x - shift) / scale))``: the scaler, the student and the softmax in one module.

    Output column ``c`` is the probability of class ``classes[c]`` (kept in ``self.classes``).
    """

    def __init__(self, student: nn.Module, shift: np.ndarray, scale: np.ndarray, classes: list[str]) -> None:
        super().__init__()
        self.student = student
        self.register_buffer("shift", torch.as_tensor(np.asarray(shift), dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale), dtype=torch.float32))
        self.classes = list(classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.shift.dtype).reshape(x.shape[0], -1)  # rows flat, as the scaler was fit
        return probabilities(self.student((x - self.shift.reshape(-1)) / self.scale.reshape(-1)))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a ``student.pt`` without unpickling code; a clear UserError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"student checkpoint '{path}' not found")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: one line is ours
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a checkpoint we can trust"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"'{path}' is not a distill student checkpoint readable with weights_only=True: {first}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"'{path}' is not a distill student checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    return payload


def servable_from_checkpoint(payload: dict[str, Any]) -> ServableStudent:
    """Rebuild the student from a checkpoint payload and wrap it with its scaler."""
    student = students.build(
        payload["arch"], tuple(payload["in_shape"]), int(payload["num_classes"]),
        num_outputs=int(payload["num_outputs"]), **payload["kwargs"],
    )
    student.load_state_dict(payload["state_dict"])
    scaler = payload["scaler"]
    model = ServableStudent(student, np.asarray(scaler["shift"]), np.asarray(scaler["scale"]), payload["classes"])
    return model.eval()
