"""A run's checkpoints: the state of the fit in progress and the results of finished fits.

``RUN_DIR/checkpoints/fit-<key>.pt`` holds a fit's whole state (``distill.engine.loop.fit_many``),
rewritten atomically at epoch ends; ``fit-<key>.done.pt`` the members' final weights and results
once it is over, so ``run --resume`` skips it. Everything is tensors and plain values, loaded with
``weights_only=True``; the folder goes away when the run completes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.engine.loop import FitResult
from distill.errors import UserError
from distill.outputs.rundir import atomic_write

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["Checkpoints", "CHECKPOINT_FOLDER", "config_hash", "changed_keys"]

CHECKPOINT_FOLDER = "checkpoints"


def config_hash(config_text: str) -> str:
    """SHA-256 of a resolved config's TOML text: what every record of a run is written under."""
    return hashlib.sha256(config_text.encode("utf-8")).hexdigest()


def changed_keys(before: str, after: str) -> list[str]:
    """``key: old -> new`` for each dotted key that differs between two TOML texts."""
    def flat(text: str) -> dict[str, Any]:
        try:
            tree = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, TypeError):
            return {}
        out: dict[str, Any] = {}

        def walk(node: Any, prefix: str) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(v, f"{prefix}{k}.")
            else:
                out[prefix[:-1]] = node
        walk(tree, "")
        return out

    a, b = flat(before), flat(after)
    return [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in sorted(a.keys() | b.keys())
            if a.get(k, _MISSING) != b.get(k, _MISSING)]


_MISSING = object()

#: What a record that cannot be used says the user may do.
_WAY_OUT = "delete it to train that fit again, or start a new run"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def pack_history(rows: list[dict[str, Any]]) -> Any:
    """A fit's history as one float64 tensor ``[epochs, columns]`` with its column names, and which columns hold
    ints: one object to pickle, where a 200-episode stack's rows were 4 million (seconds of ``torch.save``). Rows
    that are not all the same columns of ints and floats are kept as they are. ``unpack_history`` inverts it exactly."""
    if not rows:
        return rows
    names = list(rows[0])
    if any(list(row) != names for row in rows) or not all(type(v) in (int, float) for row in rows for v in row.values()):
        return rows
    ints = [n for n in names if all(type(row[n]) is int and abs(row[n]) < 2**53 for row in rows)]
    values = torch.tensor([[row[n] for n in names] for row in rows], dtype=torch.float64)
    return {"columns": names, "ints": ints, "values": values}


def unpack_history(packed: Any) -> list[dict[str, Any]]:
    """``pack_history``'s rows back (a list of rows, as older checkpoints hold them, is returned as it is)."""
    if not isinstance(packed, dict):
        return list(packed)
    names, ints = list(packed["columns"]), set(packed["ints"])
    return [{n: (int(v) if n in ints else v) for n, v in zip(names, row, strict=True)}
            for row in packed["values"].tolist()]


def _packed_result(result: FitResult) -> dict[str, Any]:
    """A ``FitResult`` as the checkpoint holds it: its fields, the history packed."""
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    fields["history"] = pack_history(result.history)
    return fields


class Checkpoints:
    """Checkpoint files of one run directory.

    Every record (``run.json``, an in-progress state, a finished fit) carries the SHA-256 of the
    run's resolved config; fit records also carry the fit's identity (its key and, per member,
    system, episode seed, KL weight and a hash of its own config). ``run --resume`` refuses a run
    whose ``config.toml`` or any record does not match, so no summary mixes fits of two configs.

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
        self.config_sha256 = config_hash(config)
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
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: say which, never unpickle code
            reason = ("it is not a complete torch.save file" if isinstance(exc, (EOFError, OSError, RuntimeError))
                      else _first_line(exc))
            raise UserError(f"checkpoint {path} is corrupt or truncated ({reason}); {_WAY_OUT}") from None
        if not isinstance(payload, dict):
            raise UserError(f"checkpoint {path} is not a distill fit record (a {type(payload).__name__}); {_WAY_OUT}")
        return payload

    def _check_record(self, path: Path, payload: dict[str, Any], identity: dict[str, Any] | None) -> None:
        """The record was written under this run's config (and, given ``identity``, for this fit)."""
        written_under = payload.get("config_sha256")
        if written_under != self.config_sha256:
            if written_under is None:
                raise UserError(f"checkpoint {path} records no config hash (an older distill or a foreign file), so "
                                f"it cannot be checked against config.toml; {_WAY_OUT}")
            changed = changed_keys(str(payload.get("config", "")), self.config) if "config" in payload else []
            what = f" ({'; '.join(changed[:5])})" if changed else ""
            raise UserError(f"checkpoint {path} was written under another config than the run's config.toml{what}; "
                            "resume with the config it was written with, or start a new run")
        if identity is not None and payload.get("identity") != identity:
            raise UserError(f"checkpoint {path} records another fit than this run's {identity.get('key')!r} "
                            f"(it holds {_describe(payload.get('identity'))}, the run expects {_describe(identity)}); "
                            f"{_WAY_OUT}")

    def due(self, epoch: int) -> bool:
        """Whether an epoch-end checkpoint is wanted now."""
        return self.every > 0 and epoch % self.every == 0 and time.monotonic() - self._last >= self.interval

    def saver(self, key: str, identity: dict[str, Any] | None = None) -> Any:
        """``checkpoint`` callback for ``fit_many``: the in-progress state of fit ``key``."""

        def save(state: dict[str, Any]) -> None:
            self._save(self._path(key), {**state, "config": self.config, "config_sha256": self.config_sha256,
                                         "identity": identity if identity is not None else {"key": key}})
            self._last = time.monotonic()

        return save

    def in_progress(self, key: str, identity: dict[str, Any] | None = None) -> dict[str, Any] | None:
        path = self._path(key)
        state = self._load(path)
        if state is not None:
            self._check_record(path, state, identity if identity is not None else {"key": key})
        return state

    def finish(self, key: str, models: list[nn.Module], results: list[FitResult],
               identity: dict[str, Any] | None = None) -> None:
        """Record a finished fit (final weights and results) and drop its in-progress state."""
        payload = {
            "config": self.config,
            "config_sha256": self.config_sha256,
            "identity": identity if identity is not None else {"key": key},
            "weights": [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in models],
            "results": [_packed_result(r) for r in results],
        }
        self._save(self._path(key, done=True), payload)
        self._path(key).unlink(missing_ok=True)

    def finished(self, key: str, models: list[nn.Module],
                 identity: dict[str, Any] | None = None) -> list[FitResult] | None:
        """The results of fit ``key`` if it finished before, with its weights loaded into ``models``."""
        path = self._path(key, done=True)
        payload = self._load(path)
        if payload is None:
            return None
        self._check_record(path, payload, identity if identity is not None else {"key": key})
        try:
            for model, weights in zip(models, payload["weights"], strict=True):
                model.load_state_dict(weights)
            results = []
            for r in payload["results"]:
                r = dict(r)
                r["history"] = unpack_history(r["history"])
                r["diverged_at"] = tuple(r["diverged_at"]) if r["diverged_at"] is not None else None
                results.append(FitResult(**r))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise UserError(f"checkpoint {path} is not a complete fit record ({type(exc).__name__}: "
                            f"{_first_line(exc)}); {_WAY_OUT}") from None
        if len(results) != len(models):
            raise UserError(f"checkpoint {path} holds {len(results)} result(s) for {len(models)} model(s); {_WAY_OUT}")
        return results

    def has_fits(self) -> bool:
        """Whether any fit state or finished fit was recorded (training has begun)."""
        return self.folder.is_dir() and any(self.folder.glob("fit-*.pt"))

    def write_meta(self, meta: dict[str, Any]) -> None:
        """``run.json``: what the run keeps across a resume (MLflow run id, episodes logged), and its config."""
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {**meta, "config_sha256": self.config_sha256, "config": self.config}
        atomic_write(self.folder / "run.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2)))

    def read_meta(self) -> dict[str, Any]:
        """``run.json`` as written by ``write_meta`` ({} when absent); a damaged one is a one-line error."""
        path = self.folder / "run.json"
        if not path.exists():
            return {}
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not valid JSON"
            raise UserError(f"run record {path} is corrupt or truncated ({reason}); the run cannot be resumed "
                            "safely: start a new run") from None
        problems = [] if isinstance(meta, dict) else [f"a JSON {type(meta).__name__}, not an object"]
        if not problems:
            if not isinstance(meta.get("logged", 0), int) or isinstance(meta.get("logged", 0), bool) \
                    or meta.get("logged", 0) < 0:
                problems.append(f"'logged' is {meta.get('logged')!r}, not a count")
            for field in ("mlflow_run_id", "config_sha256", "config"):
                if meta.get(field) is not None and not isinstance(meta[field], str):
                    problems.append(f"'{field}' is not a string")
        if problems:
            raise UserError(f"run record {path} is damaged ({'; '.join(problems)}); the run cannot be resumed "
                            "safely: start a new run")
        return {k: v for k, v in meta.items() if k not in ("config", "config_sha256")} | {
            "_written_under": meta.get("config_sha256"), "_config": meta.get("config")}

    def verify_resume(self) -> dict[str, Any]:
        """Refuse (``UserError``) a resume whose records were written under another config than ``config.toml``.

        Reads ``run.json`` and every fit record; returns the run's meta (MLflow run id, episodes logged).
        """
        meta = self.read_meta()
        written_under, text = meta.pop("_written_under", None), meta.pop("_config", None)
        run_json = self.folder / "run.json"
        if written_under is not None and written_under != self.config_sha256:
            changed = changed_keys(text, self.config) if text else []
            what = f" ({'; '.join(changed[:5])})" if changed else ""
            raise UserError(f"--resume: config.toml of {self.folder.parent} was changed after the run started{what}; "
                            f"{run_json} records the config it ran with: restore it, or start a new run")
        if run_json.exists() and written_under is None and self.has_fits():
            raise UserError(f"--resume: {run_json} records no config hash (an older distill), so the fits in "
                            f"{self.folder} cannot be checked against config.toml: start a new run")
        for path in sorted(self.folder.glob("fit-*.pt")) if self.folder.is_dir() else []:
            payload = self._load(path)
            assert payload is not None
            self._check_record(path, payload, None)
        return meta

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _describe(identity: Any) -> str:
    if not isinstance(identity, dict):
        return "no fit identity"
    members = identity.get("members")
    if not isinstance(members, list):
        return f"fit {identity.get('key')!r}"
    return f"fit {identity.get('key')!r} of " + ", ".join(
        f"{m.get('system')} seed {m.get('seed')}" if isinstance(m, dict) else "?" for m in members)
