"""``distill run``: one experiment from validated config to a finished run directory.

Order matters for honesty: the config and log are written first, the artifacts next, and
``summary.json`` last, each atomically, so only a completed run has a summary.
"""

from __future__ import annotations

import logging
import math
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.config import AUTO, Config, config_dict, to_toml
from distill.data.sources import Dataset
from distill.errors import UserError
from distill.experiment.episodes import REFERENCES, EpisodeResult, run_protocol
from distill.experiment.kd_selection import selection_text, summarise_selections
from distill.experiment.prepare import Prepared, TeacherFactory, prepare_protocol
from distill.experiment.teach import soft_target_cache
from distill.experiment.teacher_cv import teacher_summary_text
from distill.experiment.weight_init import describe_init
from distill.interrupts import Interrupted, StopRequest
from distill.metrics.classification import METRICS
from distill.metrics.stats import CI_METHODS, describe, paired_difference, verdict
from distill.outputs.checkpoints import CHECKPOINT_FOLDER, Checkpoints
from distill.outputs.report import (
    SYSTEMS,
    history_frame,
    metrics_table,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_paired,
    plot_sweep,
    protocol_table,
    sweep_table,
    write_history,
)
from distill.outputs.rundir import atomic_write, attach_log_file, claim_run_dir, write_json, write_text
from distill.outputs.tracking import SYSTEM_TAG, NullTracker, SystemRun, Tracker, log_files, open_tracker, preflight
from distill.students.checkpoint import checkpoint_payload, load_checkpoint, servable_from_checkpoint
from distill.version import __version__

__all__ = ["run_experiment", "execute", "RunOutcome", "summarise", "save_student", "describe_plan", "result_text", "systems_of"]

log = logging.getLogger("distill")


def _auto_text(c: Config) -> str:
    """How "auto" chooses, for the plan: the grids and the rule (``distill.experiment.kd_selection``)."""
    o = c.objective
    if AUTO not in (o.kl_weight, o.temperature) or o.kl_weight == 0:
        return ""
    grids = ([f"kl_weight in {o.auto.kl_weights}"] if o.kl_weight == AUTO else []) + (
        [f"T in {o.auto.temperatures}"] if o.temperature == AUTO else [])
    return (f"; per episode by cross-validation on its labelled rows over {', '.join(grids)} "
            "(kl_weight 0 unless distilling raises the held-out accuracy)")


def describe_plan(prepared: Prepared, sweep: tuple[str, Any] | None = None) -> str:
    """What would run: data, split, teacher, student, objective, fit (used by ``check`` and ``run``). ``sweep``:
    the experiment's ``(key, values)`` (``prepared`` holds its first value): the key shows them all."""
    c, d, s = prepared.config, prepared.dataset, prepared.split
    sweep = sweep if sweep is not None else c.sweep
    swept_key, swept_values = sweep if sweep is not None else (None, [])

    def v(dotted: str, value: Any) -> Any:
        """A key's value, or all its values when it is the swept key."""
        return f"{list(swept_values)} (swept)" if dotted == swept_key else value
    fs = c.few_shot
    amount = f"{fs.per_class} per class" if fs.per_class is not None else f"{fs.labelled} in total"
    transfer = {
        "labelled": f"labelled: the KL term sees the {s.labelled.size} labelled rows",
        "pool": f"pool: the KL term sees {s.labelled.size + s.pool.size} rows (labelled + unlabelled pool)",
        "augmented": f"augmented: the KL term sees the {s.labelled.size} labelled rows + {fs.augment.count} generated "
        f"points (jitter {fs.augment.jitter}, mixup share {fs.augment.mixup})",
    }[fs.transfer]
    spec = prepared.teacher
    kind = "given" if spec.given else c.teacher.kind  # given: distill.run(teacher=obj)
    described = list(spec.described) or [(kind, kind)]
    teacher = (
        f"{kind} of {len(described)} candidate(s), calibration {c.teacher.calibration}"
        + "".join(f"\n              {name}: {text}" for name, text in described)
        if spec.mode != "single"
        else f"{kind}: {described[0][1]}, calibration {c.teacher.calibration}"
    )
    kwargs = ", ".join(f"{k}={v!r}" for k, v in c.student.kwargs.items())
    lines = [
        f"experiment  {c.name} (seed {c.seed})",
        f"data        {d.name}: {d.x.shape[0]} rows, {d.x.shape[1]} features, {d.num_classes} classes, scale {c.data.scale}",
        f"split       test {s.test.size}, labelled {s.labelled.size} ({amount}), validation {s.validation.size}, "
        f"unlabelled pool {s.pool.size}",
        f"transfer    {transfer}",
        f"teacher     {teacher}",
        f"student     {c.student.arch}({kwargs}) -> {prepared.num_outputs} output(s), {prepared.student_parameters} parameters"
        + ("" if c.student.init.is_torch else f", init {describe_init(c.student.init)}"),
        f"objective   {prepared.hard} + {v('objective.kl_weight', c.objective.kl_weight)} * T^2 * KL "
        f"({v('objective.direction', c.objective.direction)}), T = {v('objective.temperature', c.objective.temperature)}"
        + _auto_text(c),
        f"train       {v('train.optimizer', c.train.optimizer)} lr {v('train.lr', c.train.lr)}, "
        f"{v('train.epochs', c.train.epochs)} epochs, batch {v('train.batch_size', c.train.batch_size)}"
        f"{' with replacement' if c.train.replacement else ''}, device {prepared.device}",
        f"protocol    {c.protocol.episodes} episode(s), seeds {c.seed}..{c.seed + c.protocol.episodes - 1}",
    ]
    if c.protocol.controls or c.protocol.references:
        names = [f"null_teacher ({c.protocol.null_teacher})" if n == "null_teacher" else n for n in c.protocol.controls]
        lines.append("controls    " + (", ".join(names) or "none")
                     + (f"; references {', '.join(c.protocol.references)}" if c.protocol.references else ""))
    if sweep is not None:
        key, values = sweep
        shown = any("(swept)" in line for line in lines)
        lines.append(f"sweep       {key} over {list(values)}"
                     + ("" if shown else " (the plan above shows the first value)"))
    return "\n".join(lines)


def save_student(path: Path, prepared: Prepared, result: EpisodeResult) -> Path:
    """``student.pt``: the episode's best student weights plus what rebuilds the model and its input scaling
    (``distill.students.checkpoint.checkpoint_payload``)."""
    spec = prepared.student
    payload = checkpoint_payload(
        result.student, arch=spec.arch, kwargs=spec.kwargs, dataset=prepared.dataset, num_outputs=spec.num_outputs,
        scaler=prepared.scaler, best_epoch=result.student_fit.best_epoch, episode=result.episode, seed=result.seed,
        config=config_dict(prepared.config),
    )
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _fit_summary(fit_result: Any) -> dict[str, Any]:
    return {
        "status": fit_result.status,
        "diverged_at": {"epoch": fit_result.diverged_at[0], "step": fit_result.diverged_at[1]}
        if fit_result.diverged_at else None,
        "epochs_run": fit_result.stopped_epoch,
        "best_epoch": fit_result.best_epoch,
        "monitor": fit_result.monitor,
        "best_score": fit_result.best_score,
        "stop_reason": fit_result.stop_reason,
        "seconds": fit_result.seconds,
    }


def systems_of(config: Config) -> list[str]:
    """Every system a run reports: teacher, student, baseline, then ``protocol.controls`` and
    ``protocol.references`` in the order the config gives them."""
    return [*SYSTEMS, *config.protocol.controls, *config.protocol.references]


def _fits(result: EpisodeResult) -> dict[str, Any]:
    """Every trained system's fit: student, baseline and the controls."""
    return {"student": result.student_fit, "baseline": result.baseline_fit, **result.control_fits}


def _episode_row(result: EpisodeResult, sweep_key: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {"episode": result.episode, "seed": result.seed}
    if sweep_key is not None:
        row["value"] = result.value
    row.update(result.metrics)
    row["teacher_diagnostics"] = result.teacher_diagnostics
    if result.kd_selection is not None:
        row["kd_selection"] = result.kd_selection
    row["fits"] = {system: _fit_summary(fit) for system, fit in _fits(result).items()}
    row["split"] = result.split_sizes
    row["timings"] = {k: round(v, 4) for k, v in result.timings.items()}
    return row


def _aggregate(rows: list[dict[str, Any]], config: Config) -> dict[str, Any]:
    """aggregate / paired / verdict and the mean metrics per system, over the given episode rows."""
    method = config.protocol.ci
    systems = systems_of(config)
    aggregate = {s: {m: describe([r[s][m] for r in rows], method) for m in METRICS} for s in systems}
    paired = {
        f"student_minus_{other}": {
            m: paired_difference([r["student"][m] for r in rows], [r[other][m] for r in rows], method) for m in METRICS
        }
        for other in ("baseline", "teacher", *systems[len(SYSTEMS):])
    }
    metric = config.protocol.metric
    null = paired.get("student_minus_null_teacher")
    sentence = verdict(paired["student_minus_baseline"][metric], metric, len(rows), higher_is_better=metric != "ece",
                       null=null[metric] if null is not None else None)
    means = {s: {m: aggregate[s][m]["mean"] for m in METRICS} for s in systems}
    return {**means, "aggregate": aggregate, "paired": paired, "verdict": sentence}


def one_class_systems(results: list[EpisodeResult]) -> dict[str, list[int]]:
    """The trained systems that predicted one class for every test row, with the episodes where they did."""
    found: dict[str, set[int]] = {}
    for r in results:
        for system, probs in r.test_predictions.items():
            if system in ("teacher", *REFERENCES) or probs.shape[0] < 2:
                continue
            if np.unique(probs.argmax(axis=1)).size == 1:
                found.setdefault(system, set()).add(r.episode)
    return {system: sorted(episodes) for system, episodes in found.items()}


def one_class_warning(summary: dict[str, Any]) -> str | None:
    """One line when the student or the baseline predicted one class for every test row (None otherwise)."""
    flagged = {s: e for s, e in (summary.get("one_class") or {}).items() if s in ("student", "baseline")}
    if not flagged:
        return None
    episodes = summary["protocol"]["episodes"]
    said = ", ".join(f"the {s} in {len(e)} of {episodes} episode(s)" for s, e in flagged.items())
    whose = "its" if len(flagged) == 1 else "their"
    return (f"warning: {said} predicted one class for every test row: {whose} accuracy is that class's share of the "
            "test rows, not learning")


def summarise(
    config: Config, first: list[Prepared], results: list[EpisodeResult], run_dir: Path, total_seconds: float
) -> dict[str, Any]:
    """The ``summary.json`` document (schema: docs/outputs.md, generated from distill/outputs/summary_schema.py)."""
    d = first[0].dataset
    sweep_key = config.sweep[0] if config.sweep is not None else None
    rows = [_episode_row(r, sweep_key) for r in results]
    summary: dict[str, Any] = {
        "status": "completed",
        "name": config.name,
        "distill_version": __version__,
        "run_dir": str(run_dir),
        "seed": config.seed,
        "device": str(first[0].device),
        "data": {
            "source": d.name,
            "rows": int(d.x.shape[0]),
            "features": int(d.x.shape[1]),
            "classes": list(d.classes),
            "label_mapping": {name: i for i, name in enumerate(d.classes)},
            "split": rows[0]["split"],
        },
        "metrics": list(METRICS),
        "protocol": {
            "episodes": config.protocol.episodes,
            "episode_seeds": f"seed + episode: {config.seed}..{config.seed + config.protocol.episodes - 1}",
            "ci_method": CI_METHODS[config.protocol.ci],
            "p_value": "two-sided Wilcoxon signed-rank test on the per-episode differences",
            "verdict_metric": config.protocol.metric,
        },
    }
    if sweep_key is None:
        summary.update(_aggregate(rows, config))
    else:
        values = list(config.sweep[1])  # type: ignore[index]
        points = []
        for value in values:
            point_rows = [r for r in rows if r["value"] == value]
            points.append({"value": value, **_aggregate(point_rows, config)})
        summary["sweep"] = {"key": sweep_key, "values": values, "points": points}
    summary["episodes"] = rows
    chosen = summarise_selections([r.kd_selection for r in results])
    if chosen is not None:
        summary["kd_selection"] = chosen
    one_class = one_class_systems(results)
    if one_class:
        summary["one_class"] = one_class
    diverged = [
        {"episode": r["episode"], "system": system, **(r["fits"][system]["diverged_at"] or {})}
        for r in rows for system in r["fits"] if r["fits"][system]["status"] == "diverged"
    ]
    if diverged:
        summary["status"] = "diverged"  # finished, but some fit's loss became non-finite: see "diverged"
        summary["diverged"] = diverged
    summary["timings"] = {
        "total_s": round(total_seconds, 4),
        "per_episode_mean_s": round(sum(sum(v for k, v in r["timings"].items() if k != "load_data_s") for r in rows) / len(rows), 4),
    }
    summary["environment"] = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(terse=True)}
    summary["mlflow_run_id"] = None
    summary["config"] = config_dict(config)
    return summary


def result_text(summary: dict[str, Any]) -> str:
    """What the console shows at the end of a run: the table and, with episodes, the verdict."""
    episodes = summary["protocol"]["episodes"]
    if "sweep" in summary:
        sweep = summary["sweep"]
        metric = summary["protocol"]["verdict_metric"]
        shown = [metric] + (["auroc"] if metric != "auroc" else [])  # the verdict's metric, and ranking
        lines = [line for m in shown for line in (sweep_table(sweep["key"], sweep["points"], m), "")]
        lines += [f"{sweep['key']} = {p['value']}: {p['verdict']}" for p in sweep["points"]]
        warning = one_class_warning(summary)
        return "\n".join(lines + ([warning] if warning else []))
    chosen = f"\n{selection_text(summary['kd_selection'])}." if "kd_selection" in summary else ""
    warning = one_class_warning(summary)
    warned = f"\n{warning}" if warning else ""
    if episodes == 1:
        return metrics_table({s: summary[s] for s in summary["aggregate"]}) + "\n\n" + summary["verdict"] + chosen + warned
    return protocol_table(summary["aggregate"], summary["paired"], episodes) + "\n\n" + summary["verdict"] + chosen + warned


def _test_metrics(result: EpisodeResult) -> dict[str, float | None]:
    return {f"{system}/test_{metric}": value for system in result.metrics
            for metric, value in result.metrics[system].items()}


def _teacher_cv_metrics(result: EpisodeResult) -> dict[str, float | None]:
    """The teacher's cross-validated figures on the labelled rows (``distill.experiment.teacher_cv``), before and after
    calibration, and its temperature (a single teacher's; an ensemble logs one per candidate)."""
    calibration = result.teacher_diagnostics.get("calibration")
    if not isinstance(calibration, dict):
        return {}
    out: dict[str, float | None] = {}
    for stage in ("before", "after"):
        for metric, value in (calibration.get(stage) or {}).items():
            out[f"teacher/cv_{metric}_{stage}"] = value
    temperature = calibration.get("temperature")
    if isinstance(temperature, (int, float)):
        out["teacher/temperature"] = float(temperature)
    for row in (result.teacher_diagnostics.get("selection") or {}).get("candidates", []):
        name = re.sub(r"[^\w\-. ]", "_", str(row["name"]))  # MLflow's metric-name characters
        out[f"teacher/{name}/cv_log_loss"] = row["cv_log_loss"]
        out[f"teacher/{name}/temperature"] = row["temperature"]
    return out


def _curve_keys(history: list[dict[str, float]], metric: str) -> list[str]:
    """The per-epoch numbers a system run charts: the losses (the hard loss and the KL term apart), every
    validation number, and ``protocol.metric`` on the training rows. The rest is in ``history.csv``."""
    keys = list(history[0]) if history else []
    return [k for k in keys if k.endswith(("_loss", "_kl_term")) or k.startswith("val_") or k == f"train_{metric}"]


def system_runs(results: list[EpisodeResult], sweep_key: str | None, metric: str) -> list[SystemRun]:
    """One ``SystemRun`` per system (and sweep value), metric names alike in each: ``test_<metric>`` of every
    episode (step = episode), the first episode's per-epoch curves (step = epoch), the teacher's
    cross-validated calibration and ``objective = "auto"``'s choice per episode."""
    runs: dict[tuple[Any, str], SystemRun] = {}
    curved: set[tuple[Any, str]] = set()

    def run_of(result: EpisodeResult, system: str) -> SystemRun:
        key = (result.value, system)
        if key not in runs:
            tags = {SYSTEM_TAG: system}
            name = system
            if sweep_key is not None:
                tags["distill.sweep_value"] = str(result.value)
                name = f"{system} · {sweep_key}={result.value}"
            runs[key] = SystemRun(name, tags)
        return runs[key]

    for result in sorted(results, key=lambda r: r.episode):
        step = result.episode
        for system, values in result.metrics.items():
            run_of(result, system).points.extend((f"test_{m}", v, step) for m, v in values.items() if v is not None)
        for system, fit in _fits(result).items():
            if (result.value, system) in curved:
                continue
            curved.add((result.value, system))
            run = run_of(result, system)
            for row in fit.history:
                run.points.extend((k, row[k], int(row["epoch"])) for k in _curve_keys(fit.history, metric)
                                  if row.get(k) is not None)
        teacher = run_of(result, "teacher")
        for name, value in _teacher_cv_metrics(result).items():
            if value is not None:
                teacher.points.append((name.removeprefix("teacher/"), value, step))
        if result.kd_selection is not None:
            student = run_of(result, "student")
            student.points.extend([("kl_weight", result.kd_selection["kl_weight"], step),
                                   ("temperature", result.kd_selection["temperature"], step)])
    order = {name: i for i, name in enumerate(("student", "baseline"))}
    return sorted(runs.values(), key=lambda r: (str(r.tags.get("distill.sweep_value", "")),
                                                order.get(r.tags[SYSTEM_TAG], 2), r.tags[SYSTEM_TAG]))


#: the longest run name MLflow's SQL stores keep (``runs.name`` is a 250-character column; SQLite alone ignores it)
RUN_NAME_CHARS = 250


def run_name(config: Config) -> str:
    """The MLflow run's name: the experiment's, then what varies (``breast_cancer_gp · 10 episodes``); a sweep
    too long to list is given as its first and last value and their count, and the name is never longer than
    ``RUN_NAME_CHARS``."""
    episodes = config.protocol.episodes
    tail = f"{episodes} episode{'s' if episodes != 1 else ''}"
    parts = [config.name]
    if config.sweep is not None:
        key, values = config.sweep
        listed = f"{key}=" + ",".join(str(v) for v in values)
        if len(listed) > 60:
            listed = f"{key}={values[0]}…{values[-1]} ({len(values)} values)"
        parts.append(listed)
    name = " · ".join([*parts, tail])
    return name if len(name) <= RUN_NAME_CHARS else name[: RUN_NAME_CHARS - 1] + "…"


def _aggregate_metrics(block: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for system in block["aggregate"]:
        for metric, stat in block["aggregate"][system].items():
            out[f"{system}/test_{metric}"] = stat["mean"]
            if stat["ci95"] is not None:
                out[f"{system}/test_{metric}_ci95_low"], out[f"{system}/test_{metric}_ci95_high"] = stat["ci95"]
    for name, per_metric in block["paired"].items():
        for metric, stat in per_metric.items():
            out[f"{name}/{metric}"] = stat["mean"]
            out[f"{name}/{metric}_p_value"] = stat["p_value"]
            if stat["ci95"] is not None:
                out[f"{name}/{metric}_ci95_low"], out[f"{name}/{metric}_ci95_high"] = stat["ci95"]
    return out


def _dataset_frame(prepared: Prepared) -> Any:
    import pandas as pd

    d = prepared.dataset
    names = d.feature_names or [f"x{i}" for i in range(d.x.shape[1])]
    frame = pd.DataFrame(d.x.reshape(d.x.shape[0], -1), columns=names)
    frame["label"] = [d.classes[i] for i in d.y]
    return frame


def _input_example(prepared: Prepared) -> Any:
    import pandas as pd

    d = prepared.dataset
    names = d.feature_names or [f"x{i}" for i in range(d.x.shape[1])]
    return pd.DataFrame(d.x[prepared.split.test[:5]].reshape(5 if prepared.split.test.size >= 5 else -1, -1), columns=names)


def resumable_config(run_dir: str | Path) -> Config:
    """The resolved config of an interrupted run directory, checked to be resumable."""
    from distill.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise UserError(f"--resume: '{run_dir}' is not a run directory (no config.toml)")
    summary = run_dir / "summary.json"
    if summary.is_file():
        import json

        try:
            status = json.loads(summary.read_text()).get("status")
        except (OSError, ValueError):
            status = None
        if status in ("completed", "diverged"):
            raise UserError(f"--resume: the run in '{run_dir}' already finished (summary.json status '{status}')")
    return load_config(run_dir / "config.toml")


@dataclass
class RunOutcome:
    """What ``execute`` leaves in memory besides the run directory."""

    run_dir: Path
    summary: dict[str, Any]
    #: ``history.csv`` at full precision
    history: Any


def run_experiment(
    config: Config, *, output: str | Path | None = None, progress: bool = False, track: bool = True,
    resume: bool = False, dataset: Dataset | None = None, teacher: TeacherFactory | None = None,
) -> tuple[Path, dict[str, Any]]:
    """``execute``, returning the run directory and the summary."""
    outcome = execute(config, output=output, progress=progress, track=track, resume=resume, dataset=dataset,
                      teacher=teacher)
    return outcome.run_dir, outcome.summary


def execute(
    config: Config, *, output: str | Path | None = None, progress: bool = False, track: bool = True,
    resume: bool = False, dataset: Dataset | None = None, teacher: TeacherFactory | None = None,
    on_complete: Callable[[RunOutcome], None] | None = None,
) -> RunOutcome:
    """Validate, then run every episode (and sweep value); write the run directory and record it to MLflow.

    ``dataset`` replaces ``data.source`` (data from memory); ``teacher`` replaces ``teacher.kind`` (a
    teacher given in Python). With tracking, the MLflow run ends FINISHED,
    FAILED (an exception) or KILLED (a signal), never RUNNING. SIGINT / SIGTERM stop after the
    current training step: the fit's state goes to ``checkpoints/``, ``summary.json`` says
    ``"status": "interrupted"``, and ``Interrupted`` is raised. ``resume=True`` (``output`` the run
    directory) continues such a run, or one killed outright, from its checkpoints. ``on_complete`` is
    called once ``summary.json`` is written, before the plots are drawn (the CLI prints the result there).
    """
    started = time.perf_counter()
    first = prepare_protocol(config, dataset, teacher)  # every config and data problem surfaces here, before anything is written
    tracking = track and config.tracking.enabled
    uri = preflight(config) if tracking else None  # a dead tracking server is exit 2 before anything is written
    claim = claim_run_dir(config.name, output, resume=resume,
                          hint=f", or continue an interrupted run with --resume {output}" if output is not None else "")
    run_dir = claim.path
    config_text = to_toml(config_dict(config))
    checkpoints = Checkpoints(run_dir / CHECKPOINT_FOLDER, every=config.train.checkpoint_every,
                              interval=float(config.train.checkpoint_interval), config=config_text)
    meta = checkpoints.verify_resume() if resume else {}  # every record must belong to this config
    handler = attach_log_file(run_dir / "log.txt", log)
    tracker: Tracker = NullTracker()
    stop = StopRequest()
    discard = False  # a run refused before it trained anything leaves no run directory
    tracker_box = [tracker]  # the tracker _run_in opens, for the handlers below
    with stop.installed():
        try:
            return _run_in(config, first, run_dir, checkpoints, meta, stop, tracking, uri, resume,
                           progress, started, tracker_box, on_complete)
        except Interrupted as exc:
            tracker = tracker_box[0]
            log.error("run interrupted by %s %s; resume with: python -m distill run --resume %s",
                      exc.signal_name, exc.where, run_dir)
            write_json(run_dir / "summary.json", {
                "status": "interrupted",
                "signal": exc.signal_name,
                "stopped": exc.where,
                "name": config.name,
                "run_dir": str(run_dir),
                "resume": f"python -m distill run --resume {run_dir}",
                "mlflow_run_id": meta.get("mlflow_run_id"),
                "seconds": round(time.perf_counter() - started, 3),
            })
            tracker.finish("KILLED")
            exc.run_dir = run_dir  # type: ignore[attr-defined]
            exc.resume = f"python -m distill run --resume {run_dir}"  # type: ignore[attr-defined]
            raise
        except KeyboardInterrupt:
            log.error("run interrupted")
            tracker_box[0].finish("KILLED")
            raise
        except OSError as exc:  # a full disk, a folder gone: one line, and no summary that looks finished
            where = f" ({exc.filename})" if exc.filename else ""
            _to_file(handler, f"run failed: cannot write{where}: {exc.strerror or exc}")  # the CLI prints the error
            tracker_box[0].finish("FAILED")
            discard = not resume and not checkpoints.has_fits()
            raise UserError(f"cannot write the run directory {run_dir}{where}: {exc.strerror or exc}") from None
        except UserError as exc:
            _to_file(handler, f"run failed: {'; '.join(exc.problems)}")  # the CLI prints the error line
            tracker_box[0].finish("FAILED")
            discard = not resume and not checkpoints.has_fits()
            raise
        except BaseException as exc:
            log.error("run failed: %s: %s", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            tracker_box[0].finish("FAILED")
            raise
        finally:
            log.removeHandler(handler)
            handler.close()
            if discard:
                claim.discard()


def _to_file(handler: logging.Handler, message: str) -> None:
    """An error record for ``log.txt`` alone: the console gets the problem once, as the CLI's ``error:`` line."""
    handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, message, (), None))


def _run_in(config: Config, first: list[Prepared], run_dir: Path, checkpoints: Checkpoints, meta: dict[str, Any],
            stop: StopRequest, tracking: bool, uri: str | None, resume: bool, progress: bool,
            started: float, tracker_box: list[Tracker],
            on_complete: Callable[[RunOutcome], None] | None = None) -> RunOutcome:
    """The body of ``run_experiment`` once the run directory is claimed (signals routed to ``stop``).

    After training, ``stop.check`` runs between the artifacts: a signal that came in while one was
    being written lets that file finish (each is written atomically), then ends the run
    "interrupted" with its fit records kept, so ``--resume`` loads every fit and writes them again.
    Once ``summary.json`` says completed, the run is done: ``on_complete`` gets it, then the plots are
    drawn (unless ``outputs.plots`` is false) and logged, and the MLflow run ends; a signal from then on
    changes nothing.
    """
    write_text(run_dir / "config.toml", checkpoints.config)
    log.info("%s %s", "resuming run directory" if resume else "run directory", run_dir)
    tracker = tracker_box[0]
    if uri is not None:
        tracker = tracker_box[0] = open_tracker(config, uri, run_name(config), run_dir.name, str(first[0].device),
                                                run_id=meta.get("mlflow_run_id"))
        meta["mlflow_run_id"] = getattr(tracker, "run_id", None)
    checkpoints.write_meta(meta)
    for line in describe_plan(first[0], config.sweep).splitlines():
        log.info(line)
    sweep_key = config.sweep[0] if config.sweep is not None else None
    soft_cache = soft_target_cache(config)
    first, results = run_protocol(config, first, progress=progress, soft_cache=soft_cache, checkpoints=checkpoints,
                                  stop=stop)

    def written(name: str) -> None:
        stop.check(f"after training, while writing the results ({name} written)")

    stop.check("after training, before writing the results")
    if soft_cache.folder is not None:
        log.info("soft-target cache %s: %d hit(s), %d miss(es)", soft_cache.folder, soft_cache.hits, soft_cache.misses)
    runs = []
    for r in results:
        for system, fit_result in _fits(r).items():
            labels: dict[str, Any] = {"episode": r.episode, "seed": r.seed, "system": system}
            if sweep_key is not None:
                labels["value"] = r.value
            runs.append((labels, fit_result.history))
    history = history_frame(runs)
    write_history(run_dir / "history.csv", history)
    written("history.csv")
    head = results[0]  # episode 0 (first sweep value): the run repeated by --episodes 1
    save_student(run_dir / "student.pt", first[0], head)
    written("student.pt")
    summary = summarise(config, first, results, run_dir, time.perf_counter() - started)
    summary["soft_target_cache"] = soft_cache.stats()
    tracker.log_systems(system_runs(results, sweep_key, config.protocol.metric))
    written("the system runs to MLflow")
    if tracking:  # first: the aggregate metrics below then name the dataset, and MLflow links them to the model
        tracker.log_dataset(_dataset_frame(first[0]), config.data.source, first[0].dataset.name)
        written("the dataset to MLflow")
        model = servable_from_checkpoint(load_checkpoint(run_dir / "student.pt"), trusted=(config.student.arch,))
        summary["mlflow_run_id"] = tracker.run_id
        summary["mlflow_ui_url"] = tracker.ui_url()
        summary["mlflow_model_uri"] = tracker.log_student(
            model, _input_example(first[0]), run_dir / "student.pt", first[0].dataset.classes
        )
        written("the MLflow model")
    if sweep_key is not None:
        for i, point in enumerate(summary["sweep"]["points"]):
            tracker.log_metrics(_aggregate_metrics(point), step=i)
    else:
        tracker.log_metrics(_aggregate_metrics(summary))
    if "kd_selection" in summary:
        chosen = summary["kd_selection"]
        shares = {"kd_selection/fallback_share": chosen["fallback"] / chosen["episodes"],
                  "kd_selection/kl_weight_mean": chosen["kl_weight_mean"]}
        if chosen["kl_weight_chosen"]:  # of the episodes that chose the KL weight (not a fixed or swept one)
            shares["kd_selection/kl_weight_zero_share"] = chosen["kl_weight_zero"] / chosen["kl_weight_chosen"]
        tracker.log_metrics(shares)
        log.info(selection_text(chosen))
    teacher_line = teacher_summary_text([r.teacher_diagnostics for r in results])
    if teacher_line is not None:
        log.info(teacher_line)
    written("the aggregate metrics to MLflow")
    for line in result_text(summary).splitlines():
        log.debug(line)  # the file gets the table; the console gets it once, from the CLI
    if tracking:
        log_files(tracker, sorted(p for p in run_dir.iterdir() if p.suffix in (".toml", ".csv", ".pt")))
        written("the MLflow artifacts")
    write_json(run_dir / "summary.json", summary)  # the run is complete from here on
    log.debug("summary.json written after %.2fs; the plots follow", time.perf_counter() - started)
    checkpoints.remove()
    outcome = RunOutcome(run_dir, summary, history)
    if on_complete is not None:
        on_complete(outcome)
    plots = draw_plots(config, run_dir, first[0], results, summary, sweep_key) if config.outputs.plots else []
    log.info("done in %.2fs", time.perf_counter() - started)
    if stop():
        log.warning("%s came after the run completed; nothing is lost", stop.signal_name)
    log_files(tracker, [*plots, run_dir / "summary.json", run_dir / "log.txt"])
    tracker.finish("FINISHED")
    return outcome


def plotted_episode(results: list[EpisodeResult], summary: dict[str, Any], sweep_key: str | None,
                    metric: str) -> tuple[EpisodeResult, str]:
    """The episode whose curves and confusion matrices are drawn, and its label: episode 0, of the sweep value
    whose student has the best mean ``metric`` in a sweep (not silently the first value)."""
    if sweep_key is None:
        return results[0], "episode 0"
    points = summary["sweep"]["points"]

    def score(i: int) -> float:
        mean = points[i]["aggregate"]["student"][metric]["mean"]
        return -math.inf if mean is None else (-mean if metric == "ece" else mean)  # less ECE is better

    best = points[max(range(len(points)), key=lambda i: (score(i), -i))]["value"]  # ties: the first value
    head = min((r for r in results if r.value == best), key=lambda r: r.episode)
    return head, f"episode {head.episode}, {sweep_key}={best} (the best student {metric})"


def draw_plots(config: Config, run_dir: Path, prepared: Prepared, results: list[EpisodeResult],
               summary: dict[str, Any], sweep_key: str | None) -> list[Path]:
    """The run's PNGs, drawn after ``summary.json`` (so they never delay a result): learning curves and
    student-vs-baseline confusion matrices of one episode (``plotted_episode``), and the sweep or the paired
    episodes plot."""
    metric = config.protocol.metric
    head, label = plotted_episode(results, summary, sweep_key, metric)
    paths = [
        plot_learning_curves(run_dir / "learning_curves.png",
                             {system: fit.history for system, fit in _fits(head).items()}, metric,
                             title=f"{config.name}: {label}"),
        plot_confusion_matrix(run_dir / "confusion_matrix.png", head.test_targets,
                              {s: head.test_predictions[s] for s in ("student", "baseline") if s in head.test_predictions},
                              prepared.dataset.classes, title=f"{config.name}: test rows, {label}"),
    ]
    if sweep_key is not None:
        paths.append(plot_sweep(run_dir / f"sweep_{sweep_key.replace('.', '_')}.png", sweep_key,
                                summary["sweep"]["points"]))
    elif config.protocol.episodes > 1:
        paths.append(plot_paired(run_dir / "episodes.png", summary["episodes"], config.protocol.metric))
    return paths
