"""The training loop: fit a student on rows held on the device, evaluate, stop early, keep the best.

Batches are index selections into tensors that live on the device for the whole fit (no
DataLoader), and nothing inside the step loop synchronises with the host: losses are summed on
the device and read once per epoch, together with the epoch's metrics.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from distill.metrics import METRICS, classification_metrics, probabilities
from distill.losses import l1_penalty, l2_penalty
from distill.objective import distillation_loss, hard_loss, metric_loss

__all__ = [
    "TrainingRows",
    "EvaluationRows",
    "FitSettings",
    "FitResult",
    "EarlyStopping",
    "BestState",
    "fit",
    "predict_logits",
    "logged_metric_names",
]


@dataclass
class TrainingRows:
    """What the student trains on: inputs, hard targets (-1 where unlabelled), soft targets."""

    x: Tensor
    targets: Tensor
    labelled: Tensor
    teacher_logits: Tensor | None = None

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        if self.targets.shape[0] != n or self.labelled.shape[0] != n:
            raise ValueError("x, targets and labelled must have the same number of rows")
        if self.teacher_logits is not None and self.teacher_logits.shape[0] != n:
            raise ValueError("teacher_logits must have one row per training row")


@dataclass
class EvaluationRows:
    """Labelled rows to score the student on (validation or test)."""

    x: Tensor
    y: Tensor


@dataclass
class FitSettings:
    """Everything the loop needs, independent of the config file format."""

    epochs: int = 100
    batch_size: int = 32
    replacement: bool = False
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = 1e-2
    momentum: float = 0.0
    weight_decay: float = 0.0
    scheduler: Literal["none", "cosine", "step"] = "none"
    step_size: int = 30
    gamma: float = 0.1
    grad_clip: float | None = None
    kl_weight: float = 0.0
    temperature: float = 1.0
    direction: Literal["forward", "reverse"] = "forward"
    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"
    patience: int = 0
    min_delta: float = 0.0
    restore_best: bool = True
    seed: int = 0
    #: torch.autograd anomaly detection (slow; for debugging a diverging fit)
    detect_anomaly: bool = False
    #: the hard term (None: BCE / CE); see ``distill.objective.HardCriterion``
    criterion: Any = None
    #: penalties on the weights (not biases): ``l1 * sum|w| + l2 * sum w^2``
    l1: float = 0.0
    l2: float = 0.0
    #: ``triplet`` or ``margin_ranking`` on ``student.embed(x)`` of the batch's labelled rows
    metric_loss: str | None = None
    metric_weight: float = 0.0
    metric_margin: float = 1.0
    #: accuracy, macro-F1, AUROC and ECE on train and validation rows every epoch (False: losses only,
    #: plus a monitored val_* metric; what a tuning trial needs, at about half the cost)
    epoch_metrics: bool = True


@dataclass
class FitResult:
    """History per epoch and how the fit ended."""

    history: list[dict[str, float]]
    best_epoch: int | None
    best_score: float | None
    stopped_epoch: int
    stop_reason: str
    seconds: float
    monitor: str | None = None
    messages: list[str] = field(default_factory=list)
    #: ``completed``, or ``diverged`` when a training loss became non-finite (then ``diverged_at``
    #: holds the epoch and the 1-based step, and the best or last finite weights were restored)
    status: str = "completed"
    diverged_at: tuple[int, int] | None = None


def logged_metric_names(has_validation: bool) -> list[str]:
    """Per-epoch metric names the engine logs: ``train_*`` always, ``val_*`` with validation rows."""
    names = ["train_loss"] + [f"train_{m}" for m in METRICS]
    if has_validation:
        names += ["val_loss"] + [f"val_{m}" for m in METRICS]
    return names


def monitor_mode(monitor: str, mode: str) -> Literal["min", "max"]:
    """``auto``: minimise losses and calibration error, maximise the rest."""
    if mode in ("min", "max"):
        return mode  # type: ignore[return-value]
    return "min" if monitor.endswith(("loss", "ece")) else "max"


class EarlyStopping:
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs, or is not finite."""

    def __init__(self, monitor: str, mode: Literal["min", "max"], patience: int, min_delta: float = 0.0) -> None:
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.wait = 0
        self.reason = ""

    def improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def step(self, value: float) -> bool:
        """Record one epoch's value; True when the fit should stop."""
        if not math.isfinite(value):
            self.reason = f"{self.monitor} = {value} is not finite"
            return True
        if self.improved(value):
            self.best = value
            self.wait = 0
            return False
        self.wait += 1
        if self.patience > 0 and self.wait >= self.patience:
            self.reason = f"{self.monitor} did not improve by {self.min_delta} for {self.patience} epochs"
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "reason": self.reason}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait, self.reason = float(state["best"]), int(state["wait"]), str(state["reason"])


class BestState:
    """Keeps a copy of the model's weights at the best monitored value."""

    def __init__(self, monitor: str, mode: Literal["min", "max"]) -> None:
        self.monitor = monitor
        self.mode = mode
        self.score = math.inf if mode == "min" else -math.inf
        self.epoch: int | None = None
        self.weights: dict[str, Tensor] | None = None

    def update(self, model: nn.Module, value: float, epoch: int) -> None:
        better = value < self.score if self.mode == "min" else value > self.score
        if math.isfinite(value) and better:
            self.score = value
            self.epoch = epoch
            self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def restore(self, model: nn.Module) -> None:
        if self.weights is not None:
            model.load_state_dict(self.weights)

    def state_dict(self) -> dict[str, Any]:
        return {"score": self.score, "epoch": self.epoch, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.score, self.epoch, self.weights = state["score"], state["epoch"], state["weights"]


def _optimizer(model: nn.Module, s: FitSettings) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    if s.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    raise ValueError(f"train.optimizer must be one of sgd, adam, adamw, got {s.optimizer!r}")


def _scheduler(opt: torch.optim.Optimizer, s: FitSettings) -> torch.optim.lr_scheduler.LRScheduler | None:
    if s.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.epochs)
    if s.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=s.step_size, gamma=s.gamma)
    return None


@torch.inference_mode()
def predict_logits(model: nn.Module, x: Tensor, batch_size: int = 8192) -> Tensor:
    """The model's outputs on ``x`` in eval mode, batched, without autograd."""
    was_training = model.training
    model.eval()
    try:
        outs = [model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs) if outs else x.new_zeros((0, 1))


@torch.inference_mode()
def _epoch_metrics(
    model: nn.Module, rows: EvaluationRows, prefix: str, num_classes: int, with_loss: bool, full: bool = True
) -> dict[str, Tensor]:
    logits = predict_logits(model, rows.x)
    out: dict[str, Tensor] = {}
    if full:
        out = {f"{prefix}_{k}": v for k, v in classification_metrics(probabilities(logits), rows.y, num_classes).items()}
    if with_loss:
        out[f"{prefix}_loss"] = hard_loss(logits, rows.y)
    return out


def fit(
    model: nn.Module,
    train: TrainingRows,
    settings: FitSettings,
    *,
    num_classes: int,
    validation: EvaluationRows | None = None,
    progress: bool = False,
    description: str = "fit",
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``model`` in place on ``train``; returns the per-epoch history and how it ended.

    The loss is ``distillation_loss`` with ``settings.kl_weight`` (0 gives the hard loss alone).
    Batches are drawn by index with a generator seeded from ``settings.seed``, so two fits with
    the same seed see the same batches. With ``restore_best`` the weights at the best monitored
    epoch are restored at the end (when the monitored metric is logged).
    """
    if settings.detect_anomaly:
        with torch.autograd.set_detect_anomaly(True):
            return fit(model, train, dataclasses.replace(settings, detect_anomaly=False), num_classes=num_classes,
                       validation=validation, progress=progress, description=description, on_epoch_end=on_epoch_end)
    from tqdm.auto import tqdm

    started = time.perf_counter()
    device = train.x.device
    n = train.x.shape[0]
    s = settings
    generator = torch.Generator(device=device)
    generator.manual_seed(s.seed)
    opt = _optimizer(model, s)
    sched = _scheduler(opt, s)
    mode = monitor_mode(s.monitor, s.mode)
    logged = logged_metric_names(validation is not None and validation.x.shape[0] > 0)
    tracks_monitor = s.monitor in logged
    stopper = EarlyStopping(s.monitor, mode, s.patience, s.min_delta) if tracks_monitor else None
    best = BestState(s.monitor, mode) if tracks_monitor and s.restore_best else None
    messages: list[str] = []
    if not tracks_monitor and (s.patience > 0 or s.restore_best):
        messages.append(f"{s.monitor} is not logged (no validation rows): keeping the final weights, no early stopping")

    labelled_rows = train.labelled.nonzero().squeeze(1)
    train_eval = EvaluationRows(train.x[labelled_rows], train.targets[labelled_rows])
    teacher = train.teacher_logits
    kl_weight = float(s.kl_weight)
    use_teacher = teacher is not None and kl_weight > 0
    steps = max(1, math.ceil(n / s.batch_size))

    history: list[dict[str, float]] = []
    stop_reason = "completed all epochs"
    epoch = 0
    status = "completed"
    diverged_at: tuple[int, int] | None = None
    last_good = {k: v.detach().clone() for k, v in model.state_dict().items()}  # for a diverging fit
    last_good_epoch = 0
    bar = tqdm(range(1, s.epochs + 1), desc=description, disable=not progress, leave=False, dynamic_ncols=True)
    for epoch in bar:
        model.train()
        if s.replacement:
            batches = torch.randint(n, (steps, s.batch_size), generator=generator, device=device).unbind(0)
        else:
            batches = torch.randperm(n, generator=generator, device=device).split(s.batch_size)
        loss_sum = torch.zeros((), device=device)
        # Which steps gave a non-finite loss: set on the device, read with the epoch's numbers.
        nonfinite = torch.zeros(len(batches), dtype=torch.bool, device=device)
        for step, idx in enumerate(batches):
            xb = train.x[idx]
            logits = model(xb)
            if use_teacher:
                loss = distillation_loss(
                    logits,
                    teacher[idx],  # type: ignore[index]
                    train.targets[idx],
                    kl_weight=kl_weight,
                    temperature=s.temperature,
                    direction=s.direction,
                    labelled_mask=train.labelled[idx],
                    criterion=s.criterion,
                )
            elif s.criterion is not None:
                loss = s.criterion(logits, train.targets[idx], train.labelled[idx])
            else:
                loss = hard_loss(logits, train.targets[idx], labelled_mask=train.labelled[idx])
            if s.metric_loss is not None and s.metric_weight > 0:
                loss = loss + s.metric_weight * metric_loss(
                    model.embed(xb), train.targets[idx], train.labelled[idx], kind=s.metric_loss,  # type: ignore[operator]
                    margin=s.metric_margin,
                )
            if s.l1 > 0:
                loss = loss + s.l1 * l1_penalty(model)
            if s.l2 > 0:
                loss = loss + s.l2 * l2_penalty(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if s.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            opt.step()
            loss_sum += loss.detach()
            nonfinite[step] = ~torch.isfinite(loss.detach())
        lr = float(opt.param_groups[0]["lr"])  # the rate this epoch ran with
        if sched is not None:
            sched.step()

        values: dict[str, Tensor] = {"train_loss": loss_sum / len(batches)}
        if s.epoch_metrics:
            values.update(_epoch_metrics(model, train_eval, "train", num_classes, with_loss=False))
        if validation is not None and validation.x.shape[0] > 0:
            # Without epoch_metrics only val_loss (and a monitored val_* metric) is computed.
            lean = not s.epoch_metrics and not (s.monitor.startswith("val_") and s.monitor != "val_loss")
            values.update(_epoch_metrics(model, validation, "val", num_classes, with_loss=True, full=not lean))
        keys = list(values)
        numbers = torch.stack([values[k].float() for k in keys]).tolist()  # one host sync per epoch
        row: dict[str, float] = {"epoch": epoch, "lr": lr}
        row.update(dict(zip(keys, numbers)))
        history.append(row)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
        if progress:
            bar.set_postfix(loss=f"{row['train_loss']:.4f}")
        if not math.isfinite(row["train_loss"]):
            first_step = int(nonfinite.nonzero()[0, 0]) + 1 if bool(nonfinite.any()) else 1  # only when diverged
            status = "diverged"
            diverged_at = (epoch, first_step)
            restored = best.epoch if best is not None and best.weights is not None else last_good_epoch
            stop_reason = f"training loss is not finite at epoch {epoch}, step {first_step}"
            messages.append(
                stop_reason + (f"; stopped and restored the weights of epoch {restored}" if restored else
                               "; stopped before any finite epoch (the initial weights are kept)")
            )
            if best is None or best.weights is None:
                model.load_state_dict(last_good)
            break
        last_good = {k: v.detach().clone() for k, v in model.state_dict().items()}
        last_good_epoch = epoch
        if best is not None:
            best.update(model, row[s.monitor], epoch)
        if stopper is not None and stopper.step(row[s.monitor]):
            stop_reason = stopper.reason
            break
    bar.close()
    if best is not None and best.weights is not None:
        best.restore(model)
    return FitResult(
        history=history,
        best_epoch=best.epoch if best is not None else None,
        best_score=best.score if best is not None and best.epoch is not None else None,
        stopped_epoch=epoch,
        stop_reason=stop_reason,
        seconds=time.perf_counter() - started,
        monitor=s.monitor if tracks_monitor else None,
        messages=messages,
        status=status,
        diverged_at=diverged_at,
    )


def clone_module(model: nn.Module) -> nn.Module:
    """An independent copy with identical initial weights (for the no-distillation baseline)."""
    return copy.deepcopy(model)
