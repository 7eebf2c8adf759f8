"""One episode of the protocol: teacher, distilled student and no-distillation baseline.

``prepare`` checks everything that can be checked before the first step (config against the
data, teacher and student arguments, early-stopping monitor) and raises a UserError listing
every problem; ``run_episode`` then fits the teacher once, computes its soft targets once for
all rows the student sees, and trains the student and the baseline from the same initial weights
on the same rows and batches.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import students
from distill.config import Config
from distill.data import Dataset, Scaler, Split, fit_scaler, load_dataset, split_dataset
from distill.engine import (
    EvaluationRows,
    FitResult,
    FitSettings,
    TrainingRows,
    clone_module,
    fit,
    logged_metric_names,
    predict_logits,
)
from distill.errors import ConfigError, UserError
from distill.metrics import classification_metrics, probabilities
from distill.seeding import resolve_device, seed_everything
from teachers.base import Teacher, create_teacher

__all__ = ["Prepared", "EpisodeResult", "prepare", "run_episode", "fit_settings"]

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


def _teacher_kwargs(config: Config, num_classes: int) -> dict[str, Any]:
    t = config.teacher
    return {
        "num_classes": num_classes,
        "kernel": t.kernel,
        "restarts": t.restarts,
        "multi_class": t.multi_class,
        "estimator": t.estimator,
        "params": dict(t.params),
        "random_state": config.seed,
    }


def _build_student(config: Config, dataset: Dataset, num_outputs: int) -> nn.Module:
    try:
        return students.build(
            config.student.arch, dataset.in_shape, dataset.num_classes, num_outputs=num_outputs, **config.student.kwargs
        )
    except ValueError as exc:  # StudentArgumentError and unknown names
        message = str(exc)
        if not message.startswith(("unknown key 'student.", "student.")):
            message = f"student.arch: {message}" if "student '" not in message else message
        raise ConfigError(message) from None


def prepare(config: Config) -> Prepared:
    """Load and check the data, draw the split, and check teacher, student and objective against it."""
    started = time.perf_counter()
    dataset = load_dataset(config.data.source, config.data.label)
    fs = config.few_shot
    split = split_dataset(
        dataset,
        test_size=config.data.test_size,
        labelled=fs.labelled,
        per_class=fs.per_class,
        validation=fs.validation,
        seed=config.seed,
    )
    problems: list[str] = []
    k = dataset.num_classes
    hard = config.objective.hard
    if hard == "auto":
        hard = "bce" if k == 2 else "ce"
    if hard == "bce" and k != 2:
        problems.append(f"objective.hard = 'bce' needs two classes, but {config.data.source} has {k}; use 'ce'")
    num_outputs = 1 if hard == "bce" else k
    try:
        create_teacher(config.teacher.kind, **_teacher_kwargs(config, k))
    except (ValueError, KeyError) as exc:
        message = exc.args[0] if exc.args else str(exc)
        problems.append(message if message.startswith("teacher.") else f"teacher: {message}")
    student_parameters = 0
    try:
        model = _build_student(config, dataset, num_outputs)
        student_parameters = sum(p.numel() for p in model.parameters())
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
    except RuntimeError as exc:
        problems.append(
            f"student '{config.student.arch}' cannot take inputs of shape {dataset.in_shape}: {str(exc).splitlines()[0]}"
        )
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
    if problems:
        raise ConfigError(*problems)
    scaler = fit_scaler(config.data.scale, dataset.x[split.labelled])
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
    )


def fit_settings(config: Config, *, kl_weight: float | None = None) -> FitSettings:
    """The engine's settings from the config (``kl_weight`` overridden for the baseline)."""
    t, o, es = config.train, config.objective, config.train.early_stopping
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
        kl_weight=float(o.kl_weight if kl_weight is None else kl_weight),
        temperature=float(o.temperature),
        direction=o.direction,
        monitor=es.monitor,
        mode=es.mode,
        patience=es.patience,
        min_delta=float(es.min_delta),
        restore_best=t.restore_best,
        seed=config.seed,
    )


def _to_device(array: np.ndarray, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype).to(device)


def _numpy_metrics(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, float]:
    values = classification_metrics(probabilities(logits), y, num_classes)
    numbers = torch.stack(list(values.values())).tolist()
    return dict(zip(values.keys(), numbers))


def run_episode(prepared: Prepared, *, progress: bool = False) -> EpisodeResult:
    """Fit the teacher, then the distilled student and the baseline; score all three on the test rows."""
    config, data, split, device = prepared.config, prepared.dataset, prepared.split, prepared.device
    k = data.num_classes
    timings: dict[str, float] = {"load_data_s": prepared.load_seconds}
    x = prepared.scaler.transform(data.x)
    transfer_rows = split.labelled if config.few_shot.transfer == "labelled" else np.concatenate([split.labelled, split.pool])

    started = time.perf_counter()
    teacher: Teacher = create_teacher(config.teacher.kind, **_teacher_kwargs(config, k))
    try:
        teacher.fit(x[split.labelled], data.y[split.labelled])
    except ValueError as exc:
        raise UserError(f"teacher '{config.teacher.kind}' cannot be fit on the labelled rows: {exc}") from None
    timings["teacher_fit_s"] = time.perf_counter() - started
    diagnostics: dict[str, Any] = dict(teacher.diagnostics()) if hasattr(teacher, "diagnostics") else {}

    started = time.perf_counter()
    # One teacher pass over every row it will ever be asked about: transfer, validation, test.
    order = np.concatenate([transfer_rows, split.validation, split.test])
    teacher_logits = np.asarray(teacher.logits(x[order]), dtype=np.float64)
    if teacher_logits.shape != (order.size, k) or not np.isfinite(teacher_logits).all():
        raise UserError(
            f"teacher '{config.teacher.kind}' returned logits of shape {teacher_logits.shape} "
            f"(finite: {bool(np.isfinite(teacher_logits).all())}); expected ({order.size}, {k}) and finite"
        )
    n_transfer, n_val = transfer_rows.size, split.validation.size
    soft = _to_device(teacher_logits[:n_transfer], device)
    teacher_val = teacher_logits[n_transfer : n_transfer + n_val]
    teacher_test = teacher_logits[n_transfer + n_val :]
    timings["soft_targets_s"] = time.perf_counter() - started
    if n_val:
        diagnostics["validation_accuracy"] = float(np.mean(teacher_val.argmax(1) == data.y[split.validation]))
    described = {k: v for k, v in diagnostics.items() if k != "warnings"}
    log.info("teacher fitted in %.2fs: %s", timings["teacher_fit_s"], ", ".join(f"{k} = {v}" for k, v in described.items()))
    for message in diagnostics.get("warnings", []):
        log.warning("teacher: %s", message)

    is_labelled = np.isin(transfer_rows, split.labelled)
    targets = np.where(is_labelled, data.y[transfer_rows], -1)
    train = TrainingRows(
        x=_to_device(x[transfer_rows], device),
        targets=_to_device(targets, device, torch.long),
        labelled=_to_device(is_labelled, device, torch.bool),
        teacher_logits=soft,
    )
    validation = (
        EvaluationRows(_to_device(x[split.validation], device), _to_device(data.y[split.validation], device, torch.long))
        if n_val
        else None
    )

    seed_everything(config.seed)
    student = _build_student(config, data, prepared.num_outputs).to(device)
    baseline = clone_module(student)

    fits: dict[str, FitResult] = {}
    for system, model, weight in (("student", student, None), ("baseline", baseline, 0.0)):
        seed_everything(config.seed + 1)  # same dropout stream for both
        settings = fit_settings(config, kl_weight=weight)
        result = fit(
            model, train, settings, num_classes=k, validation=validation, progress=progress, description=system
        )
        for message in result.messages:
            log.info("%s: %s", system, message)
        log.info(
            "%s: %d epochs in %.2fs (%s)%s",
            system,
            result.stopped_epoch,
            result.seconds,
            result.stop_reason,
            f", best {result.monitor} = {result.best_score:.4f} at epoch {result.best_epoch}" if result.best_epoch else "",
        )
        fits[system] = result
        timings[f"{system}_fit_s"] = result.seconds

    x_test = _to_device(x[split.test], device)
    y_test = _to_device(data.y[split.test], device, torch.long)
    outputs = {
        "teacher": torch.as_tensor(teacher_test, dtype=torch.float32, device=device),
        "student": predict_logits(student, x_test),
        "baseline": predict_logits(baseline, x_test),
    }
    metrics = {system: _numpy_metrics(out, y_test, k) for system, out in outputs.items()}
    predictions = {system: probabilities(out).cpu().numpy() for system, out in outputs.items()}
    return EpisodeResult(
        metrics=metrics,
        teacher_diagnostics=diagnostics,
        student_fit=fits["student"],
        baseline_fit=fits["baseline"],
        student=student,
        baseline=baseline,
        test_predictions=predictions,
        test_targets=data.y[split.test],
        timings=timings,
    )
