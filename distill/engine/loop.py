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
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from distill.engine.members import Members, SingleMember, StackedMembers, stack_problem
from distill.engine.optim import LeanOptimizer, learning_rate
from distill.losses.fused import MemberObjective
from distill.losses.objective import metric_loss
from distill.metrics.batched import batch_classification_metrics
from distill.metrics.classification import METRICS

__all__ = [
    "TrainingRows",
    "EvaluationRows",
    "FitSettings",
    "FitResult",
    "EarlyStopping",
    "BestState",
    "fit",
    "fit_many",
    "stack_problem_for",
    "FitInterrupted",
    "FIT_STATE_FORMAT",
    "predict_logits",
    "logged_metric_names",
]


@dataclass
class TrainingRows:
    """What the student trains on: inputs, hard targets (-1 where unlabelled), soft targets.

    ``targets`` / ``labelled`` are the true labels: the train_* metrics are scored on them. The hard
    term of the loss reads ``hard_targets`` / ``hard_labelled`` when given (a control's rows: the
    teacher's argmax as pseudo-labels, or no row at all for the KL term alone), else the true labels.
    """

    x: Tensor
    targets: Tensor
    labelled: Tensor
    teacher_logits: Tensor | None = None
    hard_targets: Tensor | None = None
    hard_labelled: Tensor | None = None

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        if self.targets.shape[0] != n or self.labelled.shape[0] != n:
            raise ValueError("x, targets and labelled must have the same number of rows")
        if self.teacher_logits is not None and self.teacher_logits.shape[0] != n:
            raise ValueError("teacher_logits must have one row per training row")
        if (self.hard_targets is None) != (self.hard_labelled is None):
            raise ValueError("hard_targets and hard_labelled come together")
        if self.hard_targets is not None and (self.hard_targets.shape[0] != n or self.hard_labelled.shape[0] != n):
            raise ValueError("hard_targets and hard_labelled must have one entry per training row")

    def hard_rows(self) -> tuple[Tensor, Tensor]:
        """The hard term's targets and mask: ``hard_*`` when given, else the true labels."""
        if self.hard_targets is None:
            return self.targets, self.labelled
        return self.hard_targets, self.hard_labelled  # type: ignore[return-value]


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
    #: the hard term (None: BCE / CE); see ``distill.losses.objective.HardCriterion``
    criterion: Any = None
    #: penalties on the weights (not biases): ``l1 * sum|w| + l2 * sum w^2``
    l1: float = 0.0
    l2: float = 0.0
    #: ``triplet`` or ``margin_ranking`` on ``student.embed(x)`` of the batch's labelled rows
    metric_loss: str | None = None
    metric_weight: float = 0.0
    metric_margin: float = 1.0
    #: "bf16": forward passes under bfloat16 autocast (the objective stays float32)
    precision: Literal["fp32", "bf16"] = "fp32"
    #: torch.compile the forward pass
    compile: bool = False
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


def _probabilities(logits: Tensor) -> Tensor:
    """``[..., N, C]`` class probabilities from ``[..., N, 1]`` (binary) or ``[..., N, C]`` outputs."""
    if logits.shape[-1] == 1:
        p = torch.sigmoid(logits[..., 0])
        return torch.stack([1.0 - p, p], dim=-1)
    return torch.softmax(logits, dim=-1)


#: Settings that may differ between the members of one stacked fit.
_PER_MEMBER = ("kl_weight", "temperature", "seed")
#: Deferred per-epoch probabilities beyond this many bytes are scored every epoch instead.
_LAZY_BYTES = 256 * 2**20


def stack_problem_for(
    models: Sequence[nn.Module],
    trains: Sequence[TrainingRows],
    settings: Sequence[FitSettings],
    validations: Sequence[EvaluationRows | None],
) -> str | None:
    """Why these fits cannot run as one stacked fit (None when they can): one line for the log."""
    problem = stack_problem(models)
    if problem is not None:
        return problem
    neutral = {k: 0 for k in _PER_MEMBER}
    first = dataclasses.replace(settings[0], **neutral)
    if any(dataclasses.replace(s, **neutral) != first for s in settings[1:]):
        return "the fits differ in more than kl_weight, temperature and seed"
    if first.criterion is not None or (first.metric_loss is not None and first.metric_weight > 0):
        return "a configured hard criterion or metric loss trains one student at a time"
    if first.detect_anomaly:
        return "anomaly detection is on"

    def shape(t: Tensor | None) -> tuple[Any, ...] | None:
        return None if t is None else (tuple(t.shape), t.dtype, t.device)

    t0, v0 = trains[0], validations[0]
    count0 = int(t0.labelled.sum())
    for t, v in zip(trains, validations, strict=True):
        if (shape(t.x), shape(t.targets), shape(t.teacher_logits)) != (shape(t0.x), shape(t0.targets),
                                                                      shape(t0.teacher_logits)):
            return "the students' training rows differ in shape"
        if int(t.labelled.sum()) != count0:
            return "the students have different numbers of labelled rows"
        if (v is None) != (v0 is None) or (v is not None and v0 is not None and
                                           (shape(v.x), shape(v.y)) != (shape(v0.x), shape(v0.y))):
            return "the students' validation rows differ in shape"
    return None


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
    return fit_many([model], [train], [settings], num_classes=num_classes, validations=[validation],
                    progress=progress, description=description, on_epoch_end=on_epoch_end)[0]


def _take(x: Tensor, idx: Tensor, offsets: Tensor | None) -> Tensor:
    """Rows ``idx`` ``[M, B]`` of each member's ``x`` ``[M, n, ...]`` (``offsets``: ``m * n`` per member)."""
    if offsets is None:
        return x[0].index_select(0, idx[0]).unsqueeze(0)
    m, b = idx.shape
    rows = x.reshape(m * x.shape[1], *x.shape[2:]).index_select(0, (idx + offsets).reshape(-1))
    return rows.reshape(m, b, *x.shape[2:])


def _batches(generators: list[torch.Generator], n: int, s: FitSettings, steps: int) -> list[Tensor]:
    """One epoch's batches ``[M, B]``, member m drawing from its own generator exactly as a lone fit would."""
    device = generators[0].device
    if s.replacement:
        draws = [torch.randint(n, (steps, s.batch_size), generator=g, device=device) for g in generators]
        return list(torch.stack(draws, dim=1).unbind(0))
    perms = [torch.randperm(n, generator=g, device=device) for g in generators]
    return list(torch.stack(perms).split(s.batch_size, dim=1))


def fit_many(
    models: Sequence[nn.Module],
    trains: Sequence[TrainingRows],
    settings: Sequence[FitSettings],
    *,
    num_classes: int,
    validations: Sequence[EvaluationRows | None] | None = None,
    progress: bool = False,
    description: str = "fit",
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_every: int = 1,
    checkpoint_due: Callable[[int], bool] | None = None,
    resume: dict[str, Any] | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> list[FitResult]:
    """Train several students of one architecture together, each exactly as ``fit`` would alone.

    Member ``m`` trains ``models[m]`` on ``trains[m]`` with ``settings[m]`` (which may differ in
    ``kl_weight``, ``temperature`` and ``seed`` only; see ``stack_problem_for``), keeps its own
    batches, early stopping, best state and divergence check, and ends with its own weights. With
    one model this is an ordinary fit on the module itself.

    ``checkpoint(state)`` receives the whole fit state every ``checkpoint_every`` epochs (when
    ``checkpoint_due(epoch)`` agrees, if given: the state is built only then; tensors and
    plain values only: safe to save and to load with ``weights_only=True``); ``resume=state``
    continues from one, to the same numbers as an uninterrupted fit. When ``stop_requested()`` turns
    true the fit stops after the current step, hands that step's state to ``checkpoint`` and raises
    ``FitInterrupted``.
    """
    models, trains, settings = list(models), list(trains), list(settings)
    validations = list(validations) if validations is not None else [None] * len(models)
    m_count = len(models)
    if not (m_count == len(trains) == len(settings) == len(validations)) or m_count == 0:
        raise ValueError("fit_many needs one training set, settings and validation entry per model")
    s = settings[0]
    if s.detect_anomaly:
        with torch.autograd.set_detect_anomaly(True):
            plain = [dataclasses.replace(x, detect_anomaly=False) for x in settings]
            return fit_many(models, trains, plain, num_classes=num_classes, validations=validations,
                            progress=progress, description=description, on_epoch_end=on_epoch_end,
                            checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                            checkpoint_due=checkpoint_due, resume=resume,
                            stop_requested=stop_requested)
    if m_count > 1:
        problem = stack_problem_for(models, trains, settings, validations)
        if problem is not None:
            raise ValueError(f"these fits cannot be stacked: {problem}")
        if on_epoch_end is not None:
            raise ValueError("on_epoch_end is for a single fit")
    from distill.progress import progress_bar as tqdm

    started = time.perf_counter()
    train0 = trains[0]
    device = train0.x.device
    n = train0.x.shape[0]
    members: Members = SingleMember(models[0]) if m_count == 1 else StackedMembers(models)
    if s.compile:
        members.compile()
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if s.precision == "bf16" else nullcontext
    row_offsets = None if isinstance(members, SingleMember) else torch.arange(m_count, device=device).unsqueeze(1) * n

    def stacked(tensors: list[Tensor]) -> Tensor:
        return tensors[0].unsqueeze(0) if m_count == 1 else torch.stack(tensors)

    x = stacked([t.x for t in trains])
    try:
        num_outputs = int(members.evaluate(x[:, :1]).shape[-1])
    except RuntimeError as exc:
        if m_count == 1:
            raise
        raise ValueError(f"these fits cannot be stacked: the student does not run under torch.func.vmap "
                         f"({str(exc).splitlines()[0]})") from None
    teacher = None
    if train0.teacher_logits is not None and any(st.kl_weight > 0 for st in settings):
        teacher = stacked([t.teacher_logits if t.teacher_logits.ndim == 2 else t.teacher_logits.unsqueeze(-1)
                           for t in trains])  # type: ignore[union-attr]
        ok = teacher.shape[-1] in ((1, 2) if num_outputs == 1 else (num_outputs,))
        if not ok:
            raise ValueError(f"teacher_logits have {teacher.shape[-1]} columns per row; the student gives "
                             f"{num_outputs} output(s)")
    hard_rows = [t.hard_rows() for t in trains]
    hard_targets0, hard_labelled0 = hard_rows[0]
    objective = MemberObjective(
        stacked([h[0] for h in hard_rows]), stacked([h[1] for h in hard_rows]), teacher,
        [st.kl_weight for st in settings], [st.temperature for st in settings], s.direction, num_outputs,
    )
    labelled_rows = [t.labelled.nonzero().squeeze(1) for t in trains]
    x_train_eval = stacked([t.x[r] for t, r in zip(trains, labelled_rows, strict=True)])
    y_train_eval = stacked([t.targets[r] for t, r in zip(trains, labelled_rows, strict=True)])
    has_val = validations[0] is not None and validations[0].x.shape[0] > 0
    x_val = stacked([v.x for v in validations]) if has_val else None  # type: ignore[union-attr]
    y_val = stacked([v.y for v in validations]) if has_val else None  # type: ignore[union-attr]

    generators = [torch.Generator(device=device).manual_seed(st.seed) for st in settings]
    opt = LeanOptimizer(members.parameters(), s.optimizer, s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    mode = monitor_mode(s.monitor, s.mode)
    logged = logged_metric_names(has_val)
    tracks_monitor = s.monitor in logged
    stoppers = [EarlyStopping(s.monitor, mode, s.patience, s.min_delta) for _ in range(m_count)] \
        if tracks_monitor else None
    keeps_best = tracks_monitor and s.restore_best

    # Which metrics, when: a monitored or observed (on_epoch_end) metric every epoch; the rest
    # from probabilities kept per epoch and scored in one batched call after the last epoch.
    monitor_is_metric = tracks_monitor and not s.monitor.endswith("_loss")
    train_metrics = s.epoch_metrics or (monitor_is_metric and s.monitor.startswith("train_"))
    val_metrics = has_val and (s.epoch_metrics or (monitor_is_metric and s.monitor.startswith("val_")))
    per_epoch_bytes = 4 * m_count * num_classes * (x_train_eval.shape[1] + (x_val.shape[1] if has_val else 0))
    eager = on_epoch_end is not None or monitor_is_metric or per_epoch_bytes * s.epochs > _LAZY_BYTES
    targets_of = {"train": y_train_eval, "val": y_val}

    use_penalty = s.l1 > 0 or s.l2 > 0
    use_metric_loss = s.metric_loss is not None and s.metric_weight > 0
    steps = max(1, math.ceil(n / s.batch_size))
    sign = 1.0 if mode == "max" else -1.0
    p = _Progress.start(m_count, members.flat())
    if not tracks_monitor and (s.patience > 0 or s.restore_best):
        for box in p.messages:
            box.append(f"{s.monitor} is not logged (no validation rows): keeping the final weights, no early stopping")
    partial: dict[str, Any] | None = None
    if resume is not None:
        p = _Progress.from_state(resume["progress"])
        members.restore(resume["weights"].to(device))
        opt.load_state_dict(resume["optimizer"])
        for g, state in zip(generators, resume["generators"], strict=True):
            g.set_state(state)
        _set_rng(resume["rng"])
        if stoppers is not None:
            for stopper, state in zip(stoppers, resume["stoppers"], strict=True):
                stopper.load_state_dict(state)
        partial = resume["partial"]

    def state(partial_epoch: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "format": FIT_STATE_FORMAT,
            "members": m_count,
            "weights": members.flat(),
            "optimizer": opt.state_dict(),
            "generators": [g.get_state() for g in generators],
            "rng": _get_rng(device),
            "stoppers": [st.state_dict() for st in stoppers] if stoppers is not None else None,
            "progress": p.state_dict(),
            "partial": partial_epoch,
        }

    epoch = p.epoch
    bar = tqdm(range(p.epoch + 1, s.epochs + 1), desc=description, disable=not progress, leave=False,
               dynamic_ncols=True)
    for epoch in bar:
        opt.lr = lr = learning_rate(s.lr, epoch, s.scheduler, s.epochs, s.step_size, s.gamma)
        if partial is not None and partial["epoch"] == epoch:  # resuming inside this epoch
            batches, first, step_losses = list(partial["batches"]), int(partial["step"]), list(partial["losses"])
        else:
            batches, first, step_losses = _batches(generators, n, s, steps), 0, []
        partial = None
        for step in range(first, len(batches)):
            idx = batches[step]
            xb = _take(x, idx, row_offsets)
            with autocast():
                z = members.forward(xb).float()
            hard = None
            if s.criterion is not None:  # a single member: see stack_problem_for
                i0 = idx[0]
                hard = s.criterion(z[0], hard_targets0[i0], hard_labelled0[i0]).reshape(1)
            loss = objective(z, idx, hard)
            if use_metric_loss:
                i0 = idx[0]
                loss = loss + s.metric_weight * metric_loss(
                    members.embed(xb), train0.targets[i0], train0.labelled[i0],  # type: ignore[attr-defined]
                    kind=s.metric_loss, margin=s.metric_margin,  # type: ignore[arg-type]
                )
            if use_penalty:
                loss = loss + members.penalty(s.l1, s.l2)
            members.zero_grad()
            loss.sum().backward()
            if s.grad_clip is not None:
                members.clip_grad(s.grad_clip)
            opt.step()
            step_losses.append(loss.detach())
            if stop_requested is not None and stop_requested():
                snapshot = state({"epoch": epoch, "step": step + 1, "batches": batches, "losses": step_losses})
                if checkpoint is not None:
                    checkpoint(snapshot)
                members.finish()
                bar.close()
                raise FitInterrupted(epoch, step + 1, snapshot)
        losses = torch.stack(step_losses)  # [steps, M]

        values: dict[str, Tensor] = {"train_loss": losses.mean(0)}
        for split, x_eval, wanted in (("train", x_train_eval, train_metrics), ("val", x_val, val_metrics)):
            if x_eval is None or (not wanted and split == "train"):
                continue
            logits = members.evaluate(x_eval)
            if split == "val":
                values["val_loss"] = MemberObjective.evaluation_loss(logits, y_val)  # type: ignore[arg-type]
            if not wanted:
                continue
            if eager:
                scores = batch_classification_metrics(_probabilities(logits), targets_of[split], num_classes)
                values.update({f"{split}_{k}": v for k, v in scores.items()})
            else:
                p.keep(split, epoch, logits, s.epochs)  # scored after the last epoch
        p.keys = list(values)
        numbers = torch.stack([values[k].float() for k in p.keys]).cpu().numpy().astype(np.float64)  # one sync
        p.record(epoch, lr, numbers, s.epochs)
        column = {k: numbers[i] for i, k in enumerate(p.keys)}
        if on_epoch_end is not None:
            on_epoch_end(epoch, {"epoch": epoch, "lr": lr, **{k: float(v[0]) for k, v in column.items()}})
        if progress and m_count == 1:
            bar.set_postfix(loss=f"{column['train_loss'][0]:.4f}")

        # Bookkeeping per member, as a lone fit does it: divergence, last good weights, best, stopping.
        finite = np.isfinite(column["train_loss"])
        weights = members.flat()
        ending = np.zeros(m_count, dtype=bool)
        for i in np.flatnonzero(p.active & ~finite):
            bad = (~torch.isfinite(losses[:, i])).nonzero()
            first_step = int(bad[0, 0]) + 1 if bad.numel() else 1
            p.status[i] = "diverged"
            p.diverged_at[i] = (epoch, first_step)
            restored = p.best_epoch[i] if p.best_epoch[i] is not None else int(p.last_good_epoch[i])
            p.stop_reason[i] = f"training loss is not finite at epoch {epoch}, step {first_step}"
            p.messages[i].append(p.stop_reason[i] + (
                f"; stopped and restored the weights of epoch {restored}" if restored
                else "; stopped before any finite epoch (the initial weights are kept)"))
            ending[i] = True
        healthy = p.active & finite
        p.last_good = _where_rows(healthy, weights, p.last_good)
        p.last_good_epoch[healthy] = epoch
        if tracks_monitor:
            monitored = column[s.monitor]
            if keeps_best:
                better = healthy & np.isfinite(monitored) & (sign * monitored > p.best_score)
                if better.any():
                    p.best_weights = _where_rows(better, weights, p.best_weights)
                    p.best_score[better] = sign * monitored[better]
                    for i in np.flatnonzero(better):
                        p.best_epoch[i] = epoch
            for i in np.flatnonzero(healthy):
                if stoppers[i].step(float(monitored[i])):  # type: ignore[index]
                    p.stop_reason[i] = stoppers[i].reason  # type: ignore[index]
                    ending[i] = True
        if ending.any():
            p.stopped_epoch[ending] = epoch
            p.active &= ~ending
            if p.active.any():
                p.at_stop = _where_rows(ending, weights, p.at_stop)
        p.epoch = epoch
        if not p.active.any():
            break
        if checkpoint is not None and epoch % checkpoint_every == 0 and epoch < s.epochs and (
                checkpoint_due is None or checkpoint_due(epoch)):
            checkpoint(state(None))
    bar.close()
    p.stopped_epoch[p.active] = epoch
    active, stopped_epoch, status, best_epoch = p.active, p.stopped_epoch, p.status, p.best_epoch

    # Final weights: best monitored, else last finite (diverged), else where the member stopped.
    final = members.flat().clone()
    if p.at_stop is not None:
        final = _where_rows(~active & (stopped_epoch < epoch), p.at_stop, final)
    diverged = np.array([st == "diverged" for st in status])
    final = _where_rows(diverged, p.last_good, final)
    has_best = np.array([b is not None for b in best_epoch])
    if p.best_weights is not None:
        final = _where_rows(has_best, p.best_weights, final)
    members.load(final)
    members.finish()

    keys, epochs_seen, best_score, stop_reason, diverged_at, messages = (
        p.keys, p.epochs_seen, p.best_score, p.stop_reason, p.diverged_at, p.messages)
    table = p.numbers[: p.epoch] if p.numbers is not None else np.zeros((0, len(keys), m_count))  # [E, keys, M]
    lazy = _score_kept({k: v[: p.epoch] for k, v in p.kept.items()}, targets_of, num_classes)  # name -> [E, M]
    order = logged_metric_names(has_val)
    seconds = (time.perf_counter() - started) / m_count
    results = []
    for i in range(m_count):
        history = []
        for e in range(int(stopped_epoch[i])):
            row: dict[str, float] = {"epoch": epochs_seen[e][0], "lr": epochs_seen[e][1]}
            found = {k: float(table[e, j, i]) for j, k in enumerate(keys)}
            found.update({k: float(v[e, i]) for k, v in lazy.items()})
            row.update({k: found[k] for k in order if k in found})
            history.append(row)
        results.append(FitResult(
            history=history,
            best_epoch=best_epoch[i],
            best_score=(sign * best_score[i]) if best_epoch[i] is not None else None,
            stopped_epoch=int(stopped_epoch[i]),
            stop_reason=stop_reason[i],
            seconds=seconds,
            monitor=s.monitor if tracks_monitor else None,
            messages=messages[i],
            status=status[i],
            diverged_at=diverged_at[i],
        ))
    return results


#: The layout of the state ``fit_many`` hands to ``checkpoint`` and takes as ``resume``.
FIT_STATE_FORMAT = "distill.fit-state/1"


class FitInterrupted(Exception):
    """A fit stopped on request after ``step`` of ``epoch``; ``state`` resumes it."""

    def __init__(self, epoch: int, step: int, state: dict[str, Any]) -> None:
        super().__init__(f"interrupted at epoch {epoch}, step {step}")
        self.epoch, self.step, self.state = epoch, step, state


def _get_rng(device: torch.device) -> dict[str, Any]:
    """The global random streams a student may draw from (dropout)."""
    out: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def _set_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


@dataclass
class _Progress:
    """Per-member bookkeeping of a fit so far: what a checkpoint holds besides weights and optimizer."""

    epoch: int
    best_score: np.ndarray  # sign * monitored value: higher is better
    best_epoch: list[int | None]
    best_weights: Tensor | None
    last_good: Tensor
    last_good_epoch: np.ndarray
    at_stop: Tensor | None  # weights of members that stopped while others trained on
    active: np.ndarray
    stopped_epoch: np.ndarray
    stop_reason: list[str]
    status: list[str]
    diverged_at: list[tuple[int, int] | None]
    messages: list[list[str]]
    epochs_seen: list[tuple[int, float]]
    numbers: np.ndarray | None  # [epochs, keys, M], filled up to ``epoch``
    keys: list[str]
    kept: dict[str, Tensor]  # split -> [epochs, M, N, K] outputs, filled up to ``epoch``

    def record(self, epoch: int, lr: float, numbers: np.ndarray, capacity: int) -> None:
        """One epoch's numbers ``[keys, M]`` (one preallocated array: a checkpoint is one tensor, not E)."""
        if self.numbers is None or self.numbers.shape[0] < capacity:
            grown = np.full((capacity, *numbers.shape), np.nan)
            if self.numbers is not None:
                grown[: epoch - 1] = self.numbers[: epoch - 1]
            self.numbers = grown
        self.numbers[epoch - 1] = numbers
        self.epochs_seen.append((epoch, lr))

    def keep(self, split: str, epoch: int, outputs: Tensor, capacity: int) -> None:
        """One epoch's outputs ``[M, N, K]`` on ``split``, to be scored after the last epoch."""
        store = self.kept.get(split)
        if store is None or store.shape[0] < capacity:
            grown = outputs.new_empty((capacity, *outputs.shape))
            if store is not None:
                grown[: store.shape[0]] = store
            store = self.kept[split] = grown
        store[epoch - 1] = outputs

    @classmethod
    def start(cls, m: int, weights: Tensor) -> _Progress:
        return cls(
            epoch=0, best_score=np.full(m, -math.inf), best_epoch=[None] * m, best_weights=None,
            last_good=weights, last_good_epoch=np.zeros(m, dtype=np.int64), at_stop=None,
            active=np.ones(m, dtype=bool), stopped_epoch=np.zeros(m, dtype=np.int64),
            stop_reason=["completed all epochs"] * m, status=["completed"] * m, diverged_at=[None] * m,
            messages=[[] for _ in range(m)], epochs_seen=[], numbers=None, keys=[], kept={},
        )

    def state_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # a snapshot: lists copied
        out.update({k: list(v) for k, v in out.items() if isinstance(v, list)})
        for name in ("best_score", "last_good_epoch", "active", "stopped_epoch"):
            out[name] = torch.from_numpy(out[name].copy())
        out["numbers"] = torch.from_numpy(self.numbers[: self.epoch].copy()) if self.numbers is not None else None
        out["messages"] = [list(m) for m in self.messages]
        out["kept"] = {k: v[: self.epoch].clone() for k, v in self.kept.items()}
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Progress:
        values = dict(state)
        for name in ("best_score", "last_good_epoch", "active", "stopped_epoch"):
            values[name] = values[name].numpy().copy()
        values["numbers"] = values["numbers"].numpy().copy() if values["numbers"] is not None else None
        values["diverged_at"] = [tuple(d) if d is not None else None for d in values["diverged_at"]]
        values["epochs_seen"] = [tuple(e) for e in values["epochs_seen"]]
        return cls(**values)


def _where_rows(mask: np.ndarray, new: Tensor, old: Tensor | None) -> Tensor:
    """``new`` in the member rows where ``mask`` is True, ``old`` elsewhere (neither is modified)."""
    if mask.all() or old is None:
        return new
    if not mask.any():
        return old
    rows = torch.as_tensor(mask, device=new.device).unsqueeze(1)
    return torch.where(rows, new, old)


def _score_kept(kept: dict[str, Tensor], targets: dict[str, Tensor | None],
                num_classes: int) -> dict[str, np.ndarray]:
    """Metrics of the outputs ``[E, M, N, K]`` kept per epoch, all epochs in one batched call per split."""
    out: dict[str, np.ndarray] = {}
    for split, outputs in kept.items():
        if outputs.shape[0] == 0:
            continue
        scores = batch_classification_metrics(_probabilities(outputs), targets[split],  # type: ignore[arg-type]
                                              num_classes)
        numbers = torch.stack(list(scores.values())).cpu().numpy().astype(np.float64)  # [metrics, E, M]
        out.update({f"{split}_{k}": numbers[j] for j, k in enumerate(scores)})
    return out


def clone_module(model: nn.Module) -> nn.Module:
    """An independent copy with identical initial weights (for the no-distillation baseline)."""
    return copy.deepcopy(model)
