"""The training engine on two tiny Gaussian blobs: determinism, early stopping, best state, no syncs."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy.special import log_softmax
from torch import nn

from distill.engine.callbacks import BestState, EarlyStopping, monitor_mode
from distill.engine.loop import (
    EvaluationRows,
    FitSettings,
    TrainingRows,
    fit,
    logged_metric_names,
    predict_logits,
)
from distill.losses.objective import hard_loss
from distill.metrics.classification import METRICS
from distill.students import build

pytestmark = pytest.mark.filterwarnings("ignore:No (positive|negative) samples in targets:UserWarning")

N = 40


def blobs(n: int = N, seed: int = 0, num_classes: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` rows, 2 features, one Gaussian blob per class (float32 inputs, int64 labels)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    centres = torch.tensor([[-1.5, -1.0], [1.5, 1.0], [0.0, 2.5]])[:num_classes]
    x = centres[y] + 0.7 * torch.randn(n, 2, generator=g)
    return x.float(), y.long()


def rows(x: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None = None, labelled=None) -> TrainingRows:
    labelled = torch.ones(len(y), dtype=torch.bool) if labelled is None else labelled
    return TrainingRows(x=x, targets=torch.where(labelled, y, torch.full_like(y, -1)), labelled=labelled, teacher_logits=teacher)


def student(num_classes: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build("mlp", (2,), num_classes, hidden=[8])


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class CountingModel(nn.Module):
    """Wraps a model and records the batch size of every forward call in train mode."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.train_batches: list[int] = []
        self.train_inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.train_batches.append(x.shape[0])
            self.train_inputs.append(x.detach().clone())
        return self.inner(x)


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_history_and_weights() -> None:
    x, y = blobs()
    base = student()
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    settings = FitSettings(epochs=5, batch_size=8, lr=0.05, kl_weight=0.0, seed=7)
    ra = fit(a, rows(x, y), settings, num_classes=2)
    rb = fit(b, rows(x, y), settings, num_classes=2)
    assert ra.history == rb.history
    assert same_weights(a, b)
    assert not same_weights(a, base)


def test_different_seed_different_batches() -> None:
    x, y = blobs()
    base = student()
    a, b = CountingModel(copy.deepcopy(base)), CountingModel(copy.deepcopy(base))
    fit(a, rows(x, y), FitSettings(epochs=3, batch_size=8, lr=0.05, seed=0), num_classes=2)
    fit(b, rows(x, y), FitSettings(epochs=3, batch_size=8, lr=0.05, seed=1), num_classes=2)
    assert not torch.equal(a.train_inputs[0], b.train_inputs[0])
    assert not same_weights(a, b)
    # Without replacement every epoch sees each row once, in some order.
    first_epoch = torch.cat(a.train_inputs[:5])
    assert torch.equal(first_epoch[first_epoch[:, 0].argsort()], x[x[:, 0].argsort()])


def test_different_seed_different_history() -> None:
    x, y = blobs()
    base = student()
    ha = fit(copy.deepcopy(base), rows(x, y), FitSettings(epochs=4, batch_size=8, seed=0), num_classes=2).history
    hb = fit(copy.deepcopy(base), rows(x, y), FitSettings(epochs=4, batch_size=8, seed=1), num_classes=2).history
    assert [r["train_loss"] for r in ha] != [r["train_loss"] for r in hb]


def test_loss_decreases() -> None:
    x, y = blobs()
    result = fit(student(), rows(x, y), FitSettings(epochs=30, batch_size=10, lr=0.02, seed=0), num_classes=2)
    losses = [r["train_loss"] for r in result.history]
    assert len(losses) == 30
    assert losses[-1] < 0.5 * losses[0]
    assert result.history[-1]["train_accuracy"] >= 0.9
    assert result.stop_reason == "completed all epochs"
    assert result.stopped_epoch == 30


def test_multiclass_fit_runs() -> None:
    x, y = blobs(num_classes=3, n=45)
    result = fit(student(3), rows(x, y), FitSettings(epochs=20, batch_size=9, lr=0.03), num_classes=3)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


# --------------------------------------------------------------------------- EarlyStopping


def steps_until_stop(stopper: EarlyStopping, values: list[float]) -> int | None:
    """1-based index of the value at which ``step`` returns True for the one member, or None."""
    for i, v in enumerate(values, start=1):
        if stopper.step([v])[0]:
            return i
    return None


@pytest.mark.parametrize(
    "mode, values, patience, min_delta, stop_at",
    [
        # min: 1.0 and 0.9 improve; 0.95, 0.95 wait 1, 2 -> stop at the 4th value with patience 2.
        ("min", [1.0, 0.9, 0.95, 0.95, 0.95], 2, 0.0, 4),
        ("min", [1.0, 0.9, 0.95, 0.95, 0.95], 3, 0.0, 5),
        ("min", [1.0, 0.9, 0.95, 0.95, 0.95], 4, 0.0, None),
        # equal to the best is not an improvement
        ("min", [1.0, 1.0], 1, 0.0, 2),
        # an improvement resets the counter: waits 1, 0 (0.8), 1, 2
        ("min", [1.0, 1.1, 0.8, 0.85, 0.9], 2, 0.0, 5),
        # min_delta 0.1: 0.95 and 0.91 are not enough (need < 0.9), 0.85 is; then 0.8 is not (need < 0.75)
        # waits 1, 2, 0 (0.85), 1, 2, 3 -> stop at the 7th value
        ("min", [1.0, 0.95, 0.91, 0.85, 0.8, 0.76, 0.8], 3, 0.1, 7),
        ("min", [1.0, 0.95, 0.91, 0.85, 0.8, 0.74, 0.8], 3, 0.1, None),
        # max: 0.5, 0.6 improve; 0.6, 0.55 wait 1, 2
        ("max", [0.5, 0.6, 0.6, 0.55], 2, 0.0, 4),
        ("max", [0.5, 0.6, 0.7, 0.8], 1, 0.0, None),
        # max with min_delta 0.05: 0.53 no (need > 0.55), 0.56 yes, 0.6 no (need > 0.61)
        ("max", [0.5, 0.53, 0.56, 0.6], 2, 0.05, None),
        ("max", [0.5, 0.53, 0.56, 0.6, 0.6], 2, 0.05, 5),
        # patience 0 never stops on a plateau
        ("min", [1.0, 2.0, 3.0, 4.0, 5.0], 0, 0.0, None),
    ],
)
def test_early_stopping_sequences(mode, values, patience, min_delta, stop_at) -> None:
    stopper = EarlyStopping("metric", mode, patience, min_delta)
    assert steps_until_stop(stopper, values) == stop_at
    if stop_at is not None:
        assert "did not improve" in stopper.reasons[0] and "metric" in stopper.reasons[0]


def test_early_stopping_state() -> None:
    stopper = EarlyStopping("val_loss", "min", 3)
    for v in [1.0, 0.9, 0.95]:
        stopper.step([v])
    assert stopper.best.tolist() == [0.9] and stopper.wait.tolist() == [1]
    restored = EarlyStopping("val_loss", "min", 3)
    restored.load_state_dict(stopper.state_dict())
    state = restored.state_dict()
    assert (state["best"].tolist(), state["wait"].tolist(), state["reasons"]) == ([0.9], [1], [""])
    assert not restored.step([0.97])[0] and restored.step([0.97])[0]


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_early_stopping_stops_on_non_finite(mode: str, bad: float) -> None:
    stopper = EarlyStopping("val_loss", mode, patience=0)
    assert not stopper.step([1.0])[0]
    assert stopper.step([bad])[0]
    assert stopper.reasons[0] == f"val_loss = {bad} is not finite"


def test_best_state_keeps_best_finite_value() -> None:
    weights = [torch.full((1, 3), float(e)) for e in range(4)]  # the weights at epoch e are all e
    best = BestState("val_loss", "min")
    best.update([1.0], 1, weights[1])
    best.update([2.0], 2, weights[2])
    best.update([math.nan], 3, weights[3])
    assert best.epoch.tolist() == [1] and best.score.tolist() == [1.0]
    assert torch.equal(best.restore(weights[3]), weights[1])


@pytest.mark.parametrize(
    "monitor, expected", [("val_loss", "min"), ("train_loss", "min"), ("val_ece", "min"), ("val_accuracy", "max"), ("val_auroc", "max")]
)
def test_monitor_mode_auto(monitor: str, expected: str) -> None:
    assert monitor_mode(monitor, "auto") == expected
    assert monitor_mode(monitor, "max") == "max"


# --------------------------------------------------------------------------- fit with validation


def test_plateau_stops_early() -> None:
    x, y = blobs()
    xv, yv = blobs(20, seed=1)
    settings = FitSettings(epochs=50, batch_size=8, optimizer="sgd", lr=0.0, patience=3)
    result = fit(student(), rows(x, y), settings, num_classes=2, validation=EvaluationRows(xv, yv))
    # lr = 0: val_loss is constant, epoch 1 is best, epochs 2, 3, 4 do not improve.
    assert result.stopped_epoch == 4
    assert len(result.history) == 4
    assert result.best_epoch == 1
    assert "did not improve" in result.stop_reason
    assert result.monitor == "val_loss"


def test_restore_best_restores_best_epoch_weights() -> None:
    x, y = blobs()
    # Validation rows with flipped labels: the better the student learns, the worse val_loss gets.
    xv, yv = x[:20], 1 - y[:20]
    model = student()
    states: dict[int, dict[str, torch.Tensor]] = {}

    def record(epoch: int, row: dict[str, float]) -> None:
        states[epoch] = copy.deepcopy(model.state_dict())

    settings = FitSettings(epochs=40, batch_size=8, lr=0.05, patience=3, restore_best=True)
    result = fit(model, rows(x, y), settings, num_classes=2, validation=EvaluationRows(xv, yv), on_epoch_end=record)
    val = [r["val_loss"] for r in result.history]
    best_epoch = int(np.argmin(val)) + 1
    assert result.best_epoch == best_epoch
    assert result.best_score == pytest.approx(min(val))
    assert result.stopped_epoch < settings.epochs
    assert result.stopped_epoch == best_epoch + settings.patience
    assert best_epoch != result.stopped_epoch
    restored = model.state_dict()
    assert all(torch.equal(restored[k], states[best_epoch][k]) for k in restored)
    assert not all(torch.equal(restored[k], states[result.stopped_epoch][k]) for k in restored)
    assert float(hard_loss(predict_logits(model, xv), yv)) == pytest.approx(result.best_score, abs=1e-6)


def test_restore_best_false_keeps_final_weights() -> None:
    x, y = blobs()
    xv, yv = x[:20], 1 - y[:20]
    model = student()
    states: dict[int, dict[str, torch.Tensor]] = {}
    settings = FitSettings(epochs=40, batch_size=8, lr=0.05, patience=3, restore_best=False)
    result = fit(
        model, rows(x, y), settings, num_classes=2, validation=EvaluationRows(xv, yv),
        on_epoch_end=lambda e, r: states.__setitem__(e, copy.deepcopy(model.state_dict())),
    )
    assert result.best_epoch is None
    assert same_weights_dict(model.state_dict(), states[result.stopped_epoch])


def same_weights_dict(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("validation", [None, "empty"])
def test_no_validation_keeps_final_weights_and_says_so(validation) -> None:
    x, y = blobs()
    val = EvaluationRows(x[:0], y[:0]) if validation == "empty" else None
    model = student()
    states: dict[int, dict[str, torch.Tensor]] = {}
    result = fit(
        model, rows(x, y), FitSettings(epochs=6, batch_size=8, patience=2), num_classes=2, validation=val,
        on_epoch_end=lambda e, r: states.__setitem__(e, copy.deepcopy(model.state_dict())),
    )
    assert any("val_loss" in m and "not logged" in m for m in result.messages), result.messages
    assert result.monitor is None and result.best_epoch is None and result.best_score is None
    assert result.stopped_epoch == 6
    assert same_weights_dict(model.state_dict(), states[6])
    assert set(result.history[0]) == {"epoch", "lr", *logged_metric_names(False)}


def test_history_rows_have_logged_metric_names() -> None:
    x, y = blobs()
    result = fit(student(), rows(x, y), FitSettings(epochs=2, batch_size=8), num_classes=2, validation=EvaluationRows(x[:10], y[:10]))
    names = logged_metric_names(True)
    assert names == ["train_loss", "train_hard_loss", "train_kl_term", *[f"train_{m}" for m in METRICS], "val_loss",
                     *[f"val_{m}" for m in METRICS]]
    for i, row in enumerate(result.history, start=1):
        assert set(row) == {"epoch", "lr", *names}
        assert row["epoch"] == i
        assert all(isinstance(row[k], float) for k in names)


def test_val_loss_in_history_is_hard_loss_of_model() -> None:
    x, y = blobs()
    model = student()
    seen: list[float] = []
    fit(
        model, rows(x, y), FitSettings(epochs=3, batch_size=8), num_classes=2, validation=EvaluationRows(x[:15], y[:15]),
        on_epoch_end=lambda e, r: seen.append(abs(r["val_loss"] - float(hard_loss(predict_logits(model, x[:15]), y[:15])))),
    )
    assert max(seen) < 1e-6


# --------------------------------------------------------------------------- non-finite loss


@pytest.mark.parametrize("num_classes", [2, 3])
def test_non_finite_loss_stops(num_classes: int) -> None:
    x, y = blobs(n=42, num_classes=num_classes)
    x[5, 1] = math.nan  # one bad row: the loss of its batch is NaN in the first epoch
    result = fit(student(num_classes), rows(x, y), FitSettings(epochs=10, batch_size=8), num_classes=num_classes)
    # The step is the batch holding row 5 in the engine's first shuffle (seed 0, batches of 8).
    g = torch.Generator().manual_seed(0)
    batches = torch.randperm(42, generator=g).split(8)
    step = next(i for i, b in enumerate(batches) if 5 in b.tolist()) + 1
    assert result.stop_reason == f"training loss is not finite at epoch 1, step {step}"
    assert result.status == "diverged" and result.diverged_at == (1, step)
    assert result.stopped_epoch == 1 and len(result.history) == 1
    assert math.isnan(result.history[0]["train_loss"])
    assert any("not finite" in m for m in result.messages)


def test_nan_teacher_logits_stop_the_fit() -> None:
    x, y = blobs()
    teacher = torch.zeros(N, 2)
    teacher[0, 0] = math.nan
    result = fit(student(), rows(x, y, teacher), FitSettings(epochs=10, batch_size=N, kl_weight=0.5), num_classes=2)
    # The KL value drops a NaN teacher probability (where(p > 0)), but its gradient is NaN, so the
    # weights are NaN after the first step and the second epoch's loss is not finite.
    assert "not finite" in result.stop_reason
    assert result.stopped_epoch <= 2


# --------------------------------------------------------------------------- batches


@pytest.mark.parametrize("batch_size, sizes", [(16, [16, 16, 16]), (6, [6] * 7), (40, [40]), (64, [64])])
def test_replacement_draws_ceil_n_over_batch_batches(batch_size: int, sizes: list[int]) -> None:
    x, y = blobs()
    model = CountingModel(student())
    fit(model, rows(x, y), FitSettings(epochs=2, batch_size=batch_size, replacement=True), num_classes=2)
    assert len(sizes) == max(1, math.ceil(N / batch_size))
    assert model.train_batches == sizes * 2


def test_without_replacement_splits_a_permutation() -> None:
    x, y = blobs()
    model = CountingModel(student())
    fit(model, rows(x, y), FitSettings(epochs=2, batch_size=16), num_classes=2)
    assert model.train_batches == [16, 16, 8] * 2


# --------------------------------------------------------------------------- distillation


def np_kl(teacher_logits: np.ndarray, student_logits: np.ndarray) -> float:
    """Mean KL(teacher || student) in float64 (binary student: one logit -> [1 - p, p])."""
    if student_logits.shape[1] == 1:
        z = student_logits[:, 0].astype(np.float64)
        student_logits = np.stack([np.zeros_like(z), z], axis=1)
    log_p = log_softmax(teacher_logits.astype(np.float64), axis=1)
    log_q = log_softmax(student_logits.astype(np.float64), axis=1)
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))


@pytest.mark.parametrize("num_classes", [2, 3])
def test_kl_term_pulls_student_towards_teacher(num_classes: int) -> None:
    x, y = blobs(n=42, num_classes=num_classes)
    target = np.log([0.85, 0.15] if num_classes == 2 else [0.8, 0.15, 0.05])
    teacher = torch.tensor(np.tile(target, (len(y), 1)), dtype=torch.float32)
    labelled = torch.arange(len(y)) < 2 * num_classes  # a few labelled rows, one per class at least
    base = student(num_classes)
    before = np_kl(teacher.numpy(), predict_logits(base, x).numpy())
    settings = dict(epochs=40, batch_size=14, lr=0.02, seed=0)
    distilled = copy.deepcopy(base)
    fit(distilled, rows(x, y, teacher, labelled), FitSettings(kl_weight=5.0, **settings), num_classes=num_classes)
    plain = copy.deepcopy(base)
    fit(plain, rows(x, y, teacher, labelled), FitSettings(kl_weight=0.0, **settings), num_classes=num_classes)
    after = np_kl(teacher.numpy(), predict_logits(distilled, x).numpy())
    without = np_kl(teacher.numpy(), predict_logits(plain, x).numpy())
    assert after < 0.5 * before
    assert after < without


# --------------------------------------------------------------------------- no host syncs in the loop


def test_fit_never_calls_item(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = blobs()
    teacher = torch.zeros(N, 2)
    calls: list[int] = []

    def no_item(self: torch.Tensor):
        calls.append(1)
        raise AssertionError("Tensor.item() called during fit")

    # SGD: torch's single-tensor Adam reads its CPU step counter with .item() itself.
    settings = FitSettings(epochs=3, batch_size=8, optimizer="sgd", lr=0.1, momentum=0.9, kl_weight=0.5, patience=2)
    monkeypatch.setattr(torch.Tensor, "item", no_item)
    with pytest.raises(AssertionError):  # the patch is effective
        torch.zeros(()).item()
    calls.clear()
    result = fit(student(), rows(x, y, teacher), settings, num_classes=2, validation=EvaluationRows(x[:10], y[:10]))
    monkeypatch.undo()
    assert calls == []
    assert len(result.history) == 3


def test_on_epoch_end_rows_are_the_history_rows() -> None:
    x, y = blobs()
    seen: list[tuple[int, dict[str, float]]] = []
    result = fit(student(), rows(x, y), FitSettings(epochs=12, batch_size=8, lr=0.05, patience=2), num_classes=2,
                 validation=EvaluationRows(x[:10], 1 - y[:10]), on_epoch_end=lambda e, r: seen.append((e, r)))
    assert result.stopped_epoch < 12  # flipped validation labels: it stops early
    assert [e for e, _ in seen] == list(range(1, result.stopped_epoch + 1))
    assert [r for _, r in seen] == result.history


def test_the_step_loop_never_reads_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside an epoch's steps no tensor is read on the host (``.item()``, ``bool()``, ``.tolist()``, ...):
    the losses stay on the device until the epoch's one read."""
    from distill.engine import loop

    stepping = {"now": False}
    reads: list[str] = []

    def guarded(name: str):
        real = getattr(torch.Tensor, name)

        def read(self: torch.Tensor, *args, **kwargs):
            if stepping["now"]:
                reads.append(name)
            return real(self, *args, **kwargs)
        return read

    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, guarded(name))
    real_step = loop._step

    def step(*args, **kwargs):
        stepping["now"] = True
        try:
            return real_step(*args, **kwargs)
        finally:
            stepping["now"] = False

    monkeypatch.setattr(loop, "_step", step)
    x, y = blobs()
    settings = FitSettings(epochs=3, batch_size=8, optimizer="adamw", lr=0.1, kl_weight=0.5, patience=2,
                           grad_clip=1.0, l1=0.01, l2=0.01)
    result = fit(student(), rows(x, y, torch.zeros(N, 2)), settings, num_classes=2,
                 validation=EvaluationRows(x[:10], y[:10]))
    assert len(result.history) == 3
    assert reads == []


# --------------------------------------------------------------------------- memory that does not grow with the history


@pytest.mark.parametrize("num_classes", [1, 2, 10])
def test_scoring_a_slice_of_epochs_at_a_time_gives_the_same_numbers(num_classes: int, monkeypatch) -> None:
    """``score_in_chunks`` of ``[epochs, M, N, K]`` outputs equals ``score_outputs`` of all of them at once, to
    the bit (NaN AUROC included: one epoch's targets may hold one class), for any slice size. The ECE, a sum of
    float32 confidences rounded to ``ECE_DECIMALS``, may differ by one rounding step (CPU sigmoid / softmax round
    a vectorised block and its tail apart, so a confidence can move by an ulp with the tensor's length)."""
    from distill.engine import history
    from distill.engine.history import score_in_chunks, score_outputs

    g = torch.Generator().manual_seed(num_classes)
    classes = max(num_classes, 2)
    outputs = torch.randn(13, 3, 50, num_classes, generator=g) * 3
    targets = torch.randint(0, classes, (3, 50), generator=g)
    targets[1] = 0  # one member's rows hold one class: AUROC NaN
    whole = score_outputs(outputs, targets, classes)
    for chunk in (1, 50 * num_classes * 3 * 4, 10**9):  # an epoch at a time, four at a time, all at once
        monkeypatch.setattr(history, "SCORE_CHUNK_ELEMENTS", chunk)
        sliced = score_in_chunks(outputs, targets, classes)
        assert sliced.keys() == whole.keys()
        for key in whole:
            ulps = 1.5e-8 if key == "ece" else 0  # one step of ECE_DECIMALS, when an ulp crosses a rounding edge
            torch.testing.assert_close(sliced[key], whole[key], rtol=0, atol=ulps, equal_nan=True)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_a_history_scored_every_epoch_equals_one_scored_after_the_fit(num_classes: int, monkeypatch) -> None:
    """Past ``_LAZY_BYTES`` of kept outputs every epoch is scored when it ends (memory independent of the
    number of epochs); the history is the one the deferred scoring gives, for train and validation rows."""
    from distill.engine import loop

    x, y = blobs(num_classes=num_classes)
    xv, yv = blobs(30, seed=1, num_classes=num_classes)
    settings = FitSettings(epochs=12, batch_size=8, lr=0.05, seed=2, monitor="val_loss")

    def history(budget: int) -> list[dict[str, float]]:
        monkeypatch.setattr(loop, "_LAZY_BYTES", budget)
        return fit(student(num_classes), rows(x, y), settings, num_classes=num_classes,
                   validation=EvaluationRows(xv, yv)).history

    deferred, eager = history(10**12), history(0)
    assert len(deferred) == len(eager) == 12
    for a, b in zip(deferred, eager, strict=True):
        assert a.keys() == b.keys() and {"train_auroc", "val_f1_macro"} <= a.keys()
        for key in a:
            assert (math.isnan(a[key]) and math.isnan(b[key])) or a[key] == pytest.approx(b[key], abs=1e-6), key


def test_metrics_scored_during_the_fit_stay_float64() -> None:
    """Monitoring a metric scores it every epoch (not after the fit); it reaches the history as the float64
    fraction of the validation rows all the same, and the KL term is monitored as a loss (minimised)."""
    from distill.engine.callbacks import monitor_mode

    x, y = blobs()
    n_val = 15
    result = fit(student(), rows(x, y), FitSettings(epochs=4, batch_size=8, monitor="val_accuracy", patience=3),
                 num_classes=2, validation=EvaluationRows(x[:n_val], y[:n_val]))
    for row in result.history:
        assert row["val_accuracy"] == round(row["val_accuracy"] * n_val) / n_val
    assert monitor_mode("train_kl_term", "auto") == "min" and monitor_mode("val_auroc", "auto") == "max"


def test_a_history_resumed_with_other_numbers_than_it_logged_is_refused() -> None:
    import numpy as np

    from distill.engine.history import History

    history = History()
    history.record(1, 0.1, ["train_loss"], np.array([[0.5]]), 3)
    history.record(2, 0.1, ["train_loss", "train_hard_loss"], np.array([[0.4], [0.3]]), 3)  # more: re-laid
    assert history.keys == ["train_loss", "train_hard_loss"] and np.isnan(history.numbers[0, 1, 0])
    with pytest.raises(ValueError, match="not the same fit"):
        history.record(3, 0.1, ["val_loss"], np.array([[0.2]]), 3)
