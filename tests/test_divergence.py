"""A non-finite loss stops the fit, names the epoch and step, restores finite weights, and says "diverged"."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from distill.cli import main
from distill.engine.loop import EvaluationRows, FitSettings, TrainingRows, fit

ROOT = Path(__file__).resolve().parents[1]


class NaNAt(nn.Module):
    """A linear model whose training forward returns NaN on its ``bad_call``-th call (1-based)."""

    def __init__(self, bad_call: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.calls = 0
        self.bad_call = bad_call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        if self.training:
            self.calls += 1
            if self.calls == self.bad_call:
                return out * float("nan")
        return out


def _rows(n: int = 8) -> TrainingRows:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g)
    y = (x[:, 0] > 0).long()
    return TrainingRows(x=x, targets=y, labelled=torch.ones(n, dtype=torch.bool))


def test_divergence_names_epoch_and_step_and_restores_the_last_finite_weights() -> None:
    torch.manual_seed(0)
    model = NaNAt(bad_call=6)  # 2 steps per epoch: call 6 is epoch 3, step 2
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    settings = FitSettings(epochs=10, batch_size=4, optimizer="sgd", lr=0.1, restore_best=False)
    result = fit(model, _rows(), settings, num_classes=2,
                 on_epoch_end=lambda epoch, row: snapshots.__setitem__(epoch, copy.deepcopy(model.state_dict())))
    assert result.status == "diverged"
    assert result.diverged_at == (3, 2)
    assert result.stopped_epoch == 3
    assert "epoch 3, step 2" in result.stop_reason
    assert any("restored the weights of epoch 2" in m for m in result.messages)
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshots[2][key]), key
        assert torch.isfinite(value).all()


def test_divergence_in_the_first_epoch_keeps_the_initial_weights() -> None:
    torch.manual_seed(0)
    model = NaNAt(bad_call=1)
    initial = copy.deepcopy(model.state_dict())
    result = fit(model, _rows(), FitSettings(epochs=5, batch_size=8, optimizer="sgd", lr=0.1), num_classes=2)
    assert result.status == "diverged" and result.diverged_at == (1, 1)
    assert all(torch.equal(v, initial[k]) for k, v in model.state_dict().items())


def test_divergence_restores_the_best_monitored_weights_when_there_are_some() -> None:
    torch.manual_seed(0)
    model = NaNAt(bad_call=7)
    rows = _rows()
    validation = EvaluationRows(rows.x[:4], rows.targets[:4])
    settings = FitSettings(epochs=10, batch_size=4, optimizer="sgd", lr=0.1, monitor="val_loss", restore_best=True)
    result = fit(model, rows, settings, num_classes=2, validation=validation)
    assert result.status == "diverged" and result.diverged_at == (4, 1)
    assert result.best_epoch is not None and result.best_epoch <= 3
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_anomaly_detection_changes_nothing_on_a_healthy_fit() -> None:
    results = []
    for anomaly in (False, True):
        torch.manual_seed(0)
        model = nn.Linear(2, 1)
        fit(model, _rows(), FitSettings(epochs=3, batch_size=4, detect_anomaly=anomaly), num_classes=2)
        results.append(copy.deepcopy(model.state_dict()))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


@pytest.mark.parametrize(("validation", "said"), [(0, "training loss is not finite at epoch"),
                                                   (50, "validation loss is not finite after epoch 1")])
def test_a_diverging_run_says_so_in_its_summary(tmp_path: Path, capsys, validation: int, said: str) -> None:
    """lr 1e30 blows the weights up in the first epoch. Without validation rows the second epoch's training loss
    shows it; with them the first epoch's validation loss does (the outputs overflow while the weights are still
    finite), and that is divergence too, not a member stopped early on a non-finite monitor with its weights
    kept."""
    out = tmp_path / "run"
    code = main(["run", str(ROOT / "experiments/breast_cancer_gp.toml"), "-o", str(out), "-q", "--no-track",
                 "--set", "train.lr=1e30", "--set", 'student.activation="relu"', "--set", "train.epochs=10",
                 "--set", "train.detect_anomaly=false", "--set", f"few_shot.validation={validation}"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged"
    systems = {d["system"] for d in summary["diverged"]}
    assert systems == {"student", "baseline", *summary["config"]["protocol"]["controls"]}  # every trained system
    fit_summary = summary["episodes"][0]["fits"]["student"]
    assert fit_summary["status"] == "diverged"
    assert fit_summary["diverged_at"]["epoch"] >= 1 and fit_summary["diverged_at"]["step"] >= 1
    weights = torch.load(out / "student.pt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert said in capsys.readouterr().err
