"""A small name -> factory registry shared by teachers, students, datasets and losses.

Registering a name twice is an error, and an unknown name is an error that lists the
registered ones (torchdistill overwrites silently and lists nothing; we do better).

A registry may also read an entry-point group (``distill.teachers``, ``distill.students``,
``distill.losses.hard``): installed packages add names there in their ``pyproject.toml``. The group is
read on the first lookup or listing, and an entry point's module is imported only when its name
is used (or ``load_plugins`` is called, as ``distill list`` does). A broken entry point (its import
fails, it names the wrong kind of object, or its name is taken) never breaks an import: it is a
:class:`PluginError` naming the entry point and its distribution, raised when its name is used.
"""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Callable, Iterator, Mapping
from importlib import import_module
from typing import Any, Generic, TypeVar

__all__ = ["Registry", "PluginError", "import_object", "import_class", "has_methods", "is_import_path",
           "UnsafeImportError"]

T = TypeVar("T")


class PluginError(ValueError):
    """An installed entry point that cannot be used (import error, wrong kind of object, name clash)."""


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class Registry(Generic[T]):
    """Maps names to factories for one extension point (``kind`` names it in messages).

    Args:
        kind: what an entry is, in messages ("teacher", "student", "hard loss").
        group: the entry-point group that installed packages extend (None: code registration only).
        accepts: checks an entry point's object before it is used: the problem in words
            ("is the class X, not a Teacher subclass"), or None when it is fine.
        builtin: each built-in name and the module that registers it, imported by name when that name is
            first used (so listing or checking names imports neither torch nor scikit-learn, and a
            registry never imports the package that defines it back).
        reserved: names that mean something else where this registry is consulted (``auto``); no entry
            may take them.
        paths: whether the key this registry serves also takes import paths ``module:Class``: then no
            name may contain ``:``.
    """

    def __init__(self, kind: str, group: str | None = None, accepts: Callable[[Any], str | None] | None = None,
                 builtin: Mapping[str, str] | None = None, reserved: tuple[str, ...] = (),
                 paths: bool = False) -> None:
        self.kind = kind
        self.group = group
        self._accepts = accepts
        self.reserved = tuple(reserved)
        self.paths = paths
        self._builtin = dict(builtin or {})
        self._entries: dict[str, T] = {}
        self._plugins: dict[str, Any] = {}  # entry points found but not imported yet, by name
        self._broken: dict[str, str] = {}  # name -> why its entry point cannot be used (one line)
        self._from_plugins: set[str] = set()  # entries loaded from entry points
        self._ready = False
        self._lock = threading.RLock()

    def register_checked(self, name: str, entry: T | None, problem: Callable[[Any], str | None], caller: str):
        """``register``, refusing an entry that ``problem`` describes (one line naming ``caller``) at
        registration rather than at its first use; a duplicate name is reported first, as ``register`` does."""
        def add(obj: T) -> T:
            if name not in self._entries:
                found = problem(obj)
                if found is not None:
                    raise ValueError(f"{caller}('{name}'): {found}")
            return self.register(name, obj)

        return add(entry) if entry is not None else add

    def register(self, name: str, entry: T | None = None):
        """Register ``entry`` under ``name``; usable as a decorator when ``entry`` is omitted."""
        def add(obj: T) -> T:
            if name in self._builtin and getattr(obj, "__module__", None) != self._builtin[name]:
                raise ValueError(f"{self.kind} '{name}' is already registered (built in)")
            if not self._allowed(name):
                taken = ", ".join(repr(r) for r in self.reserved)
                raise ValueError(f"{name!r} cannot name a {self.kind}: names are non-empty strings"
                                 + (" without ':' (an import path)" if self.paths else "")
                                 + (f", and not {taken}" if taken else ""))
            with self._lock:
                if name in self._entries:
                    raise ValueError(f"{self.kind} '{name}' is already registered")
                if name in self._plugins:
                    raise ValueError(f"{self.kind} '{name}' is already provided by "
                                     f"{_label(self._plugins[name], self.group)}")
                self._entries[name] = obj
            return obj

        return add(entry) if entry is not None else add

    def _is_builtin(self, name: str) -> bool:
        """Whether the entry ``name`` is distill's own (defined in the distill package)."""
        if name in self._builtin:
            return True
        module = getattr(self._entries[name], "__module__", None) or ""
        return module == "distill" or module.startswith("distill.")

    def _allowed(self, name: object) -> bool:
        return (isinstance(name, str) and bool(name) and name not in self.reserved
                and not (self.paths and is_import_path(name)))

    def _ensure(self) -> None:
        """Read the entry-point group (names only; nothing is imported, built-ins included)."""
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            if self.group is not None:
                self._discover(self.group)
            self._ready = True

    def _discover(self, group: str) -> None:
        from importlib.metadata import entry_points

        try:
            found = list(entry_points(group=group))
        except Exception as exc:  # noqa: BLE001 - corrupt metadata of some installed package: say so, go on
            self._broken[f"({group})"] = f"the entry points of group {group} cannot be read: {_first_line(exc)}"
            return
        seen: dict[str, Any] = {}
        for ep in found:
            label = _label(ep, group)
            if ep.name in seen:  # two distributions give the same name: neither is used
                first = self._plugins.pop(ep.name, None) or seen[ep.name]
                self._broken[ep.name] = (f"{label} and {_label(first, group)} both define {self.kind} "
                                         f"'{ep.name}'; uninstall one of them")
                continue
            seen[ep.name] = ep
            if not self._allowed(ep.name):
                self._broken[ep.name] = f"{label} uses the reserved name '{ep.name}'; rename the entry point"
            elif ep.name in self._entries or ep.name in self._builtin:
                where = "built-in" if self._is_builtin(ep.name) else "registered in code"
                self._broken[ep.name] = (f"{label} clashes with the {where} {self.kind} '{ep.name}'; rename the "
                                         "entry point in that package")
            else:
                self._plugins[ep.name] = ep

    def _load(self, name: str) -> T:
        """Import the entry point ``name`` and check its object (a PluginError if it cannot be used)."""
        with self._lock:
            if name in self._entries:
                return self._entries[name]
            if name in self._broken:
                raise PluginError(self._broken[name])
            ep = self._plugins[name]
            label = _label(ep, self.group)
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - any failure of a third-party import: the entry point is broken
                problem: str | None = f"cannot be imported: {_first_line(exc)}"
            else:
                problem = self._accepts(obj) if self._accepts is not None else None
            del self._plugins[name]
            if problem is not None:
                self._broken[name] = f"{label} {problem}"
                raise PluginError(self._broken[name])
            self._entries[name] = obj
            self._from_plugins.add(name)
            return obj

    def unregister(self, name: str) -> None:
        """Remove a name registered in code (e.g. to register an edited class again in a notebook);
        built-in names and entry points stay."""
        with self._lock:
            if name in self._builtin or name in self._entries and self._is_builtin(name) or name in self._from_plugins:
                raise ValueError(f"{self.kind} '{name}' is built in or installed, not registered in code")
            if name not in self._entries:
                raise KeyError(f"{self.kind} '{name}' is not registered")
            del self._entries[name]

    def refresh(self) -> None:
        """Forget the installed entry points read so far (and what was loaded from them): the group is
        read again on the next lookup, e.g. after installing a plugin package in a running session."""
        with self._lock:
            for name in self._from_plugins:
                self._entries.pop(name, None)
            self._from_plugins.clear()
            self._plugins.clear()
            self._broken.clear()
            self._ready = False

    def get(self, name: str) -> T:
        """The entry registered under ``name``; a KeyError listing the registered names if none, a
        PluginError if an installed entry point of that name cannot be used."""
        self._ensure()
        if name in self._broken:
            raise PluginError(self._broken[name])
        if name in self._entries:
            return self._entries[name]
        if name in self._builtin:
            return self._load_builtin(name)
        if name in self._plugins:
            return self._load(name)
        raise KeyError(
            f"unknown {self.kind} '{name}'; registered: {', '.join(self.names()) or '(none)'}"
        )

    def require(self, name: str) -> None:
        """Fail as ``get`` would (KeyError for an unknown name, PluginError for a broken entry point) without
        importing a built-in's module: what config validation asks, before torch is needed."""
        self._ensure()
        if name in self._builtin and name not in self._broken:
            return
        self.get(name)

    def _load_builtin(self, name: str) -> T:
        """Import the module that registers the built-in ``name`` (once) and return its entry."""
        import_module(self._builtin[name])
        with self._lock:
            if name not in self._entries:  # a wrong table entry: a bug in distill, not the user's input
                raise RuntimeError(f"module {self._builtin[name]} did not register {self.kind} '{name}'")
            return self._entries[name]

    def names(self) -> list[str]:
        """Registered names and installed entry points' names, sorted (broken entry points left out)."""
        self._ensure()
        return sorted((set(self._entries) | set(self._builtin) | set(self._plugins)) - set(self._broken))

    def load_plugins(self) -> None:
        """Import every installed entry point now (``distill list``), so that broken ones are known."""
        self._ensure()
        for name in list(self._plugins):
            try:
                self._load(name)
            except PluginError:
                pass

    def broken(self) -> dict[str, str]:
        """Entry points found unusable so far: name -> the problem (``load_plugins`` finds them all)."""
        self._ensure()
        return dict(sorted(self._broken.items()))

    def __contains__(self, name: object) -> bool:
        """Whether ``get(name)`` knows the name (an entry point that turns out broken included)."""
        self._ensure()
        return name in self._entries or name in self._builtin or name in self._plugins or name in self._broken

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _label(ep: Any, group: str | None) -> str:
    """``entry point 'name = pkg.mod:Obj' (group distill.teachers) of distribution pkg 1.0``."""
    dist = getattr(ep, "dist", None)
    try:
        name, version = (dist.name, dist.version) if dist is not None else (None, None)
    except Exception:  # noqa: BLE001 - unreadable metadata: the entry point is still named
        name, version = None, None
    owner = f"distribution {name} {version}" if name else "an unknown distribution"
    return f"entry point '{ep.name} = {ep.value}' (group {group}) of {owner}"


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
    if module_name.startswith("."):
        raise ValueError(f"'{path}' names a relative module; give the absolute one ('package.module:Name')")
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
