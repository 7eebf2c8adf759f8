"""Prepare once: check a config against its data and resolve everything an episode needs that does not
depend on the episode (teacher factory, student builder, fit settings, criterion).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from distill import students
from distill.config import AUTO, Config, expand_sweep
from distill.data.scaling import Scaler, check_scaled, fit_scaler
from distill.data.sources import FLOAT32_MAX, Dataset, load_dataset
from distill.data.split import Split, split_dataset
from distill.engine.loop import (
    FitSettings,
    logged_metric_names,
)
from distill.errors import ConfigError, UserError
from distill.experiment.weight_init import apply_init
from distill.interrupts import Interrupted
from distill.outputs.tracking import resolve_tracking_uri
from distill.seeding import (
    configure_threads,
    resolve_device,
)
from distill.teachers.base import Teacher, create_teacher

__all__ = ["Prepared", "prepare", "prepare_protocol", "episode_seed", "fit_settings"]

log = logging.getLogger("distill")


@dataclass
class Prepared:
    """A validated experiment: config, data, the episode's split and scaler, the device."""

    config: Config
    dataset: Dataset
    split: Split
    scaler: Scaler
    device: torch.device
    num_outputs: int
    hard: str
    student_parameters: int
    load_seconds: float
    #: ``(name, describe())`` of every teacher ``teach`` will fit: the one teacher, or each candidate
    teachers: list[tuple[str, str]] = field(default_factory=list)
    #: a teacher given as a Python object (``distill.run(config, teacher=...)``): makes a fresh Teacher
    #: per call, used instead of ``teacher.kind``; None: the config's teacher
    teacher: "TeacherFactory | None" = None


#: Builds a fresh Teacher for a teacher given in Python (see ``distill.teachers.given``), from the
#: episode's seed (an unfitted estimator without a ``random_state`` of its own gets it, as the config's do).
TeacherFactory = Callable[[int], Teacher]


def _new_teacher(kind: str, kwargs: dict[str, Any], given: TeacherFactory | None) -> Teacher:
    """A teacher of ``kind`` built from ``kwargs``, or the one given in Python."""
    return given(int(kwargs["random_state"])) if given is not None else create_teacher(kind, **kwargs)


def _teacher_kwargs(config: Config, dataset: Dataset, device: str = "cpu") -> dict[str, Any]:
    t = config.teacher
    return {
        "num_classes": dataset.num_classes,
        "in_shape": dataset.in_shape,
        "arch": t.arch,
        "input": t.input,
        "device": device,
        "kernel": t.kernel,
        "restarts": t.restarts,
        "multi_class": t.multi_class,
        "estimator": t.estimator,
        "params": dict(t.params),
        "checkpoint": t.checkpoint,
        "uri": t.uri,
        "tracking_uri": resolve_tracking_uri(config),
        "random_state": config.seed,
    }


def _teacher_candidates(config: Config, dataset: Dataset, device: str = "cpu",
                        given: TeacherFactory | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """``(name, kind, kwargs)`` of every teacher ``teach`` fits: the one teacher, or (``teacher.kind`` auto /
    ensemble) each of ``teacher.candidates``, named uniquely (``random_forest``, ``random_forest#2``, ...).
    A teacher ``given`` in Python is the one teacher."""
    base = _teacher_kwargs(config, dataset, device)
    t = config.teacher
    if given is not None:
        return [("given", "given", base)]
    if t.kind not in ("auto", "ensemble"):
        return [(t.kind, t.kind, base)]
    out: list[tuple[str, str, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for c in t.candidates:
        seen[c.name] = seen.get(c.name, 0) + 1
        name = c.name if seen[c.name] == 1 else f"{c.name}#{seen[c.name]}"
        kwargs = {**base, "kernel": c.kernel, "restarts": c.restarts, "multi_class": c.multi_class,
                  "estimator": c.estimator, "params": dict(c.params)}
        out.append((name, c.kind, kwargs))
    return out


def _candidate_problem(config: Config, index: int | None, message: str) -> str:
    """A teacher problem named by its key: ``teacher.params: ...``, or ``teacher.candidates[1].params: ...``."""
    if index is None:
        return message if message.startswith("teacher.") else f"teacher: {message}"
    prefix = f"teacher.candidates[{index}]"
    if message.startswith("teacher."):
        return prefix + message[len("teacher"):]
    return f"{prefix} ({config.teacher.candidates[index].name}): {message}"


#: Folds of the labelled rows (``distill.metrics.calibration.labelled_folds``): the teacher's cross-fitting and the
#: students' cross-validation of ``objective.* = "auto"`` use the same folds. Three, not five or ten: each
#: labelled row is held out once whatever the count, and every fold costs a fit of each teacher candidate
#: and of each student candidate.
TEACHER_FOLDS = 3


def _teacher_heldout_rows(config: Config, dataset: Dataset, given: TeacherFactory | None = None) -> np.ndarray | None:
    """Rows a teacher that arrives trained (a distill-trained network) never saw, so that test rows stay
    unseen by it too. A teacher that learns sees only the labelled rows: nothing to hold out."""
    if config.teacher.kind in ("auto", "ensemble") and given is None:  # candidates learn (checked in prepare)
        return None
    from distill.experiment.teacher_training import data_hash

    try:
        teacher = _new_teacher(config.teacher.kind, _teacher_kwargs(config, dataset), given)
        if teacher.learns:
            return None
        rows = teacher.heldout_rows(data_hash(dataset.x, dataset.y))
    except (ValueError, KeyError, UserError):
        return None  # reported with the other teacher problems below
    if rows is None:
        _warn_once(
            f"the {'given' if given is not None else config.teacher.kind} teacher records no held-out rows for this data: test rows may include rows "
            "it was trained on"
        )
    return rows


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


def _build_student(config: Config, dataset: Dataset, num_outputs: int) -> nn.Module:
    """The student from its constructor, then ``student.init`` (``distill.experiment.weight_init``)."""
    try:
        model = students.build(
            config.student.arch, dataset.in_shape, dataset.num_classes, num_outputs=num_outputs, **config.student.kwargs
        )
    except ValueError as exc:  # StudentArgumentError and unknown names
        message = str(exc)
        if not message.startswith(("unknown key 'student.", "student.")):
            message = f"student.arch: {message}" if "student '" not in message else message
        raise ConfigError(message) from None
    try:
        return apply_init(model, config.student.init, config.student.arch)
    except ValueError as exc:  # a student without layers student.init can draw
        raise ConfigError(str(exc)) from None


#: Resource limits (README "Experiment files"): a student above this many parameters, or generated
#: transfer rows (``few_shot.augment.count``) above this many bytes, is refused before anything runs.
MAX_STUDENT_PARAMETERS = 100_000_000
MAX_TRANSFER_BYTES = 2**31
#: float32's largest finite value: the student's dtype, so the generated rows must stay below it.


def _student_size(config: Config, dataset: Dataset, num_outputs: int) -> int | None:
    """The student's parameter count, from a build on the meta device (no memory is allocated),
    or None when the architecture cannot be built there (the real build then reports any problem)."""
    try:
        with torch.device("meta"):
            model = students.build(config.student.arch, dataset.in_shape, dataset.num_classes,
                                   num_outputs=num_outputs, **config.student.kwargs)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # noqa: BLE001 - a probe only; the real build below reports the problem
        return None


def _student_size_problem(config: Config, dataset: Dataset, num_outputs: int) -> str | None:
    size = _student_size(config, dataset, num_outputs)
    if size is None or size <= MAX_STUDENT_PARAMETERS:
        return None
    shown = ", ".join(f"student.{k} = {v!r}" for k, v in config.student.kwargs.items())
    return (f"student '{config.student.arch}' would have {size:,} parameters, more than the limit of "
            f"{MAX_STUDENT_PARAMETERS:,}" + (f" ({shown})" if shown else "") + "; make it smaller")


def _transfer_problems(config: Config, dataset: Dataset, scaled: np.ndarray) -> list[str]:
    """Generated transfer rows that would not fit in memory, or would leave float32's range."""
    if config.few_shot.transfer != "augmented":
        return []
    aug = config.few_shot.augment
    problems = []
    row_bytes = int(np.prod(dataset.in_shape, dtype=object)) * 8
    if aug.count * row_bytes > MAX_TRANSFER_BYTES:
        problems.append(
            f"few_shot.augment.count = {aug.count} generates {aug.count * row_bytes:,} bytes of rows "
            f"({row_bytes:,} per row), more than the limit of {MAX_TRANSFER_BYTES:,}; lower it"
        )
    # A Gaussian draw beyond 40 standard deviations never happens; mixup stays between rows.
    reach = float(np.abs(scaled).max(initial=0.0)) + 40.0 * float(aug.jitter)
    if not reach < FLOAT32_MAX:
        problems.append(
            f"few_shot.augment.jitter = {aug.jitter} moves generated rows beyond the float32 range the "
            f"student computes in (about {FLOAT32_MAX:.3g}); lower it"
        )
    return problems


def _scaling_problems(config: Config, dataset: Dataset, split: Split, scaler: Scaler) -> list[str]:
    """Features the scaler turns into NaN or infinity (a span beyond float64, e.g. -1e308..1e308), or
    beyond float32, in the rows training reads (never the test rows: tuning must not look at them)."""
    rows = np.sort(np.concatenate([split.labelled, split.validation, split.pool]))
    with np.errstate(all="ignore"):
        scaled = scaler.transform(dataset.x[rows])
        bad = ~np.isfinite(scaled) | (np.abs(scaled) > FLOAT32_MAX)
    if not bad.any():
        return []
    at, col = (int(i) for i in np.argwhere(bad)[0])
    row = int(rows[at])
    name = dataset.feature_names[col] if col < len(dataset.feature_names) else str(col)
    return [f"data.scale = '{config.data.scale}': feature '{name}' (row {row}) scales to "
            f"{scaled[at, col]}, outside the float32 range the student computes in; check the data's extreme values"]


def prepare(config: Config, dataset: Dataset | None = None, teacher: TeacherFactory | None = None) -> Prepared:
    """Load and check the data, draw the split, and check teacher, student and objective against it.

    ``dataset``: data already loaded (else ``data.source``); ``teacher``: a teacher given in Python
    (else ``teacher.kind``)."""
    started = time.perf_counter()
    if dataset is None:
        dataset = load_dataset(config.data.source, config.data.label)
    fs = config.few_shot
    heldout = _teacher_heldout_rows(config, dataset, teacher)
    split = split_dataset(
        dataset,
        test_size=config.data.test_size,
        labelled=fs.labelled,
        per_class=fs.per_class,
        validation=fs.validation,
        seed=config.seed,
        test_from=heldout,
    )
    problems: list[str] = []
    if config.teacher.given is not None and teacher is None:
        problems.append(f"teacher.given: this experiment's teacher was a Python object ({config.teacher.given}); "
                        "a config file cannot rebuild it: pass it again, distill.run(config, teacher=...) or "
                        "distill.resume(run_dir, teacher=...)")
    k = dataset.num_classes
    hard = config.objective.hard
    if hard == "auto":
        hard = "bce" if k == 2 else "ce"
    if hard == "bce" and k != 2:
        problems.append(f"objective.hard = 'bce' needs two classes, but {config.data.source} has {k}; use 'ce'")
    num_outputs = students.num_outputs_for(k, hard)
    problems.extend(_objective_problems(config, hard, k))
    several = config.teacher.kind in ("auto", "ensemble") and teacher is None
    described: list[tuple[str, str]] = []
    for i, (name, kind, kwargs) in enumerate(_teacher_candidates(config, dataset, given=teacher)):
        index = i if several else None
        try:  # every candidate teacher is checked before anything is fit
            candidate = _new_teacher(kind, kwargs, teacher)
            candidate.check(dataset.in_shape)  # e.g. a network teacher: classes and input shape, before training
            if several and not candidate.learns:
                raise ValueError(f"teacher.kind '{kind}' arrives trained (learns = False); candidates of "
                                 f"teacher.kind = {config.teacher.kind!r} are cross-fitted and must learn")
            described.append((name, candidate.describe()))
        except UserError as exc:
            problems.extend(_candidate_problem(config, index, p) for p in exc.problems)
        except (ValueError, KeyError) as exc:
            message = exc.args[0] if exc.args else str(exc)
            problems.append(_candidate_problem(config, index, str(message)))
        except (MemoryError, Interrupted):
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin's or a given teacher's own code failed its check
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            problems.append(_candidate_problem(config, index, f"{type(exc).__name__}: {first}".rstrip(": ")))
    student_parameters = 0
    too_big = _student_size_problem(config, dataset, num_outputs)
    try:
        if too_big is not None:
            raise ConfigError(too_big)
        model = _build_student(config, dataset, num_outputs)
        student_parameters = sum(p.numel() for p in model.parameters())
        if config.objective.metric_loss is not None and not callable(getattr(model, "embed", None)):
            problems.append(
                f"objective.metric_loss = {config.objective.metric_loss!r} needs a student with embed(x); "
                f"'{config.student.arch}' has none"
            )
        with torch.no_grad():
            out = model(torch.zeros((1, *dataset.in_shape)))
        expected = (1, num_outputs)
        if tuple(out.shape) != expected and not (num_outputs == 1 and tuple(out.shape) == (1,)):
            problems.append(
                f"student '{config.student.arch}' gives outputs of shape {tuple(out.shape)[1:]} per row, "
                f"expected ({num_outputs},) for {k} classes"
            )
    except ConfigError as exc:
        problems.extend(exc.problems)
    except (RuntimeError, MemoryError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, MemoryError) or "allocat" in reason.lower():
            problems.append(f"student '{config.student.arch}' does not fit in memory: {reason}")
        else:
            problems.append(f"student '{config.student.arch}' cannot take inputs of shape {dataset.in_shape}: {reason}")
    es = config.train.early_stopping
    logged = logged_metric_names(split.validation.size > 0)
    if es.patience > 0 and es.monitor not in logged:
        problems.append(
            f"train.early_stopping.monitor '{es.monitor}' is not logged; logged: {', '.join(logged)}"
            + ("" if split.validation.size else " (few_shot.validation = 0 gives no val_* metrics)")
        )
    try:
        device = resolve_device(config.train.device)
    except ConfigError as exc:
        problems.extend(exc.problems)
        device = torch.device("cpu")
    with np.errstate(all="ignore"):  # an overflowing span is reported below, not warned about
        scaler = fit_scaler(config.data.scale, dataset.x[split.labelled])
    problems.extend(_scaling_problems(config, dataset, split, scaler))
    if not problems:
        problems.extend(_transfer_problems(config, dataset, scaler.transform(dataset.x[split.labelled])))
    if problems:
        raise ConfigError(*problems)
    check_scaled(scaler, dataset.x, dataset.feature_names, f"data.source '{config.data.source}'")
    return Prepared(
        config=config,
        dataset=dataset,
        split=split,
        scaler=scaler,
        device=device,
        num_outputs=num_outputs,
        hard=hard,
        student_parameters=student_parameters,
        load_seconds=time.perf_counter() - started,
        teacher=teacher,
        teachers=described,
    )


def _objective_problems(config: Config, hard: str, k: int) -> list[str]:
    """Hard-loss parameters, class weights and pos_weight checked against the data."""
    from distill.losses.hard import create_loss

    o = config.objective
    problems = []
    try:
        create_loss(hard, k, **dict(o.hard_params))
    except (ValueError, TypeError) as exc:
        problems.append(f"objective.hard_params: {exc}" if "objective." not in str(exc) else str(exc))
    if isinstance(o.class_weight, list) and len(o.class_weight) != k:
        problems.append(f"objective.class_weight needs one weight per class ({k}), got {len(o.class_weight)}")
    if o.class_weight is not None and students.num_outputs_for(k, hard) == 1 and hard == "bce":
        problems.append("objective.class_weight does not apply to a one-logit BCE student; use objective.pos_weight")
    if o.pos_weight is not None and students.num_outputs_for(k, hard) != 1:
        problems.append(f"objective.pos_weight applies to a one-logit binary student (bce, focal), not to {hard!r} "
                        f"with {k} classes; use objective.class_weight")
    return problems


def build_criterion(config: Config, hard: str, num_classes: int, labelled_y: np.ndarray,
                    device: torch.device) -> Any:
    """The configured hard term, or None for the plain BCE / CE fast path.

    ``"balanced"`` weights follow scikit-learn: ``n / (classes * count)`` from the labelled rows;
    ``pos_weight = "balanced"`` is negatives / positives.
    """
    from distill.losses.hard import create_loss
    from distill.losses.objective import HardCriterion

    o = config.objective
    if hard in ("bce", "ce") and not o.hard_params and o.class_weight is None and o.pos_weight is None:
        return None
    counts = np.bincount(np.asarray(labelled_y, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weight = None
    if o.class_weight == "balanced":
        weight = counts.sum() / (num_classes * np.maximum(counts, 1.0))
    elif isinstance(o.class_weight, list):
        weight = np.asarray(o.class_weight, dtype=np.float64)
    pos_weight = None
    if o.pos_weight == "balanced":
        pos_weight = float(counts[0] / max(counts[1], 1.0))
    elif o.pos_weight is not None:
        pos_weight = float(o.pos_weight)
    kwargs: dict[str, Any] = dict(o.hard_params)
    if weight is not None:
        kwargs["weight"] = torch.as_tensor(weight, dtype=torch.float32, device=device)
    if pos_weight is not None:
        kwargs["pos_weight"] = torch.as_tensor(pos_weight, dtype=torch.float32, device=device)
    loss = create_loss(hard, num_classes, reduction="none", **kwargs)
    # PyTorch's weighted mean divides by the targets' class weights (CE-type losses).
    mean_weight = kwargs.get("weight") if hard in ("ce", "label_smoothing", "sce") else None
    return HardCriterion(loss.to(device), mean_weight)


def fit_settings(config: Config, *, kl_weight: float | None = None, temperature: float | None = None) -> FitSettings:
    """The engine's settings from the config (``kl_weight`` / ``temperature`` overridden for the baseline,
    a control or what "auto" chose; at ``kl_weight = 0`` the temperature is irrelevant and set to 1)."""
    t, o, es = config.train, config.objective, config.train.early_stopping
    kl = o.kl_weight if kl_weight is None else kl_weight
    temp = o.temperature if temperature is None else temperature
    if kl == 0:
        temp = 1.0 if temp == AUTO else temp
    if AUTO in (kl, temp):
        raise ValueError("objective.kl_weight / objective.temperature = 'auto' must be chosen before a fit "
                         "(distill.experiment.students.train_students does it)")
    return FitSettings(
        epochs=t.epochs,
        batch_size=t.batch_size,
        replacement=t.replacement,
        optimizer=t.optimizer,
        lr=float(t.lr),
        momentum=float(t.momentum),
        weight_decay=float(t.weight_decay),
        scheduler=t.scheduler,
        step_size=t.step_size,
        gamma=float(t.gamma),
        grad_clip=float(t.grad_clip) if t.grad_clip is not None else None,
        kl_weight=float(kl),
        temperature=float(temp),
        direction=o.direction,
        monitor=es.monitor,
        mode=es.mode,
        patience=es.patience,
        min_delta=float(es.min_delta),
        restore_best=t.restore_best,
        seed=config.seed,
        l1=float(o.l1),
        l2=float(o.l2),
        metric_loss=o.metric_loss,
        metric_weight=float(o.metric_weight),
        metric_margin=float(o.metric_margin),
        detect_anomaly=t.detect_anomaly,
        precision=t.precision,
        compile=t.compile,
    )


def episode_seed(seed: int, episode: int) -> int:
    """Episode ``e`` uses seed ``seed + e``: episode 0 is the plain run, and any episode can be
    repeated alone with ``--seed seed+e --episodes 1``."""
    return seed + episode


def prepare_protocol(config: Config, dataset: Dataset | None = None,
                     teacher: TeacherFactory | None = None) -> list[Prepared]:
    """Load the data once (unless given) and prepare episode 0 of every sweep value: every check, before
    any training. ``teacher``: a teacher given in Python, used instead of ``teacher.kind``."""
    started = time.perf_counter()
    dataset = load_dataset(config.data.source, config.data.label) if dataset is None else dataset
    first = [prepare(variant, dataset, teacher) for _, variant in expand_sweep(config)]
    for p in first:
        p.load_seconds = time.perf_counter() - started
    configure_threads(first[0].device, config.train.threads, int(dataset.x.size))
    return first
