"""Students: the fits an episode plans, trained together where they can be, with "auto" knobs chosen first.

A ``StudentJob`` is one student fit: its episode (``Prepared``), the teacher's outputs, the rows it trains
on and its two distillation knobs, the KL weight and the temperature (numbers, or "auto" until the
episode's cross-validation chooses them). ``train_students`` fits a list of jobs: first ``_choose_auto``
fills in every "auto" knob (one stacked fit of every fold x grid point, ``distill.experiment.kd_selection``),
then the jobs are grouped into stacked fits where they agree in everything but the knobs and the seed
(``distill.engine.loop.stack_problem_for``) and fitted, resumed from or recorded in the run's checkpoints.
Every student starts from the weights its episode's seed gives, so student, baseline and controls start alike.
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
    fit_many,
    predict_logits,
    stack_problem_for,
)
from distill.experiment.kd_selection import (
    Candidate,
    Selection,
    auto_knobs,
    candidate_grid,
    choose,
    fallback,
    fold_training_rows,
    heldout_scores,
)
from distill.experiment.prepare import Knob, Prepared
from distill.experiment.teach import TeacherOutputs
from distill.interrupts import Interrupted, StopRequest
from distill.outputs.checkpoints import Checkpoints
from distill.seeding import seed_everything, threads_for_stacked_work

__all__ = ["StudentJob", "train_students", "build_student"]

log = logging.getLogger("distill")


def build_student(prepared: Prepared) -> nn.Module:
    """The episode's student from its seed: the same initial weights every time (student, baseline, controls)."""
    seed_everything(prepared.seed)
    return prepared.student.build().to(prepared.device)


@dataclass
class StudentJob:
    """One student fit: its episode, its training rows and its knobs; ``train_students`` fills in the rest.

    ``kl_weight`` and ``temperature`` are numbers, or "auto" until ``train_students`` chooses them by
    cross-validation before any fit (at kl_weight 0 the temperature is moot: "auto" fits as T = 1).
    """

    prepared: Prepared
    taught: TeacherOutputs
    system: str
    kl_weight: Knob
    temperature: Knob
    #: the rows this job trains on when they are not the teacher's (a control's, a cross-validation member's)
    train: TrainingRows | None = None
    #: the knobs this job set itself rather than taking the episode's configured ones (``"kl_weight"``,
    #: ``"temperature"``); the fit's identity, checked on resume, records the others as None
    set_by_job: frozenset[str] = frozenset()
    model: nn.Module | None = None
    result: FitResult | None = None
    #: what ``objective.* = "auto"`` chose for this job (``distill.experiment.kd_selection.Selection.as_dict``)
    selection: dict[str, Any] | None = None

    @classmethod
    def planned(cls, prepared: Prepared, taught: TeacherOutputs, system: str, *, kl_weight: float | None = None,
                temperature: float | None = None, train: TrainingRows | None = None) -> StudentJob:
        """A job with its episode's configured knobs, but for those given here (a baseline's kl_weight 0,
        a control's, a cross-validation member's)."""
        knobs = prepared.knobs
        own = frozenset(name for name, value in (("kl_weight", kl_weight), ("temperature", temperature))
                        if value is not None)
        return cls(prepared, taught, system,
                   kl_weight=knobs.kl_weight if kl_weight is None else kl_weight,
                   temperature=knobs.temperature if temperature is None else temperature,
                   train=train, set_by_job=own)

    @property
    def rows(self) -> TrainingRows:
        """What this job trains on: its own rows, or the teacher's soft targets on the transfer rows."""
        return self.train if self.train is not None else self.taught.train

    def fit_settings(self, epoch_metrics: bool = True) -> FitSettings:
        """The episode's fit settings with this job's knobs, which must be numbers by now."""
        kl, temperature = self.kl_weight, self.temperature
        if kl == 0 and temperature == AUTO:
            temperature = 1.0  # no KL term: the temperature changes nothing
        if isinstance(kl, str) or isinstance(temperature, str):
            raise ValueError("objective.kl_weight / objective.temperature = 'auto' must be chosen before a fit "
                             "(distill.experiment.students.train_students does it)")
        return dataclasses.replace(self.prepared.settings, kl_weight=float(kl), temperature=float(temperature),
                                   epoch_metrics=epoch_metrics)

    def set_knobs(self, kl_weight: float | None = None, temperature: float | None = None) -> None:
        """Set knobs chosen for this job (by "auto"); the fit's identity records them."""
        if kl_weight is not None:
            self.kl_weight, self.set_by_job = kl_weight, self.set_by_job | {"kl_weight"}
        if temperature is not None:
            self.temperature, self.set_by_job = temperature, self.set_by_job | {"temperature"}


def _report_fit(job: StudentJob, result: FitResult) -> None:
    """The fit's messages (warnings when it diverged) and how it ended, in the log."""
    seed = job.prepared.seed
    for message in result.messages:
        log.log(logging.WARNING if result.status == "diverged" else logging.DEBUG, "%s (seed %d): %s",
                job.system, seed, message)
    log.debug(
        "%s: %d epochs in %.2fs (%s)%s", job.system, result.stopped_epoch, result.seconds, result.stop_reason,
        f", best {result.monitor} = {result.best_score:.4f} at epoch {result.best_epoch}" if result.best_epoch else "",
    )


def _stacked_groups(jobs: list[StudentJob], models: list[nn.Module], settings: list[FitSettings],
                    batched: bool) -> list[list[int]]:
    """The jobs (by index) that train as one stacked fit: each joins the first group it can stack with."""
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
    return groups


def train_students(jobs: list[StudentJob], *, batched: bool = True, progress: bool = False,
                   epoch_metrics: bool = True, checkpoints: Checkpoints | None = None,
                   stop: StopRequest | None = None, key: str = "") -> None:
    """Fit every job's student: as stacked models where the fits agree in everything but the KL
    weight, temperature and seed (``distill.engine.loop.stack_problem_for``), one at a time otherwise.

    Jobs whose KL weight or temperature is "auto" get them first from ``_choose_auto``: one stacked fit
    of every fold x grid point of every episode among the jobs (``distill.experiment.kd_selection``).
    Each member gets exactly the initial weights, batches and result of its own fit alone.
    With ``checkpoints`` every fit (``<key>g<group>``) saves its state as it goes and a fit finished
    before is loaded instead of trained; ``stop`` turns a signal into ``Interrupted`` after a step.
    """
    _choose_auto(jobs, batched=batched, checkpoints=checkpoints, stop=stop, key=key)
    settings = [job.fit_settings(epoch_metrics) for job in jobs]
    models = [build_student(job.prepared) for job in jobs]
    for g, group in enumerate(_stacked_groups(jobs, models, settings, batched)):
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
            _report_fit(job, result)


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
        seed_everything(first.seed + 1)  # the same dropout stream for student and baseline
    work = len(jobs) * int(jobs[0].rows.x.numel())
    try:
        with threads_for_stacked_work(first.device, first.threads, work):
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
    """Which fit a checkpoint belongs to: its key and, per member, system, episode seed, the knobs the job
    set itself (None: the configured ones) and a hash of its episode's config."""
    members = []
    for job in jobs:
        text = json.dumps(config_dict(job.prepared.config), sort_keys=True, default=str)
        members.append({"system": job.system, "seed": int(job.prepared.seed),
                        "kl_weight": float(job.kl_weight) if "kl_weight" in job.set_by_job else None,
                        "temperature": float(job.temperature) if "temperature" in job.set_by_job else None,
                        "config": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]})
    return {"key": key, "members": members}


# --------------------------------------------------------------------------- "auto": the knobs chosen by CV


def _needs_choice(job: StudentJob) -> bool:
    return job.kl_weight != 0 and AUTO in (job.kl_weight, job.temperature)


def _selection_key(job: StudentJob) -> tuple[int, str]:
    """Jobs that share an episode's teacher outputs, config (but for the knobs) and fixed knob share a choice."""
    c = job.prepared.config.model_dump(mode="json")
    c["objective"].pop("kl_weight")
    c["objective"].pop("temperature")
    return id(job.taught), json.dumps([c, job.kl_weight, job.temperature], sort_keys=True)


@dataclass
class _SelectionPlan:
    """The jobs sharing one choice, the grid it chooses from, and its members: one student per fold x grid
    point (None: no cross-validation possible)."""

    group: list[StudentJob]
    grid: list[Candidate]
    cells: list[tuple[int, Candidate, StudentJob]] | None


def _plan_selection(group: list[StudentJob]) -> _SelectionPlan:
    """Every fold x grid point of the group's episode as a cross-validation member (a StudentJob)."""
    first = group[0]
    auto = first.prepared.knobs.auto
    grid = candidate_grid(first.kl_weight, first.temperature, auto.kl_weights, auto.temperatures)
    taught = first.taught
    if taught.folds is None or taught.fold_logits is None:
        return _SelectionPlan(group, grid, None)
    cells = []
    for f, positions in enumerate(taught.folds):
        rows = fold_training_rows(taught.train, taught.fold_logits[f], positions)
        for c in grid:
            member = StudentJob.planned(first.prepared, taught, f"cv fold {f} kl_weight {c.kl_weight:g} T {c.temperature:g}",
                                        kl_weight=c.kl_weight, temperature=c.temperature, train=rows)
            cells.append((f, c, member))
    return _SelectionPlan(group, grid, cells)


def _cv_selection(plan: _SelectionPlan) -> Selection:
    """The choice from the trained members' held-out scores (``distill.experiment.kd_selection.choose``)."""
    first = plan.group[0]
    taught, seed = first.taught, first.prepared.seed
    assert plan.cells is not None and taught.folds is not None
    per_row: dict[Candidate, list[tuple[int, np.ndarray, np.ndarray]]] = {c: [] for c in plan.grid}
    x, y = taught.train.x, taught.train.targets
    for f, c, member in plan.cells:
        assert member.model is not None
        at = torch.as_tensor(taught.folds[f], dtype=torch.long, device=x.device)
        per_row[c].append((f, *heldout_scores(predict_logits(member.model, x[at]), y[at])))
    correct = [np.concatenate([r[1] for r in sorted(per_row[c], key=lambda r: r[0])]) for c in plan.grid]
    losses = [np.concatenate([r[2] for r in sorted(per_row[c], key=lambda r: r[0])]) for c in plan.grid]
    scores = [{"kl_weight": c.kl_weight, "temperature": c.temperature, "accuracy": float(ok.mean()),
               "log_loss": float(nll.mean())} for c, ok, nll in zip(plan.grid, correct, losses, strict=True)]
    index, gain, se = choose(scores, correct, float(first.prepared.knobs.auto.margin))
    best = scores[index]
    selection = Selection(kl_weight=best["kl_weight"], temperature=best["temperature"], reason="cross-validation",
                          folds=len(taught.folds), scores=scores, gain=None if math.isnan(gain) else gain,
                          gain_se=None if math.isnan(se) else se,
                          chose=auto_knobs(first.kl_weight, first.temperature))
    log.debug("objective auto (seed %d): kl_weight %g, T %g by %d-fold CV on %d labelled rows "
              "(best distilled candidate's held-out accuracy gain %+.3f, standard error %.3f)",
              seed, selection.kl_weight, selection.temperature, selection.folds, correct[0].size, gain, se)
    return selection


def _no_cv_selection(plan: _SelectionPlan) -> Selection:
    first = plan.group[0]
    selection = fallback(first.kl_weight, first.temperature, "no cross-validation: a class has a single labelled row")
    log.debug("objective auto (seed %d): %s; kl_weight %g, T %g", first.prepared.seed, selection.reason,
              selection.kl_weight, selection.temperature)
    return selection


def _apply(selection: Selection, group: list[StudentJob]) -> None:
    """Every job of the group takes the chosen knobs in place of its "auto" ones."""
    for job in group:
        kl = None
        if job.kl_weight == AUTO:
            kl = selection.kl_weight
            if job.system == "teacher_probs_only" and kl == 0:
                kl = 1.0  # the KL term alone needs a weight; 1 as for a fixed kl_weight = 0
        job.set_knobs(kl, selection.temperature if job.temperature == AUTO else None)
        job.selection = selection.as_dict()


def _choose_auto(jobs: list[StudentJob], *, batched: bool, checkpoints: Checkpoints | None,
                 stop: StopRequest | None, key: str) -> None:
    """Fill in the KL weight and temperature of every job whose config says "auto"
    (``distill.experiment.kd_selection``): every fold x candidate of every episode is one member of one stacked fit."""
    groups: dict[tuple[int, str], list[StudentJob]] = {}
    for job in jobs:
        if _needs_choice(job):
            groups.setdefault(_selection_key(job), []).append(job)
    plans = [_plan_selection(group) for group in groups.values()]
    members = [member for plan in plans for _, _, member in plan.cells or []]
    if members:
        train_students(members, batched=batched, epoch_metrics=False, checkpoints=checkpoints, stop=stop,
                       key=f"{key}cv")
    for plan in plans:
        _apply(_cv_selection(plan) if plan.cells is not None else _no_cv_selection(plan), plan.group)
