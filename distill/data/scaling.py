"""Feature scaling, fit on the labelled rows only so nothing about unlabelled or test rows leaks into it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from distill.data.sources import FLOAT32_MAX
from distill.errors import DataError


@dataclass(frozen=True)
class Scaler:
    """``(x - shift) / scale`` per feature; plain arrays so checkpoints stay weights-only."""

    kind: str
    shift: np.ndarray
    scale: np.ndarray

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.shift) / self.scale

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        """Back to raw feature units (for a teacher that reads raw features)."""
        return z * self.scale + self.shift

    def state(self) -> dict[str, object]:
        return {"kind": self.kind, "shift": self.shift.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, object]) -> "Scaler":
        return cls(
            kind=str(state["kind"]),
            shift=np.asarray(state["shift"], dtype=np.float64),
            scale=np.asarray(state["scale"], dtype=np.float64),
        )


def fit_scaler(kind: Literal["minmax", "standard", "none"], x: np.ndarray) -> Scaler:
    """Fit on ``x`` (the labelled rows); constant features get scale 1, as scikit-learn does."""
    d = x.shape[1:]
    if kind == "none":
        return Scaler(kind, np.zeros(d), np.ones(d))
    if kind == "minmax":
        lo, hi = x.min(axis=0), x.max(axis=0)
        span = hi - lo
        return Scaler(kind, lo, np.where(span > 0, span, 1.0))
    if kind == "standard":
        mean, std = x.mean(axis=0), x.std(axis=0)
        return Scaler(kind, mean, np.where(std > 0, std, 1.0))
    raise ValueError(f"data.scale must be one of 'minmax', 'standard', 'none', got {kind!r}")


def check_scaled(scaler: Scaler, x: np.ndarray, feature_names: list[str], where: str) -> None:
    """Every row, scaled, must stay within float32 (the student's dtype).

    The scaler is fit on the labelled rows only, so another row can land far outside them (a minmax
    span of 1e-30, a test row at 1e10): that row would reach the student as inf. Checked in chunks
    of rows, so the check holds no second copy of a large data set.
    """
    flat = x.reshape(x.shape[0], -1)
    for start in range(0, flat.shape[0], 4096):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            z = scaler.transform(flat[start : start + 4096].reshape(-1, *x.shape[1:])).reshape(-1, flat.shape[1])
        # Finite rows within float32 scale to no NaN (the scale is never 0); NaN is the loader's to refuse.
        bad = np.abs(z) > FLOAT32_MAX
        if bad.any():
            r, col = (int(i) for i in np.argwhere(bad)[0])
            name = feature_names[col] if col < len(feature_names) else str(col)
            raise DataError(
                f"{where}: data.scale = '{scaler.kind}', fit on the labelled rows, maps row {start + r}, column"
                f" '{name}' ({flat[start + r, col]:g}) to {z[r, col]:g}, beyond float32's range (the student's"
                " dtype); choose another data.scale or rescale that column"
            )


