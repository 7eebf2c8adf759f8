"""The Python API: ``distill.run``, ``distill.tune`` and friends, and the results they return.

Every CLI verb is a thin layer over one of these functions. They take a ``Config`` (or a dict, or a TOML
path), data from memory or a source string, a teacher object or the config's teacher; they write the
same run directory as the CLI and return typed results. Process-wide settings a run changes (torch and
BLAS threads, the global random generators, MLflow's tracking URI and experiment, loggers) are put back
when the call returns (``distill.process_state``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from distill.config import Config, load_config, validate_config
from distill.data.sources import Dataset, dataset_from_arrays, dataset_from_frame
from distill.errors import ConfigError, DataError
from distill.experiment.tune_result import TuneResult
from distill.process_state import preserved

__all__ = [
    "run", "resume", "tune", "check", "train_teacher", "predict", "as_config",
    "RunResult", "TuneResult", "TeacherResult", "Episode", "Estimate", "Difference", "SweepPoint",
]

#: What ``config`` may be: a Config, a dict of the TOML's tables, or the path of a TOML file.
ConfigLike = Union[Config, Mapping[str, Any], str, Path]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Estimate:
    """A metric over episodes: mean, standard deviation (ddof 1), 95% interval, episodes counted."""

    mean: float | None
    std: float | None
    ci95: tuple[float, float] | None
    n: int

    @classmethod
    def _from(cls, d: Mapping[str, Any]) -> "Estimate":
        ci = d.get("ci95")
        return cls(d.get("mean"), d.get("std"), tuple(ci) if ci is not None else None, int(d.get("n", 0)))


@dataclass(frozen=True)
class Difference:
    """A paired per-episode difference (e.g. student minus baseline): mean, 95% interval, Wilcoxon p."""

    mean: float | None
    ci95: tuple[float, float] | None
    p_value: float | None
    n: int

    @classmethod
    def _from(cls, d: Mapping[str, Any]) -> "Difference":
        ci = d.get("ci95")
        return cls(d.get("mean"), tuple(ci) if ci is not None else None, d.get("p_value"), int(d.get("n", 0)))


@dataclass(frozen=True)
class Episode:
    """One episode (a few-shot draw, and a sweep value): test metrics per system and how it went."""

    episode: int
    seed: int
    #: test metrics: ``metrics["student"]["accuracy"]``, for teacher, student, baseline and the controls
    metrics: dict[str, dict[str, float]]
    value: Any = None
    kd_selection: dict[str, Any] | None = None
    teacher: dict[str, Any] = field(default_factory=dict)
    fits: dict[str, dict[str, Any]] = field(default_factory=dict)
    split: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepPoint:
    """The results at one value of a swept key."""

    value: Any
    metrics: dict[str, dict[str, float]]
    aggregate: dict[str, dict[str, Estimate]]
    paired: dict[str, dict[str, Difference]]
    verdict: str | None


def _aggregates(block: Mapping[str, Any]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Estimate]],
                                                   dict[str, dict[str, Difference]]]:
    aggregate = {s: {m: Estimate._from(v) for m, v in ms.items()} for s, ms in block.get("aggregate", {}).items()}
    paired = {k: {m: Difference._from(v) for m, v in ms.items()} for k, ms in block.get("paired", {}).items()}
    means = {s: dict(block[s]) for s in block.get("aggregate", {})}
    return means, aggregate, paired


@dataclass
class RunResult:
    """What ``distill.run`` returns: the run's numbers as attributes, the trained student, the history.

    ``to_json()`` is ``summary.json`` exactly; ``table()`` the console table. Without a sweep,
    ``metrics`` / ``aggregate`` / ``paired`` / ``verdict`` are over all episodes; with one, ``sweep`` holds
    them per value.
    """

    run_dir: Path
    status: str
    #: mean test metric per system over the episodes: ``metrics["student"]["accuracy"]``
    metrics: dict[str, dict[str, float]]
    #: mean, std and 95% interval per system and metric
    aggregate: dict[str, dict[str, Estimate]]
    #: paired differences: ``paired["student_minus_baseline"]["accuracy"]``
    paired: dict[str, dict[str, Difference]]
    verdict: str | None
    episodes: list[Episode] = field(repr=False)
    sweep: list[SweepPoint] | None
    #: what ``objective.kl_weight / temperature = "auto"`` chose, over the episodes (None: fixed numbers)
    kd_selection: dict[str, Any] | None
    mlflow_run_id: str | None
    #: episode 0's student with its input scaling and softmax, in eval mode: raw features in, class
    #: probabilities out (column ``c`` is ``student.classes[c]``); the model ``student.pt`` holds
    student: Any = field(repr=False)
    #: ``history.csv`` at full precision: one row per fit (episode, system) and epoch
    history: Any = field(repr=False)
    #: the ``summary.json`` document
    summary: dict[str, Any] = field(repr=False)

    def table(self) -> str:
        """The console's table (and, with episodes, the verdict)."""
        from distill.experiment.run import result_text

        return result_text(self.summary)

    def to_json(self) -> str:
        """``summary.json``, exactly as written in the run directory."""
        from distill.outputs.rundir import json_text

        return json_text(self.summary)

    #: the class labels in the student's output order: your own label values for data from memory
    #: (``y``'s ints or strings), else the data's class names
    classes: list[Any] = field(default_factory=list)
    _payload: dict[str, Any] = field(default_factory=dict, repr=False)

    def predict_proba(self, x: Any) -> Any:
        """Class probabilities ``[N, K]`` (numpy) from the student for raw feature rows (``[N, D]`` numbers in
        training column order, or a DataFrame with the training feature columns); checked as ``distill.predict``."""
        frame = _predictions(self._payload, x, "the rows given", self._payload.get("arch", ""))
        return frame[[c for c in frame.columns if c != "prediction"]].to_numpy()

    def predict(self, x: Any) -> Any:
        """The predicted class label of each row (a numpy array of ``classes``' values)."""
        import numpy as np

        return np.asarray(self.classes)[self.predict_proba(x).argmax(axis=1)]

    @classmethod
    def _build(cls, run_dir: Path, summary: dict[str, Any], history: Any, arch: str,
               labels: list[Any] | None = None) -> "RunResult":
        from distill.students.checkpoint import load_checkpoint, servable_from_checkpoint

        payload = load_checkpoint(run_dir / "student.pt")
        student = servable_from_checkpoint(payload, trusted=(arch,)).eval()
        sweep = None
        if "sweep" in summary:
            sweep = []
            for point in summary["sweep"]["points"]:
                means, aggregate, paired = _aggregates(point)
                sweep.append(SweepPoint(point["value"], means, aggregate, paired, point.get("verdict")))
            means, aggregate, paired, verdict = {}, {}, {}, None
        else:
            means, aggregate, paired = _aggregates(summary)
            verdict = summary.get("verdict")
        systems = [s for s in summary["episodes"][0] if isinstance(summary["episodes"][0][s], dict)
                   and s not in ("teacher_diagnostics", "kd_selection", "fits", "split", "timings")]
        episodes = [Episode(episode=e["episode"], seed=e["seed"], metrics={s: dict(e[s]) for s in systems},
                            value=e.get("value"), kd_selection=e.get("kd_selection"),
                            teacher=e.get("teacher_diagnostics", {}), fits=e.get("fits", {}),
                            split=e.get("split", {}), timings=e.get("timings", {}))
                    for e in summary["episodes"]]
        return cls(run_dir=run_dir, status=summary["status"], metrics=means, aggregate=aggregate, paired=paired,
                   verdict=verdict, episodes=episodes, sweep=sweep, kd_selection=summary.get("kd_selection"),
                   mlflow_run_id=summary.get("mlflow_run_id"), student=student, history=history, summary=summary,
                   classes=list(labels) if labels is not None else list(payload["classes"]), _payload=payload)


@dataclass
class TeacherResult:
    """What ``distill.train_teacher`` returns: the checkpoint it wrote and its summary."""

    checkpoint: Path
    summary: dict[str, Any]

    @property
    def test(self) -> dict[str, float]:
        """The teacher's metrics on its held-out test rows."""
        return dict(self.summary["test"])

    def to_json(self) -> str:
        """The summary written beside the checkpoint (``<checkpoint>.json``)."""
        from distill.outputs.rundir import json_text

        return json_text(self.summary)


def _predictions(payload: dict[str, Any], data: Any, where: str, arch: str = "",
                 trusted_archs: Sequence[str] = ()) -> Any:
    """``distill.outputs.prediction.predict_frame`` for a DataFrame, a CSV path or ``[N, D]`` rows (training column
    order); every problem a one-line DataError; torch's generator left as it was."""
    import numpy as np

    from distill.data.sources import read_csv_frame
    from distill.outputs.prediction import predict_frame

    if isinstance(data, (str, Path)):
        frame, where = read_csv_frame(Path(data)), f"data file '{data}'"
    elif hasattr(data, "columns"):
        frame = data
    else:
        import pandas as pd

        try:
            x = np.asarray(data, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: rows must be numbers: {str(exc).splitlines()[0]}") from None
        if x.ndim != 2:
            hint = " (one row: x.reshape(1, -1))" if x.ndim == 1 else ""
            raise DataError(f"{where} must be [N, D] rows of features, got shape {x.shape}{hint}")
        names = list(payload.get("feature_names") or [f"x{i}" for i in range(x.shape[1])])
        if len(names) != x.shape[1]:
            raise DataError(f"{where} has {x.shape[1]} feature columns; the student takes {len(names)}")
        frame = pd.DataFrame(x, columns=names)
    if len(frame) == 0:
        raise DataError(f"{where} has no rows")
    trusted = tuple(trusted_archs) + ((arch,) if arch else ())
    with preserved():  # building the student draws initial weights from torch's generator: put it back
        return predict_frame(payload, frame, where, trusted)


def _labels(y: Any, codes: Any, k: int) -> list[Any]:
    """Your own label value for each class index: the first ``y`` of each code, as a Python value."""
    import numpy as np

    values = np.asarray(y).reshape(-1)
    first = [int(np.flatnonzero(np.asarray(codes) == c)[0]) for c in range(k)]
    return [values[i].item() if hasattr(values[i], "item") else values[i] for i in first]


# --------------------------------------------------------------------------- inputs


def as_config(config: ConfigLike, overrides: Sequence[str] = ()) -> Config:
    """A validated Config from a Config, a dict of the TOML's tables, or a TOML file path.

    ``overrides`` are ``--set`` items (``"objective.kl_weight=0.5"``), applied to the file or dict.
    """
    if isinstance(config, Config):
        if not overrides:
            return config
        from distill.config import config_dict

        return as_config(config_dict(config), overrides)
    if isinstance(config, (str, Path)):
        return load_config(config, list(overrides))
    if isinstance(config, Mapping):
        from distill.config import apply_overrides

        raw = _plain(config)
        raw.setdefault("name", "experiment")
        if overrides:
            raw = apply_overrides(raw, list(overrides))
        return validate_config(raw)
    raise ConfigError(f"config must be a distill Config, a dict or a TOML file path; got {type(config).__name__}")


def _plain(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of a config dict (nested mappings become dicts): the caller's dict is never changed."""
    return {k: _plain(v) if isinstance(v, Mapping) else (list(v) if isinstance(v, (list, tuple)) else v)
            for k, v in tree.items()}


def _dataset(config: Config, data: Any) -> tuple[Config, Dataset | None, list[Any] | None]:
    """The config (``data.source`` naming in-memory data), the Dataset for ``data`` (None: the source) and
    your own label value of each class (None: the source's class names)."""
    from distill.data.sources import check_dataset

    labels = None
    if data is None:
        return config, None, None
    if isinstance(data, (str, Path)):
        source = str(data)
        if source.partition(":")[0] not in ("sklearn", "csv", "npz", "idx"):  # a bare file path: a CSV
            source = f"csv:{source}"
        return config.model_copy(update={"data": config.data.model_copy(update={"source": source})}), None, None
    if isinstance(data, Dataset):
        dataset, where = data, f"the Dataset {data.name!r}"
    elif hasattr(data, "columns") and hasattr(data, "to_numpy"):  # a DataFrame with the label column
        dataset = dataset_from_frame(data, config.data.label, name="memory:dataframe",
                                     where="the DataFrame given as data")
        where = f"the DataFrame given as data (label column '{config.data.label}')"
        labels = _labels(data[config.data.label], dataset.y, dataset.num_classes)
    elif isinstance(data, tuple) and len(data) == 2:
        dataset = dataset_from_arrays(*data)
        where = "data (X, y)"
        labels = _labels(data[1], dataset.y, dataset.num_classes)
    else:
        raise DataError(f"data must be (X, y), a pandas DataFrame with the label column '{config.data.label}', or a "
                        f"source string such as 'sklearn:iris' or 'csv:PATH'; got {type(data).__name__}")
    check_dataset(dataset, where=where)
    update = {"data": config.data.model_copy(update={"source": dataset.name})}
    return config.model_copy(update=update), dataset, labels


def _teacher(config: Config, dataset: Dataset | None, teacher: Any) -> tuple[Config, Any]:
    """The factory of a teacher given in Python (None: the config's), and the config without the disk
    cache for it (an object has no identity a later process could match)."""
    if teacher is None:
        return config, None
    from distill.data.sources import load_dataset
    from distill.teachers.given import teacher_factory

    data = dataset if dataset is not None else load_dataset(config.data.source, config.data.label)
    try:
        factory = teacher_factory(teacher, num_classes=data.num_classes, classes=list(data.classes),
                                  in_shape=data.in_shape, input=config.teacher.input,
                                  feature_names=list(data.feature_names))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    described = f"{type(teacher).__name__} ({'nn.Module' if hasattr(teacher, 'parameters') else 'scikit-learn'})"
    update = {"cache": False, "given": described}  # the marker: a config alone cannot rerun or resume this
    return config.model_copy(update={"teacher": config.teacher.model_copy(update=update)}), factory


def _progress(progress: bool | None) -> bool:
    """``None``: a bar in a notebook or on a terminal, none in a pipe or a log file."""
    if progress is not None:
        return bool(progress)
    if "ipykernel" in sys.modules:
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


@contextmanager
def _library_call() -> Iterator[None]:
    """``preserved()`` process settings, and the ``distill`` logger as the CLI sets it: every record to the
    run's ``log.txt``, warnings to stderr (unless you gave the ``distill`` logger handlers of your own)."""
    log = logging.getLogger("distill")
    level, propagate = log.level, log.propagate
    console: logging.Handler | None = None
    if not log.handlers:
        console = logging.StreamHandler()
        console.setLevel(logging.WARNING)
        console.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(console)
        log.propagate = False
    log.setLevel(logging.DEBUG)
    try:
        with preserved():
            yield
    finally:
        if console is not None:
            log.removeHandler(console)
        log.setLevel(level)
        log.propagate = propagate


def _track(config: Config, track: bool | None) -> bool:
    return config.tracking.enabled if track is None else bool(track)


# --------------------------------------------------------------------------- verbs


def run(config: ConfigLike, *, data: Any = None, teacher: Any = None, track: bool | None = None,
        output: str | Path | None = None, progress: bool | None = None,
        on_complete: Callable[[RunResult], None] | None = None) -> RunResult:
    """Fit the teacher, the distilled student and the no-distillation baseline over the episodes.

    Args:
        config: a ``Config``, a dict of the experiment's tables (``{"objective": {"kl_weight": 1.0}}``),
            or the path of an experiment TOML file.
        data: ``(X, y)`` arrays, a pandas DataFrame with the label column (``data.label``, default
            ``"label"``), or a source string (``"sklearn:iris"``, ``"csv:PATH"``); None: ``data.source``.
        teacher: an unfitted scikit-learn classifier (refit per episode), a fitted one (used as is, on raw
            features), or a trained ``nn.Module`` emitting logits; None: ``teacher.kind``.
        track: record to MLflow (None: ``tracking.enabled``).
        output: the run directory, a new or empty folder (None: ``runs/<timestamp>-<name>/``).
        progress: progress bars (None: in a notebook or on a terminal).
        on_complete: called with the ``RunResult`` as soon as ``summary.json`` is written, before the plots
            are drawn (the CLI prints the result there).

    Returns:
        A ``RunResult``; the run directory holds the same as ``python -m distill run`` writes.

    Raises:
        distill.UserError: bad config, data or teacher (``.problems`` lists each, one line naming the key).
    """
    from distill.experiment.run import execute

    cfg, dataset, labels = _dataset(as_config(config), data)
    cfg, factory = _teacher(cfg, dataset, teacher)
    with _library_call():
        outcome = execute(cfg, output=output, progress=_progress(progress), track=_track(cfg, track),
                          dataset=dataset, teacher=factory, on_complete=_completed(on_complete, cfg, labels))
        return RunResult._build(outcome.run_dir, outcome.summary, outcome.history, cfg.student.arch, labels)


def _completed(callback: Callable[[RunResult], None] | None, cfg: Config, labels: Any) -> Callable[[Any], None] | None:
    """``execute``'s on_complete hook that hands ``callback`` the run's ``RunResult``."""
    if callback is None:
        return None
    return lambda outcome: callback(RunResult._build(outcome.run_dir, outcome.summary, outcome.history,
                                                     cfg.student.arch, labels))


def resume(run_dir: str | Path, *, data: Any = None, teacher: Any = None, track: bool = True,
           progress: bool | None = None, on_complete: Callable[[RunResult], None] | None = None) -> RunResult:
    """Continue an interrupted or killed run from its checkpoints (``python -m distill run --resume``).

    A run made from data in memory or with a teacher object needs them passed again (``data=``,
    ``teacher=``): its folder records only what they were, and without them the run is refused.
    ``on_complete`` as for ``run``.
    """
    from distill.experiment.run import execute, resumable_config

    cfg = resumable_config(run_dir)
    given = cfg.teacher.given
    dataset, labels = None, None
    if data is not None:
        memory = cfg.data.source.startswith("memory:")
        _, dataset, labels = _dataset(cfg, data)
        if not memory:
            raise ConfigError(f"resume: the run in '{run_dir}' read data.source '{cfg.data.source}'; pass no data")
        if dataset is not None and dataset.name != cfg.data.source:
            raise ConfigError(f"resume: the run in '{run_dir}' was made from {cfg.data.source}, not {dataset.name}")
    cfg, factory = _teacher(cfg, dataset, teacher) if teacher is not None else (cfg, None)
    if teacher is not None and given is None:
        raise ConfigError(f"resume: the run in '{run_dir}' used teacher.kind '{cfg.teacher.kind}'; pass no teacher")
    if factory is not None:
        cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"given": given})})
    with _library_call():
        outcome = execute(cfg, output=run_dir, progress=_progress(progress), track=track, resume=True,
                          dataset=dataset, teacher=factory, on_complete=_completed(on_complete, cfg, labels))
        return RunResult._build(outcome.run_dir, outcome.summary, outcome.history, cfg.student.arch, labels)


def tune(config: ConfigLike, *, data: Any = None, teacher: Any = None, trials: int | None = None,
         timeout: float | None = None, study: str | None = None, storage: str | None = None, jobs: int = 1,
         seed: int | None = None, track: bool | None = None, output: str | Path | None = None,
         progress: bool | None = None, compare: bool = True) -> TuneResult:
    """Search ``tune.space`` with Optuna on validation rows, then compare best and untuned on test rows.

    ``data``, ``teacher``, ``track``, ``output`` and ``progress`` as for ``run``. ``trials`` (default
    ``tune.trials``), ``timeout`` (seconds), ``study`` / ``storage`` (a journal file or an RDB URL; default
    ``tune.study`` / ``tune.storage``), ``jobs`` (parallel trials, threads) and ``seed`` (the sampler's)
    as ``python -m distill tune``'s flags. ``compare=False`` only searches (``--no-compare``: what each of
    many workers does); ``trials=0`` only compares the existing study's best (once, after the workers).
    Returns a ``TuneResult`` with the Optuna ``study``.
    """
    from distill.config import MAX_SECONDS, MAX_THREADS, MAX_TRIALS
    from distill.experiment.tune import run_tuning

    for name, value, low, limit in (("trials", trials, 0, MAX_TRIALS), ("jobs", jobs, 1, MAX_THREADS)):
        if value is not None and not low <= value <= limit:
            raise ConfigError(f"{name} (--{name}) must be between {low} and {limit}, got {value}")
    if trials == 0 and not compare:
        raise ConfigError("trials (--trials) = 0 only compares the study's best: it needs the comparison "
                          "(drop --no-compare)")
    if timeout is not None and not 0 < timeout <= MAX_SECONDS:  # also refuses nan and inf
        raise ConfigError(f"timeout (--timeout) must be > 0 and <= {MAX_SECONDS:g} seconds, got {timeout}")
    cfg, dataset, _ = _dataset(as_config(config), data)
    cfg, factory = _teacher(cfg, dataset, teacher)
    with _library_call():
        return run_tuning(cfg, trials=trials, timeout=timeout, study_name=study, storage=storage, jobs=jobs,
                          seed=seed, output=output, track=_track(cfg, track), progress=_progress(progress),
                          dataset=dataset, teacher=factory, compare=compare)


def check(config: ConfigLike, *, data: Any = None, teacher: Any = None, track: bool | None = None) -> str:
    """Validate config, data and teacher as ``run`` would, without training; returns the plan it would run.

    With tracking, the MLflow store is checked too (a dead server is an error here, not after training).
    """
    from distill.experiment.prepare import prepare_protocol
    from distill.experiment.run import describe_plan
    from distill.outputs.tracking import preflight

    cfg, dataset, _ = _dataset(as_config(config), data)
    cfg, factory = _teacher(cfg, dataset, teacher)
    with _library_call():
        first = prepare_protocol(cfg, dataset, factory)
        if _track(cfg, track):
            preflight(cfg)
    return describe_plan(first[0], cfg.sweep)


def train_teacher(config: ConfigLike, *, output: str | Path | None = None, track: bool | None = None,
                  progress: bool | None = None) -> TeacherResult:
    """Train ``teacher.arch`` (a network teacher) on all labelled rows but a held-out test split; write its
    checkpoint (``output``, a new file; default ``teacher.checkpoint``)."""
    from distill.experiment.teacher_training import train_teacher as _train

    cfg = as_config(config)
    with _library_call():
        path, summary = _train(cfg, output=output, progress=_progress(progress), track=_track(cfg, track))
    return TeacherResult(Path(path), summary)


def predict(source: Any, data: Any, *, trusted_archs: Sequence[str] = (), tracking_uri: str | None = None,
            output: str | Path | None = None, force: bool = False) -> Any:
    """Predicted class and per-class probabilities (a DataFrame: ``prediction``, ``p_<class>``) for each row.

    ``source``: a ``RunResult``, a run directory, a ``student.pt`` file, or an MLflow model URI
    (``models:/NAME/1``, ``runs:/ID/student``). ``data``: a DataFrame or a CSV path with the feature
    columns the student was trained on, or an ``[N, D]`` array in training column order.
    ``trusted_archs``: import paths of student classes you trust (a registered name needs nothing).
    ``output``: also write the predictions to this CSV, a new file unless ``force``.
    """
    from distill.outputs.prediction import check_output
    from distill.outputs.rundir import atomic_write
    from distill.students.checkpoint import load_checkpoint, resolve_checkpoint

    if output is not None:
        check_output(output, force)  # before the model or data are read: a refused output costs nothing
    with preserved():
        path = source.run_dir / "student.pt" if isinstance(source, RunResult) else resolve_checkpoint(
            str(source), tracking_uri)
        payload = load_checkpoint(path)
    result = _predictions(payload, data, "the rows given as data", trusted_archs=trusted_archs)
    if output is not None:
        out = check_output(output, force)
        atomic_write(out, lambda tmp: result.to_csv(tmp, index=False, float_format="%.6g"))
    return result
