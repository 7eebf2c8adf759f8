"""The run directory: creation, atomic writes, and the log file.

Every file is written to a temporary name in the same folder and renamed when complete, so a
run that stops midway never leaves a file (above all ``summary.json``) that looks finished.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from distill.errors import UserError

__all__ = [
    "claim_run_dir", "RunDirClaim", "atomic_write", "write_text", "write_json", "attach_log_file",
    "to_jsonable", "json_text",
]


@dataclass
class RunDirClaim:
    """A run directory this process claimed, and the folders it created to do so.

    ``discard()`` puts things back as they were (for a run that fails before training): a folder
    the run created goes, with the parents it created; a folder that was empty is emptied again.
    """

    path: Path
    created: list[Path] = field(default_factory=list)  # deepest last: path's new ancestors, then path itself
    resumed: bool = False

    def discard(self) -> None:
        if self.resumed:
            return  # an earlier run's folder: what is there is that run's
        if self.path in self.created:
            shutil.rmtree(self.path, ignore_errors=True)
        else:  # a folder that was empty before this run
            for child in self.path.iterdir() if self.path.is_dir() else []:
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        for folder in reversed([c for c in self.created if c != self.path]):
            try:
                folder.rmdir()  # only if still empty: a concurrent run may have put its folder there
            except OSError:
                break


def claim_run_dir(name: str, output: str | Path | None, root: str | Path = "runs", *, resume: bool = False,
                  hint: str = "") -> RunDirClaim:
    """``runs/<timestamp>-<name>/`` (a suffix when taken), or ``output``: a new or empty folder.

    A run never writes into a folder that holds anything (it would overwrite or mix with what is
    there); ``resume=True`` is the one way into an existing run directory. The claim is exclusive:
    a new folder by ``mkdir``, an empty one by creating ``log.txt`` with ``O_EXCL``, so two runs
    pointed at one folder cannot share it.
    ``hint`` ends the "not empty" message (how else the user may proceed).
    """
    folder = Path(output) if output is not None else Path(root)
    created = _missing_ancestors(folder)
    try:
        if resume:
            _probe(folder)
            return RunDirClaim(folder, [], resumed=True)
        if folder.exists() and not folder.is_dir():
            raise UserError(f"output folder '{folder}' is a file, not a folder; choose a new folder")
        folder.mkdir(parents=True, exist_ok=True)
        if output is None:  # the exclusive mkdir is the claim
            path = _claim_new_folder(folder, f"{datetime.now():%Y%m%d-%H%M%S}-{name}")
            created.append(path)
            _probe(path)
        else:
            path = folder
            if any(path.iterdir()):
                raise UserError(f"output folder '{folder}' is not empty; choose a new folder{hint}")
            try:  # the claim of an existing empty folder: the run's log.txt, created exclusively
                os.close(os.open(path / "log.txt", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            except FileExistsError:  # another run claimed the same empty folder a moment ago
                raise UserError(f"output folder '{folder}' is not empty (another run is writing there); "
                                f"choose a new folder{hint}") from None
    except OSError as exc:
        _rmdirs(created)
        raise UserError(f"output folder '{folder}' is not writable: {exc.strerror or exc}") from None
    except UserError:
        _rmdirs(created)
        raise
    return RunDirClaim(path, created)


def _probe(folder: Path) -> None:
    """Raise ``OSError`` unless a file can be created in ``folder`` (a unique name: another run may probe too)."""
    fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
    os.close(fd)
    os.unlink(probe)


def _missing_ancestors(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, outermost first (what ``mkdir -p`` creates)."""
    missing = []
    for candidate in [folder, *folder.parents]:
        if candidate.exists() or candidate.is_symlink():
            break
        missing.append(candidate)
    return list(reversed(missing))


def _rmdirs(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            break


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


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it into place (what ``write``
    returns is ignored, so ``Path.write_text`` serves)."""
    path = Path(path)
    tmp: Path | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
        tmp = Path(tmp_name)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
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


def json_text(data: dict[str, Any]) -> str:
    """``data`` as the indented JSON that ``write_json`` writes; non-finite numbers become null."""
    return json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n"


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON atomically; non-finite numbers become null."""
    return write_text(path, json_text(data))


def attach_log_file(path: Path, logger: logging.Logger) -> logging.Handler:
    """Send ``logger``'s records to ``path`` too; returns the handler so the caller can remove it."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return handler
