"""Reading untrusted torch files without running code from them.

``torch.load(weights_only=True)`` refuses pickled code, but other loaders do not hold to it:
``torch.export.load`` quietly retries a payload with ``weights_only=False`` when the safe load
fails, unpickles "opaque" constants with ``pickle.loads``, and loads pickled weights with
``weights_only=False``. :func:`no_unpickling` closes that class for whatever runs inside it: on
the calling thread, every ``torch.load`` is forced to ``weights_only=True`` (a call asking for
``False`` is refused), and ``pickle.load``/``pickle.loads``/``pickle.Unpickler`` and TorchScript's
object unpickler are refused. Other threads are untouched.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["UnsafeFileError", "no_unpickling", "load_weights_only", "load_export_program"]


class UnsafeFileError(ValueError):
    """A file asked to be unpickled (which could run code) inside :func:`no_unpickling`."""


_guarded: set[int] = set()  # thread ids inside no_unpickling()
_lock = threading.Lock()
_originals: dict[str, Any] = {}


def _refuse(what: str) -> Any:
    raise UnsafeFileError(f"it asks for {what}, which could run code from the file")


class _GuardedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that refuses to be made on a guarded thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if threading.get_ident() in _guarded:
            _refuse("pickle.Unpickler")
        super().__init__(*args, **kwargs)


def _install() -> None:
    """Wrap the unpickling entry points once; the wrappers act only on guarded threads."""
    if _originals:
        return
    _originals.update(
        torch_load=torch.load,
        serialization_load=torch.serialization.load,
        pickle_load=pickle.load,
        pickle_loads=pickle.loads,
        pickle_load_obj=getattr(torch._C, "_pickle_load_obj", None),
    )
    real_load = _originals["torch_load"]

    def guarded_torch_load(f: Any, *args: Any, weights_only: bool | None = None, **kwargs: Any) -> Any:
        if threading.get_ident() in _guarded:
            if weights_only is False or kwargs.get("pickle_module") not in (None, pickle):
                _refuse("torch.load(weights_only=False)")
            kwargs.pop("pickle_module", None)
            return real_load(f, *args, weights_only=True, **kwargs)
        return real_load(f, *args, weights_only=weights_only, **kwargs)

    def guarded(name: str, what: str) -> Any:
        original = _originals[name]

        def call(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() in _guarded:
                _refuse(what)
            return original(*args, **kwargs)

        return call

    torch.load = guarded_torch_load
    torch.serialization.load = guarded_torch_load
    pickle.load = guarded("pickle_load", "pickle.load")
    pickle.loads = guarded("pickle_loads", "pickle.loads")
    pickle.Unpickler = _GuardedUnpickler  # type: ignore[misc]  # replacing a stdlib class is the point here
    if _originals["pickle_load_obj"] is not None:
        torch._C._pickle_load_obj = guarded("pickle_load_obj", "TorchScript's object unpickler")


@contextlib.contextmanager
def no_unpickling() -> Iterator[None]:
    """Inside, on this thread, nothing can be unpickled except by ``torch.load(weights_only=True)``."""
    with _lock:
        _install()
    ident = threading.get_ident()
    nested = ident in _guarded
    _guarded.add(ident)
    try:
        yield
    finally:
        if not nested:
            _guarded.discard(ident)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def load_weights_only(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a ValueError naming the file when refused."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: one line is ours
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a file we can read safely"
        raise ValueError(
            f"'{path}' cannot be read with torch.load(weights_only=True) (refused: loading it could run code, "
            f"or it is not a torch file): {_load_error(exc)}"
        ) from None


def _load_error(exc: BaseException) -> str:
    """What ``torch.load`` refused, in one line: its ``WeightsUnpickler error`` sentence when there is one,
    not its first line, which offers to load the file with ``weights_only=False`` (running its code)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"WeightsUnpickler error:\s*(.*)", text)
    if found is None:
        return _first_line(exc)
    reason = found.group(1).split(" Please use ", 1)[0].strip()  # the rest suggests allow-listing the class
    return reason or _first_line(exc)


def load_export_program(path: Path) -> Any:
    """``torch.export.load`` under :func:`no_unpickling`: a program whose members need unpickling is refused.

    torch logs a traceback when its safe load fails before it tries the unsafe one; those records are
    silenced here, since the refusal is reported in one line.
    """
    import logging

    quiet = [logging.getLogger(name) for name in ("torch._export.serde.serialize", "torch.export",
                                                  "torch.export.pt2_archive._package")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        with no_unpickling(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.load(str(path))
    except UnsafeFileError as exc:
        raise UnsafeFileError(f"'{path}' is refused: {exc}") from None
    except Exception as exc:  # noqa: BLE001
        cause: BaseException | None = exc
        while cause is not None:  # torch may wrap our refusal in its own error
            if isinstance(cause, UnsafeFileError):
                raise UnsafeFileError(f"'{path}' is refused: {cause}") from None
            cause = cause.__cause__ or cause.__context__
        raise ValueError(f"'{path}' is not a torch.export program: {_first_line(exc)}") from None
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
