"""The training loop: fit a student, or M students stacked, on rows held on the device.

``fit_many`` runs in phases: set up (members, stacked rows, objective, optimizer; a resumed state
loaded), then per epoch its steps (``_train_epoch``) and its end (``_end_epoch``: evaluate, record,
``on_epoch_end``, then judge each member: divergence, best state, early stopping, all vectorised
over the members in ``distill.engine.callbacks``), then finish (each member's final weights and
``FitResult``). Batches are index selections into tensors that live on the device for the whole
fit (no DataLoader), and nothing inside the step loop synchronises with the host: losses stay on
the device and are read once per epoch, together with the epoch's metrics.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from distill.engine.callbacks import BestState, Divergence, EarlyStopping, Stops, monitor_mode
from distill.engine.fit_state import Ledger, PartialEpoch, fit_state, resume_fit_state
from distill.engine.history import History, score_outputs
from distill.engine.members import Members, SingleMember, StackedMembers, stack_problem
from distill.engine.optim import LeanOptimizer, learning_rate
from distill.losses.fused import MemberObjective
from distill.losses.objective import metric_loss
from distill.metrics.classification import METRICS

__all__ = [
    "TrainingRows",
    "EvaluationRows",
    "FitSettings",
    "FitResult",
    "EpochRows",
    "fit",
    "fit_many",
    "stack_problem_for",
    "FitInterrupted",
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
        if self.hard_targets is not None and self.hard_labelled is not None and (
                self.hard_targets.shape[0] != n or self.hard_labelled.shape[0] != n):
            raise ValueError("hard_targets and hard_labelled must have one entry per training row")

    def hard_rows(self) -> tuple[Tensor, Tensor]:
        """The hard term's targets and mask: ``hard_*`` when given, else the true labels."""
        if self.hard_targets is None or self.hard_labelled is None:
            return self.targets, self.labelled
        return self.hard_targets, self.hard_labelled


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
    metric_loss: Literal["triplet", "margin_ranking"] | None = None
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


#: ``on_epoch_end(epoch, rows)`` of ``fit_many``: ``rows[m]`` is member ``m``'s history row of the epoch,
#: for each member still training in it.
EpochRows = dict[int, dict[str, float]]

#: Outputs kept to be scored after the fit, at most this many bytes over all epochs; beyond, every epoch is
#: scored when it ends (on the device, no host sync), so memory does not grow with the history.
_LAZY_BYTES = 16 * 2**20


#: what a step returns per member, in order: the loss it minimised, that loss's hard term (BCE / CE, or the
#: configured criterion, on the batch's labelled rows) and its weighted KL term ``kl_weight * T^2 * KL_T``
#: (0 for a member that does not distil); the loss is their sum plus any penalty or metric-loss term
STEP_PARTS = ("train_loss", "train_hard_loss", "train_kl_term")


def logged_metric_names(has_validation: bool) -> list[str]:
    """Per-epoch metric names the engine logs: ``train_*`` always (the loss, its hard and KL terms: the hard loss
    is what compares a student with its baseline), ``val_*`` with validation rows."""
    names = ["train_loss", "train_hard_loss", "train_kl_term"] + [f"train_{m}" for m in METRICS]
    if has_validation:
        names += ["val_loss"] + [f"val_{m}" for m in METRICS]
    return names


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
    first = _shared_part(settings[0])
    if any(_shared_part(s) != first for s in settings[1:]):
        return "the fits differ in more than kl_weight, temperature and seed"
    if first.criterion is not None or (first.metric_loss is not None and first.metric_weight > 0):
        return "a configured hard criterion or metric loss trains one student at a time"
    if first.detect_anomaly:
        return "anomaly detection is on"
    return _rows_problem(trains, validations)


def _shared_part(settings: FitSettings) -> FitSettings:
    """The settings with those that may differ between the members of one stacked fit (``kl_weight``,
    ``temperature``, ``seed``) neutralised: equal for stackable fits."""
    return dataclasses.replace(settings, kl_weight=0.0, temperature=0.0, seed=0)


def _rows_problem(trains: Sequence[TrainingRows], validations: Sequence[EvaluationRows | None]) -> str | None:
    """Why these training and validation rows cannot be stacked (None when they can)."""
    def shape(t: Tensor | None) -> tuple[Any, ...] | None:
        return None if t is None else (tuple(t.shape), t.dtype, t.device)

    def train_shapes(t: TrainingRows) -> tuple[Any, ...]:
        return shape(t.x), shape(t.targets), shape(t.teacher_logits)

    def validation_shapes(v: EvaluationRows | None) -> tuple[Any, ...] | None:
        return None if v is None else (shape(v.x), shape(v.y))

    count0 = int(trains[0].labelled.sum())
    for t, v in zip(trains, validations, strict=True):
        if train_shapes(t) != train_shapes(trains[0]):
            return "the students' training rows differ in shape"
        if int(t.labelled.sum()) != count0:
            return "the students have different numbers of labelled rows"
        if validation_shapes(v) != validation_shapes(validations[0]):
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
    epoch are restored at the end (when the monitored metric is logged). ``on_epoch_end(epoch, row)``
    is called after every epoch with its history row (the model holds that epoch's weights then).
    """
    return fit_many([model], [train], [settings], num_classes=num_classes, validations=[validation],
                    progress=progress, description=description,
                    on_epoch_end=_first_member(on_epoch_end) if on_epoch_end is not None else None)[0]


def _first_member(on_epoch_end: Callable[[int, dict[str, float]], None]) -> Callable[[int, EpochRows], None]:
    """A single fit's ``on_epoch_end(epoch, row)`` as ``fit_many``'s ``on_epoch_end(epoch, rows)``."""
    def one_row(epoch: int, rows: EpochRows) -> None:
        on_epoch_end(epoch, rows[0])

    return one_row


class FitInterrupted(Exception):
    """A fit stopped on request after ``step`` of ``epoch``; ``state`` resumes it."""

    def __init__(self, epoch: int, step: int, state: dict[str, Any]) -> None:
        super().__init__(f"interrupted at epoch {epoch}, step {step}")
        self.epoch, self.step, self.state = epoch, step, state


@dataclass
class _Hooks:
    """The caller's side of a fit: what it watches, when it checkpoints, how it asks to stop."""

    on_epoch_end: Callable[[int, EpochRows], None] | None = None
    checkpoint: Callable[[dict[str, Any]], None] | None = None
    checkpoint_every: int = 1
    checkpoint_due: Callable[[int], bool] | None = None
    stop_requested: Callable[[], bool] | None = None
    progress: bool = False
    description: str = "fit"

    def checkpoint_after(self, epoch: int, epochs: int, state: Callable[[], dict[str, Any]]) -> None:
        """Hand ``checkpoint`` the ``state()`` after ``epoch`` when one is due (never after the last epoch:
        the fit is about to end; ``checkpoint_due`` is asked last, and the state built only then)."""
        if self.checkpoint is not None and epoch % self.checkpoint_every == 0 and epoch < epochs and (
                self.checkpoint_due is None or self.checkpoint_due(epoch)):
            self.checkpoint(state())

    def epoch_ended(self, epoch: int, lr: float, column: dict[str, NDArray[np.float64]],
                    active: NDArray[np.bool_]) -> None:
        """Hand ``on_epoch_end`` the epoch's row of every member still training in it."""
        if self.on_epoch_end is None:
            return
        values = {k: v.tolist() for k, v in column.items()}
        rows = {m: {"epoch": epoch, "lr": lr, **{k: v[m] for k, v in values.items()}}
                for m in active.nonzero()[0].tolist()}
        self.on_epoch_end(epoch, rows)


def fit_many(
    models: Sequence[nn.Module],
    trains: Sequence[TrainingRows],
    settings: Sequence[FitSettings],
    *,
    num_classes: int,
    validations: Sequence[EvaluationRows | None] | None = None,
    progress: bool = False,
    description: str = "fit",
    on_epoch_end: Callable[[int, EpochRows], None] | None = None,
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

    ``on_epoch_end(epoch, rows)`` is called after every epoch with ``rows[m]``, member ``m``'s
    history row of that epoch, for each member still training in it (a member that stopped is
    left out from then on), so the rows it sees are exactly the histories returned. (The modules
    of a stacked fit receive their weights at the end; a single fit's module holds them throughout.)

    ``checkpoint(state)`` receives the whole fit state every ``checkpoint_every`` epochs (when
    ``checkpoint_due(epoch)`` agrees, if given: the state is built only then; tensors and
    plain values only: safe to save and to load with ``weights_only=True``; see
    ``distill.engine.fit_state``); ``resume=state`` continues from one, to the same numbers as an
    uninterrupted fit. When ``stop_requested()`` turns true the fit stops after the current step,
    hands that step's state to ``checkpoint`` and raises ``FitInterrupted``.
    """
    models, trains, settings = list(models), list(trains), list(settings)
    validations = list(validations) if validations is not None else [None] * len(models)
    if not (len(models) == len(trains) == len(settings) == len(validations)) or not models:
        raise ValueError("fit_many needs one training set, settings and validation entry per model")
    hooks = _Hooks(on_epoch_end, checkpoint, checkpoint_every, checkpoint_due, stop_requested, progress, description)
    if not settings[0].detect_anomaly:
        return _fit(models, trains, settings, validations, num_classes, hooks, resume)
    plain = [dataclasses.replace(s, detect_anomaly=False) for s in settings]
    with torch.autograd.set_detect_anomaly(True):
        return _fit(models, trains, plain, validations, num_classes, hooks, resume)


# --------------------------------------------------------------------------- setup


@dataclass
class _Evaluation:
    """What each epoch's end scores: the labelled training rows and validation rows ``[M, N, ...]`` with
    their targets, which metrics, and whether now (``eager``) or from outputs kept until the fit ends."""

    x_train: Tensor
    x_val: Tensor | None
    targets: dict[str, Tensor | None]
    train_metrics: bool
    val_metrics: bool
    eager: bool


@dataclass
class _Problem:
    """The parts of a fit fixed at its start: members, rows ``[M, n, ...]``, objective, optimizer, batching."""

    settings: FitSettings  # member 0's; the others differ in kl_weight, temperature and seed only
    members: Members
    train: TrainingRows  # member 0's rows: a hard criterion or metric loss trains one student
    x: Tensor
    row_offsets: Tensor | None  # m * n per member, to index the stacked rows in one call
    objective: MemberObjective
    evaluation: _Evaluation
    optimizer: LeanOptimizer
    generators: list[torch.Generator]
    steps: int
    num_classes: int
    tracks_monitor: bool  # the monitored metric is logged: early stopping and best state apply

    def autocast(self) -> AbstractContextManager[Any]:
        """The forward pass's precision context: bfloat16 autocast, or nothing."""
        if self.settings.precision == "bf16":
            return torch.autocast(self.x.device.type, dtype=torch.bfloat16)
        return nullcontext()


def _stacked(tensors: Sequence[Tensor]) -> Tensor:
    """``[M, ...]`` from M tensors (a view for one)."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(list(tensors))


def _set_up(models: list[nn.Module], trains: list[TrainingRows], settings: list[FitSettings],
            validations: list[EvaluationRows | None], num_classes: int, watched: bool) -> _Problem:
    """Check the fits stack, then build the members, stacked rows, objective, evaluation plan and optimizer."""
    if len(models) > 1:
        problem = stack_problem_for(models, trains, settings, validations)
        if problem is not None:
            raise ValueError(f"these fits cannot be stacked: {problem}")
    s, n = settings[0], trains[0].x.shape[0]
    members: Members = SingleMember(models[0]) if len(models) == 1 else StackedMembers(models)
    if s.compile:
        members.compile()
    x = _stacked([t.x for t in trains])
    device = x.device
    num_outputs = _num_outputs(members, x)
    evaluation = _evaluation(trains, validations, s, num_classes, watched)
    return _Problem(
        settings=s, members=members, train=trains[0], x=x,
        row_offsets=None if len(models) == 1 else torch.arange(len(models), device=device).unsqueeze(1) * n,
        objective=_objective(trains, settings, num_outputs), evaluation=evaluation,
        optimizer=LeanOptimizer(members.parameters(), s.optimizer, s.lr, momentum=s.momentum,
                                weight_decay=s.weight_decay),
        generators=[torch.Generator(device=device).manual_seed(st.seed) for st in settings],
        steps=max(1, math.ceil(n / s.batch_size)), num_classes=num_classes,
        tracks_monitor=s.monitor in logged_metric_names(evaluation.x_val is not None),
    )


def _num_outputs(members: Members, x: Tensor) -> int:
    """The student's outputs per row (1: one logit of a binary task), from one eval-mode row."""
    try:
        return int(members.evaluate(x[:, :1]).shape[-1])
    except RuntimeError as exc:
        if members.count == 1:
            raise
        raise ValueError(f"these fits cannot be stacked: the student does not run under torch.func.vmap "
                         f"({str(exc).splitlines()[0]})") from None


def _objective(trains: list[TrainingRows], settings: list[FitSettings], num_outputs: int) -> MemberObjective:
    """Each member's KD objective on its own rows, with its own KL weight and temperature."""
    hard = [t.hard_rows() for t in trains]
    return MemberObjective(
        _stacked([targets for targets, _ in hard]), _stacked([labelled for _, labelled in hard]),
        _teacher_logits(trains, settings, num_outputs), [st.kl_weight for st in settings],
        [st.temperature for st in settings], settings[0].direction, num_outputs,
    )


def _teacher_logits(trains: list[TrainingRows], settings: list[FitSettings], num_outputs: int) -> Tensor | None:
    """The teachers' logits ``[M, n, C]`` when a member's KL term reads them, checked against the student."""
    logits = [t.teacher_logits for t in trains]
    present = [t for t in logits if t is not None]
    if len(present) < len(logits) or not any(st.kl_weight > 0 for st in settings):
        return None
    teacher = _stacked([t if t.ndim == 2 else t.unsqueeze(-1) for t in present])
    if teacher.shape[-1] not in ((1, 2) if num_outputs == 1 else (num_outputs,)):
        raise ValueError(f"teacher_logits have {teacher.shape[-1]} columns per row; the student gives "
                         f"{num_outputs} output(s)")
    return teacher


def _evaluation(trains: list[TrainingRows], validations: list[EvaluationRows | None], s: FitSettings,
                num_classes: int, watched: bool) -> _Evaluation:
    """Which metrics each epoch scores, and when: a monitored or watched (``on_epoch_end``) metric every
    epoch; the rest from outputs kept per epoch and scored in one batched call after the last epoch."""
    labelled_rows = [t.labelled.nonzero().squeeze(1) for t in trains]
    x_train = _stacked([t.x[r] for t, r in zip(trains, labelled_rows, strict=True)])
    y_train = _stacked([t.targets[r] for t, r in zip(trains, labelled_rows, strict=True)])
    present = [v for v in validations if v is not None]
    has_val = len(present) == len(validations) and present[0].x.shape[0] > 0
    x_val = _stacked([v.x for v in present]) if has_val else None
    y_val = _stacked([v.y for v in present]) if has_val else None
    monitor_is_metric = s.monitor in logged_metric_names(has_val) and not s.monitor.endswith("_loss")
    per_epoch_bytes = 4 * len(trains) * num_classes * (x_train.shape[1] + (x_val.shape[1] if x_val is not None else 0))
    return _Evaluation(
        x_train=x_train, x_val=x_val, targets={"train": y_train, "val": y_val},
        train_metrics=s.epoch_metrics or (monitor_is_metric and s.monitor.startswith("train_")),
        val_metrics=has_val and (s.epoch_metrics or (monitor_is_metric and s.monitor.startswith("val_"))),
        eager=watched or monitor_is_metric or per_epoch_bytes * s.epochs > _LAZY_BYTES,
    )


def _new_ledger(problem: _Problem) -> Ledger:
    """Fresh per-member bookkeeping: nothing best, nobody stopped, the initial weights as the last finite ones."""
    s, m = problem.settings, problem.members.count
    mode = monitor_mode(s.monitor, s.mode)
    ledger = Ledger(
        epoch=0, best=BestState(s.monitor, mode, m),
        early=EarlyStopping(s.monitor, mode, s.patience, s.min_delta, m) if problem.tracks_monitor else None,
        divergence=Divergence(problem.members.flat()), stops=Stops(m), history=History(),
    )
    if not problem.tracks_monitor and (s.patience > 0 or s.restore_best):
        for box in ledger.stops.messages:
            box.append(f"{s.monitor} is not logged (no validation rows): keeping the final weights, no early stopping")
    return ledger


# --------------------------------------------------------------------------- the loop


def _fit(models: list[nn.Module], trains: list[TrainingRows], settings: list[FitSettings],
         validations: list[EvaluationRows | None], num_classes: int, hooks: _Hooks,
         resume: dict[str, Any] | None) -> list[FitResult]:
    """The phases of a fit: set up (and resume), then per epoch its steps and its end, then finish."""
    started = time.perf_counter()
    problem = _set_up(models, trains, settings, validations, num_classes, watched=hooks.on_epoch_end is not None)
    ledger = _new_ledger(problem)
    partial = None
    if resume is not None:
        partial = resume_fit_state(resume, ledger, problem.members, problem.optimizer, problem.generators)
    s, last = problem.settings, ledger.epoch
    bar = _progress_bar(range(ledger.epoch + 1, s.epochs + 1), hooks)
    try:
        for epoch in bar:
            lr = problem.optimizer.lr = learning_rate(s.lr, epoch, s.scheduler, s.epochs, s.step_size, s.gamma)
            losses = _train_epoch(problem, ledger, epoch, partial, hooks)
            partial, last = None, epoch
            training_on = _end_epoch(problem, ledger, epoch, lr, losses, hooks)
            if hooks.progress and problem.members.count == 1:
                bar.set_postfix(loss=f"{float(ledger.history.last('train_loss')[0]):.4f}")
            if not training_on:
                break
            hooks.checkpoint_after(epoch, s.epochs, lambda: fit_state(ledger, problem.members, problem.optimizer,
                                                                       problem.generators, None))
    finally:
        bar.close()
    return _finish(problem, ledger, last, started)


def _progress_bar(epochs: Iterable[int], hooks: _Hooks) -> Any:
    from distill.progress import progress_bar

    return progress_bar(epochs, desc=hooks.description, disable=not hooks.progress, leave=False, dynamic_ncols=True)


def _train_epoch(problem: _Problem, ledger: Ledger, epoch: int, partial: PartialEpoch | None,
                 hooks: _Hooks) -> Tensor:
    """The epoch's optimisation steps (the rest of them when resuming inside it); returns the step losses
    ``[steps, 3, M]`` (``STEP_PARTS``), still on the device. A stop request ends the fit after the current step."""
    if partial is not None and partial.epoch == epoch:
        batches, first, losses = partial.batches, partial.step, partial.losses
    else:
        batches = _batches(problem.generators, problem.x.shape[1], problem.settings, problem.steps)
        first, losses = 0, []
    for step in range(first, len(batches)):
        losses.append(_step(problem, batches[step]))
        if hooks.stop_requested is not None and hooks.stop_requested():
            _interrupt(problem, ledger, PartialEpoch(epoch, step + 1, batches, losses), hooks)
    return torch.stack(losses)


def _batches(generators: list[torch.Generator], n: int, s: FitSettings, steps: int) -> list[Tensor]:
    """One epoch's batches ``[M, B]``, member m drawing from its own generator exactly as a lone fit would."""
    device = generators[0].device
    if s.replacement:
        draws = [torch.randint(n, (steps, s.batch_size), generator=g, device=device) for g in generators]
        return list(torch.stack(draws, dim=1).unbind(0))
    perms = [torch.randperm(n, generator=g, device=device) for g in generators]
    return list(torch.stack(perms).split(s.batch_size, dim=1))


def _take(x: Tensor, idx: Tensor, offsets: Tensor | None) -> Tensor:
    """Rows ``idx`` ``[M, B]`` of each member's ``x`` ``[M, n, ...]`` (``offsets``: ``m * n`` per member)."""
    if offsets is None:
        return x[0].index_select(0, idx[0]).unsqueeze(0)
    m, b = idx.shape
    rows = x.reshape(m * x.shape[1], *x.shape[2:]).index_select(0, (idx + offsets).reshape(-1))
    return rows.reshape(m, b, *x.shape[2:])


def _step(problem: _Problem, idx: Tensor) -> Tensor:
    """One optimisation step of every member on its batch ``idx`` ``[M, B]``; returns ``[3, M]``: the loss, its
    hard term and its weighted KL term (``STEP_PARTS``)."""
    s, members = problem.settings, problem.members
    xb = _take(problem.x, idx, problem.row_offsets)
    with problem.autocast():
        z = members.forward(xb).float()
    loss = problem.objective(z, idx, _hard_term(problem, z, idx))
    parts = problem.objective.parts(loss.detach())
    if s.metric_loss is not None and s.metric_weight > 0:
        loss = loss + s.metric_weight * _metric_term(problem, s.metric_loss, xb, idx)
    if s.l1 > 0 or s.l2 > 0:
        loss = loss + members.penalty(s.l1, s.l2)
    members.zero_grad()
    loss.sum().backward()
    if s.grad_clip is not None:
        members.clip_grad(s.grad_clip)
    problem.optimizer.step()
    return torch.cat((loss.detach().unsqueeze(0), parts))


def _hard_term(problem: _Problem, z: Tensor, idx: Tensor) -> Tensor | None:
    """A configured hard criterion's term ``[1]`` (it trains one student: see ``stack_problem_for``), else None."""
    criterion = problem.settings.criterion
    if criterion is None:
        return None
    targets, labelled = problem.train.hard_rows()
    rows = idx[0]
    return criterion(z[0], targets[rows], labelled[rows]).reshape(1)


def _metric_term(problem: _Problem, kind: Literal["triplet", "margin_ranking"], xb: Tensor, idx: Tensor) -> Tensor:
    """The metric-learning term on the embeddings of the batch's labelled rows (one student)."""
    members = problem.members
    if not isinstance(members, SingleMember):
        raise TypeError("a metric loss trains one student at a time (see stack_problem_for)")
    rows = idx[0]
    return metric_loss(members.embed(xb), problem.train.targets[rows], problem.train.labelled[rows],
                       kind=kind, margin=problem.settings.metric_margin)


def _interrupt(problem: _Problem, ledger: Ledger, partial: PartialEpoch, hooks: _Hooks) -> NoReturn:
    """Hand the state after the current step to ``checkpoint``, give the modules back, raise ``FitInterrupted``."""
    snapshot = fit_state(ledger, problem.members, problem.optimizer, problem.generators, partial)
    if hooks.checkpoint is not None:
        hooks.checkpoint(snapshot)
    problem.members.finish()
    raise FitInterrupted(partial.epoch, partial.step, snapshot)


# --------------------------------------------------------------------------- end of an epoch


def _end_epoch(problem: _Problem, ledger: Ledger, epoch: int, lr: float, losses: Tensor, hooks: _Hooks) -> bool:
    """Score and record the epoch (one host read), tell ``on_epoch_end``, then judge each member;
    returns whether any member trains on."""
    values = _epoch_values(problem, ledger, epoch, losses)
    keys = list(values)
    exact = torch.float32 if problem.x.device.type == "mps" else torch.float64  # metrics scored now stay float64
    numbers = torch.stack([values[k].to(exact) for k in keys]).cpu().numpy().astype(np.float64)  # the epoch's one read
    ledger.history.record(epoch, lr, keys, numbers, problem.settings.epochs)
    column = {k: numbers[j] for j, k in enumerate(keys)}  # name -> [M]
    hooks.epoch_ended(epoch, lr, column, ledger.stops.active)
    _judge(problem, ledger, epoch, column, losses)
    ledger.epoch = epoch
    return bool(ledger.stops.active.any())


def _epoch_values(problem: _Problem, ledger: Ledger, epoch: int, losses: Tensor) -> dict[str, Tensor]:
    """The epoch's logged values ``[M]`` on the device: losses, and the metrics scored now (the outputs
    for the others go to the history, to be scored after the fit)."""
    ev = problem.evaluation
    means = losses.mean(0)  # [3, M]: STEP_PARTS
    values = dict(zip(STEP_PARTS, means.unbind(0), strict=True))
    for split, x_eval, wanted in (("train", ev.x_train, ev.train_metrics), ("val", ev.x_val, ev.val_metrics)):
        targets = ev.targets[split]
        if x_eval is None or targets is None or (not wanted and split == "train"):
            continue
        logits = problem.members.evaluate(x_eval)
        if split == "val":
            values["val_loss"] = MemberObjective.evaluation_loss(logits, targets)
        if not wanted:
            continue
        if ev.eager:
            scores = score_outputs(logits, targets, problem.num_classes)
            values.update({f"{split}_{k}": v for k, v in scores.items()})
        else:
            ledger.history.keep(split, epoch, logits, problem.settings.epochs)
    return values


def _judge(problem: _Problem, ledger: Ledger, epoch: int, column: dict[str, NDArray[np.float64]],
           losses: Tensor) -> None:
    """Per member, as a lone fit does it: divergence (keeping the last finite weights), best state and
    early stopping on the monitored value; the members done stop here."""
    s, weights, active = problem.settings, problem.members.flat(), ledger.stops.active
    diverged = ledger.divergence.check(epoch, column["train_loss"], losses[:, 0], weights, active,
                                       column.get("val_loss"))
    _note_divergence(ledger, diverged, epoch)
    ending = diverged
    if ledger.early is not None:
        healthy, monitored = active & ~diverged, column[s.monitor]
        if s.restore_best:
            ledger.best.update(monitored, epoch, weights, healthy)
        stopping = ledger.early.step(monitored, healthy)
        for i in stopping.nonzero()[0]:
            ledger.stops.reasons[i] = ledger.early.reasons[i]
        ending = diverged | stopping
    ledger.stops.stop(ending, epoch, weights)


def _note_divergence(ledger: Ledger, diverged: NDArray[np.bool_], epoch: int) -> None:
    """Each member that diverged in ``epoch`` says where, and which weights it ends with."""
    for i in diverged.nonzero()[0]:
        step = int(ledger.divergence.step[i])
        best = int(ledger.best.epoch[i])
        restored = best if best > 0 else int(ledger.divergence.last_good_epoch[i])
        cause = ledger.divergence.cause[i]
        reason = (f"training loss is not finite at epoch {epoch}, step {step}" if cause == "training loss"
                  else f"{cause} {'are' if cause == 'weights' else 'is'} not finite after epoch {epoch} (its "
                  "training loss was finite)")
        ledger.stops.reasons[i] = reason
        ledger.stops.messages[i].append(reason + (
            f"; stopped and restored the weights of epoch {restored}" if restored
            else "; stopped before any finite epoch (the initial weights are kept)"))


# --------------------------------------------------------------------------- finish


def _finish(problem: _Problem, ledger: Ledger, last_epoch: int, started: float) -> list[FitResult]:
    """Give each member its final weights (best monitored, else last finite when it diverged, else where
    it stopped), hand the modules back, and build the results."""
    ledger.stops.finish(last_epoch)
    final = ledger.stops.restore(problem.members.flat(), last_epoch)
    final = ledger.best.restore(ledger.divergence.restore(final))
    problem.members.load(final)
    problem.members.finish()
    seconds = (time.perf_counter() - started) / problem.members.count
    return _results(problem, ledger, seconds)


def _results(problem: _Problem, ledger: Ledger, seconds: float) -> list[FitResult]:
    """One ``FitResult`` per member: its history up to where it stopped, and how it ended."""
    late = ledger.history.score_kept(problem.evaluation.targets, problem.num_classes)
    order = logged_metric_names(problem.evaluation.x_val is not None)
    best, divergence, stops = ledger.best, ledger.divergence, ledger.stops
    histories = ledger.history.rows(stops.epoch.tolist(), order, late)
    results = []
    for i, history in enumerate(histories):
        best_epoch = int(best.epoch[i]) or None
        results.append(FitResult(
            history=history,
            best_epoch=best_epoch,
            best_score=float(best.score[i]) if best_epoch is not None else None,
            stopped_epoch=int(stops.epoch[i]),
            stop_reason=stops.reasons[i],
            seconds=seconds,
            monitor=problem.settings.monitor if problem.tracks_monitor else None,
            messages=stops.messages[i],
            status="diverged" if divergence.diverged[i] else "completed",
            diverged_at=divergence.at(i),
        ))
    return results
