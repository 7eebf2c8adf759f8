"""What a run leaves for a person: the printed table, ``history.csv`` and PNG plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from distill.metrics import METRICS
from distill.rundir import atomic_write

__all__ = ["metrics_table", "write_history", "plot_learning_curves", "plot_confusion_matrix"]

SYSTEMS = ("teacher", "student", "baseline")


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per system, one column per metric (ECE: lower is better)."""
    header = f"{'system':<10}" + "".join(f"{m:>10}" for m in METRICS)
    lines = [header, "-" * len(header)]
    for system in SYSTEMS:
        if system in metrics:
            lines.append(f"{system:<10}" + "".join(f"{_fmt(metrics[system].get(m)):>10}" for m in METRICS))
    return "\n".join(lines)


def write_history(path: Path, histories: dict[str, list[dict[str, float]]]) -> Path:
    """One CSV row per (system, epoch) with every logged metric."""
    import pandas as pd

    frames = [pd.DataFrame(rows).assign(system=system) for system, rows in histories.items() if rows]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["system", "epoch"])
    columns = ["system", "epoch"] + [c for c in frame.columns if c not in ("system", "epoch")]
    frame = frame[columns]
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6g"))


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _figure()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_learning_curves(path: Path, histories: dict[str, list[dict[str, float]]]) -> Path:
    """Training loss, and a validation metric when there is one, per epoch: student vs baseline."""
    plt = _figure()
    first = next((rows for rows in histories.values() if rows), [{}])
    metric = next((m for m in ("val_f1_macro", "val_loss", "train_accuracy") if m in first[0]), None)
    panels = 2 if metric else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.6), squeeze=False)
    for system, rows in histories.items():
        epochs = [r["epoch"] for r in rows]
        axes[0, 0].plot(epochs, [r["train_loss"] for r in rows], label=system)
        if metric:
            axes[0, 1].plot(epochs, [r.get(metric, float("nan")) for r in rows], label=system)
    axes[0, 0].set(title="training loss (student includes the KL term)", xlabel="epoch", ylabel="loss")
    if metric:
        axes[0, 1].set(title=metric, xlabel="epoch", ylabel=metric)
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion_matrix(path: Path, targets: np.ndarray, probs: np.ndarray, classes: list[str], title: str) -> Path:
    """Counts of true vs predicted class on the test rows."""
    from sklearn.metrics import confusion_matrix

    plt = _figure()
    k = len(classes)
    matrix = confusion_matrix(targets, probs.argmax(axis=1), labels=list(range(k)))
    size = min(2.0 + 0.55 * k, 10.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    names = [c if len(c) <= 12 else c[:11] + "…" for c in classes]
    tilt = k > 3 and max(len(n) for n in names) > 2
    ax.set_xticks(range(k), names, rotation=45 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    threshold = matrix.max() / 2 if matrix.size else 0
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                        color="white" if matrix[i, j] > threshold else "black", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
