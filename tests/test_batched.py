"""Stacked students: each member of ``fit_many`` ends exactly where its own ``fit`` ends.

The reference for every member is an ordinary single fit of the same module, rows and settings;
the objective the engine precomputes is checked against ``distillation_loss`` in float64.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distill.config import load_config
from distill.engine.loop import EvaluationRows, FitResult, FitSettings, TrainingRows, fit, fit_many, stack_problem_for
from distill.engine.members import StackedMembers, stack_problem
from distill.experiment.episodes import run_protocol
from distill.losses.fused import MemberObjective
from distill.losses.objective import distillation_loss, hard_loss
from distill.students import build

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5

pytestmark = pytest.mark.filterwarnings("ignore:No (positive|negative) samples in targets:UserWarning")


def _data(seed: int, n: int = 24, k: int = 2, labelled: int = 8, features: int = 3):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = torch.randn(n, features, generator=g) + y[:, None].float()
    mask = torch.zeros(n, dtype=torch.bool)
    mask[:labelled] = True
    teacher = torch.randn(n, k, generator=g) * 2 + 3 * torch.nn.functional.one_hot(y, k)
    train = TrainingRows(x=x, targets=torch.where(mask, y, torch.full_like(y, -1)), labelled=mask, teacher_logits=teacher)
    xv = torch.randn(12, features, generator=g) + (torch.arange(12) % k)[:, None].float()
    return train, EvaluationRows(xv, torch.arange(12) % k)


def _student(k: int, seed: int = 0, features: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return build("mlp", (features,), k, num_outputs=1 if k == 2 else k, hidden=[6, 5], activation="tanh")


def _compare(a: FitResult, b: FitResult) -> None:
    assert (a.stopped_epoch, a.best_epoch, a.status, a.diverged_at, a.stop_reason) == \
        (b.stopped_epoch, b.best_epoch, b.status, b.diverged_at, b.stop_reason)
    assert a.messages == b.messages
    assert len(a.history) == len(b.history)
    for ra, rb in zip(a.history, b.history, strict=True):
        assert ra.keys() == rb.keys()
        for key in ra:
            assert ra[key] == pytest.approx(rb[key], abs=TOL, nan_ok=True), key


def _weights_close(a: nn.Module, b: nn.Module) -> None:
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(pa, pb, atol=TOL, rtol=0, msg=name)


def _run_both(k: int, settings: list[FitSettings], validation: bool = True, data_seeds=None):
    data = [_data(seed, k=k) for seed in (data_seeds or range(len(settings)))]
    models = [_student(k, seed=i) for i in range(len(settings))]
    alone = [copy.deepcopy(m) for m in models]
    val = [v if validation else None for _, v in data]
    together = fit_many(models, [t for t, _ in data], settings, num_classes=k, validations=val)
    singles = [fit(m, t, s, num_classes=k, validation=v) for m, (t, _), s, v in zip(alone, data, settings, val,
                                                                                    strict=True)]
    for a, b in zip(together, singles, strict=True):
        _compare(a, b)
    for a, b in zip(models, alone, strict=True):
        _weights_close(a, b)
    return together


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("replacement", [False, True])
def test_members_match_their_own_fits(k: int, optimizer: str, replacement: bool) -> None:
    base = FitSettings(epochs=15, batch_size=5, optimizer=optimizer, lr=0.05, momentum=0.5 if optimizer == "sgd" else 0,
                       replacement=replacement, patience=0)
    settings = [dataclasses.replace(base, seed=i, kl_weight=w, temperature=t)
                for i, (w, t) in enumerate([(0.0, 1.0), (0.5, 1.0), (2.0, 3.0), (1.0, 0.5)])]
    results = _run_both(k, settings)
    assert len({r.history[-1]["train_loss"] for r in results}) == 4  # the members really differ


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_reverse_kl_weight_decay_clipping_penalties_and_schedule_per_member(direction: str) -> None:
    base = FitSettings(epochs=12, batch_size=6, optimizer="adamw", lr=0.03, weight_decay=0.01, grad_clip=0.05,
                       l1=0.01, l2=0.02, scheduler="step", step_size=4, gamma=0.5, direction=direction)
    settings = [dataclasses.replace(base, seed=i, kl_weight=0.3 * i, temperature=1 + i) for i in range(3)]
    results = _run_both(3, settings)  # asserts each member against its own fit
    assert [r.history[-1]["lr"] for r in results] == [0.03 * 0.5**2] * 3  # epoch 12: two step decays


def test_early_stopping_stops_members_independently() -> None:
    base = FitSettings(epochs=60, batch_size=4, optimizer="adam", lr=0.05, patience=3, monitor="val_loss",
                       restore_best=True)
    settings = [dataclasses.replace(base, seed=i, kl_weight=w) for i, w in enumerate([0.0, 1.0, 4.0, 0.2, 2.0])]
    results = _run_both(2, settings, data_seeds=[0, 1, 2, 3, 4])
    stops = [r.stopped_epoch for r in results]
    assert len(set(stops)) > 1, stops  # members stop at different epochs
    assert all(s < 60 for s in stops)
    assert all(r.best_epoch is not None and r.best_epoch <= r.stopped_epoch for r in results)


def test_monitoring_a_metric_and_keeping_final_weights() -> None:
    base = FitSettings(epochs=25, batch_size=8, optimizer="sgd", lr=0.2, patience=4, monitor="val_accuracy",
                       restore_best=False, min_delta=0.01)
    results = _run_both(3, [dataclasses.replace(base, seed=i, kl_weight=0.5 * i) for i in range(3)])
    assert all(r.monitor == "val_accuracy" and r.best_epoch is None for r in results)  # restore_best = false


def test_lean_epochs_without_validation() -> None:
    base = FitSettings(epochs=10, batch_size=8, optimizer="adam", lr=0.01, epoch_metrics=False)
    results = _run_both(2, [dataclasses.replace(base, seed=i, kl_weight=float(i)) for i in range(3)],
                        validation=False)
    assert all(set(r.history[0]) == {"epoch", "lr", "train_loss", "train_hard_loss", "train_kl_term"}
               for r in results)  # losses only


def test_a_diverging_member_leaves_the_others_untouched() -> None:
    data = [_data(i) for i in range(3)]
    bad_teacher = data[1][0].teacher_logits.clone()
    bad_teacher[5] = float("nan")
    data[1] = (dataclasses.replace(data[1][0], teacher_logits=bad_teacher), data[1][1])
    settings = [FitSettings(epochs=8, batch_size=24, optimizer="sgd", lr=0.1, kl_weight=1.0, seed=i) for i in range(3)]
    models = [_student(2, seed=i) for i in range(3)]
    alone = [copy.deepcopy(m) for m in models]
    together = fit_many(models, [t for t, _ in data], settings, num_classes=2, validations=[v for _, v in data])
    singles = [fit(m, t, s, num_classes=2, validation=v) for m, (t, v), s in zip(alone, data, settings, strict=True)]
    assert [r.status for r in together] == ["completed", "diverged", "completed"]
    assert together[1].diverged_at == (1, 1)
    for a, b, ma, mb in zip(together, singles, models, alone, strict=True):
        _compare(a, b)
        _weights_close(ma, mb)


def test_stack_problems_are_named() -> None:
    train, val = _data(0)
    s = FitSettings()
    mlp = _student(2)
    torch.manual_seed(0)
    dropout = build("mlp", (3,), 2, num_outputs=1, hidden=[4], dropout=0.5)
    wider = build("mlp", (3,), 2, num_outputs=1, hidden=[7])
    assert stack_problem([mlp, copy.deepcopy(mlp)]) is None
    assert "dropout" in stack_problem([dropout, copy.deepcopy(dropout)])
    assert "architecture" in stack_problem([mlp, wider])
    assert "more than kl_weight" in stack_problem_for([mlp, mlp], [train, train], [s, dataclasses.replace(s, lr=0.5)],
                                                      [val, val])
    other, _ = _data(1, n=30)
    assert "shape" in stack_problem_for([mlp, mlp], [train, other], [s, s], [val, val])
    with pytest.raises(ValueError, match="cannot be stacked"):
        fit_many([dropout, copy.deepcopy(dropout)], [train, train], [s, s], num_classes=2)
    with pytest.raises(ValueError, match="cannot stack"):
        StackedMembers([mlp, wider])


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_member_objective_equals_distillation_loss_in_float64(k: int, direction: str) -> None:
    g = torch.Generator().manual_seed(k)
    m, n, b = 3, 10, 6
    targets = torch.randint(0, k, (m, n), generator=g)
    labelled = torch.rand(m, n, generator=g) < 0.5
    labelled[0] = False  # a member whose batch has no labelled row: hard term 0
    teacher = torch.randn(m, n, k, generator=g) * 3
    weights, temps = [0.0, 0.7, 2.5], [1.0, 0.3, 4.0]
    outputs = 1 if k == 2 else k
    objective = MemberObjective(targets, labelled, teacher.float(), weights, temps, direction, outputs)
    objective.packed = objective.packed.double()
    objective.coef = objective.coef.double()
    z = torch.randn(m, b, outputs, generator=g, dtype=torch.float64) * 4
    idx = torch.randint(0, n, (m, b), generator=g)
    got = objective(z, idx)
    for i in range(m):
        student = z[i] if outputs > 1 else z[i, :, 0]
        expected = distillation_loss(student, teacher[i, idx[i]].double(), targets[i, idx[i]], kl_weight=weights[i],
                                     temperature=temps[i], direction=direction, labelled_mask=labelled[i, idx[i]])
        # The packed teacher constants are float32: agreement to float32 precision.
        assert float(got[i]) == pytest.approx(float(expected), rel=1e-6, abs=1e-6)
    y = torch.randint(0, k, (m, b), generator=g)
    for i, value in enumerate(MemberObjective.evaluation_loss(z, y)):
        assert float(value) == pytest.approx(float(hard_loss(z[i] if outputs > 1 else z[i, :, 0], y[i])), rel=1e-12)


@pytest.mark.parametrize("overrides", [
    [],
    ["objective.kl_weight=[0.0, 0.5, 2.0]"],
    ["few_shot.validation=10", "train.early_stopping.patience=5", "train.epochs=60", 'train.optimizer="adam"',
     "train.lr=0.01"],
])
def test_batched_protocol_equals_sequential_protocol(overrides: list[str]) -> None:
    common = ["protocol.episodes=3", "train.epochs=40", "teacher.cache=false", "tracking.enabled=false",
              'train.device="cpu"', *overrides]
    runs = {}
    for batched in (True, False):
        config = load_config(ROOT / "experiments/breast_cancer_gp.toml", [*common, f"train.batched={str(batched).lower()}"])
        _, runs[batched] = run_protocol(config)
    assert len(runs[True]) == len(runs[False]) > 1
    for a, b in zip(runs[True], runs[False], strict=True):
        assert (a.episode, a.seed, a.value) == (b.episode, b.seed, b.value)
        for system in ("teacher", "student", "baseline"):
            for key, value in a.metrics[system].items():
                assert value == pytest.approx(b.metrics[system][key], abs=TOL, nan_ok=True), (system, key)
        _compare(a.student_fit, b.student_fit)
        _compare(a.baseline_fit, b.baseline_fit)
        np.testing.assert_allclose(a.test_predictions["student"], b.test_predictions["student"], atol=TOL)


def test_students_that_cannot_stack_fall_back_to_one_at_a_time() -> None:
    common = ["protocol.episodes=2", "train.epochs=5", "teacher.cache=false", "tracking.enabled=false",
              "student.dropout=0.2"]
    results = {}
    for batched in (True, False):
        config = load_config(ROOT / "experiments/breast_cancer_gp.toml", [*common, f"train.batched={str(batched).lower()}"])
        _, results[batched] = run_protocol(config)
    for a, b in zip(results[True], results[False], strict=True):
        assert a.metrics == b.metrics  # the same sequential fits, bit for bit


class DtypeProbe(nn.Module):
    """A linear student that records the dtype its layer computes in during training."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.seen: set[torch.dtype] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        if self.training:
            self.seen.add(out.dtype)
        return out


def test_bf16_autocast_runs_the_forward_in_bfloat16_and_keeps_the_loss_float32() -> None:
    train, val = _data(0)
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = DtypeProbe()
        results[precision] = fit(model, train, FitSettings(epochs=20, batch_size=8, lr=0.05, precision=precision,
                                                           kl_weight=0.5), num_classes=2, validation=val)
        assert model.seen == {torch.float32 if precision == "fp32" else torch.bfloat16}
        assert all(p.dtype == torch.float32 for p in model.parameters())
    fp32, bf16 = (results[p].history[-1]["train_loss"] for p in ("fp32", "bf16"))
    assert bf16 == pytest.approx(fp32, rel=0.05)  # bfloat16 keeps 8 bits of mantissa: close, not equal
    assert bf16 != fp32


@pytest.mark.slow
def test_compiled_forward_gives_the_same_fit() -> None:
    train, val = _data(0)
    settings = FitSettings(epochs=6, batch_size=8, optimizer="sgd", lr=0.1, kl_weight=0.5)
    plain, compiled = _student(2), _student(2)
    a = fit(plain, train, settings, num_classes=2, validation=val)
    b = fit(compiled, train, dataclasses.replace(settings, compile=True), num_classes=2, validation=val)
    _compare(a, b)  # the same history, to 1e-5
    _weights_close(plain, compiled)
    assert len(a.history) == len(b.history) == 6



@pytest.mark.parametrize("epoch_metrics", [True, False])
def test_on_epoch_end_sees_each_members_history_rows(epoch_metrics: bool) -> None:
    """A stacked fit calls ``on_epoch_end(epoch, rows)`` once per epoch with the row of each member still
    training: what it sees is exactly the histories returned, and watching changes no number."""
    base = FitSettings(epochs=40, batch_size=4, optimizer="adam", lr=0.05, patience=3, epoch_metrics=epoch_metrics)
    settings = [dataclasses.replace(base, seed=i, kl_weight=w) for i, w in enumerate([0.0, 1.0, 4.0, 0.2])]
    data = [_data(i) for i in range(4)]
    calls: list[tuple[int, dict[int, dict[str, float]]]] = []
    results = fit_many([_student(2, seed=i) for i in range(4)], [t for t, _ in data], settings, num_classes=2,
                       validations=[v for _, v in data], on_epoch_end=lambda e, rows: calls.append((e, rows)))
    unwatched = fit_many([_student(2, seed=i) for i in range(4)], [t for t, _ in data], settings, num_classes=2,
                         validations=[v for _, v in data])
    stops = [r.stopped_epoch for r in results]
    assert len(set(stops)) > 1, stops  # members stop at different epochs
    assert [e for e, _ in calls] == list(range(1, max(stops) + 1))
    for m, (result, alone) in enumerate(zip(results, unwatched, strict=True)):
        assert [rows[m] for _, rows in calls if m in rows] == result.history
        assert [e for e, rows in calls if m in rows] == list(range(1, result.stopped_epoch + 1))
        _compare(result, alone)
