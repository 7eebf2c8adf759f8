"""Optuna search over config keys (by default the KL weight and temperature), on validation rows only.

A trial's value is the mean validation metric over the protocol's episodes; the test rows are
never read during the search. After it, the best params and the untuned config are both run with
the full protocol on the test rows, side by side.

Storage: by default Optuna's journal file ``optuna-journal.log`` in the working folder. Journal
files take a file lock for every append, so several local ``tune`` processes can share one study
safely; SQLite serialises writers through its own lock and fails with "database is locked" under
concurrent workers. Any RDB URL (``postgresql://...``, ``mysql://...``, ``sqlite:///...``) is used
as given, for many workers on many machines.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from distill.config import Config, TuneConfig, config_dict, set_dotted, to_toml, validate_config
from distill.data.sources import Dataset
from distill.engine.loop import predict_logits
from distill.errors import ConfigError, UserError
from distill.experiment.cache import SoftTargetCache
from distill.experiment.prepare import TeacherFactory, prepare, prepare_episode, prepare_protocol
from distill.experiment.students import StudentJob, train_students
from distill.experiment.teach import TeacherOutputs, soft_target_cache, teach
from distill.experiment.tune_result import TuneResult, tuning_table
from distill.interrupts import Interrupted, StopRequest
from distill.losses.objective import validation_loss
from distill.metrics.classification import classification_metrics, probabilities
from distill.outputs.rundir import atomic_write, attach_log_file, claim_run_dir, write_json, write_text

__all__ = [
    "DEFAULT_STORAGE",
    "WORKER_ENV",
    "WORKER_ATTR",
    "current_worker",
    "resolve_storage",
    "StaleTrialRetry",
    "trial_config",
    "check_tunable",
    "validation_score",
    "run_tuning",
    "tuning_table",
    "TuneResult",
]

log = logging.getLogger("distill")

#: The default study storage: a journal file in the working folder (safe for several local processes).
DEFAULT_STORAGE = "optuna-journal.log"
#: environment variable that makes a ``tune`` process worker "i/N" of ``tune --workers N``
WORKER_ENV = "DISTILL_TUNE_WORKER"
#: the trial user attribute naming the worker ("i/N") that ran it: the supervisor counts a dead worker's trials
WORKER_ATTR = "distill_worker"
#: the trial user attribute with that worker's process id (what to signal, what ``ps`` shows)
WORKER_PID_ATTR = "distill_worker_pid"


def current_worker() -> str | None:
    """``"i/N"`` when this process is a worker started by ``tune --workers N``, else None."""
    return os.environ.get(WORKER_ENV) or None


def sampler_seed_for(seed: int, worker: str | None) -> int:
    """The sampler's seed in worker ``"i/N"``: ``seed + i - 1``, so that workers sharing a study do not all
    suggest the same first points (worker 1, and a process that is no worker, keep ``seed``)."""
    if not worker:
        return seed
    return seed + int(worker.split("/", 1)[0]) - 1


def resolve_storage(storage: str | None, heartbeat: TuneConfig | None = None) -> Any:
    """An Optuna storage: an RDB URL as given, else a journal file (default ``optuna-journal.log``).

    ``heartbeat`` (the ``[tune]`` section) turns on an RDB storage's heartbeats: a trial whose worker
    died is failed after ``grace_period`` and re-queued up to ``max_retry`` times."""
    import optuna

    target = storage or DEFAULT_STORAGE
    _ = optuna  # imported for its side effect of configuring logging once
    if "://" in target:
        return _rdb_storage(target, heartbeat)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    path = Path(target)
    if path.parent and not path.parent.is_dir():
        raise ConfigError(f"tune.storage: folder '{path.parent}' does not exist")
    if path.is_dir():
        raise ConfigError(f"tune.storage: '{path}' is a folder, not a journal file")
    lock = JournalFileSymlinkLock(str(path))
    try:  # opening replays the journal: damage before its last line fails here, before anything is written
        _check_journal_tail(path, lock)
        return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
    except (ValueError, KeyError, TypeError, IndexError, OSError) as exc:
        raise ConfigError(
            f"tune.storage: journal file '{path}' cannot be read ({type(exc).__name__}: {_first_line(exc)}); "
            "it is damaged or not an Optuna journal: restore it, or use another --storage"
        ) from None


def _check_journal_tail(path: Path, lock: Any) -> None:
    """Raise ``ValueError`` when the journal's last line is cut off or not a JSON object.

    Optuna's replay skips a bad last line, since a writer may be appending it at that moment, and its next
    append would then glue a record onto the damage. Writers append whole lines under the journal's lock,
    so a last line that is still bad while we hold that lock is damage (a killed writer, an edit)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    lock.acquire()
    try:
        content = path.read_bytes()  # Optuna's replay reads it all right after: a journal is small
    finally:
        lock.release()
    if not content.endswith(b"\n"):
        raise ValueError("its last line is cut off (no line end)")
    last = content[:-1].rsplit(b"\n", 1)[-1]
    try:
        record = json.loads(last)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"its last line is not JSON: {last[:60]!r}") from None
    if not isinstance(record, dict) or "op_code" not in record:
        raise ValueError(f"its last line is not an Optuna journal record: {last[:60]!r}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _heartbeat_options(heartbeat: TuneConfig | None) -> dict[str, Any]:
    """RDBStorage's heartbeat arguments: none without a ``[tune]`` section, else interval, grace and retry."""
    if heartbeat is None:
        return {}
    return {
        "heartbeat_interval": heartbeat.heartbeat_interval,
        "grace_period": heartbeat.grace_period,
        "heartbeat_stale_trial_callback": StaleTrialRetry(heartbeat.max_retry, heartbeat.grace_period),
    }


class StaleTrialRetry:
    """What a worker does with a trial whose worker stopped sending heartbeats (killed on any machine):
    Optuna's ``RetryHeartbeatStaleTrialCallback`` queues it again (same params, at most ``max_retry``
    times), and ``tracker`` (set once the study's MLflow run is open) ends its RUNNING run FAILED.

    Optuna calls it in exactly one worker per stale trial: the one whose check moved it to FAIL."""

    def __init__(self, max_retry: int, grace_period: int) -> None:
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.grace_period = grace_period
        self.tracker: Any = None  # a distill.outputs.tracking.StudyTracker

    def __call__(self, study: Any, trial: Any) -> None:
        from distill.outputs.tracking import TrackingError

        log.warning("trial %d sent no heartbeat for %d s (its worker died): marked FAIL and queued again",
                    trial.number, self.grace_period)
        self.retry(study, trial)
        if self.tracker is None:
            return
        try:
            self.tracker.fail_stale_trial(trial.number)
        except TrackingError as exc:  # the search goes on; only the dead trial's run may still show RUNNING
            log.warning("%s (trial %d's MLflow run may still show RUNNING)", exc.problems[0], trial.number)


def _rdb_storage(url: str, heartbeat: TuneConfig | None = None) -> Any:
    """An Optuna RDB storage, opened now so that a bad URL or an unreachable database is exit 2 before
    anything is written (a ``sqlite:///`` file in a missing folder, a corrupt file, a wrong scheme)."""
    from optuna.storages import RDBStorage

    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):].split("?", 1)[0])
        if str(path) and not path.parent.is_dir():
            raise ConfigError(f"tune.storage {url}: folder '{path.parent}' does not exist")
    for attempt in range(SCHEMA_RACE_ATTEMPTS):
        try:
            return RDBStorage(url, **_heartbeat_options(heartbeat))
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy, the driver, Optuna: all name the URL's problem
            if _lost_schema_race(exc) and attempt + 1 < SCHEMA_RACE_ATTEMPTS:
                time.sleep(0.2 * (attempt + 1) * (1 + random.random()))
                continue
            raise ConfigError(f"tune.storage {url}: cannot open the study storage: {_first_line(exc)}") from None
    raise AssertionError("unreachable")  # pragma: no cover


#: workers that open an empty database at once all try to create Optuna's tables; the losers retry
SCHEMA_RACE_ATTEMPTS = 5


def _lost_schema_race(exc: BaseException) -> bool:
    """Whether opening the storage failed because another worker was creating the same tables (PostgreSQL:
    a unique violation on the catalog, or "already exists"), which the next attempt finds done."""
    text = str(exc)
    return type(exc).__name__ in ("IntegrityError", "ProgrammingError") and (
        "already exists" in text or "duplicate key value" in text)


def _suggest(trial: Any, key: str, spec: dict[str, Any]) -> Any:
    if "choices" in spec:
        return trial.suggest_categorical(key, spec["choices"])
    low, high = spec["low"], spec["high"]
    if isinstance(low, int) and isinstance(high, int) and not isinstance(spec.get("step", 1), float):
        return trial.suggest_int(key, low, high, step=int(spec.get("step", 1)), log=spec["log"])
    return trial.suggest_float(key, float(low), float(high), step=spec.get("step"), log=spec["log"])


def trial_config(base: Config, params: dict[str, Any]) -> Config:
    """``base`` with each dotted key in ``params`` set; validated like a file."""
    tree = copy.deepcopy(config_dict(base))
    for key, value in params.items():
        set_dotted(tree, key, value)
    return validate_config(tree)


def check_tunable(config: Config) -> None:
    """What ``tune`` needs of a config: validation rows, no sweep, a space whose ends are valid configs."""
    problems: list[str] = []
    if config.few_shot.validation == 0:
        problems.append(
            "tune scores trials on validation rows, but few_shot.validation = 0; set it to 1 or more "
            "(same unit as the labelled rows)"
        )
    if config.sweep is not None:
        problems.append(f"tune does not take a sweep; give {config.sweep[0]} one value (or search it in tune.space)")
    for key, spec in config.tune.space.items() if config.sweep is None else ():  # a sweep: said once above
        ends = spec["choices"] if "choices" in spec else [spec["low"], spec["high"]]
        for value in ends:
            try:
                trial_config(config, {key: value})
            except ConfigError as exc:
                problems.extend(f"tune.space.{key}: {p}" for p in exc.problems if p not in problems)
    if problems:
        raise ConfigError(*problems)


def _validation_value(logits: torch.Tensor, y: torch.Tensor, num_classes: int, metric: str) -> float:
    """The trial's score on one episode's validation rows: ``tune.metric``, the loss being ``val_loss``'s."""
    if metric == "loss":
        return float(validation_loss(logits, y))
    return float(classification_metrics(probabilities(logits), y, num_classes)[metric])


def validation_score(
    config: Config, dataset: Dataset | None, cache: SoftTargetCache[TeacherOutputs], *, report: Any = None,
    stop: StopRequest | None = None, teacher: TeacherFactory | None = None,
) -> tuple[float, list[float]]:
    """Mean validation ``tune.metric`` of the distilled student over the episodes (test rows never read).

    ``cache`` holds the teacher's outputs per episode across trials: a search over the objective fits each
    teacher once. ``report(mean_so_far, episode)`` is called after each episode (Optuna's report + prune);
    ``stop`` turns a signal into ``Interrupted`` after the current training step.
    """
    metric = config.tune.metric
    first = prepare(config, dataset, teacher)
    jobs = []
    for e in range(config.protocol.episodes):
        prepared = first if e == 0 else prepare_episode(first, e)
        taught = teach(prepared, score_test=False, cache=cache)  # the test rows stay unread
        jobs.append(StudentJob.planned(prepared, taught, "student"))
    # Stacked, the trial's episodes train as one model; one at a time, a pruned trial stops early.
    chunks = [jobs] if config.train.batched else [[job] for job in jobs]
    scores: list[float] = []
    for chunk in chunks:
        train_students(chunk, batched=config.train.batched, epoch_metrics=False, stop=stop)
        for job in chunk:
            assert job.model is not None and job.taught.validation is not None
            logits = predict_logits(job.model, job.taught.validation.x)
            scores.append(_validation_value(logits, job.taught.validation.y, job.prepared.dataset.num_classes, metric))
            finite = [s for s in scores if math.isfinite(s)]
            if report is not None:
                report(float(np.mean(finite)) if finite else float("nan"), len(scores) - 1)
    finite = [s for s in scores if math.isfinite(s)]
    return (float(np.mean(finite)) if finite else float("nan")), scores


def _sampler(config: Config, seed: int) -> Any:
    import optuna

    if config.tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(1, config.tune.trials // 3)))


def _pruner(config: Config) -> Any:
    import optuna

    return {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=config.protocol.episodes),
        "none": lambda: optuna.pruners.NopPruner(),
    }[config.tune.pruner]()


#: Plot errors that mean "this plot is undefined for this study" (too few trials, one distinct value, ...):
#: logged at INFO. Any other exception from a plot is logged as a warning; neither fails the tune.
_NO_SUCH_PLOT = (ValueError, RuntimeError, ZeroDivisionError)


def _agg_canvas(figure: Any) -> None:
    """A ``figure.hooks`` entry (set only while ``_save_plots`` draws): give each new pyplot figure an Agg
    canvas, whatever the process's backend, so that optuna's plots can measure text and be saved as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(figure.canvas, FigureCanvasAgg):
        FigureCanvasAgg(figure)


def _write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _save_plots(study: Any, run_dir: Path) -> list[str]:
    """Optimisation history, parameter importances and slice plots as PNG (skipped when undefined).

    Optuna draws with pyplot and sets its "ggplot" style globally: everything is drawn inside
    ``matplotlib.rc_context`` (the caller's rcParams come back), on Agg canvases (the process's backend,
    e.g. ``MPLBACKEND=svg``, is left alone, not switched), and a plot that fails is logged and skipped.
    """
    import warnings

    import matplotlib
    import matplotlib.pyplot as plt  # optuna draws with pyplot; each figure is closed once saved
    import optuna.visualization.matplotlib as vis
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    written = []
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    plots: dict[str, Callable[[Any], Any]] = {"optimization_history": vis.plot_optimization_history,
                                              "slice": vis.plot_slice}
    if len(complete) >= 2 and len({json.dumps(t.params, sort_keys=True) for t in complete}) >= 2:
        plots["param_importances"] = vis.plot_param_importances
    hooks = [*matplotlib.rcParams["figure.hooks"], f"{__name__}:{_agg_canvas.__name__}"]
    for name, plot in plots.items():
        before = set(plt.get_fignums())
        png = io.BytesIO()
        try:  # drawn and rendered in memory: whatever fails here costs this plot only
            with matplotlib.rc_context({"figure.hooks": hooks, "interactive": False}):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
                    ax = plot(study)
                figure = ax.figure if hasattr(ax, "figure") else np.ravel(ax)[0].figure
                if not isinstance(figure.canvas, FigureCanvasAgg):
                    FigureCanvasAgg(figure)
                figure.savefig(png, format="png", dpi=110, bbox_inches="tight")
        except Exception as exc:  # noqa: BLE001 - a plot is an extra: whatever breaks it, the tune goes on
            level = logging.INFO if isinstance(exc, _NO_SUCH_PLOT) else logging.WARNING
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            log.log(level, "no %s plot: %s%s", name, type(exc).__name__, f": {line}" if line else "")
            continue
        finally:
            for number in set(plt.get_fignums()) - before:  # the figures this plot opened, even half-drawn
                plt.close(number)
        path = run_dir / f"tune_{name}.png"  # a failed write is the run directory's error, not the plot's
        atomic_write(path, functools.partial(_write_bytes, data=png.getvalue()))
        written.append(path.name)
    return written


def run_tuning(
    config: Config,
    *,
    trials: int | None = None,
    timeout: float | None = None,
    study_name: str | None = None,
    storage: str | None = None,
    jobs: int = 1,
    seed: int | None = None,
    output: str | Path | None = None,
    track: bool = True,
    progress: bool = False,
    dataset: Dataset | None = None,
    teacher: TeacherFactory | None = None,
    compare: bool = True,
) -> TuneResult:
    """Search ``tune.space`` on validation rows, then compare best and untuned configs on the test rows.

    ``trials=0`` adds no trial: it compares the study's best as it stands (after workers that searched
    with ``compare=False``, which skips the comparison and writes the best so far).

    ``dataset`` (a ``distill.data.sources.Dataset``) replaces ``data.source``; ``teacher`` (a factory of a
    teacher given in Python, ``distill.experiment.prepare.TeacherFactory``) replaces ``teacher.kind``."""
    import optuna

    from distill.experiment.run import run_experiment
    from distill.outputs.tracking import preflight

    started = time.perf_counter()
    check_tunable(config)
    given_dataset = dataset  # the comparison runs load data.source again unless the caller gave the rows
    first = prepare_protocol(config, dataset, teacher)  # data and config problems surface before anything is written
    dataset = first[0].dataset
    worker = current_worker()
    if worker is not None:  # prepare_protocol has set torch's threads from train.threads
        log.info("worker %s: %d thread(s)", worker, torch.get_num_threads())
    trials = trials if trials is not None else config.tune.trials
    timeout = timeout if timeout is not None else config.tune.timeout
    study_name = study_name or config.tune.study or config.name
    storage_text = storage or config.tune.storage or DEFAULT_STORAGE
    sampler_seed = sampler_seed_for(config.seed if seed is None else seed, current_worker())
    direction = config.tune.resolved_direction
    if trials == 0 and "://" not in storage_text and not Path(storage_text).is_file():  # never create it empty
        raise ConfigError(f"--trials 0 compares an existing study, but journal file '{storage_text}' does not exist")
    optuna_storage = resolve_storage(storage_text, config.tune)
    tracking = track and config.tracking.enabled
    uri = preflight(config) if tracking else None
    claim = claim_run_dir(f"{config.name}-tune", output)  # a new or empty folder: never another run's files
    run_dir = claim.path
    discard = False  # a tune refused before its first trial leaves no run directory
    handler = attach_log_file(run_dir / "log.txt", log)
    tracker = None
    study = None
    stop = StopRequest("stopping after the current training step; finished trials are in the study")
    running: set[int] = set()  # trials this process started that Optuna has not finished
    finished_here: list[int] = []
    try:
        write_text(run_dir / "config.toml", to_toml(config_dict(config)))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = _open_study(optuna_storage, study_name, direction, config, sampler_seed, create=trials != 0)
        before = sum(t.state.is_finished() for t in study.trials)  # not queued / other workers' running trials
        log.info(
            "study '%s' in %s: %d trial(s) so far; adding %d (%s validation %s over %d episode(s))",
            study_name, storage_text, before, trials, direction, config.tune.metric, config.protocol.episodes,
        )
        if uri is not None:
            from distill.mlflow_env import DEFAULT_URI
            from distill.outputs.tracking import StudyTracker, TrackingError, falls_back

            try:
                tracker = StudyTracker.start(uri, config, study_name, storage_text, run_dir.name)
            except TrackingError as exc:  # a server that passed the preflight, then stalled or failed
                if not falls_back(config, uri, exc):
                    raise
                tracker = StudyTracker.start(DEFAULT_URI, config, study_name, storage_text, run_dir.name)
            stale = getattr(optuna_storage, "heartbeat_stale_trial_callback", None)  # an RDB storage's
            if isinstance(stale, StaleTrialRetry):
                stale.tracker = tracker
        cache = soft_target_cache(config)

        def objective(trial: optuna.Trial) -> float:
            running.add(trial.number)  # Optuna has asked for it: the study holds it RUNNING from here
            if worker is not None:  # whose trial: the supervisor counts what a killed worker finished
                trial.set_user_attr(WORKER_ATTR, worker)
                trial.set_user_attr(WORKER_PID_ATTR, os.getpid())
            stop.check(f"at the start of trial {trial.number}")  # the signal came after the last trial's end
            if tracker is not None:  # its child run shows RUNNING while it trains
                tracker.start_trial(study_name, trial.number)
            params = {key: _suggest(trial, key, spec) for key, spec in config.tune.space.items()}
            trial_cfg = trial_config(config, params)

            def report(mean: float, episode: int) -> None:
                if math.isfinite(mean):
                    trial.report(mean, episode)
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"pruned after episode {episode} at mean {mean:.4f}")

            try:
                value, _ = validation_score(trial_cfg, dataset, cache, report=report, stop=stop, teacher=teacher)
            except Interrupted as exc:
                raise Interrupted(exc.signal_name, f"in trial {trial.number} {exc.where}") from None
            return value

        def finished(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            running.discard(trial.number)
            finished_here.append(trial.number)
            if stop():
                study.stop()  # a signal between trials: end the search here, no trial cut short

        callbacks = [finished] + ([tracker.on_trial] if tracker is not None else [])
        with stop.installed(), _interrupted_trials_logged_once():
            if trials != 0:  # 0: compare the study as it stands
                study.optimize(objective, n_trials=trials, timeout=timeout, n_jobs=jobs, callbacks=callbacks,
                               show_progress_bar=progress)
            stop.check(f"after {len(finished_here)} trial(s), before the test comparison")

        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not completed:
            raise ConfigError(f"study '{study_name}' has no completed trial: every trial was pruned or failed")
        # The comparison and the results run under the stop handler: a signal ends them interrupted.
        with stop.installed():
            best = study.best_trial
            assert best.value is not None  # a completed trial's
            best_params = dict(best.params)
            best_cfg = trial_config(config, best_params)
            summary: dict[str, Any] = {
                "status": "completed" if compare else "searched",
                "study": study_name,
                "storage": storage_text,
                "direction": direction,
                "metric": f"validation {config.tune.metric}",
                "space": config.tune.space,
                "sampler": {"kind": config.tune.sampler, "seed": sampler_seed},
                "pruner": config.tune.pruner,
                "trials": {},
                "best": {"trial": best.number, "params": best_params, "validation": best.value, "test": None},
                "untuned": None,
                "plots": [],
            }
            if compare:
                log.info("best trial #%d: %s = %.4f with %s", best.number, config.tune.metric, best.value,
                         best_params)
                untuned_value, _ = validation_score(config, dataset, cache, stop=stop, teacher=teacher)
                write_text(run_dir / "best_config.toml", to_toml(config_dict(best_cfg)))
                comparison = _compare_on_test(run_experiment, config, best_cfg, run_dir, stop, given_dataset,
                                              teacher)
                summary["best"]["test"] = comparison["tuned"]
                summary["untuned"] = {"params": {k: _get_dotted(config_dict(config), k) for k in config.tune.space},
                                      "validation": untuned_value, "test": comparison["untuned"]}
            else:  # search only: the best so far; one `tune --trials 0` on the study compares it at the end
                untuned_value = float("nan")
                log.info("best trial so far #%d: %s = %.4f with %s (no test comparison: --no-compare)",
                         best.number, config.tune.metric, best.value, best_params)
                write_text(run_dir / "best_config.toml", to_toml(config_dict(best_cfg)))
            frame = study.trials_dataframe()
            # with metric names set Optuna calls the column "value_<name>": trials.csv keeps "value"
            frame = frame.rename(columns={f"value_{n}": "value" for n in (study.metric_names or [])})
            atomic_write(run_dir / "trials.csv", lambda tmp: frame.to_csv(tmp, index=False))
            summary["plots"] = _save_plots(study, run_dir) if compare else []
            stop.check("after the search and the test comparison, while writing the results")
            summary["trials"] = {
                "before": before,
                "total": sum(t.state.is_finished() for t in study.trials),
                "complete": len(completed),
                "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
                "failed": sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials),
            }
            summary |= {
                "timings": {"total_s": round(time.perf_counter() - started, 3)},
                "mlflow_run_id": tracker.run_id if tracker is not None else None,
                "mlflow_ui_url": tracker.ui_url() if tracker is not None else None,
                "config": config_dict(config),
            }
            write_json(run_dir / "tuning.json", summary)  # complete from here on: a later signal changes nothing
            if tracker is not None:
                if compare:
                    tracker.finish_study(summary)
                for path in sorted(run_dir.glob("*")):
                    if path.is_file() and path.suffix in (".json", ".toml", ".csv", ".png", ".txt"):
                        tracker.log_artifact(path)
                tracker.finish("FINISHED")
            return TuneResult(run_dir, study_name, best_params, float(best.value), untuned_value, summary, study)
    except Interrupted as exc:
        resume = _resume_command(run_dir, study_name, storage_text, trials, len(finished_here), jobs, timeout)
        log.error("tune interrupted by %s %s; continue the study with: %s", exc.signal_name, exc.where, resume)
        counts = _trial_counts(study) if study is not None else {}
        write_json(run_dir / "tuning.json", {
            "status": "interrupted",
            "signal": exc.signal_name,
            "stopped": exc.where,
            "study": study_name,
            "storage": storage_text,
            "trials": {"finished_here": len(finished_here), **counts},
            "cut_short": sorted(running),  # Optuna records these as FAIL
            "resume": resume,
            "mlflow_run_id": tracker.run_id if tracker is not None else None,
            "seconds": round(time.perf_counter() - started, 3),
        })
        if tracker is not None:
            if study is not None:
                for trial in study.get_trials(deepcopy=False):
                    if trial.number in running:
                        tracker.on_trial(study, trial, status="KILLED")
            tracker.finish("KILLED")
        exc.resume = resume  # type: ignore[attr-defined]
        raise
    except KeyboardInterrupt:
        if tracker is not None:
            tracker.finish("KILLED")
        raise
    except BaseException as exc:
        if tracker is not None:
            tracker.finish("FAILED")
        discard = isinstance(exc, UserError) and not finished_here  # refused before any trial finished
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
        if discard:
            claim.discard()


def _open_study(storage: Any, name: str, direction: Literal["maximize", "minimize"], config: Config,
                sampler_seed: int, create: bool) -> Any:
    """The study ``name`` in ``storage``, created when new unless ``create`` is False (a comparison of a
    study that must exist: a misspelt name is an error, not a new empty study)."""
    import optuna

    sampler, pruner = _sampler(config, sampler_seed), _pruner(config)
    if create:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                    pruner=pruner, load_if_exists=True)
        with warnings.catch_warnings():  # experimental in Optuna; optuna-dashboard and its plots read it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if study.metric_names is None:  # the axis says "validation f1_macro", not "Objective 0"
                study.set_metric_names([f"validation {config.tune.metric}"])
        return study
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise ConfigError(f"--trials 0 compares an existing study, but study '{name}' is not in the storage") from None


def _compare_on_test(run_experiment: Any, config: Config, best_cfg: Config, run_dir: Path, stop: StopRequest,
                     dataset: Dataset | None, teacher: TeacherFactory | None) -> dict[str, dict[str, Any]]:
    """The honest test numbers: the best params and the untuned config, each through the whole protocol
    in ``tuned/`` and ``untuned/``; each side's systems' test metrics and verdict."""
    from distill.outputs.report import SYSTEMS

    stop.check("after the search, before the test comparison")
    tuned = _comparison_run(run_experiment, best_cfg, run_dir / "tuned", dataset, teacher)
    stop.check("after the search, during the test comparison")
    untuned = _comparison_run(run_experiment, config, run_dir / "untuned", dataset, teacher)
    stop.check("after the search and the test comparison, while writing the results")
    return {label: {system: summary[system] for system in SYSTEMS} | {"verdict": summary.get("verdict")}
            for label, summary in (("tuned", tuned), ("untuned", untuned))}


def _comparison_run(run_experiment: Any, config: Config, folder: Path, dataset: Dataset | None = None,
                    teacher: TeacherFactory | None = None) -> dict[str, Any]:
    """One side of the test comparison; a signal inside it is reported as the tune's own stop."""
    try:
        summary: dict[str, Any] = run_experiment(config, output=folder, track=False, dataset=dataset,
                                                 teacher=teacher)[1]
        return summary
    except Interrupted as exc:
        raise Interrupted(exc.signal_name, f"after the search, in the test comparison run {folder.name}/ "
                                           f"({exc.where})") from None


def _trial_counts(study: Any) -> dict[str, int]:
    """The study's trials by state (every worker's), as counted in ``tuning.json``."""
    from collections import Counter

    states = Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False))
    return {"total": sum(states.values()), **{state: states.get(state, 0)
                                                 for state in ("complete", "pruned", "fail", "running")}}


def _resume_command(run_dir: Path, study: str, storage: str, trials: int | None, done: int, jobs: int,
                    timeout: float | None) -> str:
    """The ``tune`` command that adds the trials this process did not finish to the same study."""
    import shlex

    parts = ["python", "-m", "distill", "tune", str(run_dir / "config.toml"), "--study", study, "--storage", storage]
    if trials is not None:
        parts += ["--trials", str(max(trials - done, 1))]
    if timeout is not None:
        parts += ["--timeout", f"{timeout:g}"]
    if jobs > 1:
        parts += ["--jobs", str(jobs)]
    return " ".join(shlex.quote(part) for part in parts)


class _HideInterruptedTrial(logging.Filter):
    """Drops Optuna's "Trial N failed ..." records (one with a traceback) for a trial stopped by a signal
    or by bad input (a ``UserError``, which the CLI prints as its one ``error:`` line)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        head = " ".join(record.getMessage().split()[:2])  # "Trial 19"
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (Interrupted, KeyboardInterrupt, UserError)):  # the CLI says it in one line
            self.hidden.add(head)
        return head not in self.hidden


@contextmanager
def _interrupted_trials_logged_once() -> Iterator[None]:
    """Optuna logs a trial that raised as failed, with its traceback; for a signal distill says it in one line."""
    optimize_logger = logging.getLogger("optuna.study._optimize")
    hide = _HideInterruptedTrial()
    optimize_logger.addFilter(hide)
    try:
        yield
    finally:
        optimize_logger.removeFilter(hide)


def _get_dotted(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
