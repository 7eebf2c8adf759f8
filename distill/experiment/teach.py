"""Teach: fit the teacher on an episode's labelled rows and compute its soft targets once (cached).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from distill.config import Config
from distill.data.augment import augment_rows
from distill.data.sources import FLOAT32_MAX
from distill.engine.loop import (
    EvaluationRows,
    TrainingRows,
)
from distill.errors import UserError
from distill.experiment.cache import SoftTargetCache, array_digest
from distill.experiment.prepare import TEACHER_FOLDS, Prepared, _new_teacher, _teacher_candidates
from distill.experiment.teacher_cv import TeacherProblem, cross_fit
from distill.interrupts import Interrupted
from distill.metrics.calibration import labelled_folds
from distill.metrics.classification import classification_metrics, probabilities
from distill.teachers.base import Teacher, resolve_teacher

__all__ = ["TeacherOutputs", "teach", "soft_target_cache"]

log = logging.getLogger("distill")


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


def soft_target_cache(config: Config) -> SoftTargetCache:
    """The run's soft-target cache (``teacher.cache_dir``), or an inactive one with ``teacher.cache = false``."""
    return SoftTargetCache(config.teacher.cache_dir if config.teacher.cache else None)
