"""What the run's plots draw, read back from the figures: student and baseline on one axis (hard loss, KL term,
validation metric), confusion matrices side by side, coinciding episodes counted, a sweep's best value drawn."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

import distill.outputs.report as report
from distill.experiment.run import plotted_episode


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the plot functions would save, kept open for reading."""
    kept: list[Any] = []

    def keep(fig: Any, path: Any) -> Any:
        kept.append(fig)
        return path

    monkeypatch.setattr(report, "_save", keep)
    return kept


def _history(epochs: int, offset: float, kl: bool) -> list[dict[str, float]]:
    return [{"epoch": e, "lr": 0.01, "train_loss": 1.0 / e + offset + (0.5 / e if kl else 0.0),
             "train_hard_loss": 1.0 / e + offset, "train_kl_term": 0.5 / e if kl else 0.0,
             "val_loss": 0.9 / e, "val_f1_macro": 0.5 + 0.01 * e + offset} for e in range(1, epochs + 1)]


def test_learning_curves_put_every_system_on_each_axis(figures: list[Any], tmp_path) -> None:
    histories = {"student": _history(5, 0.0, True), "baseline": _history(4, 0.1, False)}
    report.plot_learning_curves(tmp_path / "c.png", histories, "f1_macro", title="demo: episode 0")
    (fig,) = figures
    axes = fig.axes
    assert [ax.get_ylabel() for ax in axes] == ["train_hard_loss", "train_kl_term", "val_f1_macro"]
    assert "hard loss" in axes[0].get_title() and "validation f1 macro" in axes[2].get_title()
    assert fig._suptitle.get_text() == "demo: episode 0"
    for ax in axes:
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"student", "baseline"}  # one axis, both systems
        assert (lines["student"].get_linestyle(), lines["baseline"].get_linestyle()) == ("-", "--")  # both seen
        for system, rows in histories.items():
            np.testing.assert_array_equal(lines[system].get_xdata(), [r["epoch"] for r in rows])
            np.testing.assert_array_equal(lines[system].get_ydata(), [r[ax.get_ylabel()] for r in rows])


def test_learning_curves_without_validation_or_kl_term(figures: list[Any], tmp_path) -> None:
    rows = [{"epoch": 1, "lr": 0.1, "train_loss": 0.7}, {"epoch": 2, "lr": 0.1, "train_loss": 0.6}]
    report.plot_learning_curves(tmp_path / "c.png", {"student": rows}, "accuracy")
    (fig,) = figures
    assert [ax.get_ylabel() for ax in fig.axes] == ["train_loss"]


def test_confusion_matrices_side_by_side_on_one_scale(figures: list[Any], tmp_path) -> None:
    rng = np.random.default_rng(3)
    targets = rng.integers(0, 3, size=40)
    probs = {s: rng.dirichlet(np.ones(3), size=40) for s in ("student", "baseline")}
    report.plot_confusion_matrix(tmp_path / "m.png", targets, probs, ["a", "b", "c"], title="t")
    (fig,) = figures
    images = [ax for ax in fig.axes if ax.get_images()]
    assert len(images) == 2
    limits = set()
    for ax, system in zip(images, ("student", "baseline"), strict=True):
        expected = confusion_matrix(targets, probs[system].argmax(axis=1), labels=[0, 1, 2])
        image = ax.get_images()[0]
        np.testing.assert_array_equal(image.get_array(), expected)
        assert ax.get_title() == f"{system}: {int(np.trace(expected))} of 40 right"
        limits.add(image.get_clim())
    assert len(limits) == 1  # one colour scale


def test_coinciding_episodes_are_counted() -> None:
    x = np.array([0.9, 0.9, 0.8, np.nan, 0.9])
    y = np.array([0.95, 0.95, 0.8, 0.9, 0.95])
    assert sorted(report.coinciding(x, y)) == [(0.8, 0.8, 1), (0.9, 0.95, 3)]


def test_paired_plot_draws_the_diagonal_and_counts(figures: list[Any], tmp_path) -> None:
    episodes = [{"student": {"accuracy": s}, "baseline": {"accuracy": b}}
                for s, b in [(0.9, 0.8), (0.9, 0.8), (0.7, 0.75)]]
    report.plot_paired(tmp_path / "p.png", episodes, "accuracy")
    (fig,) = figures
    (ax,) = fig.axes
    (diagonal,) = [line for line in ax.get_lines() if line.get_label() == "no difference"]
    np.testing.assert_array_equal(diagonal.get_xdata(), diagonal.get_ydata())
    offsets = ax.collections[0].get_offsets()
    assert sorted(map(tuple, np.asarray(offsets).tolist())) == [(0.75, 0.7), (0.8, 0.9)]
    assert [t.get_text() for t in ax.texts] == ["×2"]


def _point(value: float, mean: float | None) -> dict[str, Any]:
    return {"value": value, "aggregate": {"student": {"f1_macro": {"mean": mean}, "ece": {"mean": mean}}}}


def test_a_sweeps_plots_show_its_best_value_not_the_first() -> None:
    results = [SimpleNamespace(value=v, episode=e) for v in (0.0, 0.5, 2.0) for e in (1, 0)]
    summary = {"sweep": {"points": [_point(0.0, 0.6), _point(0.5, 0.8), _point(2.0, None)]}}
    head, label = plotted_episode(results, summary, "objective.kl_weight", "f1_macro")  # type: ignore[arg-type]
    assert (head.value, head.episode) == (0.5, 0) and "objective.kl_weight=0.5" in label
    head, _ = plotted_episode(results, summary, "objective.kl_weight", "ece")  # type: ignore[arg-type]
    assert head.value == 0.0  # less is better
    head, label = plotted_episode(results, {}, None, "f1_macro")  # type: ignore[arg-type]
    assert head is results[0] and label == "episode 0"
