"""A run's checkpoints: the state of the fit in progress and the results of finished fits.

``RUN_DIR/checkpoints/fit-<key>.pt`` holds a fit's whole state (``distill.engine.fit_many``),
rewritten atomically at epoch ends; ``fit-<key>.done.pt`` the members' final weights and results
once it is over, so ``run --resume`` skips it. Everything is tensors and plain values, loaded with
``weights_only=True``; the folder goes away when the run completes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.engine import FitResult
from distill.errors import UserError
from distill.rundir import atomic_write

__all__ = ["Checkpoints", "CHECKPOINT_FOLDER"]

CHECKPOINT_FOLDER = "checkpoints"


class Checkpoints:
    """Checkpoint files of one run directory.

    Args:
        folder: ``RUN_DIR/checkpoints``.
        config: the run's resolved config as TOML, saved with each state and checked on resume.
        every: write the fit state every this many epochs (0: only when interrupted).
        interval: and at most once per this many seconds, so that millisecond epochs do not pay
            for a file each.
    """

    def __init__(self, folder: Path, every: int = 1, interval: float = 0.0, config: str = "") -> None:
        self.folder = Path(folder)
        self.every = every
        self.interval = interval
        self.config = config  # the resolved config (TOML), stored with every state
        self._last = time.monotonic()

    def _path(self, key: str, done: bool = False) -> Path:
        return self.folder / f"fit-{key}{'.done' if done else ''}.pt"

    def _save(self, path: Path, payload: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save(payload, tmp))

    def _load(self, path: Path) -> dict[str, Any] | None:
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: say which, never unpickle code
            raise UserError(f"checkpoint {path} cannot be read: {str(exc).splitlines()[0]}") from None

    def due(self, epoch: int) -> bool:
        """Whether an epoch-end checkpoint is wanted now."""
        return self.every > 0 and epoch % self.every == 0 and time.monotonic() - self._last >= self.interval

    def saver(self, key: str) -> Any:
        """``checkpoint`` callback for ``fit_many``: the in-progress state of fit ``key``."""

        def save(state: dict[str, Any]) -> None:
            self._save(self._path(key), {**state, "config": self.config})
            self._last = time.monotonic()

        return save

    def in_progress(self, key: str) -> dict[str, Any] | None:
        state = self._load(self._path(key))
        if state is not None and state.get("config", self.config) != self.config:
            raise UserError(f"checkpoint {self._path(key)} was written with another config than the run's "
                            "config.toml; resume with the config it was written with")
        return state

    def finish(self, key: str, models: list[nn.Module], results: list[FitResult]) -> None:
        """Record a finished fit (final weights and results) and drop its in-progress state."""
        payload = {
            "weights": [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in models],
            "results": [dataclasses.asdict(r) for r in results],
        }
        self._save(self._path(key, done=True), payload)
        self._path(key).unlink(missing_ok=True)

    def finished(self, key: str, models: list[nn.Module]) -> list[FitResult] | None:
        """The results of fit ``key`` if it finished before, with its weights loaded into ``models``."""
        payload = self._load(self._path(key, done=True))
        if payload is None:
            return None
        for model, weights in zip(models, payload["weights"], strict=True):
            model.load_state_dict(weights)
        results = []
        for r in payload["results"]:
            r = dict(r)
            r["diverged_at"] = tuple(r["diverged_at"]) if r["diverged_at"] is not None else None
            results.append(FitResult(**r))
        return results

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / "run.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))

    def read_meta(self) -> dict[str, Any]:
        path = self.folder / "run.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
