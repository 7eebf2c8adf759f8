"""``distill run``: one experiment from validated config to a finished run directory.

Order matters for honesty: the config and log are written first, the artifacts next, and
``summary.json`` last, each atomically, so only a completed run has a summary.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch

import distill
from distill.config import Config, config_dict, to_toml
from distill.protocol import EpisodeResult, Prepared, prepare, run_episode
from distill.report import metrics_table, plot_confusion_matrix, plot_learning_curves, write_history
from distill.rundir import atomic_write, attach_log_file, create_run_dir, write_json, write_text

__all__ = ["run_experiment", "summarise", "save_student", "describe"]

log = logging.getLogger("distill")


def describe(prepared: Prepared) -> str:
    """What would run: data, split, teacher, student, objective, fit (used by ``check`` and ``run``)."""
    c, d, s = prepared.config, prepared.dataset, prepared.split
    fs = c.few_shot
    amount = f"{fs.per_class} per class" if fs.per_class is not None else f"{fs.labelled} in total"
    transfer = s.labelled.size + (s.pool.size if fs.transfer == "pool" else 0)
    teacher = (
        f"gaussian_process (kernel {c.teacher.kernel!r}, {c.teacher.restarts} restarts, {c.teacher.multi_class})"
        if c.teacher.kind == "gaussian_process"
        else f"sklearn {c.teacher.estimator} {dict(c.teacher.params)}"
    )
    kwargs = ", ".join(f"{k}={v!r}" for k, v in c.student.kwargs.items())
    return "\n".join(
        [
            f"experiment  {c.name} (seed {c.seed})",
            f"data        {d.name}: {d.x.shape[0]} rows, {d.x.shape[1]} features, {d.num_classes} classes, scale {c.data.scale}",
            f"split       test {s.test.size}, labelled {s.labelled.size} ({amount}), validation {s.validation.size}, "
            f"unlabelled pool {s.pool.size}",
            f"transfer    {fs.transfer}: the KL term sees {transfer} rows",
            f"teacher     {teacher}",
            f"student     {c.student.arch}({kwargs}) -> {prepared.num_outputs} output(s), {prepared.student_parameters} parameters",
            f"objective   {prepared.hard} + {c.objective.kl_weight} * T^2 * KL ({c.objective.direction}), T = {c.objective.temperature}",
            f"train       {c.train.optimizer} lr {c.train.lr}, {c.train.epochs} epochs, batch {c.train.batch_size}"
            f"{' with replacement' if c.train.replacement else ''}, device {prepared.device}",
        ]
    )


def save_student(path: Path, prepared: Prepared, result: EpisodeResult) -> Path:
    """``student.pt``: best weights plus what rebuilds the model and its input scaling.

    Holds only tensors, numbers, strings, lists and dicts, so ``torch.load(weights_only=True)`` reads it.
    """
    c = prepared.config
    payload: dict[str, Any] = {
        "format": "distill.student/1",
        "distill_version": distill.__version__,
        "arch": c.student.arch,
        "kwargs": c.student.kwargs,
        "in_shape": list(prepared.dataset.in_shape),
        "num_classes": prepared.dataset.num_classes,
        "num_outputs": prepared.num_outputs,
        "classes": list(prepared.dataset.classes),
        "feature_names": list(prepared.dataset.feature_names),
        "scaler": prepared.scaler.state(),
        "best_epoch": result.student_fit.best_epoch,
        "config": config_dict(c),
        "state_dict": {k: v.detach().cpu() for k, v in result.student.state_dict().items()},
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _fit_summary(fit_result: Any) -> dict[str, Any]:
    return {
        "epochs_run": fit_result.stopped_epoch,
        "best_epoch": fit_result.best_epoch,
        "monitor": fit_result.monitor,
        "best_score": fit_result.best_score,
        "stop_reason": fit_result.stop_reason,
        "seconds": fit_result.seconds,
    }


def summarise(prepared: Prepared, result: EpisodeResult, run_dir: Path, total_seconds: float) -> dict[str, Any]:
    """The ``summary.json`` document (schema in the README)."""
    c, d, s = prepared.config, prepared.dataset, prepared.split
    return {
        "status": "completed",
        "name": c.name,
        "distill_version": distill.__version__,
        "run_dir": str(run_dir),
        "seed": c.seed,
        "device": str(prepared.device),
        "data": {
            "source": d.name,
            "rows": int(d.x.shape[0]),
            "features": int(d.x.shape[1]),
            "classes": list(d.classes),
            "label_mapping": {name: i for i, name in enumerate(d.classes)},
            "split": {
                "test": int(s.test.size),
                "labelled": int(s.labelled.size),
                "validation": int(s.validation.size),
                "pool": int(s.pool.size),
                "transfer": int(s.labelled.size + (s.pool.size if c.few_shot.transfer == "pool" else 0)),
            },
        },
        "metrics": list(result.metrics["student"]),
        "teacher": result.metrics["teacher"],
        "student": result.metrics["student"],
        "baseline": result.metrics["baseline"],
        "teacher_diagnostics": result.teacher_diagnostics,
        "fits": {"student": _fit_summary(result.student_fit), "baseline": _fit_summary(result.baseline_fit)},
        "timings": {**{k: round(v, 4) for k, v in result.timings.items()}, "total_s": round(total_seconds, 4)},
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(terse=True),
        },
        "mlflow_run_id": None,
        "config": config_dict(c),
    }


def run_experiment(config: Config, *, output: str | Path | None = None, progress: bool = False) -> tuple[Path, dict[str, Any]]:
    """Validate, then train teacher, student and baseline; write the run directory; return it and the summary."""
    started = time.perf_counter()
    prepared = prepare(config)  # every config/data problem surfaces here, before anything is written
    run_dir = create_run_dir(config.name, output)
    handler = attach_log_file(run_dir / "log.txt", log)
    try:
        write_text(run_dir / "config.toml", to_toml(config_dict(config)))
        log.info("run directory %s", run_dir)
        for line in describe(prepared).splitlines():
            log.info(line)
        result = run_episode(prepared, progress=progress)
        histories = {"student": result.student_fit.history, "baseline": result.baseline_fit.history}
        write_history(run_dir / "history.csv", histories)
        save_student(run_dir / "student.pt", prepared, result)
        plot_learning_curves(run_dir / "learning_curves.png", histories)
        plot_confusion_matrix(
            run_dir / "confusion_matrix.png",
            result.test_targets,
            result.test_predictions["student"],
            prepared.dataset.classes,
            title="student on the test rows",
        )
        summary = summarise(prepared, result, run_dir, time.perf_counter() - started)
        for line in metrics_table(result.metrics).splitlines():
            log.debug(line)  # the file gets the table; the console gets it once, from the CLI
        write_json(run_dir / "summary.json", summary)
        log.info("done in %.2fs", time.perf_counter() - started)
        return run_dir, summary
    except BaseException as exc:
        log.error("run failed: %s: %s", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
