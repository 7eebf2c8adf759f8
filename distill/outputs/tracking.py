"""MLflow tracking behind a small interface: ``log_params``, ``log_metrics(step)``, ``log_artifact``, ``finish``.

One MLflow run per ``distill run``; with several episodes a parent run holds the aggregate and
the plots and a nested child run holds each episode. A run that raises ends FAILED, one that is
interrupted ends KILLED, so nothing is ever left RUNNING.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import os
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.config import Config, config_dict, flatten
from distill.errors import ConfigError, UserError
from distill.mlflow_env import DEFAULT_URI, bound_requests
from distill.version import __version__

__all__ = [
    "Tracker",
    "NullTracker",
    "MlflowTracker",
    "resolve_tracking_uri",
    "preflight",
    "open_tracker",
    "log_files",
    "StudyTracker",
    "fail_dead_worker_runs",
    "TrackingError",
    "falls_back",
    "git_commit",
    "SystemRun",
    "SYSTEM_TAG",
    "RUN_DIR_TAG",
]

log = logging.getLogger("distill")

#: Seconds to wait for a remote tracking server before saying it does not answer.
PROBE_TIMEOUT_S = 3.0


class TrackingError(UserError):
    """A tracking store or server failed mid-way (stalled past ``tracking.timeout``, corrupt, read-only, full)."""


def _store_errors() -> tuple[type[BaseException], ...]:
    """What MLflow's stores raise when the store, not distill, is at fault."""
    import sqlite3

    errors: list[type[BaseException]] = [OSError, sqlite3.Error]
    try:
        from mlflow.exceptions import MlflowException

        errors.append(MlflowException)
    except ImportError:  # pragma: no cover
        pass
    try:
        import requests

        errors.append(requests.RequestException)
    except ImportError:  # pragma: no cover
        pass
    try:
        import sqlalchemy.exc

        errors.append(sqlalchemy.exc.SQLAlchemyError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


_CALLS = {"start": "opening the run", "_end": "ending the run", "on_trial": "recording a trial"}


def _tracking_call(method: Any) -> Any:
    """A tracker method whose store failures become one-line TrackingErrors (exit 2), not tracebacks."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except UserError:
            raise
        except _store_errors() as exc:
            what = _CALLS.get(method.__name__, method.__name__.strip("_").replace("_", " "))
            where = getattr(self, "uri", None) or next((a for a in args[:1] if isinstance(a, str)), "the store")
            raise TrackingError(
                f"tracking: {what} failed at {where}: {_reason(exc)}; check the store, or pass --no-track"
            ) from None

    return wrapper


def _end_run(end: Any, status: str) -> None:
    """``end(status)``; a store failure is raised for a FINISHED run, and only a warning for a failed or
    interrupted one, so that the run's own error is the one the user sees."""
    try:
        end(status)
    except TrackingError as exc:
        if status == "FINISHED":
            raise
        log.warning("%s (the MLflow run may still show RUNNING)", exc.problems[0])


def _apply_timeouts(config: Config) -> None:
    """``tracking.timeout`` and ``tracking.retries`` for every MLflow request this process makes."""
    bound_requests(float(config.tracking.timeout), config.tracking.retries)


class Tracker:
    """What the runner needs of a tracker; this base class records nothing (``--no-track``)."""

    run_id: str | None = None

    def ui_url(self) -> str | None:
        """The run's page in the MLflow UI; None when nothing is recorded."""
        return None

    def log_params(self, params: dict[str, Any]) -> None:
        """Record parameters (dotted names)."""

    def log_metrics(self, metrics: dict[str, float | None], step: int | None = None) -> None:
        """Record metric values at ``step``; None and non-finite values are skipped."""

    def log_history(self, prefix: str, history: list[dict[str, float]]) -> None:
        """Record a per-epoch history as ``prefix/<name>`` with ``step = epoch``."""

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        """Upload a file."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Attach tags."""

    def child(self, name: str) -> "Tracker":
        """A nested run (one per episode); the base returns another no-op tracker."""
        return NullTracker()

    def log_dataset(self, frame: Any, source: str, name: str) -> None:
        """Record the training data as a run input (with its digest)."""

    def log_student(self, model: Any, example: Any, checkpoint: Path, classes: list[str]) -> str | None:
        """Log the servable student as the run's model; returns its model URI."""
        return None

    def log_systems(self, runs: list["SystemRun"]) -> None:
        """One child run per system (student, baseline, each control, the teacher), same metric names in each."""

    def finish(self, status: str = "FINISHED") -> None:
        """End the run as FINISHED, FAILED or KILLED."""


@dataclass
class SystemRun:
    """A child run for one system of a ``distill run``: its name (``student``, ``baseline · kl_weight=0.1``), tags,
    and ``(metric, value, step)`` points, each metric named alike in every system's run, so that MLflow's charts
    of the parent's children draw student and baseline on one axis."""

    name: str
    tags: dict[str, str]
    points: list[tuple[str, float, int]] = field(default_factory=list)


#: the tag that names a child run's system (``student``, ``baseline``, ``null_teacher``, ``teacher``, ...)
SYSTEM_TAG = "distill.system"
#: points per MLflow log_batch request (MLflow's limit is 1000 metrics per batch)
BATCH_POINTS = 1000


class NullTracker(Tracker):
    """Records nothing."""


def resolve_tracking_uri(config: Config) -> str:
    """``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` (working folder).

    A server's requests are bounded by ``tracking.timeout`` / ``tracking.retries`` from here on (a
    network teacher's ``teacher.uri`` is fetched from it while the config is checked).
    """
    uri = config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith(("http://", "https://")):
        _apply_timeouts(config)
    return uri


def _probe(uri: str) -> str | None:
    """None when an http(s) tracking server answers within a few seconds, else the reason."""
    url = uri.rstrip("/") + "/health"
    timeout = min(PROBE_TIMEOUT_S, float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", PROBE_TIMEOUT_S)))
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http(s) only)
            return None if response.status < 500 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        # A server that answers, even with 404 for /health (older servers, proxies), is reachable.
        return None if exc.code < 500 else f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return str(reason) or type(exc).__name__


def _max_param_length() -> int:
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        return int(MAX_PARAM_VAL_LENGTH)
    except ImportError:  # pragma: no cover - older MLflow
        return 500


def git_commit(folder: Path) -> str | None:
    """The commit checked out in ``folder`` (``git rev-parse HEAD``), or None outside a git checkout:
    the ``git.commit`` tag of an MLflow run."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _sqlite_problem(uri: str) -> str | None:
    """A local SQLite store that cannot work: not a SQLite file (corrupt), or not writable."""
    prefix = "sqlite:///"
    target = uri[len(prefix):].split("?", 1)[0]
    if not uri.startswith(prefix) or not target or target.startswith(":memory:"):
        return None
    path = Path(target)
    if path.is_dir():
        return f"tracking.uri {uri}: '{path}' is a folder, not a SQLite file"
    if path.exists():
        try:
            with path.open("rb") as handle:
                head = handle.read(16)
        except OSError as exc:
            return f"tracking.uri {uri}: cannot read '{path}': {exc.strerror or exc}"
        if head and head != b"SQLite format 3\x00":
            return f"tracking.uri {uri}: '{path}' is not a SQLite database (corrupt or another kind of file)"
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
            return f"tracking.uri {uri}: '{path}' (or its folder) is read-only"
    elif not path.parent.is_dir():
        return f"tracking.uri {uri}: folder '{path.parent}' does not exist"
    elif not os.access(path.parent, os.W_OK):
        return f"tracking.uri {uri}: folder '{path.parent}' is read-only"
    return None


def _server_problem(uri: str) -> str | None:
    """None when an http(s) server answers /health and a real API request within the timeout."""
    reason = _probe(uri)
    if reason is not None:
        return reason
    try:
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except _store_errors() as exc:
        return f"it answers /health but not its API: {_reason(exc)}"
    return None


def preflight(config: Config) -> str:
    """The tracking URI to use, checked before any training: a dead or stalling server, a corrupt or
    read-only local store is exit 2 (or, for a server, the local fallback)."""
    uri = resolve_tracking_uri(config)
    if uri.startswith(("http://", "https://")):
        _apply_timeouts(config)
    problem = _sqlite_problem(uri)
    if problem is not None:
        raise ConfigError(problem + "; fix or remove it, set tracking.uri, or pass --no-track")
    if uri.startswith(("http://", "https://")):
        reason = _server_problem(uri)
        if reason is not None:
            if config.tracking.fallback == "local":
                log.warning("tracking server %s does not answer (%s); recording to %s instead", uri, reason, DEFAULT_URI)
                return DEFAULT_URI
            raise ConfigError(
                f"tracking.uri {uri} does not answer within {float(config.tracking.timeout):g} s ({reason}); start the server, "
                "set tracking.fallback = \"local\", or pass --no-track"
            )
    return uri


#: How often to repeat a dataset input that lost a race with another writer (see below).
DATASET_RACE_ATTEMPTS = 5


def _lost_insert_race(error: Exception) -> bool:
    """True when the store refused a row because a concurrent writer inserted the same key first."""
    text = str(error).lower()
    return any(mark in text for mark in ("unique constraint", "integrityerror", "duplicate key", "duplicate entry"))


def _log_dataset_input(client: Any, run_id: str, entry: Any) -> None:
    """Log one dataset input, repeating it when another run inserted the same dataset at the same moment.

    MLflow's SQL store looks the dataset up by (experiment, name, digest) and inserts it when absent,
    in one transaction without a lock: two runs logging the same data into one experiment at once
    can both miss it, and the second insert fails on the unique key. Its transaction is rolled
    back, so repeating it finds the first run's row and only adds this run's input edge.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(DATASET_RACE_ATTEMPTS):
        try:
            client.log_inputs(run_id, datasets=[entry])
            return
        except MlflowException as error:
            if attempt == DATASET_RACE_ATTEMPTS - 1 or not _lost_insert_race(error):
                raise
            time.sleep(0.05 * (attempt + 1))


class MlflowTracker(Tracker):
    """One MLflow run, through MLflow's fluent API (nested runs for children)."""

    run_id: str
    uri: str | None = None
    experiment_id: str | None = None

    def __init__(self, run_id: str, *, nested: bool = False, restore_uri: str | None = None) -> None:
        self.run_id = run_id
        self._nested = nested
        self._finished = False
        self._dataset: Any = None  # the run's dataset, once logged: ``log_metrics`` names it
        # mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI; finish() puts the caller's back.
        self._restore_uri = restore_uri

    @classmethod
    @_tracking_call
    def start(cls, uri: str, experiment: str, run_name: str, tags: dict[str, str],
              run_id: str | None = None) -> "MlflowTracker":
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # after the import, which sets INFO
        previous = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(uri)
        try:
            try:
                _create_local_store_once(uri)
                experiment_id = _experiment_id(mlflow.MlflowClient(uri), experiment, tags)
                mlflow.set_experiment(experiment_id=experiment_id)  # by id: active for the nested episode runs too
            except mlflow.exceptions.MlflowException as exc:
                raise TrackingError(f"tracking: cannot use experiment '{experiment}' at {uri}: {_reason(exc)}") from None
            if run_id is not None:
                run = mlflow.start_run(run_id=run_id)  # reopened: RUNNING again until finish()
                mlflow.set_tags({**tags, "distill.resumed": "true"})
            else:  # the experiment by id: another process creating it at the same moment cannot redirect us
                run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags)
        except BaseException:
            _restore_tracking_uri(previous)  # the caller's URI back, as finish() would
            raise
        tracker = cls(run.info.run_id, restore_uri=previous)
        tracker.uri = uri
        tracker.experiment_id = str(run.info.experiment_id)
        return tracker

    def ui_url(self) -> str | None:
        """The run's page in the MLflow UI (``ui_url``), once started."""
        return ui_url(self.uri, self.experiment_id, self.run_id) if self.uri and self.experiment_id else None

    @_tracking_call
    def log_params(self, params: dict[str, Any]) -> None:
        import mlflow

        limit = _max_param_length()
        items = [(k, str(v)[:limit]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            mlflow.log_params(dict(items[i : i + 100]), run_id=self.run_id)

    @_tracking_call
    def log_metrics(self, metrics: dict[str, float | None], step: int | None = None) -> None:
        import math

        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        if clean:  # after log_student, MLflow links them to the model too (at its step, 0)
            mlflow.log_metrics(clean, step=step, run_id=self.run_id, dataset=self._dataset)

    @_tracking_call
    def log_history(self, prefix: str, history: list[dict[str, float]]) -> None:
        import math
        import time

        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        now = int(time.time() * 1000)
        metrics = [
            Metric(f"{prefix}/{name}", float(value), now, int(row["epoch"]))
            for row in history
            for name, value in row.items()
            if name != "epoch" and value is not None and math.isfinite(float(value))
        ]
        client = MlflowClient()
        for i in range(0, len(metrics), 1000):  # one request per 1000 points, not one per epoch
            client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    @_tracking_call
    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        MlflowClient().log_artifact(self.run_id, str(path), artifact_path=folder)

    @_tracking_call
    def set_tags(self, tags: dict[str, str]) -> None:
        import mlflow

        for key, value in tags.items():
            mlflow.MlflowClient().set_tag(self.run_id, key, value)

    @_tracking_call
    def child(self, name: str) -> "MlflowTracker":
        import mlflow

        run = mlflow.start_run(run_name=name, nested=True)
        child = MlflowTracker(run.info.run_id, nested=True)
        child.uri = self.uri
        return child

    @_tracking_call
    def log_systems(self, runs: list[SystemRun]) -> None:
        """Create the system runs under this run, each with its points in batches, and end them FINISHED. Those
        an earlier attempt of a resumed run left are deleted first, so that no system is there twice."""
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        experiment_id = client.get_run(self.run_id).info.experiment_id
        earlier = client.search_runs([experiment_id], max_results=1000, filter_string=(
            f"tags.mlflow.parentRunId = '{self.run_id}' AND tags.`{SYSTEM_TAG}` != ''"))
        for run in earlier:
            client.delete_run(run.info.run_id)
        now = int(time.time() * 1000)
        for system in runs:
            child = client.create_run(experiment_id, run_name=system.name,
                                      tags={"mlflow.parentRunId": self.run_id, **system.tags}).info.run_id
            metrics = [Metric(key, float(value), now, int(step)) for key, value, step in system.points
                       if value is not None and math.isfinite(float(value))]
            for i in range(0, len(metrics), BATCH_POINTS):
                client.log_batch(child, metrics=metrics[i : i + BATCH_POINTS])
            client.set_terminated(child, status="FINISHED")

    @_tracking_call
    def log_dataset(self, frame: Any, source: str, name: str) -> None:
        import mlflow
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.pandas_dataset import from_pandas
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        origin: Any
        if source.startswith("csv:"):
            origin = str(Path(source[4:]).resolve())  # a local file: MLflow records its path
        else:
            origin = CodeDatasetSource(tags={"distill.data.sources.source": source})
        dataset = from_pandas(frame, source=origin, targets="label", name=name)
        entry = DatasetInput(dataset=dataset._to_mlflow_entity(),
                             tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value="training")])
        _log_dataset_input(mlflow.MlflowClient(), self.run_id, entry)
        self._dataset = dataset  # the metrics logged from now on name it (and so does the model's page)

    @_tracking_call
    def log_student(self, model: Any, example: Any, checkpoint: Path, classes: list[str]) -> str | None:
        import warnings

        import mlflow
        import mlflow.pytorch
        import numpy as np
        import pandas as pd
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            probs = model(torch.from_numpy(example.to_numpy(np.float32, copy=True))).numpy()
        signature = infer_signature(example, pd.DataFrame(probs))
        package = Path(__file__).resolve().parents[1]  # distill/, which the logged model imports
        pytorch_logger = logging.getLogger("mlflow.pytorch")
        previous = pytorch_logger.level
        pytorch_logger.setLevel(logging.ERROR)  # its pickle notice: see docs/tracking.md on loading
        try:
            with warnings.catch_warnings(), _no_requirement_check():
                warnings.simplefilter("ignore")
                info = mlflow.pytorch.log_model(
                    model,
                    name="student",
                    signature=signature,
                    input_example=example,
                    serialization_format="pickle",
                    code_paths=[str(package)],
                    extra_files=[str(checkpoint)],
                    pip_requirements=_requirements(),
                    metadata={"classes": list(classes), "output": "class probabilities, column c = classes[c]"},
                )
        finally:
            pytorch_logger.setLevel(previous)
        return info.model_uri

    def finish(self, status: str = "FINISHED") -> None:
        """End the run; a store that fails while a failed or interrupted run ends is only a warning,
        so that the run's own error is the one reported."""
        if self._finished:
            return
        self._finished = True
        _end_run(self._end, status)

    @_tracking_call
    def _end(self, status: str) -> None:
        import mlflow

        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            mlflow.end_run(status=status)
        else:
            mlflow.MlflowClient().set_terminated(self.run_id, status=status)
        if not self._nested:
            _restore_tracking_uri(self._restore_uri)


_REQUIREMENT_CHECK_LOCK = threading.Lock()


@contextlib.contextmanager
def _no_requirement_check() -> Iterator[None]:
    """Skip MLflow's check that the model's pip requirements match this environment while the student is logged
    (when the model is saved, and when MLflow loads it back to validate the input example): ``_requirements``
    pins the versions installed here, so it cannot find a mismatch, and it first maps every installed
    distribution to its modules (about 1 s, a fifth of what tracking adds to a 50-episode run). Where MLflow
    has no such function, nothing is skipped."""
    import mlflow.pyfunc
    from mlflow.utils import environment

    name = "warn_dependency_requirement_mismatches"
    with _REQUIREMENT_CHECK_LOCK:  # two threads logging at once must not save each other's no-op as MLflow's
        modules = [m for m in (environment, mlflow.pyfunc) if hasattr(m, name)]
        saved = [getattr(m, name) for m in modules]
        for module in modules:
            setattr(module, name, lambda requirements: None)
        try:
            yield
        finally:
            for module, check in zip(modules, saved, strict=True):
                setattr(module, name, check)


def _restore_tracking_uri(previous: str | None) -> None:
    """Put back the tracking URI a run replaced; None unsets ``MLFLOW_TRACKING_URI`` (MLflow's own default)."""
    import mlflow

    # MLflow annotates str | Path, but its code handles None as "unset" (the only way back to no URI)
    mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]


def _requirements() -> list[str]:
    """Pinned requirements of the logged model (explicit: MLflow's inference is slow and guesses)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("torch", "mlflow", "numpy", "pandas", "scikit-learn", "pydantic"):
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:  # pragma: no cover
            out.append(name)
    return out


#: the tag that names a ``distill run``'s run directory (``runs/<run_dir>``) on its MLflow run
RUN_DIR_TAG = "distill.run_dir"


def open_tracker(config: Config, uri: str, run_name: str, run_dir: str, device: str,
                 run_id: str | None = None) -> Tracker:
    """Start the MLflow run for ``config`` at ``uri`` (from ``preflight``), named ``run_name``, tagged (with the
    run directory's name ``run_dir`` among the tags) and with its params; with ``run_id``, reopen that run (a
    resumed run keeps its one MLflow run)."""

    tags = {
        RUN_DIR_TAG: run_dir,
        "dataset": config.data.source,
        "teacher.kind": config.teacher.kind,
        "student.arch": config.student.arch,
        "distill.version": __version__,
        "device": device,
        "episodes": str(config.protocol.episodes),
    }
    commit = git_commit(Path.cwd())
    if commit:
        tags["git.commit"] = commit
    if config.sweep is not None:
        tags["sweep.key"] = config.sweep[0]
    experiment = config.tracking.experiment or config.name
    try:
        tracker = MlflowTracker.start(uri, experiment, run_name, tags, run_id=run_id)
    except TrackingError as exc:  # a server that passed the preflight and then stalled or failed
        if not falls_back(config, uri, exc) or run_id is not None:
            raise
        uri = DEFAULT_URI
        tracker = MlflowTracker.start(uri, experiment, run_name, tags)
    tracker.log_params(flatten(config_dict(config)))
    log.info("MLflow run %s at %s (experiment '%s')", tracker.run_id, uri, experiment)
    return tracker


def falls_back(config: Config, uri: str, exc: UserError) -> bool:
    """True (with a warning) when ``tracking.fallback = "local"`` lets a failed server give way to the local store."""
    if config.tracking.fallback != "local" or not uri.startswith(("http://", "https://")):
        return False
    log.warning("%s; recording to %s instead (tracking.fallback = \"local\")", exc.problems[0], DEFAULT_URI)
    return True


def log_files(tracker: Tracker, paths: Iterable[Path]) -> None:
    """Upload each existing file."""
    for path in paths:
        if path.is_file():
            tracker.log_artifact(path)


#: Seconds to wait for another process that is creating the same local store's tables.
STORE_LOCK_TIMEOUT_S = 120.0


def _local_store_lock(uri: str) -> Path | None:
    """The lock file guarding a ``sqlite:///PATH`` store's creation (in the temp folder, keyed by PATH)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri[len(prefix):].startswith(":memory:") or not uri[len(prefix):]:
        return None
    path = str(Path(uri[len(prefix):].split("?", 1)[0]).resolve())
    return Path(tempfile.gettempdir()) / f"distill-mlflow-{hashlib.sha256(path.encode()).hexdigest()[:16]}.lock"


def _create_local_store_once(uri: str) -> None:
    """Open a local SQLite store while holding a machine-wide lock, so that its tables are made once.

    MLflow creates a new store's tables (an Alembic migration) on first use, unlocked: two
    ``distill run``s started together in a fresh folder both begin it, and one dies on
    "table _alembic_tmp_experiments already exists". Opening the store here, one process at a
    time, leaves the others finding the tables made; MLflow then keeps the open store per URI.
    """
    lock_path = _local_store_lock(uri)
    if lock_path is None:
        return
    from filelock import FileLock, Timeout
    from mlflow.tracking import MlflowClient

    try:
        with FileLock(str(lock_path), timeout=STORE_LOCK_TIMEOUT_S):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Timeout:
        raise ConfigError(f"tracking.uri {uri}: another process has been creating this store for "
                          f"{STORE_LOCK_TIMEOUT_S:.0f} s (lock {lock_path}); try again, or pass --no-track") from None


#: What MLflow 3's UI reads to open an experiment on its training runs: without it, an experiment with no runs
#: yet is taken for a GenAI one and opens on the traces "Overview" ("No data available").
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")

#: where ``mlflow ui`` (and ``mlflow server``) listen when given no --host or --port
LOCAL_UI = "http://127.0.0.1:5000"


def ui_url(uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI, on its model-training view.

    MLflow 3.17's UI picks an experiment's pages (GenAI traces or model-training runs) by a switch of its own:
    the link's ``workflowType``, else the browser's last choice, else GenAI; it no longer reads the
    experiment's ``mlflow.experimentKind`` tag. So the link names the view. A server's URI is its address; a
    local store (``sqlite:///mlflow.db``) is what ``mlflow ui --backend-store-uri URI`` serves at ``LOCAL_UI``.
    """
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


#: the run tags an experiment distill creates copies as its own, to tell experiments apart in the list
_EXPERIMENT_FACTS = ("dataset", "teacher.kind", "student.arch")


def experiment_tags(name: str, facts: dict[str, str]) -> dict[str, str]:
    """The tags of an experiment distill creates: its kind (training runs), a description, and its facts."""
    described = ", ".join(f"{key} {facts[key]}" for key in _EXPERIMENT_FACTS if key in facts)
    note = (f"distill: knowledge distillation of '{name}'{f' ({described})' if described else ''}. Each top-level run "
            "is one `distill run` (one child run per system under it: student, baseline, controls, references, "
            "teacher, with the same metric names, so charting its children puts student and baseline on one "
            "axis) or one `distill tune` study (its trials nested under it). The run's `student/test_*` "
            "against `baseline/test_*`, with `student_minus_baseline/*` and its p-value, answers whether "
            "distillation helped and how sure that is.")
    return {EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1], "mlflow.note.content": note,
            **{key: facts[key] for key in _EXPERIMENT_FACTS if key in facts}}


def _experiment_id(client: Any, name: str, facts: dict[str, str] | None = None) -> str:
    """The experiment's id, created if missing (tagged by ``experiment_tags``: an experiment that exists keeps
    its own tags); when another process creates it first, theirs."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise ConfigError(f"tracking: MLflow experiment '{name}' is deleted; restore it or set tracking.experiment")
        return experiment.experiment_id
    try:
        return client.create_experiment(name, tags=experiment_tags(name, facts or {}))
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS" and "already exists" not in str(exc):
            raise
        return client.get_experiment_by_name(name).experiment_id


def study_key(study: str, storage: str) -> str:
    """The parent run's lookup tag for a study: hex only, safe in an MLflow filter string."""
    return hashlib.sha256(f"{study}\0{storage}".encode("utf-8")).hexdigest()[:32]


#: a trial's child run: the study key of its parent (not ``distill.study_key``: that finds the parent)
TRIAL_OF_TAG = "distill.trial_of"
#: a trial's child run: the id of the process that ran the trial
WORKER_PID_TAG = "distill.worker_pid"


def fail_dead_worker_runs(uri: str, experiment: str, study: str, storage: str, pid: int) -> int:
    """End FAILED every RUNNING trial run of the study that process ``pid`` opened (it was killed, so
    it never will); returns how many. A store failure is a warning: the runs may still show RUNNING."""
    try:
        return _fail_runs_of(uri, experiment, study_key(study, storage), pid)
    except _store_errors() as exc:
        log.warning("tracking: ending the killed worker's trial runs failed at %s: %s (they may still show "
                    "RUNNING)", uri, _reason(exc))
        return 0


def _fail_runs_of(uri: str, experiment: str, key: str, pid: int) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return 0
    return _fail_running_trial_runs(client, found.experiment_id, key, f"tags.`{WORKER_PID_TAG}` = '{int(pid)}'")


def _fail_running_trial_runs(client: Any, experiment_id: str, key: str, which: str) -> int:
    """End FAILED (tagged ``optuna.state`` FAIL) the study's RUNNING trial runs that match filter ``which``."""
    runs = client.search_runs(
        [experiment_id], max_results=1000,
        filter_string=f"tags.`{TRIAL_OF_TAG}` = '{key}' AND {which} AND attributes.status = 'RUNNING'",
    )
    for run in runs:
        client.set_tag(run.info.run_id, "optuna.state", "FAIL")
        client.set_terminated(run.info.run_id, status="FAILED")
    return len(runs)


#: seconds a worker that created a study's parent run waits before it looks for parents other workers
#: created at the same moment (the earliest is kept; the others are deleted by their creators)
PARENT_SETTLE_S = 0.5
#: times a worker looks again for the study's parent when the one it found was deleted as it reopened it
PARENT_LOOKUPS = 5


def _earliest_study_parent(client: Any, experiment_id: str, key: str) -> str | None:
    """The earliest live parent run of study ``key`` (by start time, then id), or None."""
    parents = client.search_runs([experiment_id], filter_string=f"tags.`distill.study_key` = '{key}'",
                                 order_by=["attributes.start_time ASC"], max_results=50)
    return min(parents, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if parents else None


def _reopen_study_parent(client: Any, experiment_id: str, key: str) -> str | None:
    """Set the study's parent run RUNNING again and return it (None: the study has none yet). The parent
    found may be one that its creator deletes a moment later (it found an earlier one): then look again."""
    from mlflow.exceptions import MlflowException

    for attempt in range(PARENT_LOOKUPS):
        run_id = _earliest_study_parent(client, experiment_id, key)
        if run_id is None:
            return None
        try:
            client.update_run(run_id, status="RUNNING")
            return run_id
        except MlflowException as exc:
            if "deleted" not in str(exc) or attempt + 1 == PARENT_LOOKUPS:
                raise
            time.sleep(0.2)
    return None  # pragma: no cover - the loop returns or raises


def _ms(moment: Any) -> int | None:
    """A ``datetime`` (Optuna's trial start or end) in MLflow's milliseconds since the epoch; None stays None."""
    return None if moment is None else int(moment.timestamp() * 1000)


def _source_tags() -> dict[str, str]:
    """What MLflow's fluent ``start_run`` adds to a run (user, source name and type) and ``git.commit``, for a
    run made by ``MlflowClient.create_run``, which adds none."""
    from mlflow.tracking.context.registry import resolve_tags

    tags = dict(resolve_tags({}))
    commit = git_commit(Path.cwd())
    if commit:
        tags["git.commit"] = commit
    return tags


class StudyTracker:
    """MLflow for ``tune``: one parent run per study (found again by its tags) and a child run per trial.

    Uses ``MlflowClient`` with explicit run ids, so trials finishing in parallel threads do not
    share MLflow's global active-run state. Workers that start at the same moment on a new study
    may each create a parent; each then keeps the earliest and deletes its own.
    """

    def __init__(self, client: Any, experiment_id: str, run_id: str, key: str = "") -> None:
        self.client = client
        self.key = key
        self.experiment_id = experiment_id
        self.run_id = run_id
        self.uri: str | None = getattr(getattr(client, "_tracking_client", None), "tracking_uri", None)
        self._done = False
        #: trial number -> its child run, opened RUNNING when the trial starts (``start_trial``)
        self._trial_runs: dict[int, str] = {}

    def ui_url(self) -> str | None:
        """The study run's page in the MLflow UI (``ui_url``): its trials are nested under it."""
        return ui_url(self.uri, self.experiment_id, self.run_id) if self.uri else None

    @classmethod
    @_tracking_call
    def start(cls, uri: str, config: Config, study: str, storage: str, run_name: str) -> "StudyTracker":
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        _create_local_store_once(uri)
        client = MlflowClient(tracking_uri=uri)
        name = config.tracking.experiment or config.name
        experiment_id = _experiment_id(client, name, {"dataset": config.data.source, "teacher.kind": config.teacher.kind,
                                                      "student.arch": config.student.arch})
        # Found by a digest of name and storage: names with quotes or backslashes never reach the filter.
        key = study_key(study, storage)
        found = _reopen_study_parent(client, experiment_id, key)
        if found is not None:
            run_id = found
            log.info("MLflow: adding trials to the study's parent run %s", run_id)
        else:

            tags = {"distill.study": study, "distill.storage": storage, "distill.study_key": key,
                    "distill.version": __version__,
                    "dataset": config.data.source, "teacher.kind": config.teacher.kind,
                    "student.arch": config.student.arch, "distill.kind": "tune", **_source_tags()}
            run_id = client.create_run(experiment_id, run_name=f"{config.name} · tune {study}", tags=tags).info.run_id
            # Workers starting together may each have created a parent: all keep the earliest one, looked
            # for once the others' creations have landed.
            time.sleep(PARENT_SETTLE_S)
            earliest = _earliest_study_parent(client, experiment_id, key) or run_id
            if earliest != run_id:
                client.delete_run(run_id)
                log.info("MLflow: another worker created the study's parent run %s; adding trials to it", earliest)
                return cls(client, experiment_id, earliest, key)
            tracker = cls(client, experiment_id, run_id, key)
            tracker._log_params(flatten(config_dict(config)))
            log.info("MLflow: study parent run %s at %s (experiment '%s')", run_id, uri, name)
        return cls(client, experiment_id, run_id, key)

    @_tracking_call
    def _log_params(self, params: dict[str, Any], run_id: str | None = None) -> None:
        from mlflow.entities import Param

        limit = _max_param_length()
        items = [Param(k, str(v)[:limit]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id or self.run_id, params=items[i : i + 100])

    @_tracking_call
    def start_trial(self, study_name: str, trial_number: int) -> None:
        """Open the trial's child run RUNNING, tagged with this process id: a supervisor that sees this
        process killed ends it FAILED (``fail_dead_worker_runs``) instead of leaving it RUNNING."""
        self._trial_runs[trial_number] = self._create_child(study_name, trial_number, "RUNNING")

    @_tracking_call
    def fail_stale_trial(self, trial_number: int) -> int:
        """End FAILED the RUNNING child run of trial ``trial_number``, whose worker stopped sending heartbeats
        (killed on any machine, with or without a supervisor); returns how many runs it ended (0 or 1)."""
        return _fail_running_trial_runs(self.client, self.experiment_id, self.key,
                                        f"tags.`optuna.trial` = '{int(trial_number)}'")

    def _create_child(self, study_name: str, trial_number: int, state: str, start_time: int | None = None) -> str:
        tags = {"mlflow.parentRunId": self.run_id, "optuna.trial": str(trial_number), "optuna.state": state,
                "distill.study": study_name, TRIAL_OF_TAG: self.key, WORKER_PID_TAG: str(os.getpid())}
        return str(self.client.create_run(self.experiment_id, run_name=f"trial {trial_number}", tags=tags,
                                          start_time=start_time).info.run_id)

    @_tracking_call
    def on_trial(self, study: Any, trial: Any, status: str | None = None) -> None:
        """Optuna callback: a nested run holding the trial's params, value, state and per-episode values.

        The child (opened by ``start_trial``, else now) ends FINISHED (complete), KILLED (pruned) or
        FAILED, unless ``status`` says otherwise (KILLED for a trial a signal cut short).
        """
        import time as _time

        from mlflow.entities import Metric

        state = trial.state.name
        child = self._trial_runs.pop(trial.number, None)
        if child is None:  # opened now: it spans the trial's own start and end, not this moment
            child = self._create_child(study.study_name, trial.number, state, _ms(trial.datetime_start))
        else:
            self.client.set_tag(child, "optuna.state", state)
        try:
            self._log_params(dict(trial.params), child)
            now = int(_time.time() * 1000)
            metrics = [Metric("validation/running_mean", float(v), now, int(step))
                       for step, v in sorted(trial.intermediate_values.items()) if math.isfinite(v)]
            if trial.value is not None and math.isfinite(trial.value):
                metrics.append(Metric("validation/value", float(trial.value), now, 0))
            if metrics:
                self.client.log_batch(child, metrics=metrics)
        finally:
            status = status or {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED")
            self.client.set_terminated(child, status=status, end_time=_ms(trial.datetime_complete))

    @_tracking_call
    def finish_study(self, summary: dict[str, Any]) -> None:
        """Best params (as tags: the parent may be reused), best value and the test comparison."""
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        best = summary["best"]
        tags = [RunTag(f"best.{k}", str(v)) for k, v in best["params"].items()]
        tags.append(RunTag("best.trial", str(best["trial"])))
        metrics = [Metric("best/validation", float(best["validation"]), now, 0)]
        if summary["untuned"]["validation"] is not None and math.isfinite(summary["untuned"]["validation"]):
            metrics.append(Metric("untuned/validation", float(summary["untuned"]["validation"]), now, 0))
        for label, block in (("tuned", best["test"]), ("untuned", summary["untuned"]["test"])):
            for system in ("teacher", "student", "baseline"):
                for metric, value in block[system].items():
                    if value is not None and math.isfinite(value):
                        metrics.append(Metric(f"{label}/{system}/test_{metric}", float(value), now, 0))
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)

    @_tracking_call
    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str = "FINISHED") -> None:
        """End the parent run (a store failure while a failed or interrupted study ends: a warning)."""
        if not self._done:
            self._done = True
            _end_run(self._end, status)

    @_tracking_call
    def _end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)
