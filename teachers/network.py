"""A trained network as a teacher: a distill checkpoint (``student.pt`` of an earlier run) or an MLflow model URI.

The network runs in eval mode under ``torch.inference_mode()``, in batches, on the configured
device. It reads *raw* features (``input_space = "raw"``): the checkpoint carries the scaling it
was trained with. Weights are read with ``torch.load(weights_only=True)``; nothing is unpickled.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

from teachers.base import NotFittedError, register_teacher

__all__ = ["NetworkTeacher"]


@lru_cache(maxsize=8)
def _resolve(source: str, is_uri: bool, tracking_uri: str | None) -> str:
    from distill.predict import resolve_checkpoint

    return str(resolve_checkpoint(source, tracking_uri)) if is_uri else source


class NetworkTeacher:
    """Soft targets from a trained torch network.

    Args:
        num_classes: classes of the dataset; must equal the network's.
        checkpoint: path to a distill checkpoint (``student.pt``).
        uri: MLflow model URI of a distill-logged model (``models:/<id>``, ``runs:/<run>/student``).
        tracking_uri: the MLflow tracking server that resolves ``uri``.
        device: where the network runs.
        batch_size: rows per forward pass.
    """

    input_space = "raw"

    def __init__(
        self,
        num_classes: int,
        checkpoint: str | None = None,
        uri: str | None = None,
        device: str = "cpu",
        batch_size: int = 4096,
        tracking_uri: str | None = None,
    ) -> None:
        if (checkpoint is None) == (uri is None):
            raise ValueError("teacher.kind = 'network' needs exactly one of teacher.checkpoint or teacher.uri")
        self.num_classes = int(num_classes)
        self.checkpoint = checkpoint
        self.uri = uri
        self.device = device
        self.batch_size = int(batch_size)
        self.tracking_uri = tracking_uri

    def _load(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        from distill.serving import load_checkpoint, servable_from_checkpoint

        source = self.uri if self.uri is not None else str(self.checkpoint)
        payload = load_checkpoint(_resolve(source, self.uri is not None, self.tracking_uri))
        if int(payload["num_classes"]) != self.num_classes:
            raise ValueError(
                f"the teacher network predicts {payload['num_classes']} classes but the data has {self.num_classes}"
            )
        return servable_from_checkpoint(payload).to(self.device), payload

    def check(self, in_shape: tuple[int, ...]) -> None:
        """Load the network and check it against the data's classes and input shape (before any training)."""
        _, payload = self._load()
        if tuple(payload["in_shape"]) != tuple(in_shape):
            raise ValueError(
                f"the teacher network takes inputs of shape {tuple(payload['in_shape'])} but the data has {tuple(in_shape)}"
            )

    def fit(self, x: np.ndarray, y: np.ndarray) -> "NetworkTeacher":
        """Load the (already trained) network; ``x`` and ``y`` only check the input width."""
        self.model_, self.payload_ = self._load()
        self.check(tuple(np.asarray(x).shape[1:]))
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """``[N, num_classes]`` probabilities, batched, in eval mode without autograd."""
        if not hasattr(self, "model_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(x, y) first")
        x_t = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        outs = []
        with torch.inference_mode():
            for i in range(0, x_t.shape[0], self.batch_size):
                outs.append(self.model_(x_t[i : i + self.batch_size].to(self.device)).double().cpu())
        return torch.cat(outs).numpy() if outs else np.zeros((0, self.num_classes))

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Clamped log-probabilities: finite even where a probability is 0 or 1."""
        from teachers.base import probabilities_to_logits

        return probabilities_to_logits(self.predict_proba(x))

    def diagnostics(self) -> dict[str, Any]:
        """Where the network came from and what it is."""
        if not hasattr(self, "model_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(x, y) first")
        p = self.payload_
        return {
            "estimator": "network",
            "source": self.uri or self.checkpoint,
            "arch": p["arch"],
            "kwargs": p["kwargs"],
            "trained_seed": p.get("seed"),
            "warnings": [],
        }


@register_teacher("network")
def _create_network(
    num_classes: int,
    checkpoint: str | None = None,
    uri: str | None = None,
    device: str = "cpu",
    tracking_uri: str | None = None,
    **_: Any,
) -> NetworkTeacher:
    return NetworkTeacher(num_classes, checkpoint=checkpoint, uri=uri, device=device, tracking_uri=tracking_uri)
