"""The soft-target cache: teacher outputs kept by one key, a digest of what they depend on.

The key (``teach``'s ``outputs_key``) hashes the teacher's identity (a network's file bytes; a fitted
teacher's settings, seed and code), the exact rows and labels it is fitted on, the exact input rows it
is asked about (so the preprocessing is in the key too) and how it is cross-fitted. A changed teacher
or changed data never reuses stale targets.

One ``SoftTargetCache`` serves one run or one search (``run`` and ``tune`` both make theirs with
``distill.experiment.teach.soft_target_cache``) in two layers under that one key:

* in memory, the outputs ``teach`` built (on the device), for the life of the object: sweep values that
  share a teacher, and tuning trials that revisit an episode, reuse them without a lookup;
* on disk under ``teacher.cache_dir`` (None: off), across processes: ``<key>.npz`` (read with
  ``allow_pickle=False``) plus ``<key>.json`` diagnostics, each written atomically. ``hits`` and
  ``misses`` count these lookups.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from distill.outputs.rundir import atomic_write, to_jsonable

__all__ = ["SoftTargetCache", "array_digest", "data_hash"]

log = logging.getLogger("distill")

#: What the memory layer holds: ``distill.experiment.teach.TeacherOutputs``.
Outputs = TypeVar("Outputs")


def array_digest(*arrays: np.ndarray) -> str:
    """sha256 over the arrays' dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for array in arrays:
        a = np.ascontiguousarray(array)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def data_hash(x: np.ndarray, y: np.ndarray) -> str:
    """Identifies a dataset's exact rows and labels: recorded in a teacher checkpoint by ``teacher train``,
    and asked of a trained teacher (``Teacher.heldout_rows``) to find the rows it never saw."""
    return array_digest(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64))


class SoftTargetCache(Generic[Outputs]):
    """Teacher outputs by key: in memory for this object's life, and on disk under ``folder`` (None: no disk)."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.hits = 0
        self.misses = 0
        self._memory: dict[str, Outputs] = {}

    @staticmethod
    def key(*parts: str) -> str:
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    def recall(self, key: str) -> Outputs | None:
        """The outputs remembered under ``key`` by this object, or None."""
        return self._memory.get(key)

    def remember(self, key: str, outputs: Outputs) -> None:
        """Keep ``outputs`` in memory under ``key`` until ``forget``."""
        self._memory[key] = outputs

    def forget(self) -> None:
        """Drop the outputs held in memory (a run does so after each episode: episodes never share a
        teacher, their seeds differ), so that finished episodes' rows do not stay on the device."""
        self._memory.clear()

    def stored(self, key: str) -> bool:
        """Whether the disk layer holds an entry under ``key`` (not read here: ``get`` checks it)."""
        return self.folder is not None and all((self.folder / f"{key}{suffix}").is_file() for suffix in (".npz", ".json"))

    def get(self, key: str, shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The logits and diagnostics stored on disk, or None (a miss).

        The cache folder is untrusted input: an unreadable entry, or one whose logits are not finite
        float64 numbers of ``shape`` (when given) or whose diagnostics are not a JSON object, is a miss
        with a warning, never soft targets of the wrong rows.
        """
        if self.folder is None:
            return None
        data, meta = self.folder / f"{key}.npz", self.folder / f"{key}.json"
        if data.is_file() and meta.is_file():
            try:
                with np.load(data, allow_pickle=False) as archive:
                    logits = archive["logits"]
                diagnostics = json.loads(meta.read_text(encoding="utf-8"))
                if logits.dtype != np.float64 or (shape is not None and logits.shape != tuple(shape)):
                    raise ValueError(f"logits of {logits.dtype} {logits.shape}, expected float64 {shape}")
                if not np.isfinite(logits).all() or not isinstance(diagnostics, dict):
                    raise ValueError("non-finite logits or diagnostics that are not an object")
                self.hits += 1
                return logits, diagnostics
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # truncated or corrupt
                log.warning("soft-target cache entry %s is unreadable (%s); recomputing", key[:12], exc)
        self.misses += 1
        return None

    def put(self, key: str, logits: np.ndarray, diagnostics: dict[str, Any]) -> None:
        """Store an entry on disk; a cache that cannot be written is a warning, never a failed run."""
        if self.folder is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(self.folder / f"{key}.npz", lambda tmp: _save_npz(tmp, logits))
            atomic_write(self.folder / f"{key}.json", lambda tmp: _save_json(tmp, diagnostics))
        except OSError as exc:
            log.warning("cannot write the soft-target cache in %s: %s", self.folder, exc)

    def stats(self) -> dict[str, Any]:
        """The disk layer's folder and lookups, as ``summary.json`` records them."""
        return {"dir": str(self.folder) if self.folder is not None else None, "hits": self.hits, "misses": self.misses}


def _save_npz(path: Path, logits: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, logits=np.asarray(logits, dtype=np.float64))


def _save_json(path: Path, diagnostics: dict[str, Any]) -> None:
    path.write_text(json.dumps(to_jsonable(diagnostics)), encoding="utf-8")
