"""One episode of the protocol: teacher, distilled student and no-distillation baseline.

``prepare`` checks everything that can be checked before the first step (config against the
data, teacher and student arguments, early-stopping monitor) and raises a UserError listing
every problem; ``run_episode`` then fits the teacher once, computes its soft targets once for
all rows the student sees, and trains the student and the baseline from the same initial weights
on the same rows and batches.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from distill import students
from distill.config import AUTO, Config, config_dict, expand_sweep
from distill.data.augment import augment_rows
from distill.data.scaling import Scaler, check_scaled, fit_scaler
from distill.data.sources import FLOAT32_MAX, Dataset, load_dataset
from distill.data.split import Split, split_dataset
from distill.engine.loop import (
    EvaluationRows,
    FitInterrupted,
    FitResult,
    FitSettings,
    TrainingRows,
    fit,
    fit_many,
    logged_metric_names,
    predict_logits,
    stack_problem_for,
)
from distill.errors import ConfigError, UserError
from distill.experiment.cache import SoftTargetCache, array_digest
from distill.experiment.teacher_cv import TeacherProblem, cross_fit
from distill.experiment.weight_init import apply_init
from distill.interrupts import Interrupted, StopRequest
from distill.metrics.calibration import labelled_folds
from distill.metrics.classification import classification_metrics, probabilities
from distill.outputs.checkpoints import Checkpoints
from distill.outputs.tracking import resolve_tracking_uri
from distill.seeding import (
    configure_threads,
    resolve_device,
    seed_everything,
    threads_for_stacked_work,
)
from distill.teachers.base import Teacher, create_teacher, resolve_teacher

__all__ = [
    "Prepared",
    "EpisodeResult",
    "TeacherOutputs",
    "prepare",
    "teach",
    "train_student",
    "train_students",
    "build_student",
    "StudentJob",
    "run_episode",
    "run_protocol",
    "prepare_protocol",
    "episode_seed",
    "soft_target_cache",
    "fit_settings",
    "CONTROLS",
    "REFERENCES",
    "null_teacher_probabilities",
    "control_rows",
    "reference_metrics",
]

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


@dataclass
class EpisodeResult:
    """Test metrics per system, the fits' histories and the trained models."""

    metrics: dict[str, dict[str, float]]
    teacher_diagnostics: dict[str, Any]
    student_fit: FitResult
    baseline_fit: FitResult
    student: nn.Module
    baseline: nn.Module
    test_predictions: dict[str, np.ndarray]
    test_targets: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    episode: int = 0
    seed: int = 0
    value: Any = None
    split_sizes: dict[str, int] = field(default_factory=dict)
    split: Split | None = None
    #: the controls' fits and models (``protocol.controls``), by name
    control_fits: dict[str, FitResult] = field(default_factory=dict)
    controls: dict[str, nn.Module] = field(default_factory=dict)
    #: what ``objective.* = "auto"`` chose for the student (None: the config's numbers)
    kd_selection: dict[str, Any] | None = None


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
                         "(distill.experiment.protocol.train_students does it)")
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


def _to_device(array: np.ndarray, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    tensor = torch.as_tensor(np.ascontiguousarray(array), dtype=dtype)
    if device.type == "cuda":  # one asynchronous copy from pinned memory; the rows then stay on the GPU
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _numpy_metrics(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, float]:
    values = classification_metrics(probabilities(logits), y, num_classes)
    numbers = torch.stack(list(values.values())).tolist()
    return dict(zip(values.keys(), numbers, strict=True))


@dataclass
class TeacherOutputs:
    """The fitted teacher's soft targets (on the device) and its test/validation logits."""

    diagnostics: dict[str, Any]
    train: TrainingRows
    validation: EvaluationRows | None
    test_logits: np.ndarray
    augmented: int
    timings: dict[str, float]
    #: ``[F, n_train, K]`` float32 on the device: for fold ``f`` the teacher fit without the labelled rows in
    #: ``folds[f]`` (calibrated like ``train.teacher_logits``) on the transfer rows; None without folds
    fold_logits: torch.Tensor | None = None
    #: ``distill.metrics.calibration.labelled_folds`` of the labelled rows: positions into ``split.labelled`` (and into
    #: the transfer rows, which start with the labelled rows) held out by each fold; None without folds
    folds: list[np.ndarray] | None = None


def _teacher_key(config: Config) -> str:
    """What the teacher and its soft targets depend on: data, draw, transfer set, teacher, seed."""
    c = config.model_dump(mode="json")
    return json.dumps([c["seed"], c["data"], c["few_shot"], c["teacher"], c["train"]["device"]], sort_keys=True)


def _baseline_key(config: Config) -> str:
    """The baseline depends on everything but the distillation knobs."""
    c = config.model_dump(mode="json")
    for key in ("kl_weight", "temperature", "direction"):
        c["objective"].pop(key)
    return json.dumps(c, sort_keys=True)


def _teacher_identity(config: Config, teacher: Teacher) -> str:
    """What a teacher's outputs depend on besides its input rows (and, if it learns, its fit rows): its
    ``fingerprint()``, else its config settings; for a teacher defined outside distill (a plugin's, a
    user's class), also its code, so that editing it does not reuse stale soft targets."""
    fingerprint = teacher.fingerprint()
    if fingerprint is not None:
        return str(fingerprint)
    import sklearn

    settings = config.teacher.model_dump(mode="json", exclude={"cache", "cache_dir", "validation"})
    several = config.teacher.kind in ("auto", "ensemble")
    kinds = [c.kind for c in config.teacher.candidates] if several else [config.teacher.kind]
    code = [c for c in (_code_identity(resolve_teacher(kind)) for kind in kinds) if c is not None]
    return json.dumps([settings, config.seed, sklearn.__version__] + ([code] if code else []), sort_keys=True)


def _code_identity(entry: Any) -> str | None:
    """For a teacher class or factory defined outside distill: its name and the sha256 of its module's
    source (of its own source where the module has no file, e.g. a notebook; failing both, of this
    process and object, so nothing is reused across processes). None for distill's own."""
    module = getattr(entry, "__module__", None) or ""
    if module == "distill" or module.startswith("distill."):
        return None
    name = f"{module}.{getattr(entry, '__qualname__', type(entry).__qualname__)}"
    path = getattr(sys.modules.get(module), "__file__", None)
    try:
        if path:
            with open(path, "rb") as handle:
                return f"{name}:{hashlib.sha256(handle.read()).hexdigest()}"
        import inspect

        return f"{name}:{hashlib.sha256(inspect.getsource(entry).encode()).hexdigest()}"
    except (OSError, TypeError):
        return f"{name}:process {os.getpid()} object {id(entry)}"


def teach(prepared: Prepared, *, score_test: bool = True, cache: SoftTargetCache | None = None) -> TeacherOutputs:
    """Fit the teacher on the labelled rows and compute its soft targets once for every row the student sees.

    The teacher is cross-fitted (``distill.experiment.teacher_cv.cross_fit``): one fit per fold of the labelled rows
    gives out-of-fold outputs that calibrate it (``teacher.calibration``), choose among or average
    ``teacher.candidates`` (``teacher.kind`` auto / ensemble), and give ``fold_logits`` on the transfer rows.
    No test row is ever shown to a fold teacher or used for calibration.

    With ``score_test=False`` (tuning) the test rows are never read: ``test_logits`` is empty. With
    a ``cache``, outputs computed before for the same teacher, fit rows and input rows are reused
    (and a fitted teacher is not even fitted again).
    """
    config, data, split, device = prepared.config, prepared.dataset, prepared.split, prepared.device
    k = data.num_classes
    timings: dict[str, float] = {}
    x = prepared.scaler.transform(data.x)

    given = prepared.teacher
    _, first_kind, first_kwargs = _teacher_candidates(config, data, str(device), given)[0]
    # x is the student's (scaled) space; a network teacher may read raw features, as it was trained.
    try:
        teacher: Teacher = _new_teacher(first_kind, first_kwargs, given)  # auto / ensemble: the first candidate
        raw = teacher.input_space == "raw"
    except (UserError, MemoryError, Interrupted):
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's or a given teacher's own code
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"teacher: {first}" if isinstance(exc, ValueError) else
                        f"teacher: {type(exc).__name__}: {first}") from None
    to_teacher = prepared.scaler.inverse_transform if raw else (lambda rows: rows)

    transfer = config.few_shot.transfer
    rows = split.labelled if transfer != "pool" else np.concatenate([split.labelled, split.pool])
    x_train = x[rows]
    augmented = np.empty((0, *x.shape[1:]))
    if transfer == "augmented":
        aug = config.few_shot.augment
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0xA06]))
        augmented = augment_rows(
            x[split.labelled], aug.count, jitter=float(aug.jitter), mixup=float(aug.mixup),
            mixup_alpha=float(aug.mixup_alpha), rng=rng,
        )
        if not (np.abs(augmented) <= FLOAT32_MAX).all():  # NaN too: the student would train on inf or NaN
            raise UserError(
                f"few_shot.augment (jitter = {aug.jitter}, mixup_alpha = {aug.mixup_alpha}) gives augmented points"
                " that are NaN or beyond float32's range (the student's dtype); jitter is in scaled feature units"
            )
        x_train = np.concatenate([x_train, augmented])
    # One teacher pass over every row it will ever be asked about: transfer, validation, test.
    test_rows = split.test if score_test else split.test[:0]
    everything = np.concatenate([x_train, x[split.validation], x[test_rows]])
    teacher_rows = to_teacher(everything)
    fit_x, fit_y = to_teacher(x[split.labelled]), data.y[split.labelled]

    cache = cache if cache is not None else SoftTargetCache(None)
    learns = teacher.learns  # a network arrives trained: its fit rows do not matter
    try:
        identity = _teacher_identity(config, teacher)
    except ValueError as exc:
        raise UserError(f"teacher: {exc}") from None
    n_train, n_val = x_train.shape[0], split.validation.size
    cv_rows = n_train + n_val  # the only rows a fold teacher is asked about: never a test row
    folds = labelled_folds(fit_y, config.seed, TEACHER_FOLDS)
    # The calibration and the folds depend on the labelled rows' labels even for a teacher that does not learn.
    cross = json.dumps(["teacher_cv/1", config.teacher.kind, config.teacher.calibration, TEACHER_FOLDS, cv_rows,
                        config.seed, array_digest(fit_y)])
    key = cache.key(identity, array_digest(fit_x, fit_y) if learns else "", array_digest(teacher_rows), cross)
    n_folds = len(folds) if folds is not None else 0
    started = time.perf_counter()
    cached = cache.get(key, shape=(everything.shape[0] + n_folds * cv_rows, k))
    if cached is not None:
        stacked, diagnostics = cached
        logits = stacked[: everything.shape[0]]
        fold_logits = stacked[everything.shape[0]:].reshape(n_folds, cv_rows, k) if folds is not None else None
        diagnostics = {**diagnostics, "cache": "hit"}
        timings["teacher_fit_s"] = 0.0
        timings["soft_targets_s"] = time.perf_counter() - started
        log.debug("soft targets: cache hit %s", key[:12])
    else:
        mode = "single" if given is not None else {"auto": "auto", "ensemble": "ensemble"}.get(config.teacher.kind, "single")
        factories = [(name, functools.partial(_new_teacher, kind, kwargs, given))
                     for name, kind, kwargs in _teacher_candidates(config, data, str(device), given)]
        if mode == "single":  # the teacher built above first (a network is loaded once), then fresh ones
            built: list[Teacher] = [teacher]
            make = factories[0][1]
            factories = [(factories[0][0], lambda: built.pop() if built else make())]
        try:
            crossed = cross_fit(factories, fit_x, fit_y, teacher_rows, cv_rows, mode=mode,  # type: ignore[arg-type]
                                calibration=config.teacher.calibration, learns=learns, seed=config.seed,
                                num_classes=k, max_folds=TEACHER_FOLDS)
        except TeacherProblem as exc:
            raise UserError(str(exc)) from None
        logits, fold_logits, diagnostics = crossed.logits, crossed.fold_logits, crossed.diagnostics
        timings.update(crossed.timings)
        if cache.folder is not None:
            stacked = logits if fold_logits is None else np.concatenate([logits, fold_logits.reshape(-1, k)])
            cache.put(key, stacked, diagnostics)
            diagnostics = {**diagnostics, "cache": "miss"}
            log.debug("soft targets: cache miss %s, stored", key[:12])
    if n_val:
        val_logits = logits[n_train : n_train + n_val]
        diagnostics["validation_accuracy"] = float(np.mean(val_logits.argmax(1) == data.y[split.validation]))
    described = {key: v for key, v in diagnostics.items() if key != "warnings"}
    log.debug("teacher fitted in %.2fs: %s", timings["teacher_fit_s"], ", ".join(f"{key} = {v}" for key, v in described.items()))
    level = logging.WARNING if config.protocol.episodes == 1 else logging.DEBUG  # many episodes: one summary line
    for message in diagnostics.get("warnings", []):
        log.log(level, "teacher (seed %d): %s", config.seed, message)

    is_labelled = np.zeros(n_train, dtype=bool)
    is_labelled[: split.labelled.size] = True  # labelled rows come first in every transfer set
    targets = np.full(n_train, -1, dtype=np.int64)
    targets[: split.labelled.size] = data.y[split.labelled]
    train = TrainingRows(
        x=_to_device(x_train, device),
        targets=_to_device(targets, device, torch.long),
        labelled=_to_device(is_labelled, device, torch.bool),
        teacher_logits=_to_device(logits[:n_train], device),
    )
    validation = (
        EvaluationRows(_to_device(x[split.validation], device), _to_device(data.y[split.validation], device, torch.long))
        if n_val
        else None
    )
    return TeacherOutputs(
        diagnostics=diagnostics,
        train=train,
        validation=validation,
        test_logits=logits[n_train + n_val :],
        augmented=int(augmented.shape[0]),
        timings=timings,
        fold_logits=_to_device(fold_logits[:, :n_train], device) if fold_logits is not None else None,
        folds=folds,
    )


def build_student(prepared: Prepared) -> nn.Module:
    """The student from the experiment seed: the same initial weights every time (student and baseline)."""
    seed_everything(prepared.config.seed)
    return _build_student(prepared.config, prepared.dataset, prepared.num_outputs).to(prepared.device)


def _student_settings(prepared: Prepared, kl_weight: float | None, epoch_metrics: bool,
                      temperature: float | None = None) -> FitSettings:
    config = prepared.config
    return dataclasses.replace(
        fit_settings(config, kl_weight=kl_weight, temperature=temperature),
        epoch_metrics=epoch_metrics,
        criterion=build_criterion(
            config, prepared.hard, prepared.dataset.num_classes, prepared.dataset.y[prepared.split.labelled],
            prepared.device,
        ),
    )


def _report_fit(prepared: Prepared, system: str, result: FitResult) -> None:
    seed = prepared.config.seed
    for message in result.messages:
        log.log(logging.WARNING if result.status == "diverged" else logging.DEBUG, "%s (seed %d): %s",
                system, seed, message)
    log.debug(
        "%s: %d epochs in %.2fs (%s)%s", system, result.stopped_epoch, result.seconds, result.stop_reason,
        f", best {result.monitor} = {result.best_score:.4f} at epoch {result.best_epoch}" if result.best_epoch else "",
    )


def train_student(
    prepared: Prepared,
    taught: TeacherOutputs,
    *,
    kl_weight: float | None,
    system: str,
    progress: bool = False,
    epoch_metrics: bool = True,
) -> tuple[nn.Module, FitResult]:
    """Build the student from the experiment seed (same initial weights every time) and fit it; a KL
    weight or temperature that is "auto" is chosen first (``_choose_auto``)."""
    job = StudentJob(prepared, taught, kl_weight=kl_weight, system=system)
    _choose_auto([job], batched=True, checkpoints=None, stop=None, key="")
    model = build_student(prepared)
    seed_everything(prepared.config.seed + 1)  # the same dropout stream for student and baseline
    result = fit(
        model,
        taught.train,
        _student_settings(prepared, job.kl_weight, epoch_metrics, job.temperature),
        num_classes=prepared.dataset.num_classes,
        validation=taught.validation,
        progress=progress,
        description=system,
    )
    _report_fit(prepared, system, result)
    return model, result


@dataclass
class StudentJob:
    """One student fit of the protocol, filled in by ``train_students``."""

    prepared: Prepared
    taught: TeacherOutputs
    kl_weight: float | None
    system: str
    model: nn.Module | None = None
    result: FitResult | None = None
    #: the rows this job trains on when they are not the teacher's (a control's)
    train: TrainingRows | None = None
    #: the temperature when it is not the config's (a cross-validation member's, or one "auto" chose)
    temperature: float | None = None
    #: what ``objective.* = "auto"`` chose for this job (``distill.experiment.kd_selection.Selection.as_dict``)
    selection: dict[str, Any] | None = None

    def knobs(self) -> tuple[float | str, float | str]:
        """The job's KL weight and temperature: its own, else the config's (either may be "auto")."""
        o = self.prepared.config.objective
        return (o.kl_weight if self.kl_weight is None else self.kl_weight,
                o.temperature if self.temperature is None else self.temperature)

    @property
    def rows(self) -> TrainingRows:
        """What this job trains on: its own rows, or the teacher's soft targets on the transfer rows."""
        return self.train if self.train is not None else self.taught.train


def train_students(jobs: list[StudentJob], *, batched: bool = True, progress: bool = False,
                   epoch_metrics: bool = True, checkpoints: Checkpoints | None = None,
                   stop: StopRequest | None = None, key: str = "") -> None:
    """Fit every job's student: as stacked models where the fits agree in everything but the KL
    weight, temperature and seed (``distill.engine.loop.stack_problem_for``), one at a time otherwise.

    Jobs whose KL weight or temperature is "auto" get them first from ``_choose_auto``: one stacked fit
    of every fold x grid point of every episode among the jobs (``distill.experiment.kd_selection``).
    Each member gets exactly the initial weights, batches and result of its own ``train_student``.
    With ``checkpoints`` every fit (``<key>g<group>``) saves its state as it goes and a fit finished
    before is loaded instead of trained; ``stop`` turns a signal into ``Interrupted`` after a step.
    """
    _choose_auto(jobs, batched=batched, checkpoints=checkpoints, stop=stop, key=key)
    settings = [_student_settings(j.prepared, j.kl_weight, epoch_metrics, j.temperature) for j in jobs]
    models = [build_student(j.prepared) for j in jobs]
    groups: list[list[int]] = []
    problems: set[str] = set()
    for i, job in enumerate(jobs):
        for group in groups if batched else []:
            first = group[0]
            if jobs[first].prepared.dataset.num_classes != job.prepared.dataset.num_classes:
                continue
            problem = stack_problem_for([models[first], models[i]], [jobs[first].rows, job.rows],
                                        [settings[first], settings[i]],
                                        [jobs[first].taught.validation, job.taught.validation])
            if problem is None:
                group.append(i)
                break
            problems.add(problem)
        else:
            groups.append([i])
    if batched and len(jobs) > 1 and len(groups) == len(jobs) and problems:
        log.info("students trained one at a time: %s", "; ".join(sorted(problems)))
    for g, group in enumerate(groups):
        members = [jobs[i] for i in group]
        try:
            results = _fit_group(members, [models[i] for i in group], [settings[i] for i in group],
                                 f"{key}g{g}", checkpoints, stop, progress)
        except ValueError as exc:  # e.g. a user's student that vmap cannot run: train them one at a time
            if len(group) == 1:
                raise
            log.info("students trained one at a time: %s", exc)
            results = [_fit_group([job], [models[i]], [settings[i]], f"{key}g{g}-{n}", checkpoints, stop, progress)[0]
                       for n, (i, job) in enumerate(zip(group, members, strict=True))]
        if len(group) > 1:
            log.debug("trained %d students as one stacked model", len(group))
        for i, job, result in zip(group, members, results, strict=True):
            job.model, job.result = models[i], result
            _report_fit(job.prepared, job.system, result)


def _fit_group(jobs: list[StudentJob], models: list[nn.Module], settings: list[FitSettings], key: str,
               checkpoints: Checkpoints | None, stop: StopRequest | None, progress: bool) -> list[FitResult]:
    """One fit of one or more students (stacked), resumed from or recorded in ``checkpoints``."""
    identity = _fit_identity(key, jobs)  # recorded with the fit's checkpoints, checked on resume
    if checkpoints is not None:
        done = checkpoints.finished(key, models, identity)
        if done is not None:
            return done
    first = jobs[0].prepared
    if len(jobs) == 1:
        seed_everything(first.config.seed + 1)  # the same dropout stream for student and baseline
    work = len(jobs) * int(jobs[0].rows.x.numel())
    try:
        with threads_for_stacked_work(first.device, first.config.train.threads, work):
            results = fit_many(
                models, [j.rows for j in jobs], settings, num_classes=first.dataset.num_classes,
                validations=[j.taught.validation for j in jobs], progress=progress,
                description=jobs[0].system if len(jobs) == 1 else f"{len(jobs)} students",
                checkpoint=checkpoints.saver(key, identity) if checkpoints is not None else None,
                checkpoint_due=checkpoints.due if checkpoints is not None else None,
                resume=checkpoints.in_progress(key, identity) if checkpoints is not None else None,
                stop_requested=stop,
            )
    except FitInterrupted as exc:
        raise Interrupted(stop.signal_name if stop is not None and stop.signal_name else "SIGINT",
                          f"at epoch {exc.epoch}, step {exc.step} of fit {key}") from None
    if checkpoints is not None:
        checkpoints.finish(key, models, results, identity)
    return results


def _fit_identity(key: str, jobs: list[StudentJob]) -> dict[str, Any]:
    """Which fit a checkpoint belongs to: its key and, per member, system, episode seed, KL weight, config."""
    members = []
    for job in jobs:
        text = json.dumps(config_dict(job.prepared.config), sort_keys=True, default=str)
        members.append({"system": job.system, "seed": int(job.prepared.config.seed),
                        "kl_weight": None if job.kl_weight is None else float(job.kl_weight),
                        "temperature": None if job.temperature is None else float(job.temperature),
                        "config": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]})
    return {"key": key, "members": members}


def _selection_key(job: StudentJob) -> tuple[int, str]:
    """Jobs that share an episode's teacher outputs, config (but for the knobs) and fixed knob share a choice."""
    kl, temperature = job.knobs()
    c = job.prepared.config.model_dump(mode="json")
    c["objective"].pop("kl_weight")
    c["objective"].pop("temperature")
    return id(job.taught), json.dumps([c, kl, temperature], sort_keys=True)


def _needs_choice(job: StudentJob) -> bool:
    kl, temperature = job.knobs()
    return kl != 0 and AUTO in (kl, temperature)


def _choose_auto(jobs: list[StudentJob], *, batched: bool, checkpoints: Checkpoints | None,
                 stop: StopRequest | None, key: str) -> None:
    """Fill in the KL weight and temperature of every job whose config says "auto"
    (``distill.experiment.kd_selection``): every fold x candidate of every episode is one member of one stacked fit."""
    from distill.experiment.kd_selection import (
        Selection,
        candidate_grid,
        choose,
        fallback,
        fold_training_rows,
        heldout_scores,
    )

    groups: dict[tuple[int, str], list[StudentJob]] = {}
    for job in jobs:
        if _needs_choice(job):
            groups.setdefault(_selection_key(job), []).append(job)
    if not groups:
        return
    plans = []  # (group, grid, members per (fold, candidate))
    members: list[StudentJob] = []
    for group in groups.values():
        first = group[0]
        kl, temperature = first.knobs()
        auto = first.prepared.config.objective.auto
        grid = candidate_grid(kl, temperature, auto.kl_weights, auto.temperatures)
        taught = first.taught
        if taught.folds is None or taught.fold_logits is None:
            plans.append((group, grid, None))
            continue
        cells = []
        for f, positions in enumerate(taught.folds):
            rows = fold_training_rows(taught.train, taught.fold_logits[f], positions)
            for c in grid:
                member = StudentJob(first.prepared, taught, kl_weight=c.kl_weight, temperature=c.temperature,
                                    system=f"cv fold {f} kl_weight {c.kl_weight:g} T {c.temperature:g}", train=rows)
                cells.append((f, c, member))
                members.append(member)
        plans.append((group, grid, cells))
    if members:
        train_students(members, batched=batched, epoch_metrics=False, checkpoints=checkpoints, stop=stop,
                       key=f"{key}cv")
    for group, grid, cells in plans:
        first = group[0]
        kl, temperature = first.knobs()
        seed = first.prepared.config.seed
        if cells is None:
            selection = fallback(kl, temperature, "no cross-validation: a class has a single labelled row")
        else:
            per_row: dict[Any, list[tuple[int, np.ndarray, np.ndarray]]] = {c: [] for c in grid}
            x, y = first.taught.train.x, first.taught.train.targets
            for f, c, member in cells:
                assert member.model is not None and first.taught.folds is not None
                at = torch.as_tensor(first.taught.folds[f], dtype=torch.long, device=x.device)
                per_row[c].append((f, *heldout_scores(predict_logits(member.model, x[at]), y[at])))
            correct = [np.concatenate([r[1] for r in sorted(per_row[c], key=lambda r: r[0])]) for c in grid]
            losses = [np.concatenate([r[2] for r in sorted(per_row[c], key=lambda r: r[0])]) for c in grid]
            scores = [{"kl_weight": c.kl_weight, "temperature": c.temperature, "accuracy": float(ok.mean()),
                       "log_loss": float(nll.mean())} for c, ok, nll in zip(grid, correct, losses, strict=True)]
            index, gain, se = choose(scores, correct, float(first.prepared.config.objective.auto.margin))
            best = scores[index]
            selection = Selection(kl_weight=best["kl_weight"], temperature=best["temperature"],
                                  reason="cross-validation", folds=len(first.taught.folds), scores=scores,
                                  gain=None if math.isnan(gain) else gain, gain_se=None if math.isnan(se) else se)
            log.debug("objective auto (seed %d): kl_weight %g, T %g by %d-fold CV on %d labelled rows "
                      "(best distilled candidate's held-out accuracy gain %+.3f, standard error %.3f)",
                      seed, selection.kl_weight, selection.temperature, selection.folds, correct[0].size, gain, se)
        if cells is None:
            log.debug("objective auto (seed %d): %s; kl_weight %g, T %g", seed, selection.reason,
                      selection.kl_weight, selection.temperature)
        for job in group:
            job_kl, job_t = job.knobs()
            if job_kl == AUTO:
                job.kl_weight = selection.kl_weight
                if job.system == "teacher_probs_only" and selection.kl_weight == 0:
                    job.kl_weight = 1.0  # the KL term alone needs a weight; 1 as for a fixed kl_weight = 0
            if job_t == AUTO:
                job.temperature = selection.temperature
            job.selection = selection.as_dict()


def run_episode(
    prepared: Prepared,
    *,
    progress: bool = False,
    cache: dict[str, Any] | None = None,
    episode: int = 0,
    value: Any = None,
    soft_cache: SoftTargetCache | None = None,
) -> EpisodeResult:
    """Teacher, distilled student and baseline on one draw; scored on its test rows.

    ``cache`` (one dict per episode) lets a sweep over the distillation knobs reuse the
    teacher and the baseline, which do not depend on them.
    """
    cache = {} if cache is None else cache
    pending = _plan_episode(prepared, cache, episode, value, soft_cache)
    train_students(pending.jobs(), batched=False, progress=progress)
    return _score_episode(pending)


@dataclass
class _PendingEpisode:
    """An episode whose teacher has answered and whose students are planned (or trained)."""

    prepared: Prepared
    taught: TeacherOutputs
    student: StudentJob
    baseline: StudentJob
    new_baseline: bool
    episode: int
    value: Any
    controls: list[StudentJob] = field(default_factory=list)

    def jobs(self) -> list[StudentJob]:
        return ([self.student, self.baseline] if self.new_baseline else [self.student]) + self.controls


def _plan_episode(prepared: Prepared, cache: dict[str, Any], episode: int, value: Any,
                  soft_cache: SoftTargetCache | None) -> _PendingEpisode:
    """Teach (once per teacher key in ``cache``) and plan the student and (once per baseline key) the baseline."""
    config = prepared.config
    teacher_key = "teacher:" + _teacher_key(config)
    if teacher_key not in cache:
        cache[teacher_key] = teach(prepared, cache=soft_cache)
    taught: TeacherOutputs = cache[teacher_key]
    baseline_key = "baseline:" + _baseline_key(config)
    new_baseline = baseline_key not in cache
    if new_baseline:
        cache[baseline_key] = StudentJob(prepared, taught, kl_weight=0.0, system="baseline")
    student = StudentJob(prepared, taught, kl_weight=None, system="student")
    controls = [_control_job(prepared, taught, name) for name in config.protocol.controls]
    return _PendingEpisode(prepared, taught, student, cache[baseline_key], new_baseline, episode, value, controls)


#: ``protocol.controls``: systems trained beside the student, from the same initial weights on the
#: same rows and batches, that tell the teacher's knowledge from the KL term's other effects.
CONTROLS = ("null_teacher", "hard_labels", "teacher_probs_only")
#: ``protocol.references``: cheap non-network systems fitted on the same scaled labelled rows.
REFERENCES = ("logistic_regression",)
#: A class absent from the labelled rows gets this probability under the ``prior`` null teacher
#: (then renormalised), so that its log stays finite (log 0 would make a reverse KL infinite).
_PRIOR_FLOOR = 1e-6


def null_teacher_probabilities(kind: str, labelled_y: np.ndarray, num_classes: int) -> np.ndarray:
    """The null teacher's class probabilities ``[K]`` (float64): ``1/K`` each (``uniform``), or the
    labelled rows' class frequencies (``prior``; an absent class gets ``_PRIOR_FLOOR``, renormalised)."""
    if kind == "uniform":
        return np.full(num_classes, 1.0 / num_classes)
    counts = np.bincount(np.asarray(labelled_y, dtype=np.int64), minlength=num_classes).astype(np.float64)
    prior = counts / counts.sum()
    if (prior == 0).any():
        prior = np.maximum(prior, _PRIOR_FLOOR)
        prior = prior / prior.sum()
    return prior


def control_rows(name: str, train: TrainingRows, *, null_teacher: str = "uniform",
                 labelled_y: np.ndarray | None = None) -> TrainingRows:
    """A control's training rows: the student's rows with its teacher or its hard term replaced.

    * ``null_teacher``: every transfer row's soft target is the null teacher's (``log p`` as logits,
      tempered like any teacher's): a teacher that knows nothing about the rows;
    * ``hard_labels``: the teacher's argmax on the unlabelled transfer rows as hard labels
      (pseudo-labelling; labelled rows keep their true labels), trained with ``kl_weight = 0``;
    * ``teacher_probs_only``: no row in the hard term, so the loss is the KL term alone. The hard
      term's sum is then over no row: exactly 0 with its gradient exactly 0 for any finite output
      (``distill.losses.fused``: a 0/1 row weight times a finite value), not a small weight.
    """
    if name == "null_teacher":
        assert train.teacher_logits is not None and labelled_y is not None
        k = train.teacher_logits.shape[-1]
        probs = null_teacher_probabilities(null_teacher, labelled_y, k)
        logits = torch.as_tensor(np.log(probs), dtype=train.teacher_logits.dtype, device=train.x.device)
        return dataclasses.replace(train, teacher_logits=logits.expand(train.x.shape[0], k).contiguous())
    if name == "hard_labels":
        assert train.teacher_logits is not None
        guessed = train.teacher_logits.argmax(dim=-1).to(train.targets.dtype)
        targets = torch.where(train.labelled, train.targets, guessed)
        return dataclasses.replace(train, hard_targets=targets, hard_labelled=torch.ones_like(train.labelled))
    if name == "teacher_probs_only":
        return dataclasses.replace(train, hard_targets=train.targets, hard_labelled=torch.zeros_like(train.labelled))
    raise ValueError(f"unknown control {name!r}; known: {', '.join(CONTROLS)}")


def _control_job(prepared: Prepared, taught: TeacherOutputs, name: str) -> StudentJob:
    """One control of this episode: its rows and KL weight (``hard_labels``: none; ``teacher_probs_only``:
    the student's, or 1 when the student's is 0 so that the control still has a loss)."""
    config = prepared.config
    rows = control_rows(name, taught.train, null_teacher=config.protocol.null_teacher,
                        labelled_y=prepared.dataset.y[prepared.split.labelled])
    kl_weight: float | None = None
    temperature: float | None = None
    if name == "hard_labels":
        kl_weight = 0.0
    elif name == "teacher_probs_only" and config.objective.kl_weight == 0:
        kl_weight = 1.0  # with T = 1 when it is "auto", as when "auto" chooses kl_weight 0 for the student
        temperature = 1.0 if config.objective.temperature == AUTO else None
    return StudentJob(prepared, taught, kl_weight=kl_weight, system=name, train=rows, temperature=temperature)


def reference_metrics(name: str, x_labelled: np.ndarray, y_labelled: np.ndarray, x_test: np.ndarray,
                      y_test: np.ndarray, num_classes: int) -> tuple[dict[str, float], np.ndarray]:
    """A reference's test metrics and probabilities ``[N, K]``: scikit-learn's ``LogisticRegression()``
    (default C, lbfgs, max_iter raised to 10,000) on the scaled labelled rows; with a single labelled
    class, the constant prediction of that class."""
    if name != "logistic_regression":
        raise ValueError(f"unknown reference {name!r}; known: {', '.join(REFERENCES)}")
    from sklearn.linear_model import LogisticRegression

    x_l = x_labelled.reshape(x_labelled.shape[0], -1)
    x_t = x_test.reshape(x_test.shape[0], -1)
    probs = np.zeros((x_t.shape[0], num_classes), dtype=np.float64)
    present = np.unique(y_labelled)
    if present.size < 2:
        probs[:, int(present[0])] = 1.0
    else:
        model = LogisticRegression(max_iter=10_000).fit(x_l, y_labelled)
        probs[:, model.classes_.astype(np.int64)] = model.predict_proba(x_t)
    values = classification_metrics(torch.as_tensor(probs), torch.as_tensor(y_test, dtype=torch.long), num_classes)
    return {k: float(v) for k, v in values.items()}, probs


def _score_episode(pending: _PendingEpisode) -> EpisodeResult:
    """Test metrics of teacher, student and baseline once both students are trained."""
    prepared, taught = pending.prepared, pending.taught
    config, data, split, device = prepared.config, prepared.dataset, prepared.split, prepared.device
    k = data.num_classes
    student, student_fit = pending.student.model, pending.student.result
    baseline, baseline_fit = pending.baseline.model, pending.baseline.result
    assert student is not None and student_fit is not None and baseline is not None and baseline_fit is not None
    timings: dict[str, float] = {"load_data_s": prepared.load_seconds, **taught.timings}
    timings["student_fit_s"] = student_fit.seconds
    timings["baseline_fit_s"] = baseline_fit.seconds

    x_test = _to_device(prepared.scaler.transform(data.x[split.test]), device)
    y_test = _to_device(data.y[split.test], device, torch.long)
    outputs = {
        "teacher": torch.as_tensor(taught.test_logits, dtype=torch.float32, device=device),
        "student": predict_logits(student, x_test),
        "baseline": predict_logits(baseline, x_test),
    }
    for job in pending.controls:
        assert job.model is not None and job.result is not None
        outputs[job.system] = predict_logits(job.model, x_test)
        timings[f"{job.system}_fit_s"] = job.result.seconds
    metrics = {system: _numpy_metrics(out, y_test, k) for system, out in outputs.items()}
    predictions = {system: probabilities(out).cpu().numpy() for system, out in outputs.items()}
    if config.protocol.references:
        x_scaled = prepared.scaler.transform(data.x)
        for name in config.protocol.references:
            started = time.perf_counter()
            metrics[name], predictions[name] = reference_metrics(
                name, x_scaled[split.labelled], data.y[split.labelled], x_scaled[split.test], data.y[split.test], k)
            timings[f"{name}_fit_s"] = time.perf_counter() - started
    return EpisodeResult(
        metrics=metrics,
        teacher_diagnostics=taught.diagnostics,
        student_fit=student_fit,
        baseline_fit=baseline_fit,
        student=student,
        baseline=baseline,
        test_predictions=predictions,
        test_targets=data.y[split.test],
        timings=timings,
        episode=pending.episode,
        seed=config.seed,
        value=pending.value,
        split_sizes={
            "test": int(split.test.size),
            "labelled": int(split.labelled.size),
            "validation": int(split.validation.size),
            "pool": int(split.pool.size),
            "augmented": taught.augmented,
            "transfer": int(taught.train.x.shape[0]),
        },
        split=split,
        kd_selection=pending.student.selection,
        control_fits={job.system: job.result for job in pending.controls},  # type: ignore[misc]
        controls={job.system: job.model for job in pending.controls},  # type: ignore[misc]
    )


#: Training rows of the episodes trained together, at most (stacked students copy them once more).
_STACK_BYTES = 256 * 2**20


def _episode_bytes(taught: TeacherOutputs, config: Config) -> int:
    """The rows an episode's fits hold: its students', and its cross-validation members' for "auto"."""
    tensors = [taught.train.x, taught.train.teacher_logits, taught.fold_logits]
    if taught.validation is not None:
        tensors.append(taught.validation.x)
    size = sum(t.numel() * t.element_size() for t in tensors if t is not None)
    o = config.objective
    if AUTO in (o.kl_weight, o.temperature) and o.kl_weight != 0 and taught.folds is not None:
        from distill.experiment.kd_selection import candidate_grid

        grid = candidate_grid(o.kl_weight, o.temperature, o.auto.kl_weights, o.auto.temperatures)
        size *= 1 + len(taught.folds) * len(grid)
    return size


def episode_seed(seed: int, episode: int) -> int:
    """Episode ``e`` uses seed ``seed + e``: episode 0 is the plain run, and any episode can be
    repeated alone with ``--seed seed+e --episodes 1``."""
    return seed + episode


def soft_target_cache(config: Config) -> SoftTargetCache:
    """The run's soft-target cache (``teacher.cache_dir``), or an inactive one with ``teacher.cache = false``."""
    return SoftTargetCache(config.teacher.cache_dir if config.teacher.cache else None)


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


def run_protocol(
    config: Config,
    first: list[Prepared] | None = None,
    *,
    progress: bool = False,
    on_result: Callable[[EpisodeResult], None] | None = None,
    soft_cache: SoftTargetCache | None = None,
    checkpoints: Checkpoints | None = None,
    stop: StopRequest | None = None,
    reported: int = 0,
) -> tuple[list[Prepared], list[EpisodeResult]]:
    """Every episode (and every sweep value within it).

    ``first`` is ``prepare_protocol(config)`` when the caller already has it. Returns it and the
    results in the order episode-major, sweep value-minor. ``checkpoints`` and ``stop``: see
    ``train_students``; a resumed run passes ``reported``, the results ``on_result`` already saw.
    """
    from distill.progress import progress_bar as tqdm

    first = prepare_protocol(config) if first is None else first
    dataset = first[0].dataset
    variants = expand_sweep(config)
    episodes = config.protocol.episodes
    total = episodes * len(variants)
    results: list[EpisodeResult] = []
    bar = tqdm(total=total, desc="episodes", disable=not progress or total == 1, leave=False, dynamic_ncols=True)
    batched = config.train.batched
    pending: list[_PendingEpisode] = []
    pending_bytes = 0

    flushes = 0

    def flush() -> None:
        nonlocal pending_bytes, flushes
        train_students([job for p in pending for job in p.jobs()], batched=batched,
                       progress=progress and total == 1, checkpoints=checkpoints, stop=stop, key=f"c{flushes}")
        flushes += 1
        for p in pending:
            results.append(_score_episode(p))
            if on_result is not None and len(results) > reported:
                on_result(results[-1])
            bar.update(1)
        pending.clear()
        pending_bytes = 0

    for e in range(episodes):
        cache: dict[str, Any] = {}
        for i, (value, variant) in enumerate(variants):
            if stop is not None:
                stop.check(f"before episode {e}")
            prepared = first[i] if e == 0 else prepare(
                variant.model_copy(update={"seed": episode_seed(variant.seed, e)}), dataset, first[i].teacher
            )
            pending.append(_plan_episode(prepared, cache, e, value, soft_cache))
            pending_bytes += _episode_bytes(pending[-1].taught, prepared.config)
        # Episodes wait to be trained together while their rows fit the stacking budget.
        if not batched or pending_bytes >= _STACK_BYTES or e == episodes - 1:
            flush()
    bar.close()
    flagged = sorted({r.seed for r in results if r.teacher_diagnostics.get("warnings")})
    if flagged and episodes > 1:
        log.warning(
            "teacher looked degenerate in %d of %d episodes (seeds %s); details in log.txt and summary.json",
            len(flagged), episodes, ", ".join(map(str, flagged[:10])) + (", ..." if len(flagged) > 10 else ""),
        )
    return first, results
