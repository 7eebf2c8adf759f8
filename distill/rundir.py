"""The run directory: creation, atomic writes, and the log file.

Every file is written to a temporary name in the same folder and renamed when complete, so a
run that stops midway never leaves a file (above all ``summary.json``) that looks finished.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from distill.errors import UserError

__all__ = ["create_run_dir", "atomic_write", "write_text", "write_json", "attach_log_file", "to_jsonable"]


def create_run_dir(name: str, output: str | Path | None, root: str | Path = "runs") -> Path:
    """``runs/<timestamp>-<name>/`` (a suffix when taken), or ``output`` as given; checked writable."""
    folder = Path(output) if output is not None else Path(root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder if output is not None else _claim_new_folder(folder, f"{datetime.now():%Y%m%d-%H%M%S}-{name}")
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)  # a unique name: another run may probe too
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"output folder '{folder}' is not writable: {exc.strerror or exc}") from None
    stale = path / "summary.json"
    if stale.exists():  # an earlier run in the same --output folder: never let it look current
        stale.unlink()
    return path


def _claim_new_folder(root: Path, stem: str) -> Path:
    """Create ``root/stem`` (or ``stem-2``, ``stem-3``, ...) with an exclusive ``mkdir``.

    Runs started in the same second (a shell loop over seeds) each get their own folder: a name
    another process created between a check and a mkdir is never shared.
    """
    path, suffix = root / stem, 2
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            path, suffix = root / f"{stem}-{suffix}", suffix + 1


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it into place."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` atomically (UTF-8)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def to_jsonable(value: Any) -> Any:
    """Plain JSON values: NaN and infinities become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON atomically; non-finite numbers become null."""
    return write_text(path, json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n")


def attach_log_file(path: Path, logger: logging.Logger) -> logging.Handler:
    """Send ``logger``'s records to ``path`` too; returns the handler so the caller can remove it."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return handler
