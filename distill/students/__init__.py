"""Student networks: a registry by name, and ``build`` for a name or a user's ``module:Class``; the
``student.pt`` format that rebuilds a trained one anywhere (``checkpoint``).

A student class takes ``in_features`` (or ``in_shape``) and ``num_outputs`` plus its own
keyword arguments. Binary problems use one output logit, multiclass problems C logits.
Names come from the built-ins, :func:`register_student` in code, and installed packages' entry
points in group ``distill.students`` (``name = "pkg.module:Class"``, an ``nn.Module`` subclass).
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any, Callable

from distill.registry import Registry, import_class, is_import_path

if TYPE_CHECKING:  # torch is imported where a student is checked or built, not to list or validate names
    from torch import nn

__all__ = ["STUDENTS", "register_student", "list_students", "build", "StudentArgumentError", "num_outputs_for",
           "is_module_class", "resolve"]



def _entry_problem(obj: Any) -> str | None:
    """Why an entry point's object cannot be a student (None: an ``nn.Module`` subclass)."""
    from torch import nn

    if inspect.isclass(obj):
        return None if issubclass(obj, nn.Module) else f"names the class {obj.__qualname__}, which is not an nn.Module subclass"
    return f"names a {'function' if callable(obj) else type(obj).__name__ + ' value'}, not an nn.Module subclass"


#: the built-in students and the module that registers each (imported when the name is first used)
BUILTIN_STUDENTS = {"cnn": "distill.students.cnn", "mlp": "distill.students.mlp"}
STUDENTS: Registry[Callable[..., nn.Module]] = Registry("student", group="distill.students", accepts=_entry_problem,
                                                         builtin=BUILTIN_STUDENTS, paths=True)


class StudentArgumentError(ValueError):
    """A student's kwargs are wrong; ``key`` names the offending ``student.*`` key when known."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def _registration_problem(obj: Any) -> str | None:
    """Why ``obj`` cannot be registered as a student (None: an ``nn.Module`` subclass, or a callable that is
    not a class, taken as a factory: what it returns is checked when ``build`` calls it)."""
    from torch import nn

    if inspect.isclass(obj):
        return None if issubclass(obj, nn.Module) else (
            f"got the class {obj.__qualname__}, which is not an nn.Module subclass; expected an nn.Module "
            "subclass or a factory function returning an nn.Module")
    if isinstance(obj, nn.Module):  # callable, but calling it runs forward: it is a built student, not a factory
        return (f"got an instance of {type(obj).__qualname__}; register its class (or a factory function "
                "returning an nn.Module), not a built model")
    if callable(obj):
        return None
    return (f"got a value of type {type(obj).__name__}; expected an nn.Module subclass or a factory function "
            "returning an nn.Module")


def register_student(name: str, entry: Callable[..., nn.Module] | None = None) -> Any:
    """Register a student class (an ``nn.Module`` subclass) or a factory building an ``nn.Module`` under
    ``name`` (twice is an error); anything else is refused here, not at its first use. A decorator when
    ``entry`` is omitted."""
    return STUDENTS.register_checked(name, entry, _registration_problem, "register_student")


def list_students() -> list[str]:
    """Registered student architectures (built-in, registered in code, and installed entry points)."""
    return STUDENTS.names()


def num_outputs_for(num_classes: int, hard: str = "auto") -> int:
    """One logit for a binary problem with a one-logit loss (BCE, focal), else one per class."""
    return 1 if num_classes == 2 and hard in ("auto", "bce", "focal") else num_classes


def is_module_class(cls: type) -> bool:
    """Whether ``cls`` is an ``nn.Module`` subclass (what ``student.arch`` / ``teacher.arch`` may name)."""
    from torch import nn

    return issubclass(cls, nn.Module)


def resolve(name: str, key: str = "student.arch") -> Callable[..., nn.Module]:
    """The class for a registry name or ``module:Class`` import path (an ``nn.Module`` subclass, checked
    before it is called; anything else is refused naming ``key``)."""
    if is_import_path(name):
        return import_class(name, key, "an nn.Module subclass", is_module_class)
    try:
        return STUDENTS.get(name)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None


def build(name: str, in_shape: tuple[int, ...], num_classes: int, *, num_outputs: int | None = None,
          key: str = "student.arch", **kwargs: Any) -> nn.Module:
    """Build the student ``name`` for inputs of ``in_shape`` and ``num_classes`` classes.

    Example:
        >>> build("mlp", (30,), 2, hidden=[10, 10], activation="sigmoid")
    """
    cls = resolve(name, key)
    outputs = num_outputs if num_outputs is not None else num_outputs_for(num_classes)
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        sig = None
    args: dict[str, Any] = {}
    if sig is not None:
        params = sig.parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        if "in_shape" in params:
            args["in_shape"] = tuple(in_shape)
        elif "in_features" in params:
            args["in_features"] = int(math.prod(in_shape))
        else:
            raise StudentArgumentError(
                f"student '{name}' must accept 'in_features' or 'in_shape' in its constructor"
            )
        if "num_outputs" not in params:
            raise StudentArgumentError(f"student '{name}' must accept 'num_outputs' in its constructor")
        if not takes_any:
            accepted = {n for n in params if n not in ("self", "in_shape", "in_features", "num_outputs")}
            unknown = sorted(set(kwargs) - accepted)
            if unknown:
                raise StudentArgumentError(
                    f"unknown key 'student.{unknown[0]}' for student '{name}'; accepted: "
                    + (", ".join(f"student.{a}" for a in sorted(accepted)) or "(none)"),
                    key=f"student.{unknown[0]}",
                )
    else:
        args["in_features"] = int(math.prod(in_shape))
    args["num_outputs"] = outputs
    try:
        model = cls(**args, **kwargs)
    except StudentArgumentError:
        raise
    except (TypeError, ValueError) as exc:
        raise StudentArgumentError(f"student '{name}': {exc}") from None
    from torch import nn

    if not isinstance(model, nn.Module):
        raise StudentArgumentError(f"student '{name}' did not build an nn.Module (got {type(model).__name__})")
    return model
