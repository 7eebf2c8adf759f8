"""What a config can name: the registered datasets, teachers, students and hard losses.

Kept apart from ``distill.api`` so that ``distill list`` answers without importing torch, scikit-learn's
models, MLflow or Optuna: the registries know their built-in names without importing them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["registered"]


def registered() -> dict[str, list[str]]:
    """Registered names per extension point (``datasets``, ``teachers``, ``students``, ``losses``), with
    every installed plugin imported, and ``broken``: one line per plugin that cannot be used, and why."""
    from distill.data.sources import list_datasets
    from distill.losses.registry import HARD_LOSSES, list_losses
    from distill.registry import Registry
    from distill.students import STUDENTS, list_students
    from distill.teachers.base import TEACHERS, list_teachers

    registries: dict[str, Registry[Any]] = {"teacher": TEACHERS, "student": STUDENTS, "loss": HARD_LOSSES}
    for registry in registries.values():  # import every installed plugin now, so that broken ones show
        registry.load_plugins()
    broken = [f"{what} '{name}': {problem}" for what, registry in registries.items()
              for name, problem in registry.broken().items()]
    return {"datasets": list_datasets(), "teachers": list_teachers(), "students": list_students(),
            "losses": list_losses(), "broken": broken}
