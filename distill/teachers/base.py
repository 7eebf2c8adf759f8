"""The Teacher base class and the teacher registry.

A teacher follows the scikit-learn contract: ``fit(x, y) -> self``, fitted state ends in ``_``,
and ``logits(x)`` returns an ``[N, num_classes]`` array in class order ``0..K-1``
(log-probabilities are valid logits). Teachers know nothing of the training engine.

Teachers come from the registry (``teacher.kind``): the built-ins, names registered in code with
:func:`register_teacher`, and installed packages' entry points in group ``distill.teachers``
(``name = "pkg.module:Object"``, a :class:`Teacher` subclass or a factory). ``teacher.kind`` may also
be an import path ``"module:Class"`` naming a :class:`Teacher` subclass (checked before it is called).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, ClassVar, Union

import numpy as np

from distill.registry import Registry, import_class, is_import_path

__all__ = [
    "Teacher",
    "NotFittedError",
    "TEACHERS",
    "register_teacher",
    "list_teachers",
    "create_teacher",
    "resolve_teacher",
    "is_teacher_class",
    "probabilities_to_logits",
    "PROBABILITY_FLOOR",
]

#: Probabilities are clamped to at least this before the log, so 0 gives a finite logit.
PROBABILITY_FLOOR = 1e-12


class Teacher:
    """What the protocol needs of a teacher: ``fit`` and ``logits``, plus hooks with defaults.

    Subclass it and implement ``fit`` and ``logits``; override a hook only when the default is wrong
    for your teacher. Nothing here needs ``super().__init__()``: every default is a class attribute
    or a method.
    """

    #: classes of the whole dataset: ``logits`` returns one column per class
    num_classes: int
    #: True: the teacher learns from the rows ``fit`` gets (it is cross-fitted on the labelled rows).
    #: False: it arrives trained and its outputs do not depend on the fit rows (a network teacher).
    learns: ClassVar[bool] = True
    #: which features ``fit`` / ``logits`` expect: the run's ``"scaled"`` ones or the ``"raw"`` ones
    input_space: str = "scaled"

    def fit(self, x: np.ndarray, y: np.ndarray) -> "Teacher":
        """Learn from rows ``x`` with labels ``y`` in ``0..num_classes-1``; return ``self``."""
        raise NotImplementedError(f"{type(self).__name__} must implement fit(x, y) -> self (a distill Teacher)")

    def logits(self, x: np.ndarray) -> np.ndarray:
        """``[N, num_classes]`` finite logits (or log-probabilities) for rows ``x``, classes in order."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement logits(x) -> ndarray [N, num_classes] (a distill Teacher)"
        )

    def check(self, in_shape: tuple[int, ...]) -> None:
        """Refuse, with a ValueError naming the key, settings that cannot work on data of ``in_shape``;
        called by ``check`` and ``run`` before anything is fit. Default: nothing to check."""
        return None

    def fingerprint(self) -> str | None:
        """What identifies this teacher's outputs for the soft-target cache (e.g. a file's digest);
        None: its config settings do."""
        return None

    def heldout_rows(self, data_hash: str) -> np.ndarray | None:
        """For a teacher that arrives trained on this data (``data_hash``): the rows it never saw, so
        the test rows can be drawn from them. None: none recorded."""
        return None

    def diagnostics(self) -> dict[str, Any]:
        """JSON-serialisable facts about the fitted teacher; ``warnings`` lists what a user should see."""
        return {"warnings": []}

    def describe(self) -> str:
        """One human line: what this teacher is and its main settings (``check`` and the run log print it)."""
        return type(self).__name__


class NotFittedError(RuntimeError):
    """A teacher was asked for predictions before ``fit``."""


#: A registered teacher: a :class:`Teacher` subclass, or a factory ``(num_classes, **kwargs) -> Teacher``.
TeacherEntry = Union[type, Callable[..., Teacher]]


def is_teacher_class(cls: type) -> bool:
    """Whether ``cls`` is a :class:`Teacher` subclass (what ``teacher.kind`` as an import path may name)."""
    return inspect.isclass(cls) and issubclass(cls, Teacher)


def _entry_problem(obj: Any) -> str | None:
    """Why an entry point's object cannot be a teacher (None: a Teacher subclass or a factory function)."""
    if inspect.isclass(obj):
        return None if issubclass(obj, Teacher) else (
            f"names the class {obj.__qualname__}, which is not a distill Teacher subclass")
    if callable(obj):
        return None
    return f"names a {type(obj).__name__} value, not a Teacher subclass or a factory"


#: the built-in teachers and the module that registers each (imported when the name is first used)
BUILTIN_TEACHERS = {"gaussian_process": "distill.teachers.gaussian_process", "sklearn": "distill.teachers.gaussian_process",
                    "network": "distill.teachers.network"}
#: the built-in teachers that arrive trained (``learns = False``): never a cross-fitted candidate
BUILTIN_TEACHERS_TRAINED = frozenset({"network"})
TEACHERS: Registry[TeacherEntry] = Registry("teacher", group="distill.teachers", accepts=_entry_problem,
                                            builtin=BUILTIN_TEACHERS, reserved=("auto", "ensemble"), paths=True)


def register_teacher(name: str, entry: TeacherEntry | None = None) -> Any:
    """Register a teacher under ``name`` (twice is an error): a :class:`Teacher` subclass, built as
    ``cls(num_classes=..., **teacher.params)`` (plus ``random_state`` / ``in_shape`` when it takes them),
    or a factory taking the teacher keyword arguments (a factory whose teachers arrive trained says so with
    an attribute ``learns = False``). A decorator when ``entry`` is omitted."""
    return TEACHERS.register_checked(name, entry, _entry_problem, "register_teacher")


def list_teachers() -> list[str]:
    """Registered teacher kinds (built-in, registered in code, and installed entry points)."""
    return TEACHERS.names()


def resolve_teacher(kind: str, key: str = "teacher.kind") -> TeacherEntry:
    """The class or factory for a registered name or an import path ``module:Class``.

    An import path must name a :class:`Teacher` subclass (checked before anything is called; anything
    else is refused naming ``key``). Raises KeyError for an unknown name (listing the registered ones),
    ValueError (:class:`PluginError`, :class:`UnsafeImportError`) for a broken entry point or a bad path.
    """
    if is_import_path(kind):
        return import_class(kind, key, "a distill Teacher subclass", is_teacher_class)
    return TEACHERS.get(kind)


def create_teacher(kind: str, **kwargs: Any) -> Teacher:
    """Build the teacher ``kind`` (a registered name or ``module:Class``) from the teacher keyword
    arguments (``num_classes``, ``params``, ``random_state``, ``in_shape``, ...); unknown kinds list the
    registered ones."""
    entry = resolve_teacher(kind)
    if inspect.isclass(entry):
        teacher = _build_from_class(kind, entry, kwargs)
    else:
        teacher = entry(**kwargs)
    if not isinstance(teacher, Teacher):
        raise ValueError(f"teacher '{kind}' built a {type(teacher).__name__}, not a distill Teacher; subclass "
                         "distill.teachers.base.Teacher")
    return teacher


def _build_from_class(kind: str, cls: type, kwargs: dict[str, Any]) -> Teacher:
    """``cls(num_classes=..., **teacher.params)``, plus ``random_state`` and ``in_shape`` when ``__init__``
    names them; a parameter it does not take is an error naming ``teacher.params.X``."""
    params = dict(kwargs.get("params") or {})
    try:
        sig: inspect.Signature | None = inspect.signature(cls)
    except (TypeError, ValueError):
        sig = None
    named = {n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} if sig else set()
    takes_any = sig is None or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    if "num_classes" in params:
        raise ValueError(f"teacher.params.num_classes cannot be set: teacher '{kind}' gets it from the data")
    if "num_classes" not in named and not takes_any:
        raise ValueError(f"teacher '{kind}': {cls.__qualname__}.__init__ must accept num_classes")
    unknown = sorted(set(params) - named) if not takes_any else []
    if unknown:
        accepted = sorted(named - {"num_classes", "random_state", "in_shape"})
        raise ValueError(f"teacher.params.{unknown[0]} is not a parameter of teacher '{kind}' ({cls.__qualname__}); "
                         f"accepted: {', '.join('teacher.params.' + a for a in accepted) or '(none)'}")
    args: dict[str, Any] = {"num_classes": kwargs["num_classes"]}
    for extra in ("random_state", "in_shape"):
        if extra in named and extra not in params and extra in kwargs:
            args[extra] = kwargs[extra]
    try:
        return cls(**args, **params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"teacher.params for teacher '{kind}': {exc}") from None


def probabilities_to_logits(proba: np.ndarray) -> np.ndarray:
    """``log(p)`` with ``p`` clamped to ``[PROBABILITY_FLOOR, 1]``: finite for p = 0 or 1."""
    return np.log(np.clip(np.asarray(proba, dtype=np.float64), PROBABILITY_FLOOR, 1.0))

