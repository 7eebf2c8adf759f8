"""``distill teacher train``: fit a network teacher on the whole labelled training pool.

The teacher learns from every labelled row except a held-out test split (and an early-stopping
validation split), with the hard loss only and the same engine as the students. Its checkpoint
records the architecture, the input scaling, the classes, a hash of the data and the held-out
rows, so that a later ``run`` with ``teacher.checkpoint`` pointing at it draws its test rows only
from rows the teacher never saw.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill import students
from distill.config import Config, config_dict, flatten
from distill.data.scaling import fit_scaler
from distill.data.sources import Dataset, load_dataset
from distill.data.split import draw_stratified, draw_test_rows
from distill.engine.loop import EvaluationRows, FitInterrupted, TrainingRows, fit_many, predict_logits
from distill.errors import ConfigError
from distill.experiment.cache import data_hash
from distill.experiment.prepare import fit_settings
from distill.interrupts import Interrupted, StopRequest
from distill.metrics.classification import classification_metrics, probabilities
from distill.outputs.rundir import atomic_write, attach_log_file, write_json
from distill.outputs.tracking import MlflowTracker, git_commit
from distill.seeding import configure_threads, resolve_device, seed_everything
from distill.students.checkpoint import checkpoint_payload
from distill.version import __version__

__all__ = ["train_teacher"]

log = logging.getLogger("distill")


def _check(config: Config, output: str | Path | None) -> Path:
    t = config.teacher
    problems = []
    if t.kind != "network":
        problems.append(f"teacher train trains a network: set teacher.kind = \"network\", got {t.kind!r}")
    if not t.arch:
        problems.append("teacher train needs teacher.arch (a registered architecture such as 'cnn', or 'module:Class')")
    if config.sweep is not None:
        problems.append(f"teacher train trains one network; give {config.sweep[0]} one value, not a sweep")
    if output is None and not t.checkpoint:
        problems.append("teacher train writes to teacher.checkpoint (or --output); set one")
    if problems:
        raise ConfigError(*problems)
    path = Path(output) if output is not None else Path(str(t.checkpoint))
    _check_target(path, "--output" if output is not None else "teacher.checkpoint")
    return path


def _check_target(path: Path, where: str) -> None:
    """The checkpoint goes to a new file in a folder that exists or can be created; never over another file.

    ``teacher train`` writes ``path`` and its ``.json`` summary beside it; either one existing means
    a file this run did not write, which a new training must not replace.
    """
    if path.suffix in (".json", ".log"):
        raise ConfigError(f"{where}: teacher checkpoint '{path}' would collide with its own {path.suffix} summary "
                          "or log; name it with another suffix, such as .pt")
    for taken in (path, path.with_suffix(".json")):
        if taken.is_dir():
            raise ConfigError(f"{where}: teacher checkpoint '{path}' is a folder; give a file path such as "
                              f"'{path / 'teacher.pt'}'")
        if taken.exists() or taken.is_symlink():
            raise ConfigError(f"{where}: '{taken}' already exists and teacher train does not overwrite a file it did "
                              "not write; choose a new path (or delete the old checkpoint yourself)")
    folder = next((p for p in path.parents if p.exists()), Path("."))
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: cannot create teacher checkpoint '{path}': '{folder}' is not a writable folder")


def _split(config: Config, dataset: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training, early-stopping validation (``teacher.validation``, a share of the rest) and held-out test rows
    (``data.test_size``, drawn as ``run`` draws its own, from a stream of the seed of their own)."""
    k = dataset.num_classes
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0x7EAC]))
    test = draw_test_rows(dataset.y, k, config.data.test_size, rng)
    rest = np.setdiff1d(np.arange(dataset.y.shape[0]), test, assume_unique=True)
    n_val = max(k, int(round(float(config.teacher.validation) * rest.size)))
    val = draw_stratified(dataset.y, rest, n_val, "total", rng, k, "teacher.validation")
    return np.setdiff1d(rest, val, assume_unique=True), val, test


def _network(config: Config, dataset: Dataset, kwargs: dict[str, Any],
             device: torch.device) -> tuple[torch.nn.Module, int]:
    """``teacher.arch`` built with ``teacher.params`` from the seed (a ConfigError naming the key), and its
    number of outputs."""
    seed_everything(config.seed)
    try:
        model = students.build(str(config.teacher.arch), dataset.in_shape, dataset.num_classes, key="teacher.arch",
                               **kwargs).to(device)
    except ValueError as exc:
        message = str(exc).replace("student.", "teacher.params.")
        raise ConfigError(message if message.startswith("teacher.arch") else f"teacher.arch: {message}") from None
    return model, int(model(torch.zeros((1, *dataset.in_shape), device=device)).shape[-1])


def _make_room(path: Path, output: str | Path | None) -> None:
    """Check again that the checkpoint's path is free (nothing appeared while training), and create its folder."""
    _check_target(path, "--output" if output is not None else "teacher.checkpoint")
    if not path.parent.exists():
        try:
            path.parent.mkdir(parents=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the folder of teacher checkpoint '{path}': {exc.strerror or exc}") from None


def train_teacher(
    config: Config, *, output: str | Path | None = None, progress: bool = False, track: bool = True
) -> tuple[Path, dict[str, Any]]:
    """Train ``teacher.arch`` on all labelled rows but the held-out test split; write its checkpoint.

    SIGINT / SIGTERM stop training after the current step and raise ``Interrupted``; no checkpoint
    is written then (a teacher trains in one go: run it again).
    """
    stop = StopRequest(then="stopping after the current step; teacher train writes no checkpoint")
    recorder = _Recorder()  # the log of the whole training, written beside the checkpoint with it
    log.addHandler(recorder)
    level = log.level
    log.setLevel(logging.DEBUG)  # the file gets every record; a console handler keeps its own level
    try:
        with stop.installed():
            return _train_teacher(config, output, progress, track, stop, recorder)
    finally:
        log.setLevel(level)
        log.removeHandler(recorder)


class _Recorder(logging.Handler):
    """Keeps the records logged while the teacher trains, for its ``.log`` (no file before the checkpoint)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _train_teacher(config: Config, output: str | Path | None, progress: bool, track: bool,
                   stop: StopRequest, recorder: _Recorder) -> tuple[Path, dict[str, Any]]:
    started = time.perf_counter()
    path = _check(config, output)
    uri = None
    if track and config.tracking.enabled:  # a dead tracking server is exit 2 before the training, not after it
        from distill.outputs.tracking import preflight

        uri = preflight(config)
    dataset = load_dataset(config.data.source, config.data.label)
    device = resolve_device(config.train.device)
    k = dataset.num_classes
    train, val, test = _split(config, dataset)
    scaler = fit_scaler(config.data.scale, dataset.x[train])
    x = scaler.transform(dataset.x)
    configure_threads(device, config.train.threads, int(x[train].size))

    kwargs = dict(config.teacher.params)
    model, num_outputs = _network(config, dataset, kwargs, device)

    def rows(index: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(x[index]), dtype=dtype).to(device)

    def labels(index: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(dataset.y[index], dtype=torch.long).to(device)

    training = TrainingRows(x=rows(train), targets=labels(train),
                            labelled=torch.ones(train.size, dtype=torch.bool, device=device))
    settings = fit_settings(config, kl_weight=0.0)
    log.info(
        "teacher train: %s %s on %d rows (validation %d, held-out test %d), %s",
        config.teacher.arch, kwargs, train.size, val.size, test.size, device,
    )
    seed_everything(config.seed + 1)
    try:
        result = fit_many([model], [training], [settings], num_classes=k,
                          validations=[EvaluationRows(rows(val), labels(val))], progress=progress,
                          description="teacher", stop_requested=stop)[0]
    except FitInterrupted as exc:
        raise Interrupted(stop.signal_name or "SIGINT",
                          f"while training the teacher (epoch {exc.epoch}); no checkpoint was written") from None
    logits = predict_logits(model, rows(test))
    metric_values = classification_metrics(probabilities(logits), labels(test), k)
    test_metrics = dict(zip(metric_values, torch.stack(list(metric_values.values())).tolist(), strict=True))
    log.info("teacher: %d epochs (%s); test accuracy %.4f", result.stopped_epoch, result.stop_reason,
             test_metrics["accuracy"])

    payload = checkpoint_payload(
        model, arch=str(config.teacher.arch), kwargs=kwargs, dataset=dataset, num_outputs=num_outputs, scaler=scaler,
        best_epoch=result.best_epoch, seed=config.seed, config=config_dict(config),
        role="teacher", label_mapping={name: i for i, name in enumerate(dataset.classes)}, data_source=dataset.name,
        data_hash=data_hash(dataset.x, dataset.y), heldout_rows=test.tolist(), train_rows=int(train.size),
        test_accuracy=float(test_metrics["accuracy"]), test_metrics={key: float(v) for key, v in test_metrics.items()},
    )
    stop.check("after training the teacher, before writing its checkpoint; no checkpoint was written")
    _make_room(path, output)
    handler = attach_log_file(path.with_suffix(".log"), log)
    log.removeHandler(recorder)
    for record in recorder.records:  # what was logged before the file existed
        handler.handle(record)
    try:
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
        summary = {
            "status": "completed",
            "checkpoint": str(path),
            "arch": payload["arch"],
            "kwargs": kwargs,
            "rows": {"train": int(train.size), "validation": int(val.size), "heldout_test": int(test.size)},
            "test": payload["test_metrics"],
            "fit": {"epochs_run": result.stopped_epoch, "best_epoch": result.best_epoch,
                    "stop_reason": result.stop_reason, "seconds": result.seconds},
            "data_hash": payload["data_hash"],
            "seconds": time.perf_counter() - started,
            "mlflow_run_id": None,
        }
        if uri is not None:
            summary["mlflow_run_id"] = _record(config, uri, path, result.history, test_metrics, str(device))
        write_json(path.with_suffix(".json"), summary)
    finally:
        log.removeHandler(handler)
        handler.close()
    return path, summary


def _record(config: Config, uri: str, path: Path, history: list[dict[str, float]], test_metrics: dict[str, float],
            device: str) -> str:
    """MLflow: one run with the config, the per-epoch history, the test metrics and the checkpoint."""
    tags = {"dataset": config.data.source, "teacher.arch": str(config.teacher.arch), "distill.kind": "teacher train",
            "distill.version": __version__, "device": device}
    commit = git_commit(Path.cwd())
    if commit:
        tags["git.commit"] = commit
    tracker = MlflowTracker.start(uri, config.tracking.experiment or config.name, f"teacher {path.stem}", tags)
    try:
        tracker.log_params(flatten(config_dict(config)))
        tracker.log_history("teacher", history)
        tracker.log_metrics({f"teacher/test_{key}": value for key, value in test_metrics.items()})
        tracker.log_artifact(path)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
    return str(tracker.run_id)
