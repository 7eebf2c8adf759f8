"""``distill predict``: class predictions of a trained student for rows of features, and the check of the
file they go to (``distill.predict`` reads the data and writes that file).

The student comes from a run directory, a ``student.pt`` file, or an MLflow model URI
(``models:/<id>``, ``runs:/<run_id>/student``); in every case the weights are read from the
``student.pt`` checkpoint with ``torch.load(weights_only=True)``, so nothing is unpickled.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.data.sources import check_float32
from distill.errors import DataError, UserError
from distill.students.checkpoint import servable_from_checkpoint

__all__ = ["predict_frame", "check_output"]

def predict_frame(payload: dict[str, Any], frame: Any, where: str, trusted_archs: Collection[str] = ()) -> Any:
    """Predicted class name and per-class probabilities for each row of ``frame`` (raw features).

    ``trusted_archs``: import paths (``module:Class``) the user names as architectures they trust; a
    checkpoint whose ``arch`` is an import path not listed here is refused before anything is imported.
    """
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
    x = features.to_numpy(dtype=np.float64, copy=True)  # writable: pandas 3 hands out read-only views
    expected = int(np.prod(payload["in_shape"]))
    if x.shape[1] != expected:
        raise DataError(f"{where} has {x.shape[1]} feature columns; the student takes {expected}")
    columns = [str(c) for c in features.columns]
    if not np.isfinite(x).all():
        row, col = (int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise DataError(f"{where} has NaN or infinite feature values (first at row {row}, column '{columns[col]}')")
    check_float32(x, columns, where)
    _check_scaled_float32(payload, x, columns, where)
    model = servable_from_checkpoint(payload, trusted_archs, "the student checkpoint", f"--arch {payload['arch']}")
    with torch.inference_mode():
        probs = model(torch.as_tensor(x, dtype=torch.float32)).numpy()
    broken = ~np.isfinite(probs).all(axis=1)
    if broken.any():  # argmax of NaN would still name a class: refuse instead of predicting from garbage
        raise DataError(
            f"{where}: the student's output for row {int(np.flatnonzero(broken)[0])} is not a number"
            f" ({int(broken.sum())} row(s)): its weights or this row's values overflow float32"
        )
    classes = list(payload["classes"])
    out = pd.DataFrame({"prediction": [classes[i] for i in probs.argmax(axis=1)]})
    for c, name in enumerate(classes):
        out[f"p_{name}"] = probs[:, c]
    return out


def check_output(output: str | Path, force: bool = False) -> Path:
    """``output`` names a file to create in an existing folder; an existing file only with ``force``."""
    out = Path(output)
    if out.is_dir():
        raise UserError(f"output '{out}' is a folder; give a file path for the predictions, "
                        f"such as '{out / 'predictions.csv'}'")
    if (out.exists() or out.is_symlink()) and not force:
        raise UserError(f"output file '{out}' already exists; predict does not overwrite it unless you pass --force")
    if not out.parent.is_dir():
        raise UserError(f"output folder '{out.parent}' does not exist")
    return out


def _check_scaled_float32(payload: dict[str, Any], x: np.ndarray, columns: list[str], where: str) -> None:
    """The student scales in float32, ``(x - shift) / scale``: a row that becomes inf or NaN there
    would get a confident prediction from inf; name its row and column instead."""
    scaler = payload.get("scaler") or {}
    shift = np.asarray(scaler.get("shift", 0.0), dtype=np.float32).reshape(-1)
    scale = np.asarray(scaler.get("scale", 1.0), dtype=np.float32).reshape(-1)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        z = (x.astype(np.float32) - shift) / scale
    bad = ~np.isfinite(z)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{where}: row {row}, column '{columns[col]}' ({x[row, col]:g}) is beyond float32's range once"
            f" scaled as in training ({z[row, col]:g}); the student cannot score it"
        )

