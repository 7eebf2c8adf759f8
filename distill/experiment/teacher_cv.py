"""Cross-fitted teachers: out-of-fold outputs, temperature calibration, selection and an ensemble.

Everything here learns from the labelled rows only. The labelled rows are split into stratified
folds (``distill.metrics.calibration.labelled_folds``); for each fold a fresh teacher is fit without that
fold's rows, so every labelled row gets an out-of-fold (OOF) prediction. The OOF outputs decide
the temperature (Guo et al. 2017, temperature scaling), which candidate teacher to use
(``mode = "auto"``: lowest cross-validated log-loss) and report honest CV figures. The fold
teachers' outputs on the transfer and validation rows are returned too, so that a per-episode
cross-validation of the distillation knobs can use teachers that never saw the held-out rows.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from distill.errors import UserError
from distill.interrupts import Interrupted
from distill.metrics.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    labelled_folds,
    log_loss,
)
from distill.teachers.base import PROBABILITY_FLOOR, Teacher

__all__ = ["CrossFitted", "cross_fit", "CandidateFactory", "TeacherProblem"]

log = logging.getLogger("distill")

#: A named candidate teacher: a factory gives a fresh, unfitted teacher at every call.
CandidateFactory = tuple[str, Callable[[], Teacher]]


class TeacherProblem(ValueError):
    """A candidate teacher that cannot be built or fit on the labelled rows, fails computing its logits or
    returns malformed ones: one line naming the teacher and the first line of its error."""


@dataclass
class CrossFitted:
    """The chosen (or ensembled) teacher's calibrated outputs and its fold teachers' outputs.

    ``logits``: ``[N, K]`` float64 calibrated log-probabilities of the teacher fit on all labelled
    rows, on every row of ``rows``. ``fold_logits``: ``[F, M, K]`` float64, for fold ``f`` the teacher
    fit without the labelled rows in ``folds[f]``, calibrated the same way, on ``rows[:M]`` (None
    without folds). ``folds``: ``labelled_folds(fit_y, seed)``, positions into ``fit_x``.
    ``diagnostics``: JSON-serialisable (calibration, selection, cv_folds, warnings, the teacher's own).
    """

    logits: np.ndarray
    fold_logits: np.ndarray | None
    folds: list[np.ndarray] | None
    diagnostics: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Candidate:
    """One candidate's raw (uncalibrated) outputs and its calibration."""

    name: str
    full: np.ndarray  # [N, K] raw log-probabilities of the teacher fit on all labelled rows
    folds: np.ndarray | None  # [F, M, K] raw fold outputs
    oof: np.ndarray | None  # [n, K] raw out-of-fold outputs on the labelled rows (None: none possible)
    diagnostics: dict[str, Any]
    temperature: float = 1.0
    oof_calibrated: np.ndarray | None = None  # [n, K] honestly calibrated OOF log-probabilities


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _scores(log_probs: np.ndarray | None, y: np.ndarray) -> dict[str, float | None]:
    """accuracy, log_loss and ECE of ``softmax(log_probs)`` against ``y`` (None without outputs)."""
    if log_probs is None:
        return {"accuracy": None, "log_loss": None, "ece": None}
    probs = np.exp(_log_softmax(np.asarray(log_probs, dtype=np.float64)))
    return {
        "accuracy": float(np.mean(probs.argmax(axis=1) == y)),
        "log_loss": log_loss(probs, y),
        "ece": expected_calibration_error(probs, y),
    }


def _passes_through(exc: Exception) -> bool:
    """Whether an exception from teacher code is left as it is: distill's own errors (already a message for
    the user), a stop request, and running out of memory (the machine's limit, not the teacher's fault)."""
    if isinstance(exc, (TeacherProblem, UserError, Interrupted, MemoryError)):
        return True
    torch = sys.modules.get("torch")  # CUDA out of memory, without importing torch for a scikit-learn teacher
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return oom is not None and isinstance(exc, oom)


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (cut to ``limit`` characters), for a one-line problem."""
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else ""
    if len(line) > limit:
        line = line[: limit - 3] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _described(teacher: Teacher | None, name: str) -> str:
    """`` [what the teacher is]`` from its ``describe`` (empty when there is nothing more to say than its
    name, or ``describe`` fails itself)."""
    if teacher is None:
        return ""
    try:
        what = str(teacher.describe()).strip()
    except Exception:  # noqa: BLE001 - the description is only a courtesy in an error message
        return ""
    return f" [{what}]" if what and what != name else ""


@contextmanager
def _teacher_code(name: str, teacher: Teacher | None, doing: str) -> Iterator[None]:
    """Run teacher code (a plugin's or the user's): whatever it raises that is not distill's own becomes a
    one-line ``TeacherProblem`` naming the teacher, what it was doing, the first line of the error and, in
    brackets, the teacher's ``describe()``."""
    try:
        yield
    except Exception as exc:
        if _passes_through(exc):
            raise
        raise TeacherProblem(f"teacher '{name}' {doing}: {_first_line(exc)}{_described(teacher, name)}") from exc


def _checked_logits(teacher: Teacher, x: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    with _teacher_code(name, teacher, f"failed computing its logits on {x.shape[0]} rows"):
        logits = np.asarray(teacher.logits(x), dtype=np.float64)
    if logits.shape != (x.shape[0], num_classes) or not np.isfinite(logits).all():
        raise TeacherProblem(
            f"teacher '{name}' returned logits of shape {logits.shape} "
            f"(finite: {bool(np.isfinite(logits).all())}); expected ({x.shape[0]}, {num_classes}) and finite"
        )
    return logits


def _fit(factory: Callable[[], Teacher], x: np.ndarray, y: np.ndarray, name: str) -> Teacher:
    """A fresh teacher from ``factory``, fit on ``(x, y)``; its constructor and ``fit`` are teacher code."""
    with _teacher_code(name, None, "cannot be built"):
        teacher = factory()
    with _teacher_code(name, teacher, f"cannot be fit on {x.shape[0]} labelled rows"):
        fitted = teacher.fit(x, y)
    if not isinstance(fitted, Teacher):
        raise TeacherProblem(f"teacher '{name}': fit(x, y) returned a {type(fitted).__name__}, not the teacher "
                             "(a distill Teacher's fit returns self)")
    return fitted


def _diagnostics(teacher: Teacher, name: str) -> dict[str, Any]:
    """The fitted teacher's own diagnostics (teacher code as well)."""
    with _teacher_code(name, teacher, "failed in diagnostics()"):
        return dict(teacher.diagnostics())


def _honest_groups(folds: list[np.ndarray] | None, n: int, learns: bool) -> list[np.ndarray] | None:
    """The groups of labelled positions an honest ("after") score calibrates one at a time: the folds,
    or (a teacher that does not learn, without folds) one position at a time."""
    if folds is not None:
        return folds
    if not learns and n >= 3:
        return [np.array([i], dtype=np.int64) for i in range(n)]
    return None


def _calibrate(c: _Candidate, y: np.ndarray, groups: list[np.ndarray] | None, method: str) -> None:
    """Fit T on all OOF rows (used for the outputs), and the honest OOF: each group calibrated with the
    T fitted on the other groups' rows only."""
    if c.oof is None:
        return
    if method == "none" or y.size < 2:
        c.oof_calibrated = _log_softmax(c.oof) if groups is not None else None
        return
    c.temperature = fit_temperature(c.oof, y)
    if groups is None:
        return
    honest = np.empty_like(c.oof)
    for held in groups:
        rest = np.setdiff1d(np.arange(y.size), held)
        t = fit_temperature(c.oof[rest], y[rest]) if rest.size else 1.0
        honest[held] = apply_temperature(c.oof[held], t)
    c.oof_calibrated = honest


def _calibrated(c: _Candidate, method: str, logits: np.ndarray) -> np.ndarray:
    return logits if method == "none" else apply_temperature(logits, c.temperature)


def _every(parts: list[np.ndarray | None]) -> list[np.ndarray] | None:
    """``parts`` when every candidate has one, else None."""
    present = [p for p in parts if p is not None]
    return present if len(present) == len(parts) else None


def _mean_log(parts: list[np.ndarray]) -> np.ndarray:
    """``log(mean_j softmax(parts_j))``, clamped like ``probabilities_to_logits``."""
    mean = np.mean([np.exp(_log_softmax(p)) for p in parts], axis=0)
    return np.log(np.clip(mean, PROBABILITY_FLOOR, 1.0))


def cross_fit(
    candidates: Sequence[CandidateFactory],
    fit_x: np.ndarray,
    fit_y: np.ndarray,
    rows: np.ndarray,
    cv_rows: int,
    *,
    mode: Literal["single", "auto", "ensemble"],
    calibration: Literal["temperature", "none"],
    learns: bool,
    seed: int,
    num_classes: int,
    max_folds: int = 5,
) -> CrossFitted:
    """Fit each candidate on all labelled rows and, per fold, without that fold; calibrate, choose or average.

    ``rows``: every row the teacher is asked about, the labelled rows first (in ``fit_x`` order), then
    the other transfer rows, validation rows and test rows; ``cv_rows`` = M, the transfer + validation
    rows, the only rows a fold teacher sees. A teacher that does not learn (``learns=False``, a trained
    network) is fit once: its fold outputs are its full outputs and its "OOF" outputs its outputs on
    the labelled rows. ``calibration = "temperature"`` fits T on the OOF outputs (Guo et al. 2017).
    ``mode``: ``single`` (one candidate), ``auto`` (lowest calibrated CV log-loss; ties: the first
    listed), ``ensemble`` (the average of the candidates' calibrated probabilities).
    """
    if not candidates:
        raise ValueError("cross_fit needs at least one candidate teacher")
    if mode == "single" and len(candidates) != 1:
        raise ValueError(f"mode 'single' takes one candidate, got {len(candidates)}")
    fit_x = np.asarray(fit_x)
    y = np.asarray(fit_y, dtype=np.int64)
    rows = np.asarray(rows)
    n, m = y.size, int(cv_rows)
    if not n <= m <= rows.shape[0]:
        raise ValueError(f"cv_rows must lie in {n}..{rows.shape[0]} (labelled rows first), got {m}")
    folds = labelled_folds(y, seed, max_folds)
    groups = _honest_groups(folds, n, learns)
    warnings: list[str] = []
    timings = {"teacher_fit_s": 0.0, "soft_targets_s": 0.0}

    fitted: list[_Candidate] = []
    for name, factory in candidates:
        started = time.perf_counter()
        teacher = _fit(factory, fit_x, y, name)
        timings["teacher_fit_s"] += time.perf_counter() - started
        started = time.perf_counter()
        full = _checked_logits(teacher, rows, num_classes, name)
        timings["soft_targets_s"] += time.perf_counter() - started
        teacher_diagnostics = _diagnostics(teacher, name)
        fold_out: np.ndarray | None = None
        oof: np.ndarray | None = None
        started = time.perf_counter()
        if not learns:
            oof = full[:n]
            if folds is not None:
                fold_out = np.broadcast_to(full[:m], (len(folds), m, num_classes)).copy()
        elif folds is not None:
            fold_out = np.empty((len(folds), m, num_classes), dtype=np.float64)
            oof = np.empty((n, num_classes), dtype=np.float64)
            for f, held in enumerate(folds):
                keep = np.setdiff1d(np.arange(n), held)
                fold_teacher = _fit(factory, fit_x[keep], y[keep], name)
                fold_out[f] = _checked_logits(fold_teacher, rows[:m], num_classes, name)
                oof[held] = fold_out[f, held]
        timings["teacher_fit_s"] += time.perf_counter() - started
        c = _Candidate(name, full, fold_out, oof, teacher_diagnostics)
        _calibrate(c, y, groups, calibration)
        fitted.append(c)

    no_cv = learns and folds is None
    if no_cv:
        counts = np.bincount(y, minlength=num_classes)
        present = counts[counts > 0]
        why = (f"a labelled class has {int(present.min())} row(s)" if present.size >= 2
               else "fewer than two classes are labelled")
        warnings.append(f"no cross-validation of the teacher: {why}; its outputs are not calibrated"
                        + (" and the first candidate is used" if mode == "auto" else ""))

    def cv_row(c: _Candidate) -> dict[str, Any]:
        s = _scores(c.oof_calibrated, y)
        return {"name": c.name, "cv_log_loss": s["log_loss"], "cv_accuracy": s["accuracy"], "cv_ece": s["ece"],
                "temperature": c.temperature}

    rows_cv = [cv_row(c) for c in fitted]
    if mode == "ensemble":
        chosen_name = "ensemble"
        logits = _mean_log([_calibrated(c, calibration, c.full) for c in fitted])
        fold_parts = _every([c.folds for c in fitted])  # each candidate's, whenever there are folds
        fold_logits = (_mean_log([_calibrated(c, calibration, f) for c, f in zip(fitted, fold_parts, strict=True)])
                       if fold_parts is not None else None)
        oof_parts = _every([c.oof for c in fitted])
        before_oof = _mean_log(oof_parts) if groups is not None and oof_parts is not None else None
        calibrated_parts = _every([c.oof_calibrated for c in fitted])
        after_oof = _mean_log(calibrated_parts) if calibrated_parts is not None else None
        temperature: Any = [c.temperature for c in fitted]
        own: dict[str, Any] = {"members": {c.name: {k: v for k, v in c.diagnostics.items() if k != "warnings"}
                                           for c in fitted}}
        for c in fitted:
            warnings.extend(f"{c.name}: {w}" for w in c.diagnostics.get("warnings", []))
    else:
        best = 0
        if mode == "auto" and not no_cv:
            losses = [r["cv_log_loss"] for r in rows_cv]
            best = min(range(len(fitted)), key=lambda i: (np.inf if losses[i] is None else losses[i], i))
        c = fitted[best]
        chosen_name = c.name
        logits = _calibrated(c, calibration, c.full)
        fold_logits = _calibrated(c, calibration, c.folds) if c.folds is not None else None
        before_oof = c.oof if groups is not None else None
        after_oof = c.oof_calibrated
        temperature = c.temperature
        own = {k: v for k, v in c.diagnostics.items() if k != "warnings"}
        warnings.extend(c.diagnostics.get("warnings", []))
        if mode == "auto" and no_cv:
            own["selection_note"] = "no cross-validation possible: the first candidate is used"

    calibrated = calibration == "temperature" and not no_cv
    diagnostics: dict[str, Any] = {
        **own,
        "calibration": {
            "method": calibration if calibrated else "none",
            "temperature": temperature if calibrated else 1.0,
            "before": _scores(before_oof, y),
            "after": _scores(after_oof, y),
        },
        "selection": {"mode": mode, "chosen": chosen_name, "candidates": rows_cv},
        "cv_folds": len(folds) if folds is not None else 0,
        "warnings": warnings,
    }
    if calibration == "temperature" and no_cv:
        diagnostics["calibration"]["note"] = "not calibrated: no cross-validation possible"
    after = diagnostics["calibration"]["after"]
    log.debug(
        "teacher: %s%s, %d folds, T = %s, CV log-loss %s -> %s",
        chosen_name, f" ({mode})" if mode != "single" else "", diagnostics["cv_folds"],
        f"{temperature:.3g}" if not isinstance(temperature, list) else "/".join(f"{t:.3g}" for t in temperature),
        _fmt(diagnostics["calibration"]["before"]["log_loss"]), _fmt(after["log_loss"]),
    )
    return CrossFitted(logits=logits, fold_logits=fold_logits, folds=folds, diagnostics=diagnostics, timings=timings)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{abs(value) if abs(value) < 5e-5 else value:.4f}"


def teacher_summary_text(diagnostics: list[dict[str, Any]]) -> str | None:
    """One line over a run's episodes: which teacher was chosen how often, the calibration temperatures
    and the mean cross-validated log-loss before and after calibration (None without cross-fitting)."""
    rows = [d for d in diagnostics if isinstance(d.get("calibration"), dict) and "selection" in d]
    if not rows:
        return None
    chosen: dict[str, int] = {}
    for d in rows:
        name = str(d["selection"].get("chosen"))
        chosen[name] = chosen.get(name, 0) + 1
    temps = [t for d in rows for t in np.atleast_1d(d["calibration"].get("temperature", 1.0)).tolist()]
    before = [d["calibration"]["before"]["log_loss"] for d in rows if d["calibration"]["before"].get("log_loss") is not None]
    after = [d["calibration"]["after"]["log_loss"] for d in rows if d["calibration"]["after"].get("log_loss") is not None]
    text = "teacher: " + ", ".join(f"{n} ({c})" for n, c in sorted(chosen.items(), key=lambda kv: -kv[1]))
    text += f" of {len(rows)} episode(s); calibration T {min(temps):.3g}..{max(temps):.3g} (median {np.median(temps):.3g})"
    if before and after:
        text += f"; cross-validated log-loss {np.mean(before):.3f} -> {np.mean(after):.3f} (mean)"
    return text
