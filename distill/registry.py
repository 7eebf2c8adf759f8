"""A small name -> factory registry shared by teachers, students, datasets and losses.

Registering a name twice is an error, and an unknown name is an error that lists the
registered ones (torchdistill overwrites silently and lists nothing; we do better).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["Registry", "import_object", "import_class", "has_methods", "is_import_path", "UnsafeImportError"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories for one extension point (``kind`` names it in messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None):
        """Register ``entry`` under ``name``; usable as a decorator when ``entry`` is omitted."""
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = obj
            return obj

        return add(entry) if entry is not None else add

    def get(self, name: str) -> T:
        """The entry registered under ``name``; a KeyError listing the registered names if none."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} '{name}'; registered: {', '.join(self.names()) or '(none)'}"
            ) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


class UnsafeImportError(ValueError):
    """An import path names something other than the kind of class its key promises."""


def import_object(path: str) -> object:
    """Import ``"package.module:Attribute"``; raises ValueError with a clear message on failure.

    Importing runs the module's top-level code, as any Python import does: only call this with a
    path the user wrote (a config, the command line), never one read from a data file or a
    checkpoint. Use :func:`import_class` to also check what the path names.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"'{path}' is not an import path of the form 'module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module '{module_name}' (from '{path}'): {exc}") from None
    obj: object = module
    for part in attr.split("."):
        try:  # on a class, getattr_static: no descriptor or metaclass __getattr__ runs
            obj = getattr(obj, part) if inspect.ismodule(obj) else inspect.getattr_static(obj, part)
        except AttributeError:
            raise ValueError(f"module '{module_name}' has no attribute '{attr}' (from '{path}')") from None
    return obj


def import_class(path: str, key: str, kind: str, accepts: Callable[[type], bool]) -> type:
    """Import ``"module:Class"`` and check, before anything is called, that it names a class of ``kind``.

    Functions, builtins, modules, instances and classes that fail ``accepts`` are refused with an
    :class:`UnsafeImportError` naming ``key``: ``teacher.estimator = "os:system"`` or
    ``"subprocess:Popen"`` is never called. Only the named module's import runs, as with any import.
    """
    try:
        obj = import_object(path)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None
    if not inspect.isclass(obj):
        what = "a module" if inspect.ismodule(obj) else "a function" if callable(obj) else f"a {type(obj).__name__} value"
        raise UnsafeImportError(f"{key} '{path}' is {what}, not {kind}; refused (nothing was called)")
    if not accepts(obj):
        raise UnsafeImportError(f"{key} '{path}' is the class {obj.__qualname__}, which is not {kind}; refused "
                                "(nothing was called)")
    return obj


def has_methods(cls: type, *names: str) -> bool:
    """Whether ``cls`` defines (or inherits) callable attributes ``names``, read without running descriptors."""
    for name in names:
        try:
            attr = inspect.getattr_static(cls, name)
        except AttributeError:
            return False
        # A method, or a descriptor that yields one (scikit-learn's ``available_if`` on SVC's predict_proba).
        if not (callable(attr) or isinstance(attr, (staticmethod, classmethod)) or hasattr(type(attr), "__get__")):
            return False
    return True


def is_import_path(name: str) -> bool:
    """True for ``"module:Name"`` strings (a user's own class), False for registry names."""
    return ":" in name
