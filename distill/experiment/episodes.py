"""Episodes: what one episode does, and the loop over every episode and sweep value.

One episode (one seed's draw, one sweep value; its rows and settings from ``prepare``):

1. ``_plan_episode`` teaches (``teach``: the teacher's soft targets for this draw, computed once; sweep
   values that share the teacher share them through the soft-target cache) and plans its student jobs:
   the distilled student, the baseline (kl_weight 0, from the same initial weights and batches; sweep
   values that differ only in the distillation knobs share one) and the controls (``protocol.controls``);
2. ``train_students`` fits them (``distill.experiment.students``; an "auto" knob is chosen first), stacked
   with other episodes' jobs while their rows fit a memory budget;
3. ``_score_episode`` scores teacher, students, controls and references (``protocol.references``) on the
   episode's test rows: an ``EpisodeResult``.

``run_protocol`` runs every episode of every sweep value, in that order, and hands each result on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.config import AUTO, Config, expand_sweep
from distill.data.split import Split
from distill.engine.loop import (
    FitResult,
    TrainingRows,
    predict_logits,
)
from distill.experiment.cache import SoftTargetCache, array_digest
from distill.experiment.kd_selection import candidate_grid
from distill.experiment.lookahead import EpisodesAhead
from distill.experiment.prepare import Prepared, prepare_protocol
from distill.experiment.students import StudentJob, train_students
from distill.experiment.teach import TeacherOutputs, TeacherRequest, evaluation_rows, teach
from distill.experiment.teacher_pool import TeacherPool
from distill.interrupts import StopRequest
from distill.metrics.classification import classification_metrics, probabilities
from distill.outputs.checkpoints import Checkpoints

__all__ = ["EpisodeResult", "run_protocol", "CONTROLS", "REFERENCES", "null_teacher_probabilities", "control_rows",
           "reference_metrics"]

log = logging.getLogger("distill")


@dataclass
class EpisodeResult:
    """Test metrics per system, the fits' histories and the trained models."""

    metrics: dict[str, dict[str, float]]
    teacher_diagnostics: dict[str, Any]
    student_fit: FitResult
    baseline_fit: FitResult
    student: nn.Module
    baseline: nn.Module
    test_predictions: dict[str, np.ndarray]
    test_targets: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    episode: int = 0
    seed: int = 0
    value: Any = None
    split_sizes: dict[str, int] = field(default_factory=dict)
    split: Split | None = None
    #: the controls' fits and models (``protocol.controls``), by name
    control_fits: dict[str, FitResult] = field(default_factory=dict)
    controls: dict[str, nn.Module] = field(default_factory=dict)
    #: what ``objective.* = "auto"`` chose for the student (None: the config's numbers)
    kd_selection: dict[str, Any] | None = None


@dataclass
class _PendingEpisode:
    """An episode whose teacher has answered and whose students are planned (or trained)."""

    prepared: Prepared
    taught: TeacherOutputs
    student: StudentJob
    baseline: StudentJob
    new_baseline: bool
    value: Any
    controls: list[StudentJob] = field(default_factory=list)

    def jobs(self) -> list[StudentJob]:
        return ([self.student, self.baseline] if self.new_baseline else [self.student]) + self.controls


def _baseline_key(config: Config) -> str:
    """The episode's experiment but for the distillation knobs, which the baseline does not depend on."""
    c = config.model_dump(mode="json")
    for key in ("kl_weight", "temperature", "direction"):
        c["objective"].pop(key)
    return json.dumps(c, sort_keys=True)


def _plan_episode(prepared: Prepared, baselines: dict[str, StudentJob], value: Any,
                  cache: SoftTargetCache[TeacherOutputs], request: TeacherRequest | None = None,
                  pool: TeacherPool | None = None) -> _PendingEpisode:
    """Teach (once per teacher: ``cache``; its fit collected from ``pool`` when sent there) and plan the student,
    the controls and (once per baseline key in ``baselines``) the baseline."""
    taught = teach(prepared, cache=cache, request=request, pool=pool)
    key = _baseline_key(prepared.config)
    new_baseline = key not in baselines
    if new_baseline:
        baselines[key] = StudentJob.planned(prepared, taught, "baseline", kl_weight=0.0)
    student = StudentJob.planned(prepared, taught, "student")
    controls = [_control_job(prepared, taught, name) for name in prepared.protocol.controls]
    return _PendingEpisode(prepared, taught, student, baselines[key], new_baseline, value, controls)


#: ``protocol.controls``: systems trained beside the student, from the same initial weights on the
#: same rows and batches, that tell the teacher's knowledge from the KL term's other effects.
CONTROLS = ("null_teacher", "hard_labels", "teacher_probs_only")
#: ``protocol.references``: cheap non-network systems fitted on the same scaled labelled rows.
REFERENCES = ("logistic_regression",)
#: A class absent from the labelled rows gets this probability under the ``prior`` null teacher
#: (then renormalised), so that its log stays finite (log 0 would make a reverse KL infinite).
_PRIOR_FLOOR = 1e-6


def null_teacher_probabilities(kind: str, labelled_y: np.ndarray, num_classes: int) -> np.ndarray:
    """The null teacher's class probabilities ``[K]`` (float64): ``1/K`` each (``uniform``), or the
    labelled rows' class frequencies (``prior``; an absent class gets ``_PRIOR_FLOOR``, renormalised)."""
    if kind == "uniform":
        return np.full(num_classes, 1.0 / num_classes)
    counts = np.bincount(np.asarray(labelled_y, dtype=np.int64), minlength=num_classes).astype(np.float64)
    prior = counts / counts.sum()
    if (prior == 0).any():
        prior = np.maximum(prior, _PRIOR_FLOOR)
        prior = prior / prior.sum()
    return prior


def control_rows(name: str, train: TrainingRows, *, null_teacher: str = "uniform",
                 labelled_y: np.ndarray | None = None) -> TrainingRows:
    """A control's training rows: the student's rows with its teacher or its hard term replaced.

    * ``null_teacher``: every transfer row's soft target is the null teacher's (``log p`` as logits,
      tempered like any teacher's): a teacher that knows nothing about the rows;
    * ``hard_labels``: the teacher's argmax on the unlabelled transfer rows as hard labels
      (pseudo-labelling; labelled rows keep their true labels), trained with ``kl_weight = 0``;
    * ``teacher_probs_only``: no row in the hard term, so the loss is the KL term alone. The hard
      term's sum is then over no row: exactly 0 with its gradient exactly 0 for any finite output
      (``distill.losses.fused``: a 0/1 row weight times a finite value), not a small weight.
    """
    if name == "null_teacher":
        assert train.teacher_logits is not None and labelled_y is not None
        k = train.teacher_logits.shape[-1]
        probs = null_teacher_probabilities(null_teacher, labelled_y, k)
        logits = torch.as_tensor(np.log(probs), dtype=train.teacher_logits.dtype, device=train.x.device)
        return dataclasses.replace(train, teacher_logits=logits.expand(train.x.shape[0], k).contiguous())
    if name == "hard_labels":
        assert train.teacher_logits is not None
        guessed = train.teacher_logits.argmax(dim=-1).to(train.targets.dtype)
        targets = torch.where(train.labelled, train.targets, guessed)
        return dataclasses.replace(train, hard_targets=targets, hard_labelled=torch.ones_like(train.labelled))
    if name == "teacher_probs_only":
        return dataclasses.replace(train, hard_targets=train.targets, hard_labelled=torch.zeros_like(train.labelled))
    raise ValueError(f"unknown control {name!r}; known: {', '.join(CONTROLS)}")


def _control_job(prepared: Prepared, taught: TeacherOutputs, name: str) -> StudentJob:
    """One control of this episode: its rows and KL weight (``hard_labels``: none; ``teacher_probs_only``:
    the student's, or 1 when the student's is 0 so that the control still has a loss)."""
    knobs = prepared.knobs
    rows = control_rows(name, taught.train, null_teacher=prepared.protocol.null_teacher,
                        labelled_y=prepared.dataset.y[prepared.split.labelled])
    if name == "hard_labels":
        return StudentJob.planned(prepared, taught, name, kl_weight=0.0, train=rows)
    if name == "teacher_probs_only" and knobs.kl_weight == 0:
        # with T = 1 when it is "auto", as when "auto" chooses kl_weight 0 for the student
        return StudentJob.planned(prepared, taught, name, kl_weight=1.0, train=rows,
                                  temperature=1.0 if knobs.temperature == AUTO else None)
    return StudentJob.planned(prepared, taught, name, train=rows)


def reference_metrics(name: str, x_labelled: np.ndarray, y_labelled: np.ndarray, x_test: np.ndarray,
                      y_test: np.ndarray, num_classes: int) -> tuple[dict[str, float], np.ndarray]:
    """A reference's test metrics and probabilities ``[N, K]``: scikit-learn's ``LogisticRegression()``
    (default C, lbfgs, max_iter raised to 10,000) on the scaled labelled rows; with a single labelled
    class, the constant prediction of that class."""
    if name != "logistic_regression":
        raise ValueError(f"unknown reference {name!r}; known: {', '.join(REFERENCES)}")
    from sklearn.linear_model import LogisticRegression

    x_l = x_labelled.reshape(x_labelled.shape[0], -1)
    x_t = x_test.reshape(x_test.shape[0], -1)
    probs = np.zeros((x_t.shape[0], num_classes), dtype=np.float64)
    present = np.unique(y_labelled)
    if present.size < 2:
        probs[:, int(present[0])] = 1.0
    else:
        model = LogisticRegression(max_iter=10_000).fit(x_l, y_labelled)
        probs[:, model.classes_.astype(np.int64)] = model.predict_proba(x_t)
    values = classification_metrics(torch.as_tensor(probs), torch.as_tensor(y_test, dtype=torch.long), num_classes)
    return {k: float(v) for k, v in values.items()}, probs


def _numpy_metrics(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, float]:
    """A system's test metrics (``distill.metrics.classification``) as plain floats."""
    values = classification_metrics(probabilities(logits), y, num_classes)
    numbers = torch.stack(list(values.values())).tolist()
    return dict(zip(values.keys(), numbers, strict=True))


def _fitted(job: StudentJob) -> tuple[nn.Module, FitResult]:
    assert job.model is not None and job.result is not None, f"{job.system} is not trained yet"
    return job.model, job.result


def _score_references(prepared: Prepared, metrics: dict[str, dict[str, float]],
                      predictions: dict[str, np.ndarray], timings: dict[str, float],
                      memo: dict[str, tuple[dict[str, float], np.ndarray, float]]) -> None:
    """``protocol.references``, fitted on the episode's scaled labelled rows and scored on its test rows;
    once per distinct rows (``memo``: sweep values of one episode often share them)."""
    data, split, k = prepared.dataset, prepared.split, prepared.dataset.num_classes
    x_scaled = prepared.scaler.transform(data.x)
    x_l, y_l, x_t, y_t = x_scaled[split.labelled], data.y[split.labelled], x_scaled[split.test], data.y[split.test]
    rows = array_digest(x_l, y_l, x_t, y_t)
    for name in prepared.protocol.references:
        key = f"{name}:{rows}"
        if key not in memo:
            started = time.perf_counter()
            scores, probs = reference_metrics(name, x_l, y_l, x_t, y_t, k)
            memo[key] = (scores, probs, time.perf_counter() - started)
        scores, probs, seconds = memo[key]
        metrics[name], predictions[name] = dict(scores), probs
        timings[f"{name}_fit_s"] = seconds


def _split_sizes(split: Split, taught: TeacherOutputs) -> dict[str, int]:
    return {
        "test": int(split.test.size),
        "labelled": int(split.labelled.size),
        "validation": int(split.validation.size),
        "pool": int(split.pool.size),
        "augmented": taught.augmented,
        "transfer": int(taught.train.x.shape[0]),
    }


def _score_episode(pending: _PendingEpisode,
                   memo: dict[str, tuple[dict[str, float], np.ndarray, float]] | None = None) -> EpisodeResult:
    """Test metrics and probabilities of every system once the episode's students are trained (``memo``: the
    references scored so far in this stack, by their rows)."""
    prepared, taught, split = pending.prepared, pending.taught, pending.prepared.split
    student, student_fit = _fitted(pending.student)
    baseline, baseline_fit = _fitted(pending.baseline)
    timings: dict[str, float] = {"load_data_s": prepared.load_seconds, **taught.timings}
    timings["student_fit_s"] = student_fit.seconds
    timings["baseline_fit_s"] = baseline_fit.seconds
    test = evaluation_rows(prepared, split.test)
    outputs = {
        "teacher": torch.as_tensor(taught.test_logits, dtype=torch.float32, device=prepared.device),
        "student": predict_logits(student, test.x),
        "baseline": predict_logits(baseline, test.x),
    }
    controls = {job.system: _fitted(job) for job in pending.controls}
    for system, (model, result) in controls.items():
        outputs[system] = predict_logits(model, test.x)
        timings[f"{system}_fit_s"] = result.seconds
    metrics = {system: _numpy_metrics(out, test.y, prepared.dataset.num_classes) for system, out in outputs.items()}
    predictions = {system: probabilities(out).cpu().numpy() for system, out in outputs.items()}
    _score_references(prepared, metrics, predictions, timings, memo if memo is not None else {})
    return EpisodeResult(
        metrics=metrics,
        teacher_diagnostics=taught.diagnostics,
        student_fit=student_fit,
        baseline_fit=baseline_fit,
        student=student,
        baseline=baseline,
        test_predictions=predictions,
        test_targets=prepared.dataset.y[split.test],
        timings=timings,
        episode=prepared.episode,
        seed=prepared.seed,
        value=pending.value,
        split_sizes=_split_sizes(split, taught),
        split=split,
        kd_selection=pending.student.selection,
        control_fits={system: result for system, (_, result) in controls.items()},
        controls={system: model for system, (model, _) in controls.items()},
    )


#: Training rows of the episodes trained together, at most (stacked students copy them once more).
_STACK_BYTES = 256 * 2**20

#: Episodes (times sweep values) trained together, at most: the first stack ``_STACK_ITEMS[0]``, each next one
#: twice the last up to ``_STACK_ITEMS[1]``. Past that a stack grows slower per member (measured on
#: seed_post.toml), and a small first stack starts training while later episodes' teachers are being fit.
_STACK_ITEMS = (30, 150)


def _stack_items(flushes: int) -> int:
    """How many episodes (times sweep values) the stack after ``flushes`` earlier ones holds, at most."""
    first, most = _STACK_ITEMS
    return min(most, first << min(flushes, 16))


def _episode_bytes(prepared: Prepared, taught: TeacherOutputs) -> int:
    """The rows an episode's fits hold: its students', and its cross-validation members' for "auto"."""
    tensors = [taught.train.x, taught.train.teacher_logits, taught.fold_logits]
    if taught.validation is not None:
        tensors.append(taught.validation.x)
    size = sum(t.numel() * t.element_size() for t in tensors if t is not None)
    knobs = prepared.knobs
    if knobs.chosen_by_cv and taught.folds is not None:
        grid = candidate_grid(knobs.kl_weight, knobs.temperature, knobs.auto.kl_weights, knobs.auto.temperatures)
        size *= 1 + len(taught.folds) * len(grid)
    return size


def run_protocol(
    config: Config,
    first: list[Prepared] | None = None,
    *,
    progress: bool = False,
    on_result: Callable[[EpisodeResult], None] | None = None,
    soft_cache: SoftTargetCache[TeacherOutputs] | None = None,
    checkpoints: Checkpoints | None = None,
    stop: StopRequest | None = None,
    reported: int = 0,
) -> tuple[list[Prepared], list[EpisodeResult]]:
    """Every episode (and every sweep value within it).

    ``first`` is ``prepare_protocol(config)`` when the caller already has it. Returns it and the
    results in the order episode-major, sweep value-minor. ``soft_cache``: the run's soft-target cache
    (None: one in memory only). ``checkpoints`` and ``stop``: see ``train_students``; a resumed run
    passes ``reported``, the results ``on_result`` already saw.
    """
    from distill.progress import progress_bar as tqdm

    first = prepare_protocol(config) if first is None else first
    cache = soft_cache if soft_cache is not None else SoftTargetCache(None)
    values = [value for value, _ in expand_sweep(config)]
    episodes = config.protocol.episodes
    total = episodes * len(values)
    results: list[EpisodeResult] = []
    bar = tqdm(total=total, desc="episodes", disable=not progress or total == 1, leave=False, dynamic_ncols=True)
    batched = config.train.batched
    pending: list[_PendingEpisode] = []
    pending_bytes = 0

    flushes = 0

    def flush() -> None:
        nonlocal pending_bytes, flushes
        train_students([job for p in pending for job in p.jobs()], batched=batched,
                       progress=progress and total == 1, checkpoints=checkpoints, stop=stop, key=f"c{flushes}")
        flushes += 1
        memo: dict[str, tuple[dict[str, float], np.ndarray, float]] = {}
        for p in pending:
            results.append(_score_episode(p, memo))
            if on_result is not None and len(results) > reported:
                on_result(results[-1])
            bar.update(1)
        pending.clear()
        pending_bytes = 0

    with EpisodesAhead(config, first, cache, window=-(-_STACK_ITEMS[1] // len(values)),
                       head=_STACK_ITEMS[0]) as ahead:
        baselines: dict[str, StudentJob] = {}
        for j, (e, i) in enumerate(ahead.order):
            if i == 0:
                baselines = {}
            if stop is not None:
                stop.check(f"before episode {e}")
            prepared, request = ahead.take(j)
            pending.append(_plan_episode(prepared, baselines, values[i], cache, request, ahead.pool))
            ahead.taught(j, pending[-1].taught)
            pending_bytes += _episode_bytes(prepared, pending[-1].taught)
            if i < len(values) - 1:
                continue
            cache.forget()  # the next episode's seed is another: no teacher outputs to share with it
            # Episodes wait to be trained together while their rows fit the stacking budget.
            if not batched or pending_bytes >= _STACK_BYTES or len(pending) >= _stack_items(flushes) or e == episodes - 1:
                flush()
    bar.close()
    _warn_degenerate_teachers(results, episodes)
    return first, results


def _warn_degenerate_teachers(results: list[EpisodeResult], episodes: int) -> None:
    """One warning line for the episodes whose teacher had warnings (a run of one episode gave them each)."""
    flagged = sorted({r.seed for r in results if r.teacher_diagnostics.get("warnings")})
    if flagged and episodes > 1:
        log.warning(
            "teacher looked degenerate in %d of %d episodes (seeds %s); details in log.txt and summary.json",
            len(flagged), episodes, ", ".join(map(str, flagged[:10])) + (", ..." if len(flagged) > 10 else ""),
        )
