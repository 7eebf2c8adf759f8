"""``distill tune --workers N``: N local ``tune`` processes on one study, supervised by this one.

Each worker is the same ``python -m distill tune`` command on the same storage and study with its
share of ``--trials`` and of the CPU cores; this process waits for them, forwards SIGINT / SIGTERM,
and replaces a worker that died of a signal it did not send (``kill -9``, the OOM killer) with one
that runs the trials the dead one did not finish, after the storage's grace period, so that the
dead worker's RUNNING trial is failed and re-queued first and the study still gets every trial.
The workers only search (``--no-compare``); the CLI compares the study's best once when all are done.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from distill.config import Config
from distill.errors import ConfigError
from distill.experiment.tune import DEFAULT_STORAGE, WORKER_ATTR, WORKER_ENV, resolve_storage
from distill.interrupts import Interrupted
from distill.outputs.tracking import resolve_tracking_uri
from distill.seeding import available_cores

__all__ = ["split_trials", "threads_per_worker", "WorkerPlan", "plan_workers", "run_workers"]

log = logging.getLogger("distill")

#: seconds between two looks at the workers
POLL_S = 0.2


def split_trials(total: int, workers: int) -> list[int]:
    """``total`` trials over at most ``workers`` workers, as even as can be, none with zero."""
    count = max(1, min(workers, total))
    return [total // count + (1 if i < total % count else 0) for i in range(count)]


def threads_per_worker(cores: int, workers: int, configured: int) -> int:
    """``train.threads`` when set (> 0), else an equal share of the cores, at least one: never oversubscribed."""
    return configured if configured > 0 else max(1, cores // max(1, workers))


@dataclass(frozen=True)
class WorkerPlan:
    """What every worker shares: the ``tune`` arguments (without --trials / --output), threads and storage."""

    #: ``python -m distill tune EXPERIMENT ...`` without ``--trials`` and ``--output``
    command: list[str]
    threads: int
    storage: str
    study: str
    #: one folder per worker run directory, ``<output>/worker-<i>`` (``None``: each its default)
    output: Path | None
    grace_s: float
    max_replacements: int
    #: where the workers track (``None``: ``--no-track``) and the MLflow experiment: a killed worker's
    #: RUNNING trial runs are ended FAILED there
    tracking_uri: str | None = None
    experiment: str = ""

    def argv(self, label: str, trials: int, attempt: int) -> list[str]:
        """The command of worker ``label`` ("i/N"), with its trials and its own run directory."""
        argv = [*self.command, "--trials", str(trials), "--set", f"train.threads={self.threads}"]
        if self.output is not None:
            index = label.split("/")[0]
            argv += ["--output", str(self.output / (f"worker-{index}" + (f"-{attempt}" if attempt else "")))]
        return argv


@dataclass
class _Worker:
    label: str
    trials: int
    process: subprocess.Popen[bytes]
    attempt: int = 0


def _start(plan: WorkerPlan, label: str, trials: int, attempt: int = 0) -> _Worker:
    env = dict(os.environ, **{WORKER_ENV: label, "OMP_NUM_THREADS": str(plan.threads),
                              "MKL_NUM_THREADS": str(plan.threads)})
    # its own session: a Ctrl-C in the terminal reaches the workers once, forwarded by this process
    process = subprocess.Popen(plan.argv(label, trials, attempt), env=env, start_new_session=True)
    log.info("worker %s (pid %d): %d trial(s), %d thread(s)", label, process.pid, trials, plan.threads)
    return _Worker(label, trials, process, attempt)


def _finished_by(plan: WorkerPlan, label: str) -> int:
    """Trials of the study that worker ``label`` finished (COMPLETE or PRUNED), read from the storage."""
    import optuna

    study = optuna.load_study(study_name=plan.study, storage=resolve_storage(plan.storage))
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(t.user_attrs.get(WORKER_ATTR) == label for t in study.get_trials(deepcopy=False, states=done))


class _Forwarder:
    """SIGINT / SIGTERM handler that sends the signal on to every live worker and remembers the first."""

    def __init__(self, workers: list[_Worker]) -> None:
        self.workers = workers
        self.signal_name: str | None = None

    def __call__(self, number: int, frame: FrameType | None) -> None:
        self.signal_name = self.signal_name or signal.Signals(number).name
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(number)


def run_workers(plan: WorkerPlan, trials: Sequence[int]) -> int:
    """Start one worker per entry of ``trials``, wait for all, replace ones killed by a foreign signal.

    Returns 0 when every worker (or its replacement) succeeded, else the first failed worker's exit
    code; raises ``Interrupted`` after forwarding a SIGINT / SIGTERM and waiting for the workers."""
    count = len(trials)
    workers: list[_Worker] = []
    forward = _Forwarder(workers)
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    failures: list[tuple[str, int]] = []
    try:
        workers.extend(_start(plan, f"{i + 1}/{count}", k) for i, k in enumerate(trials))
        live = list(workers)
        while live:
            time.sleep(POLL_S)
            for worker in [w for w in live if w.process.poll() is not None]:
                live.remove(worker)
                replacement = _after_exit(plan, worker, forward.signal_name, failures)
                if replacement is not None:
                    workers.append(replacement)
                    live.append(replacement)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if forward.signal_name is not None:
        raise Interrupted(forward.signal_name, f"with {count} worker(s); finished trials are in the study")
    for label, code in failures:
        log.error("worker %s failed (exit %d)", label, code)
    return failures[0][1] if failures else 0


def _after_exit(plan: WorkerPlan, worker: _Worker, forwarded: str | None,
                failures: list[tuple[str, int]]) -> _Worker | None:
    """What a worker's exit means: done, failed (recorded), or killed by a foreign signal (replaced)."""
    code = worker.process.returncode
    if code == 0:
        return None
    if code > 0 or forwarded is not None or worker.attempt >= plan.max_replacements:
        failures.append((worker.label, code if code > 0 else 128 - code))
        return None
    killed_by = signal.Signals(-code).name
    left = worker.trials - _finished_by(plan, worker.label)
    log.warning("worker %s (pid %d) was killed by %s with %d trial(s) unfinished", worker.label,
                worker.process.pid, killed_by, left)
    _fail_tracked_runs(plan, worker)
    if left <= 0:
        return None
    time.sleep(plan.grace_s)  # its RUNNING trial goes stale: the replacement fails and re-queues it first
    return _replacement(plan, worker, left)


def _fail_tracked_runs(plan: WorkerPlan, worker: _Worker) -> None:
    """End FAILED the MLflow trial runs the killed worker left RUNNING (it can no longer end them)."""
    if plan.tracking_uri is None:
        return
    from distill.outputs.tracking import fail_dead_worker_runs

    ended = fail_dead_worker_runs(plan.tracking_uri, plan.experiment, plan.study, plan.storage, worker.process.pid)
    if ended:
        log.info("worker %s: %d RUNNING MLflow trial run(s) ended FAILED", worker.label, ended)


def _replacement(plan: WorkerPlan, worker: _Worker, left: int) -> _Worker:
    replacement = _start(plan, worker.label, left, worker.attempt + 1)
    replacement.trials = worker.trials  # the slot's whole share: what it finished so far counts against it
    return replacement


def plan_workers(config: Config, args: Any, workers: int) -> tuple[WorkerPlan, list[int]]:
    """The plan for ``tune --workers N`` from the CLI's parsed flags and the loaded config."""
    if not 1 <= workers <= 1024:
        raise ConfigError(f"--workers must be between 1 and 1024, got {workers}")
    total = args.trials if args.trials is not None else config.tune.trials
    if total < 1:
        raise ConfigError(f"--workers needs trials to share (--trials >= 1), got {total}")
    shares = split_trials(total, workers)
    command = [sys.executable, "-m", "distill", "tune", args.experiment]
    for item in args.overrides:
        command += ["--set", item]
    for flag, value in (("--seed", args.seed), ("--episodes", args.episodes), ("--device", args.device),
                        ("--timeout", args.timeout), ("--study", args.study), ("--storage", args.storage)):
        if value is not None:
            command += [flag, str(value)]
    if args.jobs != 1:
        command += ["--jobs", str(args.jobs)]
    command += ["--no-track"] if args.no_track else []
    command += ["--no-compare"]  # each worker only searches; the supervisor compares the best once
    command += ["--quiet"] if args.quiet else []
    output = Path(args.output) if args.output is not None else None
    plan = WorkerPlan(
        command=command,
        threads=threads_per_worker(available_cores(), len(shares), config.train.threads),
        storage=args.storage or config.tune.storage or DEFAULT_STORAGE,
        study=args.study or config.tune.study or config.name,
        output=output,
        grace_s=float(config.tune.grace_period + config.tune.heartbeat_interval),
        max_replacements=config.tune.max_retry,
        tracking_uri=None if args.no_track or not config.tracking.enabled else resolve_tracking_uri(config),
        experiment=config.tracking.experiment or config.name,
    )
    return plan, shares
