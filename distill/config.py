"""The typed experiment config: pydantic models per concern, TOML loading, ``--set`` overrides.

Every problem in a file is reported at once, one line each, naming the dotted key, the rule
and the value received, e.g. ``objective.kl_weight must be >= 0, got -1``.
"""

from __future__ import annotations

import copy
import math
import re
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from distill.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "Config",
    "DataConfig",
    "FewShotConfig",
    "ProtocolConfig",
    "TeacherConfig",
    "CandidateConfig",
    "StudentConfig",
    "InitConfig",
    "LayerInitConfig",
    "ObjectiveConfig",
    "TrainConfig",
    "EarlyStoppingConfig",
    "TrackingConfig",
    "TuneConfig",
    "DEFAULT_SPACE",
    "AugmentConfig",
    "load_config",
    "validate_config",
    "expand_sweep",
    "sweepable",
    "sweepable_keys",
    "parse_overrides",
    "apply_overrides",
    "to_toml",
    "flatten",
]

Number = Union[StrictInt, StrictFloat]

# --------------------------------------------------------------------------- resource limits
#: Resource limits on config values (docs/configuration.md, "Limits"): each refuses, with exit 2 and the key,
#: a value that would exhaust memory, threads or time instead of running.
MAX_SEED = 2**32 - 1  #: scikit-learn's ``random_state`` takes at most this; episode seeds are seed + e
MAX_COUNT = 2**31 - 1  #: any other count (rows, sizes): what an int32 index can address
MAX_EPOCHS = 1_000_000  #: epochs, and the epoch counts step_size, patience, checkpoint_every
MAX_EPISODES = 10_000
MAX_BATCH = 2**20  #: rows per batch
MAX_THREADS = 1024  #: torch CPU threads
MAX_WORKERS = 256  #: teacher.workers: worker processes
MAX_RESTARTS = 1000  #: GP optimizer restarts
MAX_AUGMENT = 1_000_000  #: few_shot.augment.count: generated transfer rows
MAX_TRIALS = 1_000_000
#: ``objective.auto.*`` lists and ``teacher.candidates`` hold at most this many entries: every
#: point is a student per fold per episode, every candidate a teacher fit per fold.
MAX_GRID = 32
#: Tables and arrays nest at most this deep in an experiment file or ``--set`` value.
MAX_NESTING = 32
#: float32's largest finite value: numbers that become float32 tensors (loss weights, learning
#: rate, ...) must stay below it, or the student's arithmetic turns them into infinity.
FLOAT32_MAX = 3.4028234663852886e38
MAX_SECONDS = 1e9  #: tune.timeout (about 30 years)


def _within_float32(value: Any) -> Any:
    """A number the student computes with: finite in float32."""
    numbers = value if isinstance(value, list) else [value]
    for v in numbers:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not abs(v) <= FLOAT32_MAX:
            raise ValueError(f"must be at most {FLOAT32_MAX:.4g} in size (the float32 range the student "
                             f"computes in), got {value}")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the rows come from and how features are scaled."""

    source: str = "sklearn:breast_cancer"
    label: str = "label"
    scale: Literal["minmax", "standard", "none"] = "minmax"
    test_size: Number = 0.25

    @field_validator("test_size")
    @classmethod
    def _test_size(cls, value: float) -> float:
        if isinstance(value, int):
            if not 1 <= value <= MAX_COUNT:
                raise ValueError(f"must be a row count >= 1 or a fraction in (0, 1), got {value}")
        elif not 0.0 < value < 1.0:
            raise ValueError(f"must be a row count >= 1 or a fraction in (0, 1), got {value}")
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        scheme, sep, rest = value.partition(":")
        if not sep or not rest:
            raise ValueError(
                f"must look like 'sklearn:NAME', 'csv:PATH', 'npz:PATH' or 'idx:DIR', got {value!r}"
            )
        if scheme not in {"sklearn", "csv", "npz", "idx", "memory"}:  # memory: distill.run(config, data=...)
            raise ValueError(f"scheme must be one of 'sklearn', 'csv', 'npz', 'idx', got {scheme!r} in {value!r}")
        return value


class AugmentConfig(_Section):
    """Points generated from the labelled rows for ``transfer = "augmented"`` (labelled by the teacher)."""

    count: StrictInt = Field(default=200, ge=1, le=MAX_AUGMENT)
    jitter: Number = Field(default=0.05, ge=0)
    mixup: Number = Field(default=0.5, ge=0, le=1)
    mixup_alpha: Number = Field(default=1.0, gt=0)


class FewShotConfig(_Section):
    """The few-shot draw: labelled rows (in total or per class), validation rows, transfer set."""

    labelled: Optional[StrictInt] = Field(default=None, ge=1, le=MAX_COUNT)
    per_class: Optional[StrictInt] = Field(default=None, ge=1, le=MAX_COUNT)
    validation: StrictInt = Field(default=0, ge=0, le=MAX_COUNT)
    transfer: Literal["labelled", "pool", "augmented"] = "labelled"
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @model_validator(mode="after")
    def _one_unit(self) -> "FewShotConfig":
        if self.labelled is not None and self.per_class is not None:
            raise ValueError("set one of few_shot.labelled or few_shot.per_class, not both")
        if self.labelled is None and self.per_class is None:
            object.__setattr__(self, "per_class", 5)
        return self

    @property
    def unit(self) -> Literal["total", "per_class"]:
        """Whether ``labelled``/``validation`` count rows in total or per class."""
        return "per_class" if self.per_class is not None else "total"


class ProtocolConfig(_Section):
    """Independent few-shot draws (episodes) and how they are summarised."""

    episodes: StrictInt = Field(default=1, ge=1, le=MAX_EPISODES)
    metric: Literal["accuracy", "f1_macro", "auroc", "ece"] = "accuracy"
    ci: Literal["t", "bootstrap"] = "t"
    #: systems trained beside the student to tell knowledge from regularisation (``distill.experiment.episodes``):
    #: ``null_teacher`` (same objective, a teacher that knows nothing), ``hard_labels`` (the teacher's
    #: argmax as hard labels, no KL), ``teacher_probs_only`` (the KL term alone, no hard term)
    controls: list[Literal["null_teacher", "hard_labels", "teacher_probs_only"]] = Field(default_factory=list)
    #: the null teacher's probabilities on every transfer row: ``uniform`` (1/K) or ``prior`` (the
    #: labelled rows' class frequencies)
    null_teacher: Literal["uniform", "prior"] = "uniform"
    #: cheap non-network references fitted on the same scaled labelled rows of each episode
    references: list[Literal["logistic_regression"]] = Field(default_factory=list)

    @field_validator("controls", "references")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"each name may appear once, got {value}")
        return value


def _check_kernel(value: str) -> str:
    """A GP kernel expression that parses (without eval), or ``"auto"``."""
    if value.strip() != "auto":
        from distill.teachers.kernels import KernelSyntaxError, parse_kernel

        try:
            parse_kernel(value)
        except KernelSyntaxError as exc:
            raise ValueError(str(exc)) from None
    return value


def _named(message: str) -> PydanticCustomError:
    """A validation error whose text is complete as it stands: printed as ``key: message``."""
    return PydanticCustomError("distill_registry", "{message}", {"message": message})


#: The key given to ``distill.registry.import_class`` here; dropped from its messages, whose location
#: (``teacher.candidates[1].kind``) pydantic knows better.
_KEY = "_"


def _path_problem(exc: ValueError) -> str:
    """An import-path problem from ``import_class`` (called with ``_KEY``) without that key."""
    text = str(exc)
    return text.removeprefix(f"{_KEY}: ").removeprefix(f"{_KEY} ")


def _teacher_kind(value: str, special: bool) -> str:
    """``teacher.kind`` / a candidate's ``kind``: a registered teacher, ``auto`` / ``ensemble`` (``special``),
    or ``module:Class`` naming a distill Teacher subclass (imported and checked; nothing is called)."""
    if special and value in ("auto", "ensemble"):
        return value
    from distill.registry import PluginError
    from distill.teachers.base import BUILTIN_TEACHERS, BUILTIN_TEACHERS_TRAINED, list_teachers, resolve_teacher

    if value in BUILTIN_TEACHERS and (special or value not in BUILTIN_TEACHERS_TRAINED):
        return value  # known without importing its module (and torch, scikit-learn)
    try:
        entry = resolve_teacher(value, _KEY)
    except KeyError:
        raise _named(f"unknown teacher {value!r}; registered: {', '.join(list_teachers())}; or "
                     + ("'auto', 'ensemble', or " if special else "")
                     + "an import path 'module:Class' naming a distill Teacher subclass") from None
    except PluginError as exc:
        raise _named(str(exc)) from None
    except ValueError as exc:  # an import path that fails or names something else
        raise _named(_path_problem(exc)) from None
    if not special and getattr(entry, "learns", True) is False:  # a Teacher class, or a factory that says so
        raise _named(f"{value!r} arrives trained (learns = False); candidates are cross-fitted and must learn")
    return value


#: ``teacher.candidates`` string shorthands and the tables they stand for.
CANDIDATE_SHORTHANDS: dict[str, dict[str, Any]] = {
    "gaussian_process": {"kind": "gaussian_process"},
    "logistic_regression": {"kind": "sklearn", "estimator": "sklearn.linear_model:LogisticRegression",
                            "params": {"max_iter": 10_000}},
    "random_forest": {"kind": "sklearn", "estimator": "sklearn.ensemble:RandomForestClassifier",
                      "params": {"n_estimators": 200}},
}


class CandidateConfig(_Section):
    """One candidate teacher of ``teacher.kind = "auto"`` / ``"ensemble"``: a GP or a scikit-learn estimator.

    A bare string is a shorthand: ``"gaussian_process"``, ``"logistic_regression"``, ``"random_forest"``
    (200 trees; ``random_state`` is the experiment seed wherever the estimator takes one).
    """

    #: a registered teacher that learns (``gaussian_process``, ``sklearn``, a plugin's) or ``module:Class``
    kind: str = "gaussian_process"
    kernel: str = "auto"
    restarts: StrictInt = Field(default=2, ge=0, le=MAX_RESTARTS)
    multi_class: Literal["one_vs_rest", "one_vs_one"] = "one_vs_rest"
    estimator: Optional[str] = None
    params: dict[str, Any] = Field(default_factory=dict)

    _kernel = field_validator("kernel")(_check_kernel)

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        return _teacher_kind(value, special=False)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in CANDIDATE_SHORTHANDS:
                raise ValueError(f"must be one of {', '.join(CANDIDATE_SHORTHANDS)} or a table with key kind, "
                                 f"got {value!r}")
            return copy.deepcopy(CANDIDATE_SHORTHANDS[value])
        if not isinstance(value, (dict, BaseModel)):
            raise ValueError(f"must be a candidate name ({', '.join(CANDIDATE_SHORTHANDS)}) or a table with key "
                             f"kind, got {value!r}")
        return value

    @property
    def name(self) -> str:
        """What reports call this candidate: the shorthand it equals, else its kind or estimator class."""
        dumped = self.model_dump(mode="json", exclude_defaults=True)
        for short, table in CANDIDATE_SHORTHANDS.items():
            if CandidateConfig.model_validate(table).model_dump(mode="json", exclude_defaults=True) == dumped:
                return short
        if self.kind == "sklearn" and self.estimator:
            return self.estimator.rpartition(":")[2] or self.estimator
        return self.kind


def _default_candidates() -> list[CandidateConfig]:
    return [CandidateConfig.model_validate(name) for name in ("gaussian_process", "logistic_regression",
                                                              "random_forest")]


class TeacherConfig(_Section):
    """The teacher: a Gaussian process, any scikit-learn estimator with ``predict_proba``, or a trained network;
    or (``auto`` / ``ensemble``) the best of, or the average of, ``candidates`` by cross-fitting.

    ``params`` are the estimator's kwargs (``sklearn``) or the architecture's kwargs (``network`` with ``arch``).
    ``calibration``: ``temperature`` scales the teacher's log-probabilities by a T fitted on its
    out-of-fold outputs on the labelled rows (``distill.experiment.teacher_cv``); ``none`` leaves them as they are.
    """

    #: a registered teacher (``distill list``), ``auto``, ``ensemble``, or ``module:Class`` (a Teacher subclass)
    kind: str = "gaussian_process"
    calibration: Literal["temperature", "none"] = "temperature"
    candidates: list[CandidateConfig] = Field(default_factory=_default_candidates)

    @field_validator("candidates", mode="before")
    @classmethod
    def _few_candidates(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) > MAX_GRID:
            raise ValueError(f"teacher.candidates must list at most {MAX_GRID} teachers (each is fit once per "
                             f"fold and episode), got {len(value)}")
        return value
    kernel: str = "auto"
    restarts: StrictInt = Field(default=2, ge=0, le=MAX_RESTARTS)
    multi_class: Literal["one_vs_rest", "one_vs_one"] = "one_vs_rest"
    estimator: Optional[str] = None
    params: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Optional[str] = None
    uri: Optional[str] = None
    arch: Optional[str] = None
    input: Literal["raw", "scaled"] = "raw"
    validation: Number = Field(default=0.1, gt=0, lt=1)
    cache: StrictBool = True
    cache_dir: str = ".distill-cache"
    #: worker processes that fit later episodes' teachers while this one trains students (scikit-learn teachers;
    #: 0: every fit in this process; ``auto``: one per core but the training one when the fits left would take
    #: 6 s or more here). Same numbers
    workers: Union[Literal["auto"], Annotated[StrictInt, Field(ge=0, le=MAX_WORKERS)]] = "auto"

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        """One line per wrong value (the union would give one per member)."""
        if value == AUTO:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"teacher.workers must be 'auto' or a whole number of processes, got {value!r}")
        if not 0 <= value <= MAX_WORKERS:
            raise ValueError(f"teacher.workers must be {'>= 0' if value < 0 else f'<= {MAX_WORKERS}'}, got {value}")
        return value
    #: set by ``distill.run(config, teacher=obj)``: what the Python object was. A config file cannot
    #: rebuild an object, so a run with this key needs the teacher passed again (``teacher=``)
    given: Optional[str] = None

    _kernel = field_validator("kernel")(_check_kernel)

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        return _teacher_kind(value, special=True)

    @model_validator(mode="after")
    def _estimator(self) -> "TeacherConfig":
        if self.kind in ("auto", "ensemble"):
            if not self.candidates:
                raise ValueError(f"teacher.candidates must list at least one teacher for teacher.kind = {self.kind!r}")
            for i, c in enumerate(self.candidates):
                if c.kind == "sklearn" and not c.estimator:
                    raise ValueError(
                        f"teacher.candidates[{i}].estimator is required for kind 'sklearn': an import path such as "
                        "'sklearn.ensemble:RandomForestClassifier'"
                    )
        if self.kind == "network" and (self.checkpoint is None) == (self.uri is None):
            raise ValueError(
                "teacher.kind = 'network' needs exactly one of teacher.checkpoint (a distill student.pt) "
                "or teacher.uri (an MLflow model URI)"
            )
        if self.kind == "sklearn" and not self.estimator:
            raise ValueError(
                "teacher.kind = 'sklearn' needs teacher.estimator, an import path such as "
                "'sklearn.ensemble:RandomForestClassifier'"
            )
        return self


#: ``student.init`` schemes (``distill.experiment.weight_init`` has the formulas and papers).
INIT_SCHEMES = ("torch", "glorot_uniform", "he_normal", "normal", "truncated_normal")
#: ``student.init.std`` may name this instead of a number: the layer's own 1/sqrt(fan_in).
STD_FAN_IN = "1/sqrt(fan_in)"


class LayerInitConfig(_Section):
    """How one layer's weights and bias start (``student.init``, or its ``first`` layer override).

    A bare string is the scheme with its defaults: ``init = "he_normal"``.
    """

    scheme: Literal["torch", "glorot_uniform", "he_normal", "normal", "truncated_normal"] = "torch"
    #: ``normal`` / ``truncated_normal`` only: the mean and standard deviation (a number, or
    #: ``"1/sqrt(fan_in)"``); ``truncated_normal`` cuts at mean +- 2 std, redrawing outside.
    mean: Number = 0.0
    std: Union[Number, str] = 1.0
    #: ``scheme``: PyTorch's own bias for ``torch``, zeros otherwise; or ``zeros``, ``normal``
    #: (N(0, bias_std^2)), ``truncated_normal`` (the same, cut at +- 2 bias_std), ``torch`` (the
    #: module's own default bias init). ``bias_std``: a number or ``"1/sqrt(fan_in)"``.
    bias: Literal["scheme", "zeros", "normal", "truncated_normal", "torch"] = "scheme"
    bias_std: Union[Number, str] = 1.0

    _float32 = field_validator("mean")(_within_float32)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"scheme": value}
        if not isinstance(value, (dict, BaseModel)):
            raise ValueError(f"must be a scheme name ({', '.join(INIT_SCHEMES)}) or a table with key scheme, "
                             f"got {value!r}")
        return value

    @field_validator("std", "bias_std", mode="before")
    @classmethod
    def _std(cls, value: Any) -> Any:
        if value == STD_FAN_IN and isinstance(value, str):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= FLOAT32_MAX:
            raise ValueError(f"must be a number > 0 or {STD_FAN_IN!r}, got {value!r}")
        return value

    @field_validator("mean", "std", "bias_std")
    @classmethod
    def _applies(cls, value: Any, info: ValidationInfo) -> Any:
        # A value other than the default that the scheme would ignore is refused (defaults round-trip).
        if info.field_name == "bias_std":
            bias = info.data.get("bias")
            if value != 1.0 and bias is not None and bias not in ("normal", "truncated_normal"):
                raise ValueError(f"applies to bias = 'normal' or 'truncated_normal' only, not bias = {bias!r}")
            return value
        scheme = info.data.get("scheme")
        if value != (0.0 if info.field_name == "mean" else 1.0) and scheme not in (None, "normal", "truncated_normal"):
            raise ValueError(f"applies to scheme 'normal' or 'truncated_normal' only, not {scheme!r}")
        return value

    @property
    def bias_rule(self) -> str:
        """The bias actually used: ``scheme`` resolved to ``torch`` or ``zeros``."""
        if self.bias != "scheme":
            return self.bias
        return "torch" if self.scheme == "torch" else "zeros"


class InitConfig(LayerInitConfig):
    """``student.init``: the scheme for every ``nn.Linear`` / ``nn.Conv*`` layer in module order,
    ``first`` (optional) for the first of them, e.g. the seed post's
    ``{ scheme = "normal", bias = "normal", first = { scheme = "truncated_normal", std = "1/sqrt(fan_in)" } }``.
    """

    first: Optional[LayerInitConfig] = None

    @property
    def is_torch(self) -> bool:
        """PyTorch's own initialisation everywhere: nothing to redraw."""
        return all(s.scheme == "torch" and s.bias_rule == "torch" for s in (self, self.first) if s is not None)


class StudentConfig(BaseModel):
    """The student architecture (registry name or ``module:Class``), its initialisation, and its own kwargs."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    arch: str = "mlp"
    #: the weight initialisation, applied after the constructor (``distill.experiment.weight_init``)
    init: InitConfig = Field(default_factory=InitConfig)

    @field_validator("arch")
    @classmethod
    def _arch(cls, value: str) -> str:
        """A registered student (``distill list``) or ``module:Class`` naming an nn.Module subclass."""
        from distill.registry import PluginError, is_import_path
        from distill.students import STUDENTS, list_students, resolve

        try:
            if is_import_path(value):
                resolve(value, _KEY)
            else:  # a name: known without importing torch when it is built in
                STUDENTS.require(value)
        except PluginError as exc:
            raise _named(str(exc)) from None
        except KeyError:
            raise _named(f"unknown student {value!r}; registered: {', '.join(list_students())}; or an import "
                         "path 'module:Class' naming an nn.Module subclass") from None
        except ValueError as exc:
            if str(exc).startswith("unknown student"):
                raise _named(f"unknown student {value!r}; registered: {', '.join(list_students())}; or an import "
                             "path 'module:Class' naming an nn.Module subclass") from None
            raise _named(_path_problem(exc)) from None
        return value

    @property
    def kwargs(self) -> dict[str, Any]:
        """Everything but ``arch`` and ``init``: passed to the architecture's constructor."""
        return dict(self.model_extra or {})


#: ``objective.kl_weight`` / ``objective.temperature`` may name this instead of a number.
AUTO: Final = "auto"


def _grid(value: list[Any], positive: bool) -> list[float]:
    """A sorted grid of distinct finite numbers (> 0 with ``positive``, else >= 0), float32-sized."""
    if not value:
        raise ValueError("must list at least one value")
    if len(value) > MAX_GRID:
        raise ValueError(f"must list at most {MAX_GRID} values (each is a student per fold and episode), "
                         f"got {len(value)}")
    _within_float32(value)
    for v in value:
        if not math.isfinite(v) or (v <= 0 if positive else v < 0):
            raise ValueError(f"must hold finite numbers {'> 0' if positive else '>= 0'}, got {v}")
    return sorted({float(v) for v in value})


class AutoObjectiveConfig(_Section):
    """The grids ``objective.kl_weight = "auto"`` and ``objective.temperature = "auto"`` choose from.

    ``kl_weights`` always includes 0 (the baseline itself), so "auto" can decline to distil.
    """

    kl_weights: list[Number] = Field(default_factory=lambda: [0.0, 0.5, 2.0])
    temperatures: list[Number] = Field(default_factory=lambda: [1.0, 4.0])
    #: distil only when the best distilled candidate's held-out accuracy gain over kl_weight 0 exceeds
    #: this many standard errors of the paired per-row difference (``distill.experiment.kd_selection.choose``)
    margin: Number = Field(default=2.0, ge=0, le=100)

    @field_validator("kl_weights")
    @classmethod
    def _kl_weights(cls, value: list[Any]) -> list[float]:
        return sorted({0.0, *_grid(value, positive=False)})

    @field_validator("temperatures")
    @classmethod
    def _temperatures(cls, value: list[Any]) -> list[float]:
        return _grid(value, positive=True)


class ObjectiveConfig(_Section):
    """``hard + kl_weight * T^2 * KL (+ l1, l2, metric loss)``; ``hard = "auto"``: BCE (binary) or CE."""

    #: "auto" or a registered hard loss (``distill list``: bce, ce, focal, sce, label_smoothing, plugins')
    hard: str = "auto"
    hard_params: dict[str, Any] = Field(default_factory=dict)
    class_weight: Optional[Union[list[Number], Literal["balanced"]]] = None
    pos_weight: Optional[Union[Number, Literal["balanced"]]] = None
    #: a number, or "auto": chosen per episode by cross-validation on its labelled rows (``auto``)
    kl_weight: Union[Number, Literal["auto"]] = AUTO
    temperature: Union[Number, Literal["auto"]] = AUTO
    direction: Literal["forward", "reverse"] = "forward"
    #: the grids "auto" chooses from (``distill.experiment.kd_selection``)
    auto: AutoObjectiveConfig = Field(default_factory=AutoObjectiveConfig)
    l1: Number = Field(default=0.0, ge=0)
    l2: Number = Field(default=0.0, ge=0)
    metric_loss: Optional[Literal["triplet", "margin_ranking"]] = None
    metric_weight: Number = Field(default=0.1, ge=0)
    metric_margin: Number = Field(default=1.0, ge=0)

    @field_validator("hard")
    @classmethod
    def _hard(cls, value: str) -> str:
        if value == "auto":
            return value
        from distill.losses.registry import HARD_LOSSES, list_losses
        from distill.registry import PluginError

        try:
            HARD_LOSSES.require(value)
        except KeyError:
            raise _named(f"unknown hard loss {value!r}; registered: {', '.join(list_losses())}; or 'auto'") from None
        except PluginError as exc:
            raise _named(str(exc)) from None
        return value

    @field_validator("class_weight")
    @classmethod
    def _class_weight(cls, value: Any) -> Any:
        if isinstance(value, list) and (not value or any(v < 0 for v in value) or not any(v > 0 for v in value)):
            raise ValueError(f"must be 'balanced' or a list of weights >= 0, one per class, at least one > 0 "
                             f"(all zero would switch the hard term off), got {value!r}")
        return value

    @field_validator("pos_weight")
    @classmethod
    def _pos_weight(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not value > 0:
            raise ValueError(f"must be 'balanced' or a number > 0, got {value!r}")
        return value

    _float32 = field_validator("class_weight", "pos_weight", "kl_weight", "temperature", "l1", "l2",
                               "metric_weight", "metric_margin")(_within_float32)

    @field_validator("hard_params")
    @classmethod
    def _hard_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, number in value.items():  # the hard loss's parameters become float32 tensors too
            try:
                _within_float32(number)
            except ValueError as exc:
                raise ValueError(f"{key} {exc}") from None
        return value

    @field_validator("kl_weight", "temperature", mode="before")
    @classmethod
    def _number_or_auto(cls, value: Any, info: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or (
                isinstance(value, str) and value != AUTO):
            raise ValueError(f"objective.{info.field_name} must be a number or 'auto', got {value!r}")
        return value

    @field_validator("kl_weight", "temperature")
    @classmethod
    def _finite(cls, value: Any, info: Any) -> Any:
        if value == AUTO:
            return value
        if not math.isfinite(value):
            raise ValueError(f"must be finite, got {value}")
        if info.field_name == "kl_weight" and not value >= 0:
            raise ValueError(f"objective.kl_weight must be >= 0, got {value}")
        if info.field_name == "temperature" and not value > 0:
            raise ValueError(f"objective.temperature must be > 0, got {value}")
        return float(value)


class EarlyStoppingConfig(_Section):
    """Lightning-style early stopping on a logged per-epoch metric (patience 0: off)."""

    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"
    patience: StrictInt = Field(default=0, ge=0, le=MAX_EPOCHS)
    min_delta: Number = Field(default=0.0, ge=0)


class TrainConfig(_Section):
    """The fit: optimizer, schedule, batching, device, early stopping."""

    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: Number = Field(default=1e-2, gt=0)
    momentum: Number = Field(default=0.0, ge=0, lt=1)
    weight_decay: Number = Field(default=0.0, ge=0)
    epochs: StrictInt = Field(default=100, ge=1, le=MAX_EPOCHS)
    batch_size: StrictInt = Field(default=32, ge=1, le=MAX_BATCH)
    replacement: StrictBool = False
    scheduler: Literal["none", "cosine", "step"] = "none"
    step_size: StrictInt = Field(default=30, ge=1, le=MAX_EPOCHS)
    gamma: Number = Field(default=0.1, gt=0, le=1)
    grad_clip: Optional[Number] = Field(default=None, gt=0)
    restore_best: StrictBool = True
    device: str = "auto"
    threads: StrictInt = Field(default=0, ge=0, le=MAX_THREADS)
    detect_anomaly: StrictBool = False
    #: train students of one architecture across episodes, sweep values and trial episodes as one
    #: stacked model when only their KL weight, temperature and seed differ (false: one at a time)
    batched: StrictBool = True
    #: "bf16": the student's forward pass under bfloat16 autocast (for CUDA; the loss stays float32)
    precision: Literal["fp32", "bf16"] = "fp32"
    #: torch.compile the student's forward pass (worth it on a GPU for long fits; compiling costs seconds)
    compile: StrictBool = False
    #: write the fit state to RUN_DIR/checkpoints every N epochs (0: only when interrupted) ...
    checkpoint_every: StrictInt = Field(default=1, ge=0, le=MAX_EPOCHS)
    #: ... and at most once per this many seconds (0: every N epochs exactly)
    checkpoint_interval: Number = Field(default=10.0, ge=0)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)

    _float32 = field_validator("lr", "weight_decay", "grad_clip")(_within_float32)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
            raise ValueError(f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")
        return value


DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "objective.kl_weight": {"low": 0.0, "high": 10.0},
    "objective.temperature": {"low": 1.0, "high": 10.0},
}


def _check_space_entry(key: str, spec: Any) -> dict[str, Any] | str:
    """A normalised ``{low, high, log, step}`` or ``{choices}`` entry, or the problem as one line."""
    where = f"tune.space.{key}"
    if not isinstance(spec, dict):
        return f"{where} must be a table {{ low, high, log }} or {{ choices = [...] }}, got {_describe(spec)}"
    if "choices" in spec:
        extra = sorted(set(spec) - {"choices"})
        choices = spec["choices"]
        if extra:
            return f"{where}: 'choices' cannot be combined with {', '.join(extra)}"
        if not isinstance(choices, list) or not choices or any(isinstance(c, (list, dict)) for c in choices):
            return f"{where}.choices must be a non-empty list of scalars, got {_describe(choices)}"
        return {"choices": list(choices)}
    unknown = sorted(set(spec) - {"low", "high", "log", "step"})
    if unknown:
        return f"unknown key '{where}.{unknown[0]}'; a range takes low, high, log, step"
    if "low" not in spec or "high" not in spec:
        return f"{where} needs low and high (or choices)"
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    numbers = (int, float)
    if isinstance(low, bool) or isinstance(high, bool) or not isinstance(low, numbers) or not isinstance(high, numbers):
        return f"{where}: low and high must be numbers, got low={_describe(low)}, high={_describe(high)}"
    if not isinstance(log, bool):
        return f"{where}.log must be true or false, got {_describe(log)}"
    if low > high:
        return f"{where}: low must be <= high, got low={low}, high={high}"
    if log and low <= 0:
        return f"{where}: a log range must stay above 0, got low={low}"
    step = spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, numbers) or step <= 0 or log):
        return f"{where}.step must be a number > 0 (and not with log = true), got {_describe(step)}"
    out: dict[str, Any] = {"low": low, "high": high, "log": log}
    if step is not None:
        out["step"] = step
    return out


class TuneConfig(_Section):
    """Optuna search over config keys, scored on the validation rows only."""

    trials: StrictInt = Field(default=30, ge=1, le=MAX_TRIALS)
    timeout: Optional[Number] = Field(default=None, gt=0, le=MAX_SECONDS)
    metric: Literal["f1_macro", "accuracy", "auroc", "ece", "loss"] = "f1_macro"
    direction: Literal["auto", "maximize", "minimize"] = "auto"
    storage: Optional[str] = None
    study: Optional[str] = None
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    heartbeat_interval: StrictInt = Field(
        default=10, ge=1, le=3600,
        description="seconds between a running trial's heartbeats in an RDB storage (postgresql://, mysql://, "
                    "sqlite:///); a worker that stops sending them (killed, machine lost) is found by the others",
    )
    grace_period: StrictInt = Field(
        default=30, ge=1, le=86400,
        description="seconds without a heartbeat after which another worker marks a RUNNING trial FAIL and "
                    "re-queues it (RDB storage only; keep it a few heartbeat_interval long)",
    )
    max_retry: StrictInt = Field(
        default=3, ge=0, le=100,
        description="how often a trial whose worker died is re-queued (a new trial with the same parameters) "
                    "before it is left FAIL (RDB storage only)",
    )
    space: dict[str, Any] = Field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_SPACE.items()}, validate_default=True
    )

    @field_validator("space")
    @classmethod
    def _space(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("the search space is empty; name at least one key")
        problems: list[str] = []
        out: dict[str, Any] = {}
        for key, spec in value.items():
            field = _field(key)
            if field is None and not key.startswith("student."):
                problems.append(f"tune.space names unknown key '{key}'")
                continue
            if not sweepable(key):  # as for a sweep: a key read once per run would give every trial the same
                problems.append(f"tune.space cannot search '{key}': a run reads it once or it changes no number")
                continue
            if field is not None and _admits_list(field.annotation):
                problems.append(f"tune.space cannot search '{key}': it is not a scalar")
                continue
            checked = _check_space_entry(key, spec)
            if isinstance(checked, str):
                problems.append(checked)
            else:
                out[key] = checked
        if problems:
            raise ValueError("; ".join(problems))
        return out

    @property
    def resolved_direction(self) -> Literal["maximize", "minimize"]:
        """``auto``: minimise loss and calibration error, maximise the rest."""
        if self.direction != "auto":
            return self.direction
        return "minimize" if self.metric in ("loss", "ece") else "maximize"


class TrackingConfig(_Section):
    """MLflow: on by default; URI from here, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``."""

    enabled: StrictBool = True
    uri: Optional[str] = None
    experiment: Optional[str] = None
    fallback: Literal["error", "local"] = "error"
    #: seconds one request to a tracking server may take, and how often a failed one is repeated:
    #: a server that stalls fails the run (or falls back) in bounded time instead of hanging
    timeout: Number = Field(default=10.0, gt=0, le=3600)
    retries: StrictInt = Field(default=2, ge=0, le=10)


class OutputsConfig(_Section):
    """What the run directory holds besides the results (``summary.json``, ``history.csv``, ``student.pt``)."""

    #: draw the PNG plots (after ``summary.json``; ``run --no-plots`` turns them off)
    plots: StrictBool = True


class Config(_Section):
    """A whole experiment: one TOML file.

    A list in place of a scalar (``objective.kl_weight = [0, 0.1, 1]``) sweeps that key; the
    Config then holds the first value and ``sweep`` names the key and all its values.
    """

    _sweep: Optional[tuple[str, tuple[Any, ...]]] = PrivateAttr(default=None)

    name: str = "experiment"
    seed: StrictInt = Field(default=0, ge=0, le=MAX_SEED)
    data: DataConfig = Field(default_factory=DataConfig)
    few_shot: FewShotConfig = Field(default_factory=FewShotConfig)
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    outputs: OutputsConfig = Field(default_factory=OutputsConfig)

    @property
    def sweep(self) -> Optional[tuple[str, tuple[Any, ...]]]:
        """``(dotted key, values)`` when a key is swept, else None."""
        return self._sweep

    @model_validator(mode="after")
    def _episode_seeds(self) -> "Config":
        last = self.seed + self.protocol.episodes - 1
        if last > MAX_SEED:
            raise ValueError(
                f"seed + protocol.episodes - 1 must be <= {MAX_SEED} (episode e uses seed + e), "
                f"got seed {self.seed} with {self.protocol.episodes} episode(s)"
            )
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", value):
            raise ValueError(
                f"must start with a letter or digit and use only letters, digits, '_', '-', '.', got {value!r}"
            )
        return value


# --------------------------------------------------------------------------- loading


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``["a.b=1", "c=[2,3]"]`` into a nested dict; values are TOML literals, else strings."""
    problems: list[str] = []
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
            problems.append(f"--set expects key=value with a dotted key, got {item!r}")
            continue
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        except RecursionError:
            problems.append(f"--set {key}: tables and arrays may nest at most {MAX_NESTING} levels deep")
            continue
        set_dotted(nested, key, value)
    if problems:
        raise ConfigError(*problems)
    return nested


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree["a"]["b"] = value`` for ``dotted = "a.b"``, creating tables as needed."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A raw config tree with ``--set`` items (``"train.epochs=5"``) laid over it; ``raw`` is not changed."""
    return _merge(raw, parse_overrides(overrides))


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` laid over it, table by table (a new dict; neither input changes)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return str(value)


_PYDANTIC_RULES = [
    (re.compile(r"^Input should be greater than or equal to (.+)$"), r"must be >= \1"),
    (re.compile(r"^Input should be greater than (.+)$"), r"must be > \1"),
    (re.compile(r"^Input should be less than or equal to (.+)$"), r"must be <= \1"),
    (re.compile(r"^Input should be less than (.+)$"), r"must be < \1"),
    (re.compile(r"^Input should be (.+)$"), r"must be \1"),
]


def _format_error(error: ErrorDetails) -> str:
    """One line per pydantic error: ``dotted.key must be <rule>, got <value>``."""
    loc = [str(p) for p in error["loc"] if not str(p).startswith("function-")]
    # Union members add their type name to the location ("test_size.int"); drop them.
    loc = [p for p in loc if p not in {"int", "float", "str", "bool", "constrained-int", "constrained-float"}]
    loc = [p for p in loc if not re.match(r"^(list|literal|union|dict|tuple|function-)\[", p)]
    key = ".".join(loc) or "(top level)"
    key = re.sub(r"\.candidates\.(\d+)", r".candidates[\1]", key)  # teacher.candidates[1].estimator
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return f"unknown key '{key}'"
    if kind == "missing":
        return f"missing required key '{key}'"
    msg = str(error["msg"])
    if kind == "distill_registry":  # complete as it stands (names the value): only the key is added
        return f"{key}: {msg}"
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        if msg.startswith(("set one of", "teacher.kind", "unknown key '", "seed + ", key)):
            return msg  # the message names its key already
        return f"{key}: {msg}" if ", got" in msg else f"{key}: {msg}, got {_describe(value)}"
    for pattern, repl in _PYDANTIC_RULES:
        if pattern.match(msg):
            msg = pattern.sub(repl, msg)
            break
    return f"{key} {msg}, got {_describe(value)}"


_TYPE_LINE = re.compile(r"^(?P<key>\S+) must be (?P<what>a valid [\w ]+?), got (?P<got>.*)$")


def _one_line_per_value(lines: list[str]) -> list[str]:
    """A value refused by each member of a union (``Number``: ``must be a valid integer`` and ``must be a valid
    number``) is one line saying what it must be: ``train.lr must be a number, got 'abc'``."""
    out: list[str] = []
    kinds: dict[tuple[str, str], tuple[int, list[str]]] = {}
    for line in lines:
        match = _TYPE_LINE.match(line)
        if match is None:
            out.append(line)
            continue
        where = (match["key"], match["got"])
        if where not in kinds:
            kinds[where] = (len(out), [])
            out.append(line)
        index, what = kinds[where]
        what.append(match["what"].removeprefix("a valid "))
        said = "a number" if {"integer", "number"} <= set(what) else " or ".join(f"a valid {w}" for w in what)
        out[index] = f"{match['key']} must be {said}, got {match['got']}"
    return out


def _known_keys(model: type[BaseModel]) -> list[str]:
    return sorted(model.model_fields)


def _field(dotted: str) -> Any:
    """The pydantic FieldInfo behind a dotted key, or None (unknown key or free-form kwargs)."""
    model: Any = Config
    field = None
    for part in dotted.split("."):
        if typing.get_origin(model) is Union:  # an optional table (student.init.first): the table's keys
            tables = [a for a in typing.get_args(model) if isinstance(a, type) and issubclass(a, BaseModel)]
            model = tables[0] if len(tables) == 1 else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = field.annotation
    return field


def _admits_list(annotation: Any) -> bool:
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, dict, set):
        return True
    if origin is not None:
        return any(_admits_list(a) for a in typing.get_args(annotation))
    return annotation in (list, tuple, dict)


def _find_sweeps(raw: dict[str, Any], prefix: str = "") -> list[tuple[str, list[Any]]]:
    """Dotted keys whose value is a list where the schema wants a scalar: those are sweeps."""
    found: list[tuple[str, list[Any]]] = []
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            found.extend(_find_sweeps(value, dotted + "."))
        elif isinstance(value, list):
            field = _field(dotted)
            if field is not None and not _admits_list(field.annotation):
                found.append((dotted, value))
    return found


_INT64 = 2**63


def _tree_problems(raw: dict[str, Any]) -> list[str]:
    """Values no key can use, anywhere in the tree (free-form tables too): NaN or infinite
    numbers, integers beyond 64 bits, and tables or arrays nested deeper than ``MAX_NESTING``.

    Walked without recursion, so that a hostile depth cannot exhaust the stack here either.
    """
    problems: list[str] = []
    stack: list[tuple[str, Any, int]] = [(str(k), v, 1) for k, v in reversed(list(raw.items()))]
    while stack:
        key, value, depth = stack.pop()
        if isinstance(value, (dict, list)) and depth > MAX_NESTING:
            where = key.split("[", 1)[0]
            problems.append(f"{where}: tables and arrays may nest at most {MAX_NESTING} levels deep")
            continue
        if isinstance(value, dict):
            stack.extend((f"{key}.{k}", v, depth + 1) for k, v in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend((f"{key}[{i}]", v, depth + 1) for i, v in reversed(list(enumerate(value))))
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{key} must be a finite number, got {value}")
        elif isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
            problems.append(f"{key} is out of range: {value} does not fit in 64 bits")
    return problems


def _substitute(raw: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    set_dotted(out, dotted, value)
    return out


#: Keys a run reads once, whatever the sweep value: the data set (loaded once), threads, batching,
#: checkpointing and the soft-target cache, and what names or drives the run rather than a value
#: (``teacher.validation`` only matters to ``teacher train``; ``teacher.given`` records a Python object); and keys that change no number:
#: anomaly detection, compiling, and ``teacher.multi_class`` (one_vs_one gives probabilities for two
#: classes only, where it equals one_vs_rest). An entry ending in "." is a section.
_READ_ONCE = (
    "name", "data.source", "data.label", "protocol.", "tune.", "tracking.", "outputs.", "train.device", "train.threads",
    "train.batched", "train.checkpoint_every", "train.checkpoint_interval", "teacher.cache", "teacher.cache_dir",
    "teacher.workers",
    "teacher.validation", "train.detect_anomaly", "train.compile", "teacher.multi_class", "teacher.given",
)

_MONITORED = "train.early_stopping.monitor is logged (val_* metrics need few_shot.validation > 0)"


def _monitored(config: "Config") -> bool:
    """Whether the fit logs the early-stopping monitor (train_* always, val_* with validation rows)."""
    monitor = config.train.early_stopping.monitor
    return monitor.startswith("train_") or (monitor.startswith("val_") and config.few_shot.validation > 0)


#: Keys that change the numbers only in some configs: (key or section, the condition, said in words).
_TAKES_EFFECT: list[tuple[str, Any, str]] = [
    ("few_shot.augment.", lambda c: c.few_shot.transfer == "augmented", 'few_shot.transfer = "augmented"'),
    ("teacher.candidates", lambda c: c.teacher.kind in ("auto", "ensemble"), 'teacher.kind = "auto" or "ensemble"'),
    ("teacher.kernel", lambda c: c.teacher.kind == "gaussian_process", 'teacher.kind = "gaussian_process"'),
    ("teacher.restarts", lambda c: c.teacher.kind == "gaussian_process", 'teacher.kind = "gaussian_process"'),
    ("teacher.estimator", lambda c: c.teacher.kind == "sklearn", 'teacher.kind = "sklearn"'),
    ("teacher.checkpoint", lambda c: c.teacher.kind == "network", 'teacher.kind = "network"'),
    ("teacher.uri", lambda c: c.teacher.kind == "network", 'teacher.kind = "network"'),
    ("teacher.arch", lambda c: c.teacher.kind == "network", 'teacher.kind = "network"'),
    ("teacher.input", lambda c: c.teacher.kind == "network", 'teacher.kind = "network"'),
    ("objective.temperature", lambda c: c.objective.kl_weight != 0, "objective.kl_weight > 0 or 'auto'"),
    ("objective.direction", lambda c: c.objective.kl_weight != 0, "objective.kl_weight > 0 or 'auto'"),
    ("objective.auto.", lambda c: AUTO in (c.objective.kl_weight, c.objective.temperature),
     "objective.kl_weight or objective.temperature = 'auto'"),
    ("objective.metric_weight", lambda c: c.objective.metric_loss is not None, "objective.metric_loss is set"),
    ("objective.metric_margin", lambda c: c.objective.metric_loss is not None, "objective.metric_loss is set"),
    ("train.momentum", lambda c: c.train.optimizer == "sgd", 'train.optimizer = "sgd"'),
    ("train.step_size", lambda c: c.train.scheduler == "step", 'train.scheduler = "step"'),
    ("train.gamma", lambda c: c.train.scheduler == "step", 'train.scheduler = "step"'),
    ("train.early_stopping.patience", lambda c: _monitored(c), _MONITORED),
    ("train.restore_best", lambda c: _monitored(c), _MONITORED),
    *((f"train.early_stopping.{key}", lambda c: _monitored(c) and (c.train.early_stopping.patience > 0
                                                                    or c.train.restore_best),
       _MONITORED + " and either train.early_stopping.patience > 0 or train.restore_best")
      for key in ("monitor", "mode", "min_delta")),
]


def _no_effect(key: str, configs: list["Config"]) -> str | None:
    """Why a sweep over ``key`` would give every value the same numbers in these configs (None: it would not)."""
    for entry, takes_effect, condition in _TAKES_EFFECT:
        if (key == entry or (entry.endswith(".") and key.startswith(entry))) and not all(
            takes_effect(c) for c in configs
        ):
            return (f"{key} cannot be swept here: it changes nothing unless {condition}, so every value would"
                    " give the same numbers")
    return None


def sweepable(key: str) -> bool:
    """Whether a sweep over ``key`` changes what runs per value (``distill.experiment.episodes`` reads it per value)."""
    return not any(key == entry or (entry.endswith(".") and key.startswith(entry)) for entry in _READ_ONCE)


def _leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if issubclass(annotation, LayerInitConfig):  # a table that also takes a scalar: a scheme name
                keys.append(f"{prefix}{name}")
            keys.extend(_leaf_keys(annotation, f"{prefix}{name}."))
        elif not _admits_list(annotation):
            keys.append(f"{prefix}{name}")
    return keys


def sweepable_keys() -> list[str]:
    """Every scalar key a list may sweep, in schema order."""
    return [key for key in _leaf_keys(Config) if sweepable(key)]


def validate_config(raw: dict[str, Any]) -> Config:
    """Build a Config from a nested dict; every problem at once in one ConfigError.

    A list where the schema wants a scalar is a sweep: every value is validated, and the
    returned Config holds the first one with ``Config.sweep`` naming the key and all values.
    """
    tree = _tree_problems(raw)
    if tree:
        raise ConfigError(*tree)
    sweeps = _find_sweeps(raw)
    if len(sweeps) > 1:
        raise ConfigError(
            "sweep one key at a time; lists were given for " + ", ".join(k for k, _ in sweeps)
        )
    if not sweeps:
        return _validate_plain(raw)
    key, values = sweeps[0]
    if not sweepable(key):
        raise ConfigError(
            f"{key} cannot be swept: a run reads it once, not per sweep value, or it changes no number, so every"
            f" value would report the first one's; give it one value (got {values!r}) or sweep one of:"
            f" {', '.join(sweepable_keys())}"
        )
    if not values:
        raise ConfigError(f"{key}: a sweep needs at least one value, got []")
    if any(isinstance(v, (list, dict)) for v in values):
        raise ConfigError(f"{key}: sweep values must be scalars, got {values!r}")
    if len({repr(v) for v in values}) != len(values):
        raise ConfigError(f"{key}: sweep values must be distinct, got {values!r}")
    problems: list[str] = []
    configs: list[Config] = []
    for value in values:
        try:
            configs.append(_validate_plain(_substitute(raw, key, value)))
        except ConfigError as exc:
            problems.extend(p for p in exc.problems if p not in problems)
    if problems:
        raise ConfigError(*problems)
    validated = [_value_at(c, key) for c in configs]
    same = next(((a, b) for i, a in enumerate(validated) for b in validated[i + 1 :] if a == b), None)
    if same is not None:  # e.g. kl_weight = [1, 1.0]: two points with one value's numbers
        raise ConfigError(f"{key}: sweep values must be distinct, got {values!r} (two of them are {same[0]!r})")
    no_effect = _no_effect(key, configs)
    if no_effect is not None:
        raise ConfigError(no_effect)
    config = configs[0]
    config._sweep = (key, tuple(values))
    return config


def _value_at(config: Config, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def expand_sweep(config: Config) -> list[tuple[Any, Config]]:
    """One plain Config per sweep value (``[(None, config)]`` without a sweep)."""
    if config.sweep is None:
        return [(None, config)]
    key, values = config.sweep
    base = config.model_dump(mode="python", exclude_none=True)
    return [(value, _validate_plain(_substitute(base, key, value))) for value in values]


def _validate_plain(raw: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines: list[str] = []
        for err in exc.errors():
            line = _format_error(err)
            if err["type"] == "extra_forbidden":
                # Walk down to the table that holds the unknown key (e.g. train.early_stopping).
                parents = [str(p) for p in err["loc"][:-1]]
                model: Any = Config
                for part in parents:
                    is_model = isinstance(model, type) and issubclass(model, BaseModel)
                    field = model.model_fields.get(part) if is_model else None
                    model = field.annotation if field is not None else None
                if isinstance(model, type) and issubclass(model, BaseModel):
                    keys = _known_keys(model)
                    prefix = "".join(f"{p}." for p in parents)
                    line += f"; known keys here: {', '.join(prefix + k for k in keys)}"
            if line not in lines:
                lines.append(line)
        lines = _one_line_per_value(lines)
        # Deterministic order: by key.
        raise ConfigError(*sorted(lines)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read an experiment TOML file, apply ``--set`` overrides, validate everything at once."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file '{path}' not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: tables and arrays may nest at most {MAX_NESTING} levels deep") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read experiment file '{path}': {exc}") from None
    if "name" not in raw:
        raw["name"] = re.sub(r"[^A-Za-z0-9_.\-]", "_", path.stem) or "experiment"
    if overrides:
        raw = apply_overrides(raw, overrides)
    return validate_config(raw)


# --------------------------------------------------------------------------- writing


def config_dict(config: Config) -> dict[str, Any]:
    """The resolved config as a plain nested dict (None values dropped; a sweep as its list)."""
    tree = config.model_dump(mode="python", exclude_none=True)
    if config.sweep is not None:
        key, values = config.sweep
        set_dotted(tree, key, list(values))
    return tree


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (for tables and MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


#: TOML basic-string escapes; other control characters are written as \uXXXX (TOML allows none raw).
_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        escaped = (_TOML_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if c < " " or c == "\x7f" else c) for c in value)
        return '"' + "".join(escaped) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_\-]+", key) else _toml_value(key)


def to_toml(tree: dict[str, Any]) -> str:
    """Serialise a nested dict of scalars, lists and tables as TOML (read back by tomllib).

    Non-empty dicts become ``[section]`` tables; empty ones are written inline as ``{}``.
    """
    lines: list[str] = []

    def table(node: dict[str, Any], path: list[str]) -> None:
        scalars = {k: v for k, v in node.items() if not (isinstance(v, dict) and v)}
        tables = {k: v for k, v in node.items() if isinstance(v, dict) and v}
        if path:
            lines.append(f"\n[{'.'.join(_toml_key(p) for p in path)}]")
        for key, value in scalars.items():
            if value is not None:
                lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        for key, value in tables.items():
            table(value, path + [key])

    table(tree, [])
    return "\n".join(lines).lstrip("\n") + "\n"
