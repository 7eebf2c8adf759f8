"""A small name -> factory registry shared by teachers, students, datasets and losses.

Registering a name twice is an error, and an unknown name is an error that lists the
registered ones (torchdistill overwrites silently and lists nothing; we do better).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["Registry", "import_object"]

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


def import_object(path: str) -> object:
    """Import ``"package.module:Attribute"``; raises ValueError with a clear message on failure."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"'{path}' is not an import path of the form 'module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module '{module_name}' (from '{path}'): {exc}") from None
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module '{module_name}' has no attribute '{attr}' (from '{path}')")
        obj = getattr(obj, part)
    return obj


def is_import_path(name: str) -> bool:
    """True for ``"module:Name"`` strings (a user's own class), False for registry names."""
    return ":" in name
