"""The state of a fit in progress, as ``fit_many`` hands it to ``checkpoint`` and takes it back as ``resume``.

One builder (``fit_state``) and one reader (``resume_fit_state``) for the ``distill.fit-state/2``
layout, which stays what it has been since the format was introduced (tensors and plain values only,
safe to load with ``weights_only=True``). Version 2 logs two more numbers per epoch (``train_hard_loss``,
``train_kl_term``) and keeps each step's losses as ``[3, M]``, not ``[M]``; a version-1 state still resumes,
those two numbers NaN for the epochs it had begun::

    format, members, weights [M, P], optimizer, generators, rng,
    stoppers   one {best, wait, reason} per member (None when nothing is monitored),
    progress   {epoch, best_score (sign * value: higher is better), best_epoch, best_weights,
                last_good, last_good_epoch, at_stop, active, stopped_epoch, stop_reason, status,
                diverged_at, messages, epochs_seen, numbers [epochs, keys, M], keys, kept},
    partial    None between epochs; {epoch, step, batches, losses} when stopped inside one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from distill.engine.callbacks import BestState, Divergence, EarlyStopping, Stops
from distill.engine.history import History
from distill.engine.members import Members
from distill.engine.optim import LeanOptimizer

__all__ = ["FIT_STATE_FORMAT", "Ledger", "PartialEpoch", "fit_state", "resume_fit_state"]

#: The layout of the state ``fit_many`` hands to ``checkpoint`` and takes as ``resume``.
FIT_STATE_FORMAT = "distill.fit-state/2"


@dataclass
class Ledger:
    """What a fit carries from epoch to epoch besides weights, optimizer and random streams."""

    epoch: int  # the last completed epoch
    best: BestState
    early: EarlyStopping | None  # None when the monitored metric is not logged
    divergence: Divergence
    stops: Stops
    history: History


@dataclass
class PartialEpoch:
    """An epoch stopped after ``step`` of its ``batches`` (``[M, B]`` each), with the steps' losses ``[3, M]`` so far
    (``distill.engine.loop.STEP_PARTS``)."""

    epoch: int
    step: int
    batches: list[Tensor]
    losses: list[Tensor]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "batches": self.batches, "losses": self.losses}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> PartialEpoch:
        return cls(int(state["epoch"]), int(state["step"]), [b.to(device) for b in state["batches"]],
                   [_step_parts(loss.to(device)) for loss in state["losses"]])


def _step_parts(loss: Tensor) -> Tensor:
    """A step's losses as ``[3, M]``; a ``distill.fit-state/1`` step kept the loss alone (``[M]``): its hard and KL
    terms are unknown (NaN), so that epoch's ``train_hard_loss`` and ``train_kl_term`` are NaN after resuming."""
    if loss.ndim == 2:
        return loss
    unknown = torch.full_like(loss, float("nan"))
    return torch.stack((loss, unknown, unknown))


def fit_state(ledger: Ledger, members: Members, optimizer: LeanOptimizer, generators: list[torch.Generator],
              partial: PartialEpoch | None) -> dict[str, Any]:
    """The whole state of a fit after its last completed epoch (and ``partial``, inside the next one)."""
    return {
        "format": FIT_STATE_FORMAT,
        "members": members.count,
        "weights": members.flat(),
        "optimizer": optimizer.state_dict(),
        "generators": [g.get_state() for g in generators],
        "rng": _get_rng(generators[0].device),
        "stoppers": _stoppers(ledger.early) if ledger.early is not None else None,
        "progress": _progress(ledger),
        "partial": partial.state_dict() if partial is not None else None,
    }


def resume_fit_state(state: dict[str, Any], ledger: Ledger, members: Members, optimizer: LeanOptimizer,
                     generators: list[torch.Generator]) -> PartialEpoch | None:
    """Load ``state`` (from ``fit_state``, possibly through the disk) into a freshly set-up fit; returns the
    epoch to finish first, if it was stopped inside one."""
    device = generators[0].device
    members.restore(state["weights"].to(device))
    optimizer.load_state_dict(state["optimizer"])
    for g, saved in zip(generators, state["generators"], strict=True):
        g.set_state(saved)
    _set_rng(state["rng"])
    if ledger.early is not None:
        _load_stoppers(ledger.early, state["stoppers"])
    _load_progress(ledger, state["progress"], device)
    return PartialEpoch.from_state(state["partial"], device) if state["partial"] is not None else None


def _get_rng(device: torch.device) -> dict[str, Any]:
    """The global random streams a student may draw from (dropout)."""
    out: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def _set_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def _stoppers(early: EarlyStopping) -> list[dict[str, Any]]:
    """One ``{best, wait, reason}`` of plain numbers per member."""
    return [{"best": float(best), "wait": int(wait), "reason": reason}
            for best, wait, reason in zip(early.best.tolist(), early.wait.tolist(), early.reasons, strict=True)]


def _load_stoppers(early: EarlyStopping, stoppers: list[dict[str, Any]]) -> None:
    early.load_state_dict({"best": [float(s["best"]) for s in stoppers], "wait": [int(s["wait"]) for s in stoppers],
                           "reasons": [str(s["reason"]) for s in stoppers]})


def _signed(best: BestState, score: NDArray[np.float64]) -> NDArray[np.float64]:
    """Scores as the format keeps them, higher is better (and back: the map is its own inverse)."""
    return -score if best.mode == "min" else score.copy()


def _tensor(values: NDArray[Any]) -> Tensor:
    return torch.from_numpy(values.copy())


def _progress(ledger: Ledger) -> dict[str, Any]:
    best, divergence, stops, history = ledger.best, ledger.divergence, ledger.stops, ledger.history
    recorded = history.state_dict()
    return {
        "epoch": ledger.epoch,
        "best_score": torch.from_numpy(_signed(best, best.score)),
        "best_epoch": [e if e > 0 else None for e in best.epoch.tolist()],
        "best_weights": best.weights,
        "last_good": divergence.last_good,
        "last_good_epoch": _tensor(divergence.last_good_epoch),
        "at_stop": stops.weights,
        "active": _tensor(stops.active),
        "stopped_epoch": _tensor(stops.epoch),
        "stop_reason": list(stops.reasons),
        "status": ["diverged" if d else "completed" for d in divergence.diverged.tolist()],
        "diverged_at": [divergence.at(i) for i in range(len(divergence.diverged))],
        "messages": [list(m) for m in stops.messages],
        "epochs_seen": recorded["epochs"],
        "numbers": recorded["numbers"],
        "keys": recorded["keys"],
        "kept": recorded["kept"],
    }


def _load_progress(ledger: Ledger, progress: dict[str, Any], device: torch.device) -> None:
    def on_device(t: Tensor | None) -> Tensor | None:
        return t.to(device) if t is not None else None

    ledger.epoch = int(progress["epoch"])
    ledger.best.load_state_dict({
        "score": _signed(ledger.best, progress["best_score"].numpy().astype(np.float64)),
        "epoch": [e if e is not None else 0 for e in progress["best_epoch"]],
        "weights": on_device(progress["best_weights"]),
    })
    where = [d if d is not None else (0, 0) for d in progress["diverged_at"]]
    ledger.divergence.load_state_dict({
        "diverged": [s == "diverged" for s in progress["status"]],
        "epoch": [e for e, _ in where],
        "step": [s for _, s in where],
        "last_good": on_device(progress["last_good"]),
        "last_good_epoch": progress["last_good_epoch"],
    })
    ledger.stops.load_state_dict({"active": progress["active"], "epoch": progress["stopped_epoch"],
                                  "reasons": progress["stop_reason"], "messages": progress["messages"],
                                  "weights": on_device(progress["at_stop"])})
    ledger.history.load_state_dict({"epochs": progress["epochs_seen"], "keys": progress["keys"],
                                    "numbers": progress["numbers"], "kept": progress["kept"]}, device)
