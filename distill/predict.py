"""``distill predict``: load a trained student and write class predictions for a CSV of features.

The student comes from a run directory, a ``student.pt`` file, or an MLflow model URI
(``models:/<id>``, ``runs:/<run_id>/student``); in every case the weights are read from the
``student.pt`` checkpoint with ``torch.load(weights_only=True)``, so nothing is unpickled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.data import read_csv_frame
from distill.errors import DataError, UserError
from distill.rundir import atomic_write
from distill.serving import load_checkpoint, servable_from_checkpoint

__all__ = ["resolve_checkpoint", "predict_frame", "predict_csv"]

_MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/", "s3://", "gs://", "file://", "dbfs:/")


def resolve_checkpoint(source: str, tracking_uri: str | None = None) -> Path:
    """The ``student.pt`` behind a run directory, a file, or an MLflow model URI."""
    if source.startswith(_MLFLOW_SCHEMES):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow

        from distill.tracking import DEFAULT_URI, bound_requests

        bound_requests(override=False)  # a stalled server: bounded time, not MLflow's minutes of retries
        mlflow.set_tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI)
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


def predict_frame(payload: dict[str, Any], frame: Any, where: str) -> Any:
    """Predicted class name and per-class probabilities for each row of ``frame`` (raw features)."""
    import pandas as pd

    names = list(payload.get("feature_names") or [])
    if names:
        missing = [n for n in names if n not in frame.columns]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise DataError(f"{where} lacks {len(missing)} feature column(s) the student was trained on: {shown}")
        features = frame[names]
    else:
        features = frame
    bad = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if bad:
        raise DataError(f"{where}: feature column(s) {', '.join(repr(b) for b in bad[:5])} are not numeric")
    x = features.to_numpy(dtype=np.float64)
    expected = int(np.prod(payload["in_shape"]))
    if x.shape[1] != expected:
        raise DataError(f"{where} has {x.shape[1]} feature columns; the student takes {expected}")
    if not np.isfinite(x).all():
        row = int(np.argwhere(~np.isfinite(x))[0][0])
        raise DataError(f"{where} has NaN or infinite feature values (first at row {row})")
    model = servable_from_checkpoint(payload)
    with torch.inference_mode():
        probs = model(torch.as_tensor(x, dtype=torch.float32)).numpy()
    classes = list(payload["classes"])
    out = pd.DataFrame({"prediction": [classes[i] for i in probs.argmax(axis=1)]})
    for c, name in enumerate(classes):
        out[f"p_{name}"] = probs[:, c]
    return out


def predict_csv(source: str, data: str | Path, output: str | Path | None, tracking_uri: str | None = None) -> Any:
    """Read ``data`` (CSV with the training feature columns), predict, write ``output`` (or return the frame)."""
    payload = load_checkpoint(resolve_checkpoint(source, tracking_uri))
    path = Path(data)
    frame = read_csv_frame(path)
    result = predict_frame(payload, frame, f"data file '{path}'")
    if output is not None:
        out = Path(output)
        if not out.parent.is_dir():
            raise UserError(f"output folder '{out.parent}' does not exist")
        atomic_write(out, lambda tmp: result.to_csv(tmp, index=False, float_format="%.6g"))
    return result
