"""The soft-target cache: teacher outputs on disk, keyed by what they depend on.

The key hashes the teacher's identity (a network's file bytes; a fitted teacher's settings and
the exact rows and labels it is fitted on), and the exact input rows it is asked about (so the
preprocessing is in the key too). A changed teacher or changed data never reuses stale targets.
Entries are ``<key>.npz`` (read with ``allow_pickle=False``) plus ``<key>.json`` diagnostics,
each written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from distill.outputs.rundir import atomic_write, to_jsonable

__all__ = ["SoftTargetCache", "array_digest"]

log = logging.getLogger("distill")


def array_digest(*arrays: np.ndarray) -> str:
    """sha256 over the arrays' dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for array in arrays:
        a = np.ascontiguousarray(array)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


class SoftTargetCache:
    """Teacher logits on disk under ``folder`` (None: caching off). Counts its hits and misses."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(*parts: str) -> str:
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    def get(self, key: str, shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The cached logits and diagnostics, or None (a miss).

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
        """Store an entry; a cache that cannot be written is a warning, never a failed run."""
        if self.folder is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(self.folder / f"{key}.npz", lambda tmp: _save_npz(tmp, logits))
            atomic_write(
                self.folder / f"{key}.json",
                lambda tmp: tmp.write_text(json.dumps(to_jsonable(diagnostics)), encoding="utf-8"),
            )
        except OSError as exc:
            log.warning("cannot write the soft-target cache in %s: %s", self.folder, exc)

    def stats(self) -> dict[str, Any]:
        return {"dir": str(self.folder) if self.folder is not None else None, "hits": self.hits, "misses": self.misses}


def _save_npz(path: Path, logits: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, logits=np.asarray(logits, dtype=np.float64))
