"""distill: knowledge distillation for the low-data regime.

A teacher that is good with little data (a Gaussian-process classifier on a few labelled rows, any
scikit-learn classifier, or a network that is already trained) gives soft targets; a small student
network learns from the few hard labels plus a weighted KL term towards them. The public API:

* ``run(config, data=..., teacher=...) -> RunResult``: teacher, distilled student and no-distillation
  baseline over few-shot episodes, with intervals and paired comparisons; ``resume(run_dir)``;
  ``check(config)``: validate and describe without training.
* ``tune(config, ...) -> TuneResult``: Optuna over ``tune.space`` on validation rows.
* ``train_teacher(config) -> TeacherResult``: train a network teacher; ``predict(source, data)``.
* ``DistilledClassifier``: the same distillation as a scikit-learn estimator.
* ``fit(model, TrainingRows, FitSettings, num_classes=K) -> FitResult``: the training engine on your own
  tensors; ``distillation_loss``: the objective, ``hard + kl_weight * T^2 * KL``.
* ``load_config`` / ``Config``: the experiment, typed; ``register_teacher`` / ``register_student`` /
  ``register_loss``: extension points (also as entry points, see docs/extending.md).

Names are imported on first use, so ``import distill`` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from distill.version import __version__

#: public name -> the module that defines it
_EXPORTS = {
    "load_config": "distill.config",
    "Config": "distill.config",
    "run": "distill.api",
    "resume": "distill.api",
    "tune": "distill.api",
    "check": "distill.api",
    "train_teacher": "distill.api",
    "predict": "distill.api",
    "registered": "distill.catalog",
    "RunResult": "distill.api",
    "TuneResult": "distill.api",
    "TeacherResult": "distill.api",
    "Episode": "distill.api",
    "Estimate": "distill.api",
    "Difference": "distill.api",
    "SweepPoint": "distill.api",
    "fit": "distill.engine.loop",
    "FitSettings": "distill.engine.loop",
    "FitResult": "distill.engine.loop",
    "TrainingRows": "distill.engine.loop",
    "EvaluationRows": "distill.engine.loop",
    "distillation_loss": "distill.losses.objective",
    "register_teacher": "distill.teachers.base",
    "Teacher": "distill.teachers.base",
    "register_student": "distill.students",
    "register_loss": "distill.losses.registry",
    "DistilledClassifier": "distill.estimator",
    "UserError": "distill.errors",
    "ConfigError": "distill.errors",
    "DataError": "distill.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'distill' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from distill.api import (  # noqa: F401
        Difference,
        Episode,
        Estimate,
        RunResult,
        SweepPoint,
        TeacherResult,
        TuneResult,
        check,
        predict,
        resume,
        run,
        train_teacher,
        tune,
    )
    from distill.catalog import registered  # noqa: F401
    from distill.config import Config, load_config  # noqa: F401
    from distill.engine.loop import EvaluationRows, FitResult, FitSettings, TrainingRows, fit  # noqa: F401
    from distill.errors import ConfigError, DataError, UserError  # noqa: F401
    from distill.estimator import DistilledClassifier  # noqa: F401
    from distill.losses.objective import distillation_loss  # noqa: F401
    from distill.losses.registry import register_loss  # noqa: F401
    from distill.students import register_student  # noqa: F401
    from distill.teachers.base import Teacher, register_teacher  # noqa: F401
