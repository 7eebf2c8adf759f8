"""Students: build them, group compatible ones into one stacked fit, choose ``auto`` KD knobs, train.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.config import AUTO, config_dict
from distill.engine.loop import (
    FitInterrupted,
    FitResult,
    FitSettings,
    TrainingRows,
    fit,
    fit_many,
    predict_logits,
    stack_problem_for,
)
from distill.experiment.prepare import Prepared, _build_student, build_criterion, fit_settings
from distill.experiment.teach import TeacherOutputs
from distill.interrupts import Interrupted, StopRequest
from distill.outputs.checkpoints import Checkpoints
from distill.seeding import (
    seed_everything,
    threads_for_stacked_work,
)

__all__ = ["train_student", "train_students", "build_student", "StudentJob"]

log = logging.getLogger("distill")


def build_student(prepared: Prepared) -> nn.Module:
    """The student from the experiment seed: the same initial weights every time (student and baseline)."""
    seed_everything(prepared.config.seed)
    return _build_student(prepared.config, prepared.dataset, prepared.num_outputs).to(prepared.device)


def _student_settings(prepared: Prepared, kl_weight: float | None, epoch_metrics: bool,
                      temperature: float | None = None) -> FitSettings:
    config = prepared.config
    return dataclasses.replace(
        fit_settings(config, kl_weight=kl_weight, temperature=temperature),
        epoch_metrics=epoch_metrics,
        criterion=build_criterion(
            config, prepared.hard, prepared.dataset.num_classes, prepared.dataset.y[prepared.split.labelled],
            prepared.device,
        ),
    )


def _report_fit(prepared: Prepared, system: str, result: FitResult) -> None:
    seed = prepared.config.seed
    for message in result.messages:
        log.log(logging.WARNING if result.status == "diverged" else logging.DEBUG, "%s (seed %d): %s",
                system, seed, message)
    log.debug(
        "%s: %d epochs in %.2fs (%s)%s", system, result.stopped_epoch, result.seconds, result.stop_reason,
        f", best {result.monitor} = {result.best_score:.4f} at epoch {result.best_epoch}" if result.best_epoch else "",
    )


def train_student(
    prepared: Prepared,
    taught: TeacherOutputs,
    *,
    kl_weight: float | None,
    system: str,
    progress: bool = False,
    epoch_metrics: bool = True,
) -> tuple[nn.Module, FitResult]:
    """Build the student from the experiment seed (same initial weights every time) and fit it; a KL
    weight or temperature that is "auto" is chosen first (``_choose_auto``)."""
    job = StudentJob(prepared, taught, kl_weight=kl_weight, system=system)
    _choose_auto([job], batched=True, checkpoints=None, stop=None, key="")
    model = build_student(prepared)
    seed_everything(prepared.config.seed + 1)  # the same dropout stream for student and baseline
    result = fit(
        model,
        taught.train,
        _student_settings(prepared, job.kl_weight, epoch_metrics, job.temperature),
        num_classes=prepared.dataset.num_classes,
        validation=taught.validation,
        progress=progress,
        description=system,
    )
    _report_fit(prepared, system, result)
    return model, result


@dataclass
class StudentJob:
    """One student fit of the protocol, filled in by ``train_students``."""

    prepared: Prepared
    taught: TeacherOutputs
    kl_weight: float | None
    system: str
    model: nn.Module | None = None
    result: FitResult | None = None
    #: the rows this job trains on when they are not the teacher's (a control's)
    train: TrainingRows | None = None
    #: the temperature when it is not the config's (a cross-validation member's, or one "auto" chose)
    temperature: float | None = None
    #: what ``objective.* = "auto"`` chose for this job (``distill.experiment.kd_selection.Selection.as_dict``)
    selection: dict[str, Any] | None = None

    def knobs(self) -> tuple[float | str, float | str]:
        """The job's KL weight and temperature: its own, else the config's (either may be "auto")."""
        o = self.prepared.config.objective
        return (o.kl_weight if self.kl_weight is None else self.kl_weight,
                o.temperature if self.temperature is None else self.temperature)

    @property
    def rows(self) -> TrainingRows:
        """What this job trains on: its own rows, or the teacher's soft targets on the transfer rows."""
        return self.train if self.train is not None else self.taught.train


def train_students(jobs: list[StudentJob], *, batched: bool = True, progress: bool = False,
                   epoch_metrics: bool = True, checkpoints: Checkpoints | None = None,
                   stop: StopRequest | None = None, key: str = "") -> None:
    """Fit every job's student: as stacked models where the fits agree in everything but the KL
    weight, temperature and seed (``distill.engine.loop.stack_problem_for``), one at a time otherwise.

    Jobs whose KL weight or temperature is "auto" get them first from ``_choose_auto``: one stacked fit
    of every fold x grid point of every episode among the jobs (``distill.experiment.kd_selection``).
    Each member gets exactly the initial weights, batches and result of its own ``train_student``.
    With ``checkpoints`` every fit (``<key>g<group>``) saves its state as it goes and a fit finished
    before is loaded instead of trained; ``stop`` turns a signal into ``Interrupted`` after a step.
    """
    _choose_auto(jobs, batched=batched, checkpoints=checkpoints, stop=stop, key=key)
    settings = [_student_settings(j.prepared, j.kl_weight, epoch_metrics, j.temperature) for j in jobs]
    models = [build_student(j.prepared) for j in jobs]
    groups: list[list[int]] = []
    problems: set[str] = set()
    for i, job in enumerate(jobs):
        for group in groups if batched else []:
            first = group[0]
            if jobs[first].prepared.dataset.num_classes != job.prepared.dataset.num_classes:
                continue
            problem = stack_problem_for([models[first], models[i]], [jobs[first].rows, job.rows],
                                        [settings[first], settings[i]],
                                        [jobs[first].taught.validation, job.taught.validation])
            if problem is None:
                group.append(i)
                break
            problems.add(problem)
        else:
            groups.append([i])
    if batched and len(jobs) > 1 and len(groups) == len(jobs) and problems:
        log.info("students trained one at a time: %s", "; ".join(sorted(problems)))
    for g, group in enumerate(groups):
        members = [jobs[i] for i in group]
        try:
            results = _fit_group(members, [models[i] for i in group], [settings[i] for i in group],
                                 f"{key}g{g}", checkpoints, stop, progress)
        except ValueError as exc:  # e.g. a user's student that vmap cannot run: train them one at a time
            if len(group) == 1:
                raise
            log.info("students trained one at a time: %s", exc)
            results = [_fit_group([job], [models[i]], [settings[i]], f"{key}g{g}-{n}", checkpoints, stop, progress)[0]
                       for n, (i, job) in enumerate(zip(group, members, strict=True))]
        if len(group) > 1:
            log.debug("trained %d students as one stacked model", len(group))
        for i, job, result in zip(group, members, results, strict=True):
            job.model, job.result = models[i], result
            _report_fit(job.prepared, job.system, result)


def _fit_group(jobs: list[StudentJob], models: list[nn.Module], settings: list[FitSettings], key: str,
               checkpoints: Checkpoints | None, stop: StopRequest | None, progress: bool) -> list[FitResult]:
    """One fit of one or more students (stacked), resumed from or recorded in ``checkpoints``."""
    identity = _fit_identity(key, jobs)  # recorded with the fit's checkpoints, checked on resume
    if checkpoints is not None:
        done = checkpoints.finished(key, models, identity)
        if done is not None:
            return done
    first = jobs[0].prepared
    if len(jobs) == 1:
        seed_everything(first.config.seed + 1)  # the same dropout stream for student and baseline
    work = len(jobs) * int(jobs[0].rows.x.numel())
    try:
        with threads_for_stacked_work(first.device, first.config.train.threads, work):
            results = fit_many(
                models, [j.rows for j in jobs], settings, num_classes=first.dataset.num_classes,
                validations=[j.taught.validation for j in jobs], progress=progress,
                description=jobs[0].system if len(jobs) == 1 else f"{len(jobs)} students",
                checkpoint=checkpoints.saver(key, identity) if checkpoints is not None else None,
                checkpoint_due=checkpoints.due if checkpoints is not None else None,
                resume=checkpoints.in_progress(key, identity) if checkpoints is not None else None,
                stop_requested=stop,
            )
    except FitInterrupted as exc:
        raise Interrupted(stop.signal_name if stop is not None and stop.signal_name else "SIGINT",
                          f"at epoch {exc.epoch}, step {exc.step} of fit {key}") from None
    if checkpoints is not None:
        checkpoints.finish(key, models, results, identity)
    return results


def _fit_identity(key: str, jobs: list[StudentJob]) -> dict[str, Any]:
    """Which fit a checkpoint belongs to: its key and, per member, system, episode seed, KL weight, config."""
    members = []
    for job in jobs:
        text = json.dumps(config_dict(job.prepared.config), sort_keys=True, default=str)
        members.append({"system": job.system, "seed": int(job.prepared.config.seed),
                        "kl_weight": None if job.kl_weight is None else float(job.kl_weight),
                        "temperature": None if job.temperature is None else float(job.temperature),
                        "config": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]})
    return {"key": key, "members": members}


def _selection_key(job: StudentJob) -> tuple[int, str]:
    """Jobs that share an episode's teacher outputs, config (but for the knobs) and fixed knob share a choice."""
    kl, temperature = job.knobs()
    c = job.prepared.config.model_dump(mode="json")
    c["objective"].pop("kl_weight")
    c["objective"].pop("temperature")
    return id(job.taught), json.dumps([c, kl, temperature], sort_keys=True)


def _needs_choice(job: StudentJob) -> bool:
    kl, temperature = job.knobs()
    return kl != 0 and AUTO in (kl, temperature)


def _choose_auto(jobs: list[StudentJob], *, batched: bool, checkpoints: Checkpoints | None,
                 stop: StopRequest | None, key: str) -> None:
    """Fill in the KL weight and temperature of every job whose config says "auto"
    (``distill.experiment.kd_selection``): every fold x candidate of every episode is one member of one stacked fit."""
    from distill.experiment.kd_selection import (
        Selection,
        candidate_grid,
        choose,
        fallback,
        fold_training_rows,
        heldout_scores,
    )

    groups: dict[tuple[int, str], list[StudentJob]] = {}
    for job in jobs:
        if _needs_choice(job):
            groups.setdefault(_selection_key(job), []).append(job)
    if not groups:
        return
    plans = []  # (group, grid, members per (fold, candidate))
    members: list[StudentJob] = []
    for group in groups.values():
        first = group[0]
        kl, temperature = first.knobs()
        auto = first.prepared.config.objective.auto
        grid = candidate_grid(kl, temperature, auto.kl_weights, auto.temperatures)
        taught = first.taught
        if taught.folds is None or taught.fold_logits is None:
            plans.append((group, grid, None))
            continue
        cells = []
        for f, positions in enumerate(taught.folds):
            rows = fold_training_rows(taught.train, taught.fold_logits[f], positions)
            for c in grid:
                member = StudentJob(first.prepared, taught, kl_weight=c.kl_weight, temperature=c.temperature,
                                    system=f"cv fold {f} kl_weight {c.kl_weight:g} T {c.temperature:g}", train=rows)
                cells.append((f, c, member))
                members.append(member)
        plans.append((group, grid, cells))
    if members:
        train_students(members, batched=batched, epoch_metrics=False, checkpoints=checkpoints, stop=stop,
                       key=f"{key}cv")
    for group, grid, cells in plans:
        first = group[0]
        kl, temperature = first.knobs()
        seed = first.prepared.config.seed
        if cells is None:
            selection = fallback(kl, temperature, "no cross-validation: a class has a single labelled row")
        else:
            per_row: dict[Any, list[tuple[int, np.ndarray, np.ndarray]]] = {c: [] for c in grid}
            x, y = first.taught.train.x, first.taught.train.targets
            for f, c, member in cells:
                assert member.model is not None and first.taught.folds is not None
                at = torch.as_tensor(first.taught.folds[f], dtype=torch.long, device=x.device)
                per_row[c].append((f, *heldout_scores(predict_logits(member.model, x[at]), y[at])))
            correct = [np.concatenate([r[1] for r in sorted(per_row[c], key=lambda r: r[0])]) for c in grid]
            losses = [np.concatenate([r[2] for r in sorted(per_row[c], key=lambda r: r[0])]) for c in grid]
            scores = [{"kl_weight": c.kl_weight, "temperature": c.temperature, "accuracy": float(ok.mean()),
                       "log_loss": float(nll.mean())} for c, ok, nll in zip(grid, correct, losses, strict=True)]
            index, gain, se = choose(scores, correct, float(first.prepared.config.objective.auto.margin))
            best = scores[index]
            selection = Selection(kl_weight=best["kl_weight"], temperature=best["temperature"],
                                  reason="cross-validation", folds=len(first.taught.folds), scores=scores,
                                  gain=None if math.isnan(gain) else gain, gain_se=None if math.isnan(se) else se)
            log.debug("objective auto (seed %d): kl_weight %g, T %g by %d-fold CV on %d labelled rows "
                      "(best distilled candidate's held-out accuracy gain %+.3f, standard error %.3f)",
                      seed, selection.kl_weight, selection.temperature, selection.folds, correct[0].size, gain, se)
        if cells is None:
            log.debug("objective auto (seed %d): %s; kl_weight %g, T %g", seed, selection.reason,
                      selection.kl_weight, selection.temperature)
        for job in group:
            job_kl, job_t = job.knobs()
            if job_kl == AUTO:
                job.kl_weight = selection.kl_weight
                if job.system == "teacher_probs_only" and selection.kl_weight == 0:
                    job.kl_weight = 1.0  # the KL term alone needs a weight; 1 as for a fixed kl_weight = 0
            if job_t == AUTO:
                job.temperature = selection.temperature
            job.selection = selection.as_dict()
