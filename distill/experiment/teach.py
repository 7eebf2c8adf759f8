"""Teach: one episode's soft targets, from the teacher fitted on its labelled rows, computed once.

``teach`` builds every row the teacher is asked about (the transfer rows -- labelled, plus the unlabelled
pool or generated rows -- then the validation and test rows), looks their outputs up in the one
soft-target cache (``distill.experiment.cache``: this run's memory, then ``teacher.cache_dir``) under
one key, and otherwise cross-fits the teacher (``distill.experiment.teacher_cv.cross_fit``: one fresh
teacher per fit, built from the ``TeacherSpec`` that ``prepare`` resolved). ``TeacherOutputs`` holds the
students' training rows, on the device, with the soft targets.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from distill.config import Config
from distill.data.augment import augment_rows
from distill.data.sources import FLOAT32_MAX
from distill.engine.loop import EvaluationRows, TrainingRows
from distill.errors import UserError
from distill.experiment.cache import SoftTargetCache, array_digest
from distill.experiment.prepare import TEACHER_FOLDS, Prepared
from distill.experiment.teacher_cv import CrossFitted, TeacherProblem, cross_fit
from distill.experiment.teacher_pool import TeacherFit, TeacherPool, poolable
from distill.metrics.calibration import labelled_folds

__all__ = ["TeacherOutputs", "TeacherRequest", "teach", "teacher_request", "teacher_fit", "fits_in_workers", "soft_target_cache",
           "evaluation_rows"]

log = logging.getLogger("distill")


def _to_device(array: np.ndarray, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    tensor = torch.as_tensor(np.ascontiguousarray(array), dtype=dtype)
    if device.type == "cuda":  # one asynchronous copy from pinned memory; the rows then stay on the GPU
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def evaluation_rows(prepared: Prepared, rows: np.ndarray) -> EvaluationRows:
    """The dataset's ``rows``, scaled as the student sees them, with their labels, on the episode's device."""
    data, device = prepared.dataset, prepared.device
    return EvaluationRows(_to_device(prepared.scaler.transform(data.x[rows]), device),
                          _to_device(data.y[rows], device, torch.long))


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


@dataclass(frozen=True)
class _TeacherRows:
    """What the teacher is fit on and asked about in one episode (``_teacher_rows``)."""

    #: the transfer rows, in the student's scaled space: the labelled rows first
    x_train: np.ndarray
    augmented: int
    #: every row the teacher is asked about, in its own input space: transfer, validation, test
    asked: np.ndarray
    fit_x: np.ndarray
    fit_y: np.ndarray
    n_val: int

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def cv_rows(self) -> int:
        """The only rows a fold teacher is asked about (transfer + validation): never a test row."""
        return self.n_train + self.n_val


def _transfer_rows(prepared: Prepared, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows the KL term sees (``few_shot.transfer``), and the generated ones among them (``augmented``)."""
    split, fs = prepared.split, prepared.few_shot
    rows = split.labelled if fs.transfer != "pool" else np.concatenate([split.labelled, split.pool])
    augmented = np.empty((0, *x.shape[1:]))
    if fs.transfer != "augmented":
        return x[rows], augmented
    aug = fs.augment
    rng = np.random.default_rng(np.random.SeedSequence([prepared.seed, 0xA06]))
    augmented = augment_rows(x[split.labelled], aug.count, jitter=float(aug.jitter), mixup=float(aug.mixup),
                             mixup_alpha=float(aug.mixup_alpha), rng=rng)
    if not (np.abs(augmented) <= FLOAT32_MAX).all():  # NaN too: the student would train on inf or NaN
        raise UserError(
            f"few_shot.augment (jitter = {aug.jitter}, mixup_alpha = {aug.mixup_alpha}) gives augmented points"
            " that are NaN or beyond float32's range (the student's dtype); jitter is in scaled feature units"
        )
    return np.concatenate([x[rows], augmented]), augmented


def _teacher_rows(prepared: Prepared, x: np.ndarray, score_test: bool) -> _TeacherRows:
    """One teacher pass over every row it will ever be asked about: transfer, validation, test (none
    without ``score_test``). ``x`` is the student's (scaled) space; a teacher may read raw features."""
    split = prepared.split
    to_teacher = prepared.scaler.inverse_transform if prepared.teacher.raw_inputs else (lambda rows: rows)
    x_train, augmented = _transfer_rows(prepared, x)
    test_rows = split.test if score_test else split.test[:0]
    asked = to_teacher(np.concatenate([x_train, x[split.validation], x[test_rows]]))
    return _TeacherRows(x_train=x_train, augmented=int(augmented.shape[0]), asked=asked,
                        fit_x=to_teacher(x[split.labelled]), fit_y=prepared.dataset.y[split.labelled],
                        n_val=int(split.validation.size))


def _outputs_key(prepared: Prepared, rows: _TeacherRows) -> str:
    """The one key of the soft-target cache: the teacher's identity, the rows it is fit on (if it learns),
    the rows it is asked about, and how it is cross-fitted and calibrated (which depends on the labelled
    rows' labels even for a teacher that does not learn)."""
    spec, seed = prepared.teacher, prepared.seed
    cross = json.dumps(["teacher_cv/1", spec.kind, spec.calibration, TEACHER_FOLDS, rows.cv_rows, seed,
                        array_digest(rows.fit_y)])
    fit_rows = array_digest(rows.fit_x, rows.fit_y) if spec.learns else ""  # a network arrives trained
    return SoftTargetCache.key(spec.identity(seed), fit_rows, array_digest(rows.asked), cross)


@dataclass(frozen=True)
class TeacherRequest:
    """What ``teach`` asks of the teacher in one episode: its rows, and the soft-target cache key they give."""

    rows: _TeacherRows
    key: str


def teacher_request(prepared: Prepared, score_test: bool = True) -> TeacherRequest:
    """The episode's teacher rows and cache key (``teach`` computes them itself when not given them)."""
    rows = _teacher_rows(prepared, prepared.scaler.transform(prepared.dataset.x), score_test)
    return TeacherRequest(rows, _outputs_key(prepared, rows))


def fits_in_workers(prepared: Prepared) -> bool:
    """Whether the experiment's teacher can be fit in a worker process
    (``distill.experiment.teacher_pool.poolable``, every candidate)."""
    spec = prepared.teacher
    return not spec.given and spec.learns and all(poolable(c.kind, c.settings, c.given is not None)
                                                  for c in spec.candidates)


def teacher_fit(prepared: Prepared, request: TeacherRequest) -> TeacherFit | None:
    """The episode's cross-fit as plain data for a worker process, or None when its teacher must be fit in
    this process (``fits_in_workers``)."""
    spec, rows = prepared.teacher, request.rows
    if not fits_in_workers(prepared):
        return None
    return TeacherFit(candidates=tuple((c.name, c.kind, c.settings) for c in spec.candidates), fit_x=rows.fit_x,
                      fit_y=rows.fit_y, rows=rows.asked, cv_rows=rows.cv_rows, mode=spec.mode,
                      calibration=spec.calibration, learns=spec.learns, seed=prepared.seed,
                      num_classes=prepared.dataset.num_classes, max_folds=TEACHER_FOLDS)


def _cross_fit(prepared: Prepared, rows: _TeacherRows) -> CrossFitted:
    """Fit the teacher (one fresh instance per fit: per candidate, on all labelled rows and per fold)."""
    spec = prepared.teacher
    factories = [(c.name, functools.partial(c.build, prepared.seed, str(prepared.device))) for c in spec.candidates]
    try:
        return cross_fit(factories, rows.fit_x, rows.fit_y, rows.asked, rows.cv_rows, mode=spec.mode,
                         calibration=spec.calibration, learns=spec.learns, seed=prepared.seed,
                         num_classes=prepared.dataset.num_classes, max_folds=TEACHER_FOLDS)
    except TeacherProblem as exc:
        raise _in_episode(exc, prepared) from None


def _in_episode(exc: TeacherProblem, prepared: Prepared) -> UserError:
    """The teacher's problem as one line that also names the episode (by its seed, as the plan lists them)."""
    return UserError(f"{exc} (in the episode of seed {prepared.seed})")


def _soft_targets(prepared: Prepared, rows: _TeacherRows, key: str,
                  cache: SoftTargetCache[TeacherOutputs], pool: TeacherPool | None) -> CrossFitted:
    """The teacher's logits (and fold logits) on ``rows``: from the disk cache, or fitted (by ``pool`` when it
    was sent this key, else here) and stored there."""
    k = prepared.dataset.num_classes
    n, cv_rows = rows.asked.shape[0], rows.cv_rows
    folds = labelled_folds(rows.fit_y, prepared.seed, TEACHER_FOLDS)
    n_folds = len(folds) if folds is not None else 0
    started = time.perf_counter()
    cached = cache.get(key, shape=(n + n_folds * cv_rows, k))
    if cached is not None:
        stacked, diagnostics = cached
        fold_logits = stacked[n:].reshape(n_folds, cv_rows, k) if folds is not None else None
        log.debug("soft targets: cache hit %s", key[:12])
        return CrossFitted(logits=stacked[:n], fold_logits=fold_logits, folds=folds,
                           diagnostics={**diagnostics, "cache": "hit"},
                           timings={"teacher_fit_s": 0.0, "soft_targets_s": time.perf_counter() - started})
    if pool is not None and key in pool:
        try:
            crossed = pool.result(key)
        except TeacherProblem as exc:
            raise _in_episode(exc, prepared) from None
    else:
        crossed = _cross_fit(prepared, rows)  # its folds are these: labelled_folds of the same labels and seed
    if cache.folder is not None:
        stacked = crossed.logits if crossed.fold_logits is None else np.concatenate(
            [crossed.logits, crossed.fold_logits.reshape(-1, k)])
        cache.put(key, stacked, crossed.diagnostics)
        crossed.diagnostics = {**crossed.diagnostics, "cache": "miss"}
        log.debug("soft targets: cache miss %s, stored", key[:12])
    return crossed


def _report(prepared: Prepared, crossed: CrossFitted) -> None:
    """The teacher's fit in the log; its warnings as warnings when the run has one episode (else one summary
    line at the end of the run says how many episodes had them)."""
    diagnostics = crossed.diagnostics
    described = {key: v for key, v in diagnostics.items() if key != "warnings"}
    log.debug("teacher fitted in %.2fs: %s", crossed.timings["teacher_fit_s"],
              ", ".join(f"{key} = {v}" for key, v in described.items()))
    level = logging.WARNING if prepared.protocol.episodes == 1 else logging.DEBUG
    for message in diagnostics.get("warnings", []):
        log.log(level, "teacher (seed %d): %s", prepared.seed, message)


def _outputs(prepared: Prepared, rows: _TeacherRows, crossed: CrossFitted) -> TeacherOutputs:
    """The students' training rows on the device: the transfer rows with the teacher's soft targets."""
    data, split, device = prepared.dataset, prepared.split, prepared.device
    n_train, n_val = rows.n_train, rows.n_val
    is_labelled = np.zeros(n_train, dtype=bool)
    is_labelled[: split.labelled.size] = True  # labelled rows come first in every transfer set
    targets = np.full(n_train, -1, dtype=np.int64)
    targets[: split.labelled.size] = data.y[split.labelled]
    train = TrainingRows(
        x=_to_device(rows.x_train, device),
        targets=_to_device(targets, device, torch.long),
        labelled=_to_device(is_labelled, device, torch.bool),
        teacher_logits=_to_device(crossed.logits[:n_train], device),
    )
    return TeacherOutputs(
        diagnostics=crossed.diagnostics,
        train=train,
        validation=evaluation_rows(prepared, split.validation) if n_val else None,
        test_logits=crossed.logits[n_train + n_val:],
        augmented=rows.augmented,
        timings=crossed.timings,
        fold_logits=_to_device(crossed.fold_logits[:, :n_train], device) if crossed.fold_logits is not None else None,
        folds=crossed.folds,
    )


def teach(prepared: Prepared, *, score_test: bool = True, cache: SoftTargetCache[TeacherOutputs] | None = None,
          request: TeacherRequest | None = None, pool: TeacherPool | None = None) -> TeacherOutputs:
    """Fit the teacher on the labelled rows and compute its soft targets once for every row the student sees.

    The teacher is cross-fitted (``distill.experiment.teacher_cv.cross_fit``): one fit per fold of the labelled rows
    gives out-of-fold outputs that calibrate it (``teacher.calibration``), choose among or average
    ``teacher.candidates`` (``teacher.kind`` auto / ensemble), and give ``fold_logits`` on the transfer rows.
    No test row is ever shown to a fold teacher or used for calibration.

    With ``score_test=False`` (tuning) the test rows are never read: ``test_logits`` is empty. With
    a ``cache``, outputs computed before for the same teacher, fit rows and input rows are reused: the
    very same object when this cache computed them, else from its disk (then the teacher is not fitted).
    ``request``: ``teacher_request(prepared, score_test)`` when the caller has it; ``pool``: worker processes
    that were sent this episode's fit ahead of time (``distill.experiment.teacher_pool``; same numbers).
    """
    cache = cache if cache is not None else SoftTargetCache(None)
    request = request if request is not None else teacher_request(prepared, score_test)
    rows, key = request.rows, request.key
    remembered = cache.recall(key)
    if remembered is not None:
        return remembered
    crossed = _soft_targets(prepared, rows, key, cache, pool)
    if rows.n_val:
        val_logits = crossed.logits[rows.n_train: rows.cv_rows]
        crossed.diagnostics["validation_accuracy"] = float(
            np.mean(val_logits.argmax(1) == prepared.dataset.y[prepared.split.validation]))
    _report(prepared, crossed)
    outputs = _outputs(prepared, rows, crossed)
    cache.remember(key, outputs)
    return outputs


def soft_target_cache(config: Config) -> SoftTargetCache[TeacherOutputs]:
    """A run's or search's soft-target cache: on disk under ``teacher.cache_dir`` too, unless ``teacher.cache = false``."""
    return SoftTargetCache(config.teacher.cache_dir if config.teacher.cache else None)
