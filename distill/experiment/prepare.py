"""Prepare once: check a config against its data, resolve everything an episode needs that does not depend
on the episode, and draw each episode's rows.

``prepare`` reads the Config of one sweep value, checks it (every problem at once, before anything is
trained) and resolves it into narrow typed objects: the teacher (``TeacherSpec``: its candidates, each
building a fresh teacher per fit, and what probing them once told: trains or arrives trained, input
space, identity, held-out rows), the student (``StudentSpec``), the fit settings (``FitSettings``), the
distillation knobs (``Knobs``). It draws episode 0's rows (split, scaler, hard criterion);
``prepare_episode`` draws another episode's from the same resolved objects. ``prepare_protocol`` does it
for every sweep value of a config. The protocol downstream (teach, students, episodes) reads no setting
from the Config again: ``Prepared.config`` is the record of the episode (summary.json, student.pt, identities).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Union

import numpy as np
import torch
from torch import nn

from distill import students
from distill.config import (
    AUTO,
    AutoObjectiveConfig,
    Config,
    FewShotConfig,
    InitConfig,
    ObjectiveConfig,
    ProtocolConfig,
    expand_sweep,
)
from distill.data.scaling import Scaler, check_scaled, fit_scaler
from distill.data.sources import FLOAT32_MAX, Dataset, load_dataset
from distill.data.split import Split, split_dataset
from distill.engine.loop import FitSettings, logged_metric_names
from distill.errors import ConfigError, UserError
from distill.experiment.cache import data_hash
from distill.experiment.weight_init import apply_init
from distill.interrupts import Interrupted
from distill.outputs.tracking import resolve_tracking_uri
from distill.seeding import configure_threads, resolve_device
from distill.teachers.base import Teacher, create_teacher, resolve_teacher

__all__ = [
    "Knob", "Knobs", "TeacherFactory", "TeacherCandidate", "TeacherSpec", "StudentSpec", "Prepared",
    "prepare", "prepare_episode", "prepare_protocol", "episode_seed", "teacher_candidates", "fit_settings",
    "build_criterion", "TEACHER_FOLDS",
]

log = logging.getLogger("distill")

#: ``objective.kl_weight`` / ``objective.temperature`` set to be chosen per episode (``distill.config.AUTO``).
Auto = Literal["auto"]
#: A distillation knob as configured: a number, or "auto" until the episode's cross-validation chooses one.
Knob = Union[float, Auto]

#: Builds a fresh Teacher for a teacher given in Python (see ``distill.teachers.given``), from the
#: episode's seed (an unfitted estimator without a ``random_state`` of its own gets it, as the config's do).
TeacherFactory = Callable[[int], Teacher]

#: Folds of the labelled rows (``distill.metrics.calibration.labelled_folds``): the teacher's cross-fitting and the
#: students' cross-validation of ``objective.* = "auto"`` use the same folds. Three, not five or ten: each
#: labelled row is held out once whatever the count, and every fold costs a fit of each teacher candidate
#: and of each student candidate.
TEACHER_FOLDS = 3

#: Resource limits (docs/configuration.md, "Limits"): a student above this many parameters, or generated
#: transfer rows (``few_shot.augment.count``) above this many bytes, is refused before anything runs.
MAX_STUDENT_PARAMETERS = 100_000_000
MAX_TRANSFER_BYTES = 2**31


# --------------------------------------------------------------------------- the resolved objects


@dataclass(frozen=True)
class TeacherCandidate:
    """One teacher ``teach`` fits, by its unique name (``random_forest``, ``random_forest#2``, ...)."""

    name: str
    kind: str
    #: ``create_teacher``'s keyword arguments, but for the device and the seed (an episode's)
    settings: dict[str, Any]
    #: a teacher given in Python, used instead of ``kind`` and ``settings``
    given: TeacherFactory | None = None

    def build(self, seed: int, device: str = "cpu") -> Teacher:
        """A fresh, unfitted teacher for the episode of ``seed`` (its ``random_state``), run on ``device``."""
        if self.given is not None:
            return self.given(seed)
        return create_teacher(self.kind, **self.settings, device=device, random_state=seed)


@dataclass(frozen=True)
class TeacherSpec:
    """The experiment's teacher, resolved once: its candidates, how their outputs combine, and what probing
    them once (in ``prepare``) told. ``teach`` builds one fresh teacher per fit from ``candidates``."""

    candidates: tuple[TeacherCandidate, ...]
    #: ``single`` (one teacher), ``auto`` (the candidate of lowest CV log-loss) or ``ensemble`` (their average)
    mode: Literal["single", "auto", "ensemble"]
    calibration: Literal["temperature", "none"]
    #: ``teacher.kind`` as configured (kept by a teacher given in Python): part of the cache key
    kind: str
    #: a teacher given in Python (``distill.run(config, teacher=...)``)
    given: bool
    #: the (first) teacher learns from the labelled rows; False: it arrives trained (a network)
    learns: bool
    #: the (first) teacher reads raw features, not the student's scaled ones
    raw_inputs: bool
    #: rows a teacher that arrives trained never saw: the test rows are drawn from them (None: any row)
    heldout_rows: np.ndarray | None
    #: ``(name, describe())`` of every candidate, for the run's plan
    described: tuple[tuple[str, str], ...]
    #: the (first) teacher's ``fingerprint()``; None: ``settings`` and ``code`` identify it, with the seed
    fingerprint: str | None
    #: without a fingerprint: ``teacher.*`` but for the cache's own keys, scikit-learn's version, and the code
    #: of teachers defined outside distill (so that editing a plugin's module does not reuse stale soft targets)
    settings_identity: tuple[dict[str, Any], str, tuple[str, ...]] | None

    def identity(self, seed: int) -> str:
        """What the teacher's outputs depend on besides its input rows (and, if it learns, its fit rows)."""
        if self.fingerprint is not None:
            return self.fingerprint
        assert self.settings_identity is not None
        settings, sklearn_version, code = self.settings_identity
        return json.dumps([settings, seed, sklearn_version] + ([list(code)] if code else []), sort_keys=True)


@dataclass(frozen=True)
class StudentSpec:
    """How to build the student (``student.*``) for this data: constructor, then ``student.init``."""

    arch: str
    kwargs: dict[str, Any]
    init: InitConfig
    in_shape: tuple[int, ...]
    num_classes: int
    num_outputs: int

    def build(self) -> nn.Module:
        """The student from its constructor, then ``student.init`` (``distill.experiment.weight_init``); a
        ConfigError naming the key when the arguments do not fit. Draws from torch's global generator."""
        try:
            model = students.build(self.arch, self.in_shape, self.num_classes, num_outputs=self.num_outputs,
                                   **self.kwargs)
        except ValueError as exc:  # StudentArgumentError and unknown names
            message = str(exc)
            if not message.startswith(("unknown key 'student.", "student.")):
                message = f"student.arch: {message}" if "student '" not in message else message
            raise ConfigError(message) from None
        try:
            return apply_init(model, self.init, self.arch)
        except ValueError as exc:  # a student without layers student.init can draw
            raise ConfigError(str(exc)) from None

    def meta_parameters(self) -> int | None:
        """The parameter count from a build on the meta device (no memory is allocated), or None when the
        architecture cannot be built there (the real build then reports any problem)."""
        try:
            with torch.device("meta"):
                model = students.build(self.arch, self.in_shape, self.num_classes, num_outputs=self.num_outputs,
                                       **self.kwargs)
            return sum(p.numel() for p in model.parameters())
        except Exception:  # noqa: BLE001 - a probe only; the real build reports the problem
            return None


@dataclass(frozen=True)
class Knobs:
    """The distillation knobs as configured (``objective.kl_weight``, ``objective.temperature``: numbers, or
    "auto", chosen per episode by cross-validation before any fit) and how "auto" chooses."""

    kl_weight: Knob
    temperature: Knob
    auto: AutoObjectiveConfig

    @property
    def chosen_by_cv(self) -> bool:
        """Whether a student with these knobs has them chosen by cross-validation (at kl_weight 0, T is moot)."""
        return self.kl_weight != 0 and AUTO in (self.kl_weight, self.temperature)


@dataclass(frozen=True)
class Prepared:
    """One episode of one sweep value, checked and resolved: everything teach, the students and the scoring read.

    ``prepare`` resolves the fields from ``dataset`` to ``student_parameters`` once per sweep value; its
    episodes share them. ``prepare_episode`` draws the rest (from ``episode`` on) per episode.
    """

    #: the record of this episode's experiment (its seed is the episode's): beyond ``prepare_episode`` it is
    #: only written out (summary.json, student.pt, the plan) and hashed into identities (fit records, the
    #: baseline sweep values share, the "auto" choice jobs share); episodes read the resolved fields below
    config: Config
    dataset: Dataset
    device: torch.device
    #: the hard loss, "auto" resolved (``bce`` for two classes, else ``ce``)
    hard: str
    teacher: TeacherSpec
    student: StudentSpec
    knobs: Knobs
    #: the draw and the transfer rows: ``transfer``, ``augment``
    few_shot: FewShotConfig
    #: episodes, controls (``null_teacher``), references
    protocol: ProtocolConfig
    #: ``train.threads`` (0: torch's choice)
    threads: int
    student_parameters: int
    episode: int
    seed: int
    split: Split
    scaler: Scaler
    #: the episode's fit settings for the hard term alone (kl_weight 0), with its seed and hard criterion; a
    #: student job sets its own KL weight and temperature
    settings: FitSettings
    #: seconds to load and prepare (episode 0 of a run: the data's loading and every check; others: their draw)
    load_seconds: float

    @property
    def num_outputs(self) -> int:
        return self.student.num_outputs


def episode_seed(seed: int, episode: int) -> int:
    """Episode ``e`` uses seed ``seed + e``: episode 0 is the plain run, and any episode can be
    repeated alone with ``--seed seed+e --episodes 1``."""
    return seed + episode


# --------------------------------------------------------------------------- the teacher


def _teacher_settings(config: Config, dataset: Dataset) -> dict[str, Any]:
    """``create_teacher``'s keyword arguments from ``teacher.*``, but for the device and the seed."""
    t = config.teacher
    return {
        "num_classes": dataset.num_classes,
        "in_shape": dataset.in_shape,
        "arch": t.arch,
        "input": t.input,
        "kernel": t.kernel,
        "restarts": t.restarts,
        "multi_class": t.multi_class,
        "estimator": t.estimator,
        "params": dict(t.params),
        "checkpoint": t.checkpoint,
        "uri": t.uri,
        "tracking_uri": resolve_tracking_uri(config),
    }


def _several(config: Config, given: TeacherFactory | None) -> bool:
    """Whether ``teach`` fits several candidates (``teacher.kind`` auto / ensemble; never a given teacher)."""
    return config.teacher.kind in ("auto", "ensemble") and given is None


def teacher_candidates(config: Config, dataset: Dataset, given: TeacherFactory | None = None) -> tuple[TeacherCandidate, ...]:
    """Every teacher ``teach`` fits: the one teacher, or (``teacher.kind`` auto / ensemble) each of
    ``teacher.candidates``, named uniquely. A teacher ``given`` in Python is the one teacher."""
    base = _teacher_settings(config, dataset)
    t = config.teacher
    if given is not None:
        return (TeacherCandidate("given", "given", base, given),)
    if not _several(config, given):
        return (TeacherCandidate(t.kind, t.kind, base),)
    out: list[TeacherCandidate] = []
    seen: dict[str, int] = {}
    for c in t.candidates:
        seen[c.name] = seen.get(c.name, 0) + 1
        name = c.name if seen[c.name] == 1 else f"{c.name}#{seen[c.name]}"
        settings = {**base, "kernel": c.kernel, "restarts": c.restarts, "multi_class": c.multi_class,
                    "estimator": c.estimator, "params": dict(c.params)}
        out.append(TeacherCandidate(name, c.kind, settings))
    return tuple(out)


def _candidate_problem(config: Config, index: int | None, message: str) -> str:
    """A teacher problem named by its key: ``teacher.params: ...``, or ``teacher.candidates[1].params: ...``."""
    if index is None:
        return message if message.startswith("teacher.") else f"teacher: {message}"
    prefix = f"teacher.candidates[{index}]"
    if message.startswith("teacher."):
        return prefix + message[len("teacher"):]
    return f"{prefix} ({config.teacher.candidates[index].name}): {message}"


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


def _heldout_rows(teacher: Teacher, dataset: Dataset, who: str) -> np.ndarray | None:
    """Rows a teacher that arrives trained (a distill-trained network) never saw, so that test rows stay
    unseen by it too. A teacher that learns sees only the labelled rows: nothing to hold out."""
    try:
        if teacher.learns:
            return None
        rows = teacher.heldout_rows(data_hash(dataset.x, dataset.y))
    except (ValueError, KeyError, UserError):
        return None  # reported with the other teacher problems
    if rows is None:
        _warn_once(f"the {who} teacher records no held-out rows for this data: test rows may include rows "
                   "it was trained on")
    return rows


def _code_identity(entry: Any) -> str | None:
    """For a teacher class or factory defined outside distill: its name and the sha256 of its module's
    source (of its own source where the module has no file, e.g. a notebook; failing both, of this
    process and object, so nothing is reused across processes). None for distill's own."""
    module = getattr(entry, "__module__", None) or ""
    if module == "distill" or module.startswith("distill."):
        return None
    name = f"{module}.{getattr(entry, '__qualname__', type(entry).__qualname__)}"
    path = getattr(sys.modules.get(module), "__file__", None)
    try:
        if path:
            with open(path, "rb") as handle:
                return f"{name}:{hashlib.sha256(handle.read()).hexdigest()}"
        import inspect

        return f"{name}:{hashlib.sha256(inspect.getsource(entry).encode()).hexdigest()}"
    except (OSError, TypeError):
        return f"{name}:process {os.getpid()} object {id(entry)}"


def _settings_identity(config: Config, several: bool) -> tuple[dict[str, Any], str, tuple[str, ...]]:
    """What identifies a teacher without a fingerprint: its settings, scikit-learn's version and the code
    of every candidate defined outside distill."""
    import sklearn

    settings = config.teacher.model_dump(mode="json", exclude={"cache", "cache_dir", "validation", "workers"})
    kinds = [c.kind for c in config.teacher.candidates] if several else [config.teacher.kind]
    code = tuple(c for c in (_code_identity(resolve_teacher(kind)) for kind in kinds) if c is not None)
    return settings, str(sklearn.__version__), code


@dataclass
class _Probe:
    """What building each candidate teacher once told (``_probe_teachers``)."""

    problems: list[str]
    heldout_rows: np.ndarray | None = None
    described: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    learns: bool = True
    raw_inputs: bool = False
    fingerprint: str | None = None


def _probe_first(teacher: Teacher, probe: _Probe) -> None:
    """The first candidate's facts ``teach`` needs: whether it learns, its input space, its fingerprint."""
    probe.learns = bool(teacher.learns)
    probe.raw_inputs = teacher.input_space == "raw"
    fingerprint = teacher.fingerprint()
    probe.fingerprint = str(fingerprint) if fingerprint is not None else None


def _probe_teachers(config: Config, dataset: Dataset, candidates: tuple[TeacherCandidate, ...],
                    given: TeacherFactory | None) -> _Probe:
    """Build every candidate teacher once (on the CPU, with the config's seed): its held-out rows, its own
    check against the data, its description, and the first one's facts; every problem, named by its key."""
    probe = _Probe(problems=[])
    several = _several(config, given)
    for i, candidate in enumerate(candidates):
        index = i if several else None
        try:  # every candidate teacher is checked before anything is fit
            teacher = candidate.build(config.seed)
            if not several:
                probe.heldout_rows = _heldout_rows(teacher, dataset, "given" if given is not None else candidate.kind)
            teacher.check(dataset.in_shape)  # e.g. a network teacher: classes and input shape, before training
            if several and not teacher.learns:
                raise ValueError(f"teacher.kind '{candidate.kind}' arrives trained (learns = False); candidates of "
                                 f"teacher.kind = {config.teacher.kind!r} are cross-fitted and must learn")
            probe.described.append((candidate.name, teacher.describe()))
            if i == 0:
                _probe_first(teacher, probe)
        except UserError as exc:
            probe.problems.extend(_candidate_problem(config, index, p) for p in exc.problems)
        except (ValueError, KeyError) as exc:
            message = exc.args[0] if exc.args else str(exc)
            probe.problems.append(_candidate_problem(config, index, str(message)))
        except (MemoryError, Interrupted):
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin's or a given teacher's own code failed its check
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            probe.problems.append(_candidate_problem(config, index, f"{type(exc).__name__}: {first}".rstrip(": ")))
    return probe


def _teacher_spec(config: Config, candidates: tuple[TeacherCandidate, ...], probe: _Probe,
                  given: TeacherFactory | None) -> TeacherSpec:
    several = _several(config, given)
    mode: Literal["single", "auto", "ensemble"] = "single"
    if several:
        mode = "auto" if config.teacher.kind == "auto" else "ensemble"
    return TeacherSpec(
        candidates=candidates, mode=mode, calibration=config.teacher.calibration, kind=config.teacher.kind,
        given=given is not None, learns=probe.learns, raw_inputs=probe.raw_inputs,
        heldout_rows=probe.heldout_rows, described=tuple(probe.described), fingerprint=probe.fingerprint,
        settings_identity=_settings_identity(config, several) if probe.fingerprint is None else None,
    )


# --------------------------------------------------------------------------- the student and the objective


def _student_problems(config: Config, spec: StudentSpec) -> tuple[int, list[str]]:
    """The student's parameter count, and what stops it: too large, not buildable, no ``embed`` for a
    metric loss, or outputs of the wrong shape for the classes."""
    problems: list[str] = []
    size = spec.meta_parameters()
    try:
        if size is not None and size > MAX_STUDENT_PARAMETERS:
            shown = ", ".join(f"student.{k} = {v!r}" for k, v in spec.kwargs.items())
            raise ConfigError(f"student '{spec.arch}' would have {size:,} parameters, more than the limit of "
                              f"{MAX_STUDENT_PARAMETERS:,}" + (f" ({shown})" if shown else "") + "; make it smaller")
        model = spec.build()
        parameters = sum(p.numel() for p in model.parameters())
        if config.objective.metric_loss is not None and not callable(getattr(model, "embed", None)):
            problems.append(f"objective.metric_loss = {config.objective.metric_loss!r} needs a student with embed(x); "
                            f"'{spec.arch}' has none")
        with torch.no_grad():
            out = model(torch.zeros((1, *spec.in_shape)))
        if tuple(out.shape) != (1, spec.num_outputs) and not (spec.num_outputs == 1 and tuple(out.shape) == (1,)):
            problems.append(f"student '{spec.arch}' gives outputs of shape {tuple(out.shape)[1:]} per row, "
                            f"expected ({spec.num_outputs},) for {spec.num_classes} classes")
        return parameters, problems
    except ConfigError as exc:
        return 0, problems + exc.problems
    except (RuntimeError, MemoryError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, MemoryError) or "allocat" in reason.lower():
            return 0, [*problems, f"student '{spec.arch}' does not fit in memory: {reason}"]
        return 0, [*problems, f"student '{spec.arch}' cannot take inputs of shape {spec.in_shape}: {reason}"]


def _resolved_hard(config: Config, k: int) -> tuple[str, list[str]]:
    """``objective.hard`` with "auto" resolved (BCE for two classes, else CE), and its problems with the data."""
    hard = config.objective.hard
    if hard == "auto":
        hard = "bce" if k == 2 else "ce"
    problems = []
    if hard == "bce" and k != 2:
        problems.append(f"objective.hard = 'bce' needs two classes, but {config.data.source} has {k}; use 'ce'")
    return hard, problems + _objective_problems(config, hard, k)


def _objective_problems(config: Config, hard: str, k: int) -> list[str]:
    """Hard-loss parameters, class weights and pos_weight checked against the data."""
    from distill.losses.hard import create_loss

    o = config.objective
    problems = []
    try:
        create_loss(hard, k, **dict(o.hard_params))
    except (ValueError, TypeError) as exc:
        problems.append(f"objective.hard_params: {exc}" if "objective." not in str(exc) else str(exc))
    if isinstance(o.class_weight, list) and len(o.class_weight) != k:
        problems.append(f"objective.class_weight needs one weight per class ({k}), got {len(o.class_weight)}")
    if o.class_weight is not None and students.num_outputs_for(k, hard) == 1 and hard == "bce":
        problems.append("objective.class_weight does not apply to a one-logit BCE student; use objective.pos_weight")
    if o.pos_weight is not None and students.num_outputs_for(k, hard) != 1:
        problems.append(f"objective.pos_weight applies to a one-logit binary student (bce, focal), not to {hard!r} "
                        f"with {k} classes; use objective.class_weight")
    return problems


def _monitor_problems(config: Config) -> list[str]:
    """An early-stopping monitor the fit never logs."""
    es = config.train.early_stopping
    validation = config.few_shot.validation > 0
    logged = logged_metric_names(validation)
    if es.patience > 0 and es.monitor not in logged:
        return [f"train.early_stopping.monitor '{es.monitor}' is not logged; logged: {', '.join(logged)}"
                + ("" if validation else " (few_shot.validation = 0 gives no val_* metrics)")]
    return []


def build_criterion(objective: ObjectiveConfig, hard: str, num_classes: int, labelled_y: np.ndarray,
                    device: torch.device) -> Any:
    """The configured hard term for an episode's labelled rows, or None for the plain BCE / CE fast path.

    ``"balanced"`` weights follow scikit-learn: ``n / (classes * count)`` from the labelled rows;
    ``pos_weight = "balanced"`` is negatives / positives.
    """
    from distill.losses.hard import create_loss
    from distill.losses.objective import HardCriterion

    o = objective
    if hard in ("bce", "ce") and not o.hard_params and o.class_weight is None and o.pos_weight is None:
        return None
    counts = np.bincount(np.asarray(labelled_y, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weight = None
    if o.class_weight == "balanced":
        weight = counts.sum() / (num_classes * np.maximum(counts, 1.0))
    elif isinstance(o.class_weight, list):
        weight = np.asarray(o.class_weight, dtype=np.float64)
    pos_weight = None
    if o.pos_weight == "balanced":
        pos_weight = float(counts[0] / max(counts[1], 1.0))
    elif o.pos_weight is not None:
        pos_weight = float(o.pos_weight)
    kwargs: dict[str, Any] = dict(o.hard_params)
    if weight is not None:
        kwargs["weight"] = torch.as_tensor(weight, dtype=torch.float32, device=device)
    if pos_weight is not None:
        kwargs["pos_weight"] = torch.as_tensor(pos_weight, dtype=torch.float32, device=device)
    loss = create_loss(hard, num_classes, reduction="none", **kwargs)
    # PyTorch's weighted mean divides by the targets' class weights (CE-type losses).
    mean_weight = kwargs.get("weight") if hard in ("ce", "label_smoothing", "sce") else None
    return HardCriterion(loss.to(device), mean_weight)


def fit_settings(config: Config, *, kl_weight: float | None = None, temperature: float | None = None) -> FitSettings:
    """The engine's settings from the config (``kl_weight`` / ``temperature`` overridden for the baseline,
    a control or what "auto" chose; at ``kl_weight = 0`` the temperature is irrelevant and set to 1)."""
    t, o, es = config.train, config.objective, config.train.early_stopping
    kl = o.kl_weight if kl_weight is None else kl_weight
    temp = o.temperature if temperature is None else temperature
    if kl == 0:
        temp = 1.0 if temp == AUTO else temp
    if isinstance(kl, str) or isinstance(temp, str):
        raise ValueError("objective.kl_weight / objective.temperature = 'auto' must be chosen before a fit "
                         "(distill.experiment.students.train_students does it)")
    return FitSettings(
        epochs=t.epochs,
        batch_size=t.batch_size,
        replacement=t.replacement,
        optimizer=t.optimizer,
        lr=float(t.lr),
        momentum=float(t.momentum),
        weight_decay=float(t.weight_decay),
        scheduler=t.scheduler,
        step_size=t.step_size,
        gamma=float(t.gamma),
        grad_clip=float(t.grad_clip) if t.grad_clip is not None else None,
        kl_weight=float(kl),
        temperature=float(temp),
        direction=o.direction,
        monitor=es.monitor,
        mode=es.mode,
        patience=es.patience,
        min_delta=float(es.min_delta),
        restore_best=t.restore_best,
        seed=config.seed,
        l1=float(o.l1),
        l2=float(o.l2),
        metric_loss=o.metric_loss,
        metric_weight=float(o.metric_weight),
        metric_margin=float(o.metric_margin),
        detect_anomaly=t.detect_anomaly,
        precision=t.precision,
        compile=t.compile,
    )


# --------------------------------------------------------------------------- an episode's rows


def _transfer_problems(config: Config, dataset: Dataset, scaled: np.ndarray) -> list[str]:
    """Generated transfer rows that would not fit in memory, or would leave float32's range."""
    if config.few_shot.transfer != "augmented":
        return []
    aug = config.few_shot.augment
    problems = []
    row_bytes = int(np.prod(dataset.in_shape, dtype=object)) * 8
    if aug.count * row_bytes > MAX_TRANSFER_BYTES:
        problems.append(
            f"few_shot.augment.count = {aug.count} generates {aug.count * row_bytes:,} bytes of rows "
            f"({row_bytes:,} per row), more than the limit of {MAX_TRANSFER_BYTES:,}; lower it"
        )
    # A Gaussian draw beyond 40 standard deviations never happens; mixup stays between rows.
    reach = float(np.abs(scaled).max(initial=0.0)) + 40.0 * float(aug.jitter)
    if not reach < FLOAT32_MAX:
        problems.append(
            f"few_shot.augment.jitter = {aug.jitter} moves generated rows beyond the float32 range the "
            f"student computes in (about {FLOAT32_MAX:.3g}); lower it"
        )
    return problems


def _scaling_problems(config: Config, dataset: Dataset, split: Split, scaler: Scaler) -> list[str]:
    """Features the scaler turns into NaN or infinity (a span beyond float64, e.g. -1e308..1e308), or
    beyond float32, in the rows training reads (never the test rows: tuning must not look at them)."""
    rows = np.sort(np.concatenate([split.labelled, split.validation, split.pool]))
    with np.errstate(all="ignore"):
        scaled = scaler.transform(dataset.x[rows])
        bad = ~np.isfinite(scaled) | (np.abs(scaled) > FLOAT32_MAX)
    if not bad.any():
        return []
    at, col = (int(i) for i in np.argwhere(bad)[0])
    row = int(rows[at])
    name = dataset.feature_names[col] if col < len(dataset.feature_names) else str(col)
    return [f"data.scale = '{config.data.scale}': feature '{name}' (row {row}) scales to "
            f"{scaled[at, col]}, outside the float32 range the student computes in; check the data's extreme values"]


def _draw(config: Config, dataset: Dataset, heldout_rows: np.ndarray | None,
          problems: list[str]) -> tuple[Split, Scaler]:
    """The episode's split (of ``config.seed``; test rows among ``heldout_rows``) and its scaler, fit on
    the labelled rows; ``problems`` found so far, and the rows' own, raised together as a ConfigError."""
    fs = config.few_shot
    split = split_dataset(dataset, test_size=config.data.test_size, labelled=fs.labelled, per_class=fs.per_class,
                          validation=fs.validation, seed=config.seed, test_from=heldout_rows)
    with np.errstate(all="ignore"):  # an overflowing span is reported below, not warned about
        scaler = fit_scaler(config.data.scale, dataset.x[split.labelled])
    problems = problems + _scaling_problems(config, dataset, split, scaler)
    if not problems:
        problems.extend(_transfer_problems(config, dataset, scaler.transform(dataset.x[split.labelled])))
    if problems:
        raise ConfigError(*problems)
    check_scaled(scaler, dataset.x, dataset.feature_names, f"data.source '{config.data.source}'")
    return split, scaler


def _episode_settings(settings: FitSettings, config: Config, hard: str, dataset: Dataset, split: Split,
                      device: torch.device) -> FitSettings:
    """The fit settings with the episode's seed and its hard criterion (class weights from its labelled rows)."""
    criterion = build_criterion(config.objective, hard, dataset.num_classes, dataset.y[split.labelled], device)
    return dataclasses.replace(settings, seed=config.seed, criterion=criterion)


# --------------------------------------------------------------------------- prepare


def prepare(config: Config, dataset: Dataset | None = None, teacher: TeacherFactory | None = None) -> Prepared:
    """Load and check the data, check teacher, student and objective against it, resolve them, and draw
    episode 0. Every problem is raised at once, as a ConfigError, before anything is trained.

    ``dataset``: data already loaded (else ``data.source``); ``teacher``: a teacher given in Python
    (else ``teacher.kind``)."""
    started = time.perf_counter()
    if dataset is None:
        dataset = load_dataset(config.data.source, config.data.label)
    candidates = teacher_candidates(config, dataset, teacher)
    probe = _probe_teachers(config, dataset, candidates, teacher)
    problems: list[str] = []
    if config.teacher.given is not None and teacher is None:
        problems.append(f"teacher.given: this experiment's teacher was a Python object ({config.teacher.given}); "
                        "a config file cannot rebuild it: pass it again, distill.run(config, teacher=...) or "
                        "distill.resume(run_dir, teacher=...)")
    hard, hard_problems = _resolved_hard(config, dataset.num_classes)
    student = StudentSpec(arch=config.student.arch, kwargs=config.student.kwargs, init=config.student.init,
                          in_shape=dataset.in_shape, num_classes=dataset.num_classes,
                          num_outputs=students.num_outputs_for(dataset.num_classes, hard))
    parameters, student_problems = _student_problems(config, student)
    problems += hard_problems + probe.problems + student_problems + _monitor_problems(config)
    try:
        device = resolve_device(config.train.device)
    except ConfigError as exc:
        problems.extend(exc.problems)
        device = torch.device("cpu")
    split, scaler = _draw(config, dataset, probe.heldout_rows, problems)
    o = config.objective
    return Prepared(
        config=config,
        dataset=dataset,
        device=device,
        hard=hard,
        teacher=_teacher_spec(config, candidates, probe, teacher),
        student=student,
        knobs=Knobs(kl_weight=o.kl_weight, temperature=o.temperature, auto=o.auto),
        few_shot=config.few_shot,
        protocol=config.protocol,
        threads=config.train.threads,
        student_parameters=parameters,
        load_seconds=time.perf_counter() - started,
        episode=0,
        seed=config.seed,
        split=split,
        scaler=scaler,
        settings=_episode_settings(fit_settings(config, kl_weight=0.0), config, hard, dataset, split, device),
    )


def prepare_episode(prepared: Prepared, episode: int) -> Prepared:
    """Episode ``episode`` of the experiment ``prepared`` resolved: its own seed, split, scaler and hard
    criterion (its rows checked as ``prepare`` checks episode 0's); the resolved objects are shared."""
    started = time.perf_counter()
    seed = episode_seed(prepared.seed - prepared.episode, episode)
    config = prepared.config.model_copy(update={"seed": seed})
    split, scaler = _draw(config, prepared.dataset, prepared.teacher.heldout_rows, [])
    settings = _episode_settings(prepared.settings, config, prepared.hard, prepared.dataset, split, prepared.device)
    return dataclasses.replace(prepared, config=config, episode=episode, seed=seed, split=split, scaler=scaler,
                               settings=settings, load_seconds=time.perf_counter() - started)


def prepare_protocol(config: Config, dataset: Dataset | None = None,
                     teacher: TeacherFactory | None = None) -> list[Prepared]:
    """Load the data once (unless given) and prepare episode 0 of every sweep value: every check, before
    any training. ``teacher``: a teacher given in Python, used instead of ``teacher.kind``."""
    started = time.perf_counter()
    dataset = load_dataset(config.data.source, config.data.label) if dataset is None else dataset
    first = [prepare(variant, dataset, teacher) for _, variant in expand_sweep(config)]
    seconds = time.perf_counter() - started
    first = [dataclasses.replace(p, load_seconds=seconds) for p in first]
    configure_threads(first[0].device, config.train.threads, int(dataset.x.size))
    return first
