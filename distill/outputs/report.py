"""What a run leaves for a person: the printed table, ``history.csv`` and PNG plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np

from distill.metrics.classification import METRICS
from distill.metrics.stats import signed
from distill.outputs.rundir import atomic_write

__all__ = [
    "metrics_table",
    "protocol_table",
    "sweep_table",
    "write_history",
    "history_frame",
    "plot_learning_curves",
    "plot_confusion_matrix",
    "plot_sweep",
    "plot_paired",
]

SYSTEMS = ("teacher", "student", "baseline")


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _order(systems: Any) -> list[str]:
    """Teacher, student, baseline first, then controls and references in the order given."""
    names = list(systems)
    return [s for s in SYSTEMS if s in names] + [s for s in names if s not in SYSTEMS]


def metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per system, one column per metric (ECE: lower is better)."""
    width = max([10] + [len(s) + 2 for s in metrics])
    header = f"{'system':<{width}}" + "".join(f"{m:>10}" for m in METRICS)
    lines = [header, "-" * len(header)]
    for system in _order(metrics):
        lines.append(f"{system:<{width}}" + "".join(f"{_fmt(metrics[system].get(m)):>10}" for m in METRICS))
    return "\n".join(lines)


def write_history(path: Path, history: Any) -> Path:
    """One CSV row per fit and epoch: the fit's labels (episode, seed, value, system) then its metrics.
    ``history``: ``history_frame``'s DataFrame, or the ``runs`` it is made from."""
    frame = history if hasattr(history, "to_csv") else history_frame(history)
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6g"))


def history_frame(runs: list[tuple[dict[str, Any], list[dict[str, float]]]]) -> Any:
    """``history.csv`` as a DataFrame (full precision): one row per fit and epoch, labels first, then the
    metrics in the order they first appear (a fit without a metric has NaN there)."""
    import pandas as pd

    records = [{**row, **labels} for labels, rows in runs for row in rows]
    if not records:
        return pd.DataFrame(columns=["system", "epoch"])
    frame = pd.DataFrame.from_records(records)
    first = [c for c in ("episode", "seed", "value", "system", "epoch") if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]


class _Figures:
    """``subplots`` / ``close`` like pyplot's, on bare ``matplotlib.figure.Figure`` objects: no pyplot, so no
    global backend switch and no figure registry (a notebook's own plotting stays as it was)."""

    @staticmethod
    def subplots(*args: Any, figsize: tuple[float, float] | None = None,
                 layout: Literal["constrained", "compressed", "tight"] | None = None, **kwargs: Any) -> tuple[Any, Any]:
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize, layout=layout)
        return fig, fig.subplots(*args, **kwargs)

    @staticmethod
    def close(fig: Any) -> None:
        fig.clear()


def _figure() -> _Figures:
    return _Figures()


def _save(fig: Any, path: Path) -> Path:
    plt = _figure()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _curve_panels(first: dict[str, float], metric: str) -> list[tuple[str, str]]:
    """``(history key, title)`` of the learning-curve panels the history has: the hard loss (what a student and
    its baseline share), the KL term, and the validation curve (``protocol.metric``, else the loss)."""
    hard = "train_hard_loss" if "train_hard_loss" in first else "train_loss"
    panels = [(hard, "hard loss on the labelled training rows (BCE / CE)" if hard == "train_hard_loss"
               else "training loss")]
    if "train_kl_term" in first:
        panels.append(("train_kl_term", "KL term: kl_weight · T² · KL (0 without distillation)"))
    validation = next((k for k in (f"val_{metric}", "val_loss") if k in first), None)
    if validation is not None:
        panels.append((validation, f"validation {validation.removeprefix('val_').replace('_', ' ')} "
                                   "(held-out labelled rows)"))
    return panels


#: line style per system in the learning curves: the student solid and wide, the baseline dashed over it
_LINE_STYLES = {"student": "-", "baseline": "--"}


def plot_learning_curves(path: Path, histories: dict[str, list[dict[str, float]]], metric: str = "f1_macro",
                         title: str = "") -> Path:
    """Per epoch, every system on one axis: the hard loss, the KL term, and the validation ``metric`` when the
    run holds out validation rows (``few_shot.validation``)."""
    plt = _figure()
    first: list[dict[str, float]] = next((rows for rows in histories.values() if rows), [{}])
    panels = _curve_panels(first[0], metric)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.7), squeeze=False)
    for system, rows in histories.items():
        epochs = [r["epoch"] for r in rows]
        style = _LINE_STYLES.get(system, ":")  # curves that coincide (no distillation) stay visible
        for ax, (key, _) in zip(axes[0], panels, strict=True):
            ax.plot(epochs, [r.get(key, float("nan")) for r in rows], label=system, linestyle=style,
                    linewidth=2.2 if system == "student" else 1.4)
    for ax, (key, heading) in zip(axes[0], panels, strict=True):
        ax.set(title=heading, xlabel="epoch", ylabel=key)
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion_matrix(path: Path, targets: np.ndarray, probs: np.ndarray | dict[str, np.ndarray],
                          classes: list[str], title: str) -> Path:
    """Counts of true vs predicted class on the test rows; given ``{system: probs}``, one matrix per system side
    by side on one colour scale (student next to baseline)."""
    from sklearn.metrics import confusion_matrix

    plt = _figure()
    systems = probs if isinstance(probs, dict) else {"": probs}
    k = len(classes)
    matrices = {name: confusion_matrix(targets, p.argmax(axis=1), labels=list(range(k))) for name, p in systems.items()}
    top = max((int(m.max()) for m in matrices.values() if m.size), default=0)
    size = min(2.0 + 0.55 * k, 10.0)
    fig, axes = plt.subplots(1, len(matrices), figsize=((size + 0.9) * len(matrices) + 0.6, size + 0.4),
                             squeeze=False, layout="constrained")
    names = [c if len(c) <= 12 else c[:11] + "…" for c in classes]
    tilt = k > 3 and max(len(n) for n in names) > 2
    image = None
    for ax, (system, matrix) in zip(axes[0], matrices.items(), strict=True):
        image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(top, 1))
        ax.set_xticks(range(k), names, rotation=45 if tilt else 0, ha="right" if tilt else "center")
        ax.set_yticks(range(k), names)
        right = int(np.trace(matrix))
        ax.set(xlabel="predicted", ylabel="true",
               title=f"{system}: {right} of {int(matrix.sum())} right" if system else title)
        threshold = top / 2
        if k <= 10:  # counts in the cells up to 10 classes; beyond, the colours alone (text layout is the cost)
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                            color="white" if matrix[i, j] > threshold else "black", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), shrink=0.8)
    if len(matrices) > 1:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _pm(stat: dict[str, Any]) -> str:
    mean, ci = stat.get("mean"), stat.get("ci95")
    if mean is None:
        return "n/a"
    if ci is None:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {max(mean - ci[0], ci[1] - mean):.3f}"


def _diff(stat: dict[str, Any]) -> str:
    mean, ci, p = stat.get("mean"), stat.get("ci95"), stat.get("p_value")
    if mean is None:
        return "n/a"
    text = signed(mean)
    if ci is not None:
        text += f" [{signed(ci[0])}, {signed(ci[1])}]"
    if p is not None:
        text += f" p={p:.2g}"
    return text


def protocol_table(aggregate: dict[str, Any], paired: dict[str, Any], episodes: int) -> str:
    """Mean ± 95% half-width per system and metric over episodes, then the paired differences."""
    width = 16
    header = f"{'system':<20}" + "".join(f"{m:>{width}}" for m in METRICS)
    lines = [f"{episodes} episodes; mean ± 95% CI half-width on the test rows", header, "-" * len(header)]
    for system in _order(aggregate):
        lines.append(f"{system:<20}" + "".join(f"{_pm(aggregate[system][m]):>{width}}" for m in METRICS))
    lines.append("")
    for name in paired:
        label = "student − " + name.removeprefix("student_minus_")
        lines.append(f"{label}: " + ", ".join(f"{m} {_diff(paired[name][m])}" for m in METRICS))
    return "\n".join(lines)


def sweep_table(key: str, points: list[dict[str, Any]], metric: str) -> str:
    """One row per sweep value: the protocol metric per system and the paired difference."""
    systems = _order(points[0]["aggregate"]) if points else list(SYSTEMS)
    w = max(16, *(len(s) + 2 for s in systems))
    header = f"{key:<22}" + "".join(f"{s:>{w}}" for s in systems) + "   student − baseline"
    lines = [f"{metric} on the test rows, mean ± 95% CI half-width", header, "-" * (len(header) + 12)]
    for point in points:
        agg = point["aggregate"]
        lines.append(
            f"{str(point['value']):<22}" + "".join(f"{_pm(agg[s][metric]):>{w}}" for s in systems)
            + f"   {_diff(point['paired']['student_minus_baseline'][metric])}"
        )
    return "\n".join(lines)


def plot_sweep(path: Path, key: str, points: list[dict[str, Any]]) -> Path:
    """Each metric against the swept value, teacher / student / baseline, with 95% CI bands."""
    plt = _figure()
    values = [p["value"] for p in points]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    xs = values if numeric else list(range(len(values)))
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6), squeeze=False)
    systems = _order(points[0]["aggregate"]) if points else list(SYSTEMS)
    for ax, metric in zip(axes[0], METRICS, strict=True):
        for system in systems:
            stats = [p["aggregate"][system][metric] for p in points]
            mean = np.array([np.nan if s["mean"] is None else s["mean"] for s in stats])
            low = np.array([np.nan if s["ci95"] is None else s["ci95"][0] for s in stats])
            high = np.array([np.nan if s["ci95"] is None else s["ci95"][1] for s in stats])
            ax.plot(xs, mean, marker="o", label=system)
            ax.fill_between(xs, low, high, alpha=0.2)
        ax.set(title=metric, xlabel=key)
        if numeric and min(values) >= 0 and max(values) > 0 and max(values) / max(min(v for v in values if v > 0), 1e-12) >= 20:
            ax.set_xscale("symlog", linthresh=min(v for v in values if v > 0))
        if not numeric:
            ax.set_xticks(xs, [str(v) for v in values])
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    fig.tight_layout()
    return _save(fig, path)


def coinciding(x: np.ndarray, y: np.ndarray) -> list[tuple[float, float, int]]:
    """The distinct finite ``(x, y)`` points and how many episodes fall on each (few test rows make many
    episodes score alike: one marker would hide them)."""
    counts: dict[tuple[float, float], int] = {}
    for a, b in zip(x.tolist(), y.tolist(), strict=True):
        if np.isfinite(a) and np.isfinite(b):
            counts[(a, b)] = counts.get((a, b), 0) + 1
    return [(a, b, n) for (a, b), n in counts.items()]


def _counted_scatter(ax: Any, x: np.ndarray, y: np.ndarray, marker: str, label: str) -> None:
    """A scatter whose markers grow with the episodes on one point, the count written beside those with more than one."""
    points = coinciding(x, y)
    if not points:
        return
    xs, ys, ns = (np.array(v, dtype=float) for v in zip(*points, strict=True))
    ax.scatter(xs, ys, s=30 * np.sqrt(ns), alpha=0.7, marker=marker, label=label)
    for a, b, n in points:
        if n > 1:
            ax.annotate(f"×{n}", (a, b), textcoords="offset points", xytext=(5, 4), fontsize=7)


def plot_paired(path: Path, episodes: list[dict[str, Any]], metric: str) -> Path:
    """Per-episode student vs baseline (and teacher) on ``metric``; points above the diagonal favour distillation."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    base = np.array([np.nan if e["baseline"][metric] is None else e["baseline"][metric] for e in episodes], dtype=float)
    stud = np.array([np.nan if e["student"][metric] is None else e["student"][metric] for e in episodes], dtype=float)
    _counted_scatter(ax, base, stud, "o", "vs baseline")
    if all("null_teacher" in e for e in episodes):  # the control that tells knowledge from regularisation
        null = np.array([np.nan if e["null_teacher"][metric] is None else e["null_teacher"][metric]
                         for e in episodes], dtype=float)
        _counted_scatter(ax, null, stud, "x", "vs null teacher")
        base = np.concatenate([base, null])
    finite = np.concatenate([base[np.isfinite(base)], stud[np.isfinite(stud)]])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1, label="no difference")
    ax.set(xlabel=f"baseline (or control) {metric}", ylabel=f"student {metric}",
           title=f"student vs baseline, {len(episodes)} episodes\n(above the diagonal: distillation helped)")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)
