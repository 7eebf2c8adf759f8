"""Teacher fits in worker processes: later episodes' teachers are fit while this process trains students.

A scikit-learn teacher's fit is Python-heavy numpy work that holds the GIL (threads measured slower than
one thread here), so ``TeacherPool`` runs ``TeacherFit`` jobs in worker processes: loky's reusable executor
(it ships with joblib, which scikit-learn installs), whose workers start by fork + exec -- no state inherited
from this process, no re-run of a user's unguarded script -- and are kept for the next run of the same
process (a tuning search) until idle for ``IDLE_S``. Each worker uses one BLAS thread.

A fit is a pure function of its ``TeacherFit``: the same arrays, seed and settings give the same numbers in a
worker as in this process (tested), so results do not depend on the worker count. Only teachers that can be
rebuilt from plain data run in workers (``poolable``): scikit-learn's, by their built-in kinds; a teacher
given in Python, registered in code, or a network is fit in this process.

This module imports neither torch nor the experiment's other modules: a worker loads only what a fit needs.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from distill.experiment.teacher_cv import CrossFitted, cross_fit
from distill.teachers.base import create_teacher

__all__ = ["TeacherFit", "TeacherPool", "POOL_KINDS", "poolable", "auto_workers", "IDLE_S"]

#: built-in teacher kinds a worker process can rebuild from their settings (``sklearn`` only with an
#: estimator from scikit-learn itself: a user's estimator module may not import in a fresh process)
POOL_KINDS = frozenset({"gaussian_process", "sklearn"})

#: seconds an idle worker waits for the next fit before it exits
IDLE_S = 60

#: ``teacher.workers = "auto"`` starts workers when the fits still to do would take this long in this process:
#: a worker's start (a fresh interpreter importing scikit-learn) costs about 1.5 s of one core, and on a machine
#: with other work (a test suite on two cores) a pool for a few seconds of fits cost more than it saved
AUTO_MIN_S = 6.0

#: how much lower a worker's CPU priority is than its parent's (``os.nice``)
WORKER_NICE = 10

#: the least time a started fit is waited for before this process does it too (``TeacherPool.patience``)
MIN_PATIENCE_S = 1.0

#: one BLAS / OpenMP thread per worker: the workers, not the threads, use the cores
_WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "VECLIB_MAXIMUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1"}


def poolable(kind: str, settings: dict[str, Any], given: bool) -> bool:
    """Whether a candidate teacher can be fit in a worker process (see ``POOL_KINDS``)."""
    if given or kind not in POOL_KINDS:
        return False
    estimator = settings.get("estimator")
    return kind != "sklearn" or (isinstance(estimator, str) and estimator.startswith("sklearn."))


def auto_workers(remaining_fits: int, fit_s: float, cpus: int | None = None) -> int:
    """``teacher.workers = "auto"``: one worker per core but the one this process trains on (at most the fits
    left), when the fits left would take at least ``AUTO_MIN_S`` at ``fit_s`` each here; else 0 (fit here).
    On 2 cores one worker measured as fast as two: the second competes with the training it should hide."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if remaining_fits <= 1 or cpus < 2 or remaining_fits * fit_s < AUTO_MIN_S:
        return 0
    return max(1, min(cpus - 1, remaining_fits))


@dataclass(frozen=True)
class TeacherFit:
    """One episode's teacher cross-fit as plain data: what ``distill.experiment.teacher_cv.cross_fit`` takes,
    with each candidate as ``(name, kind, settings)`` to rebuild with ``create_teacher``."""

    candidates: tuple[tuple[str, str, dict[str, Any]], ...]
    fit_x: np.ndarray
    fit_y: np.ndarray
    rows: np.ndarray
    cv_rows: int
    mode: Literal["single", "auto", "ensemble"]
    calibration: Literal["temperature", "none"]
    learns: bool
    seed: int
    num_classes: int
    max_folds: int

    def run(self) -> CrossFitted:
        """The cross-fit (in whichever process calls it)."""
        factories = [(name, functools.partial(create_teacher, kind, **settings, device="cpu", random_state=self.seed))
                     for name, kind, settings in self.candidates]
        return cross_fit(factories, self.fit_x, self.fit_y, self.rows, self.cv_rows, mode=self.mode,
                         calibration=self.calibration, learns=self.learns, seed=self.seed,
                         num_classes=self.num_classes, max_folds=self.max_folds)


def _run(fit: TeacherFit) -> tuple[CrossFitted, float]:
    """A worker's job: the fit and the seconds it took there."""
    started = time.perf_counter()
    crossed = fit.run()
    return crossed, time.perf_counter() - started


def _warm_up() -> None:
    """What a worker imports before its first fit (``TeacherPool`` sends one per call-queue slot first, so that no
    fit waits in a starting worker's queue: fits not yet queued are ones this process can take back)."""
    import sklearn.gaussian_process  # noqa: F401


def _init_worker() -> None:
    """A worker leaves Ctrl-C (sent to the whole process group) to its parent, which stops the run and
    cancels what it submitted; and yields the CPU to it (``WORKER_NICE``): the parent's training is the
    critical path, the workers fill the cores it leaves idle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(os, "nice"):
        os.nice(WORKER_NICE)


class TeacherPool:
    """Teacher fits submitted ahead of need, by key, to ``workers`` worker processes (loky's executor)."""

    def __init__(self, workers: int) -> None:
        from joblib.externals.loky import get_reusable_executor

        if workers < 1:
            raise ValueError(f"a teacher pool needs at least one worker, got {workers}")
        self.workers = workers
        self._executor = get_reusable_executor(max_workers=workers, timeout=IDLE_S, env=dict(_WORKER_ENV),
                                               initializer=_init_worker)
        # loky queues workers + 1 calls ahead of its workers: warm-ups take those places
        self._warming = [self._executor.submit(_warm_up) for _ in range(workers + 1)]
        self._futures: dict[str, tuple[Future[tuple[CrossFitted, float]], TeacherFit]] = {}
        self._done: dict[str, CrossFitted] = {}  # fits this process took back and ran (``_steal``)
        self._seconds: list[float] = []  # how long fits took, here or in a worker: ``patience``
        self.stolen = 0
        self.duplicated = 0  # fits a slow worker had started that this process did too

    def submit(self, key: str, fit: TeacherFit) -> None:
        """Start ``fit`` under ``key`` (once: a key already submitted is left as it is)."""
        if key not in self:
            self._futures[key] = (self._executor.submit(_run, fit), fit)

    def __contains__(self, key: str) -> bool:
        return key in self._futures or key in self._done

    def pending(self) -> int:
        """Fits submitted and not yet collected."""
        return len(self._futures) + len(self._done)

    def result(self, key: str) -> CrossFitted:
        """The fit under ``key``, collected once. While it is not done, this process fits the next fits that no
        worker has started (it would only wait; the numbers are the same). A worker that has started it but is
        slow to finish (a worker runs at a lower priority: on a machine busy with other work it may barely run)
        is given ``patience()``; then the fit is done here too and the worker's copy left unread. A worker's error
        is raised here as it was raised there (a ``TeacherProblem`` stays one)."""
        if key in self._done:
            return self._done.pop(key)
        future, fit = self._futures.pop(key)
        if future.cancel():
            self.stolen += 1
            return self._here(fit)
        while not future.done() and self._steal():
            pass
        try:
            crossed, seconds = future.result(timeout=self.patience())
        except FutureTimeout:
            self.duplicated += 1
            return self._here(fit)
        self._seconds.append(seconds)
        return crossed

    def patience(self) -> float:
        """How long to wait for a started fit: a few times the typical fit, at least ``MIN_PATIENCE_S``."""
        typical = sorted(self._seconds)[len(self._seconds) // 2] if self._seconds else 0.0
        return max(MIN_PATIENCE_S, 4 * typical)

    def _here(self, fit: TeacherFit) -> CrossFitted:
        started = time.perf_counter()
        crossed = fit.run()
        self._seconds.append(time.perf_counter() - started)
        return crossed

    def _steal(self) -> bool:
        """Fit here the first submitted fit no worker has started (the next the loop needs); False when none."""
        for other in list(self._futures):
            future, fit = self._futures[other]
            if future.cancel():
                del self._futures[other]
                self.stolen += 1
                self._done[other] = self._here(fit)
                return True
        return False

    def cancel(self, keys: Iterable[str] | None = None) -> None:
        """Drop the fits under ``keys`` (None: all) that have not started; running ones finish unread."""
        for key in list(self._futures) + list(self._done) if keys is None else list(keys):
            self._done.pop(key, None)
            entry = self._futures.pop(key, None)
            if entry is not None:
                entry[0].cancel()

    def close(self) -> None:
        """Cancel what was not collected; the workers stay for the next pool of this process until idle."""
        self.cancel()
