"""The student as a deployable model: raw features in, class probabilities out.

``student.pt`` (weights only, read with ``torch.load(weights_only=True)``) rebuilds it anywhere
distill is installed; the same module is what the MLflow run logs as its model.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from distill import students
from distill.data.scaling import Scaler
from distill.data.sources import Dataset
from distill.errors import UserError
from distill.metrics.classification import probabilities
from distill.mlflow_env import DEFAULT_URI, bound_requests, sqlite_file
from distill.registry import is_import_path
from distill.version import __version__

__all__ = ["resolve_checkpoint", "ServableStudent", "load_checkpoint", "servable_from_checkpoint", "checked_arch",
           "checkpoint_payload", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "distill.student/1"


def checkpoint_payload(model: nn.Module, *, arch: str, kwargs: Mapping[str, Any], dataset: Dataset,
                       num_outputs: int, scaler: Scaler, best_epoch: int | None, seed: int,
                       config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The content of a ``CHECKPOINT_FORMAT`` file (``student.pt``, or a teacher ``teacher train`` wrote):
    ``model``'s weights plus what rebuilds it (``arch``, ``kwargs``, the data's shape and classes) and its
    input scaling. ``extra`` fields (``episode``; a teacher's ``role``, held-out rows, ...) come before
    ``seed``. Holds only tensors, numbers, strings, lists and dicts: ``torch.load(weights_only=True)`` reads it.
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "distill_version": __version__,
        "arch": arch,
        "kwargs": kwargs,
        "in_shape": list(dataset.in_shape),
        "num_classes": dataset.num_classes,
        "num_outputs": num_outputs,
        "classes": list(dataset.classes),
        "feature_names": list(dataset.feature_names),
        "scaler": scaler.state(),
        "best_epoch": best_epoch,
        **extra,
        "seed": seed,
        "config": config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


class ServableStudent(nn.Module):
    """``probabilities(student((x - shift) / scale))``: the scaler, the student and the softmax in one module.

    Output column ``c`` is the probability of class ``classes[c]`` (kept in ``self.classes``).
    """

    shift: Tensor  # buffers, registered in __init__
    scale: Tensor

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
    problem = _payload_problem(payload)
    if problem is not None:
        raise UserError(f"'{path}' is a damaged distill student checkpoint: {problem}")
    return payload


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _payload_problem(payload: dict[str, Any]) -> str | None:
    """What is wrong with a checkpoint's fields (types and agreement), or None: a file is untrusted input."""
    if not isinstance(payload.get("arch"), str) or not payload["arch"]:
        return "'arch' must be a non-empty string"
    if not isinstance(payload.get("kwargs"), dict) or not all(isinstance(k, str) for k in payload["kwargs"]):
        return "'kwargs' must be a table of named values"
    shape = payload.get("in_shape")
    if not isinstance(shape, (list, tuple)) or not shape or not all(_is_int(v) and v > 0 for v in shape):
        return "'in_shape' must be a list of positive integers"
    if math.prod(shape) > 1 << 31:
        return f"'in_shape' {list(shape)} is implausibly large"
    for key in ("num_classes", "num_outputs"):
        if not _is_int(payload.get(key)) or not 1 <= payload[key] <= 1 << 20:
            return f"'{key}' must be a positive integer"
    classes = payload.get("classes")
    if not isinstance(classes, (list, tuple)) or len(classes) != payload["num_classes"] or payload["num_classes"] < 2:
        return "'classes' must list num_classes (>= 2) class names"
    names = payload.get("feature_names")
    if names is not None and (not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names)):
        return "'feature_names' must be a list of strings"
    scaler = payload.get("scaler")
    if not isinstance(scaler, dict) or "shift" not in scaler or "scale" not in scaler:
        return "'scaler' must hold 'shift' and 'scale'"
    features = math.prod(shape)
    for key in ("shift", "scale"):
        try:
            values = np.asarray(scaler[key], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return f"'scaler.{key}' must be numbers"
        if values.size not in (1, features) or not np.isfinite(values).all() or (key == "scale" and (values == 0).any()):
            return f"'scaler.{key}' must be {features} finite{' non-zero' if key == 'scale' else ''} numbers"
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        return "'state_dict' must map names to tensors"
    return None


def checked_arch(arch: str, trusted: Collection[str], where: str, how: str) -> str:
    """``arch`` as read from a file, refused when it is an import path the user did not name too.

    A checkpoint is untrusted input: a registered architecture name is fine, but an import path
    (``module:Class``) would import a module chosen by the file. Such a path is accepted only when
    it is in ``trusted`` (the user's config or command line names the same path; ``how`` says
    where the user can name it).
    """
    if is_import_path(arch) and arch not in set(trusted):
        raise UserError(
            f"{where} names the architecture '{arch}', an import path, and distill never imports a module "
            f"because a file says so; if you trust it, name it yourself: {how}"
        )
    return arch


def servable_from_checkpoint(payload: dict[str, Any], trusted: Collection[str] = (),
                             where: str = "the checkpoint", how: str = "") -> ServableStudent:
    """Rebuild the student from a checkpoint payload and wrap it with its scaler.

    ``payload["arch"]`` may be a registered name, or an import path listed in ``trusted`` (see
    :func:`checked_arch`); the payload is checked field by field first.
    """
    problem = _payload_problem(payload)
    if problem is not None:
        raise UserError(f"{where} is a damaged distill student checkpoint: {problem}")
    arch = checked_arch(payload["arch"], trusted, where, how or f"--arch {payload['arch']}")
    try:
        student = students.build(
            arch, tuple(payload["in_shape"]), int(payload["num_classes"]),
            num_outputs=int(payload["num_outputs"]), **payload["kwargs"],
        )
        student.load_state_dict(payload["state_dict"])
    except (ValueError, RuntimeError) as exc:  # unknown name, wrong kwargs, weights of another shape
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{where} cannot rebuild its student: {first}") from None
    scaler = payload["scaler"]
    model = ServableStudent(student, np.asarray(scaler["shift"]), np.asarray(scaler["scale"]), payload["classes"])
    return model.eval()


_MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/", "s3://", "gs://", "file://", "dbfs:/")


def resolve_checkpoint(source: str, tracking_uri: str | None = None) -> Path:
    """The ``student.pt`` behind a run directory, a file, or an MLflow model URI."""
    if source.startswith(_MLFLOW_SCHEMES):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow

        bound_requests(override=False)  # a stalled server: bounded time, not MLflow's minutes of retries
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
        store = sqlite_file(uri)
        if source.startswith(("models:/", "runs:/")) and store is not None and not store.is_file():
            raise UserError(f"cannot fetch MLflow model '{source}': there is no tracking store at '{store}' "
                            f"({uri}); name the store that holds it: --tracking-uri, or MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(uri)
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source))
        except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds for a bad URI
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot fetch MLflow model '{source}': {first}") from None
        found = sorted(local.rglob("student.pt")) if local.is_dir() else [local]
        if not found:
            raise UserError(f"MLflow model '{source}' holds no student.pt (was it logged by distill?)")
        return found[0]
    path = Path(source)
    if path.is_dir():
        path = path / "student.pt"
    if not path.is_file():
        raise UserError(f"no student found at '{source}': expected a run directory, a student.pt file or an MLflow model URI")
    return path
