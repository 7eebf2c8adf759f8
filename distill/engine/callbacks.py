"""Per-member bookkeeping of a fit, vectorised over the M members it trains together.

Each object keeps one ``[M]`` array per quantity on the host, updated once per epoch after the
epoch's one read of its numbers (numpy, not torch: a torch op on a few CPU numbers costs several
microseconds, and a few-shot epoch of a tiny student costs a few hundred in all); weight copies are
``[M, P]`` tensors on the members' device. ``state_dict()`` gives tensors and plain values (safe
to save and to load with ``weights_only=True``) and ``load_state_dict()`` takes them back, so a fit
can be checkpointed and resumed between any two steps. A member that has stopped is no longer
updated (pass it outside ``eligible`` / ``active``), exactly as if it had trained alone.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

__all__ = ["EarlyStopping", "BestState", "Divergence", "Stops", "monitor_mode"]

Mode = Literal["min", "max"]
Mask = NDArray[np.bool_]
Floats = NDArray[np.float64]
Ints = NDArray[np.int64]


def monitor_mode(monitor: str, mode: str) -> Mode:
    """``auto``: minimise losses (the KL term among them) and calibration error, maximise the rest."""
    if mode == "min" or (mode != "max" and monitor.endswith(("loss", "ece", "kl_term"))):
        return "min"
    return "max"


def where_rows(mask: Mask, new: Tensor, old: Tensor | None) -> Tensor:
    """``new`` in the member rows where ``mask`` ``[M]`` is True, ``old`` elsewhere (neither is modified).

    Returns ``new`` itself when every row is taken (or there is no ``old``) and ``old`` when none is:
    weight copies are never written in place, so sharing them is safe and saves a copy per epoch.
    """
    if old is None or mask.all():
        return new
    if not mask.any():
        return old
    return torch.where(torch.as_tensor(mask, device=new.device).unsqueeze(1), new, old)


def _all(members: int) -> Mask:
    """Every member: the default of ``eligible``."""
    return np.ones(members, dtype=bool)


def _worst(mode: Mode, members: int) -> Floats:
    """The starting best value of every member: anything finite beats it."""
    return np.full(members, math.inf if mode == "min" else -math.inf)


def _host(values: Tensor | ArrayLike, dtype: type) -> Any:
    """A fresh host array of ``values`` (a tensor, an array or a list)."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    return np.array(values, dtype=dtype)


def _saved(values: NDArray[Any]) -> Tensor:
    """A tensor copy of a host array, for a ``state_dict``."""
    return torch.from_numpy(values.copy())


class EarlyStopping:
    """Per member: stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs, or is not finite.

    ``patience`` 0 never stops on a plateau. ``best`` ``[M]`` is each member's best value so far,
    ``wait`` ``[M]`` its epochs since, ``reasons`` why each stopped ("" while it trains on).
    """

    def __init__(self, monitor: str, mode: Mode, patience: int, min_delta: float = 0.0, members: int = 1) -> None:
        self.monitor = monitor
        self.mode: Mode = mode
        self.patience = patience
        self.min_delta = min_delta
        self.best: Floats = _worst(mode, members)
        self.wait: Ints = np.zeros(members, dtype=np.int64)
        self.reasons = [""] * members

    def improved(self, values: Floats) -> Mask:
        """Where ``values`` beat each member's best by more than ``min_delta``."""
        if self.mode == "min":
            return values < self.best - self.min_delta
        return values > self.best + self.min_delta

    def step(self, values: ArrayLike, eligible: Mask | None = None) -> Mask:
        """Record one epoch's monitored ``values`` ``[M]`` of the ``eligible`` members (default all);
        returns ``[M]`` True where a member should stop now."""
        values = np.asarray(values, dtype=np.float64)
        eligible = _all(len(self.reasons)) if eligible is None else eligible
        finite = np.isfinite(values)
        stepped = eligible & finite
        improved = stepped & self.improved(values)
        self.best = np.where(improved, values, self.best)
        self.wait = np.where(improved, 0, self.wait + stepped)  # +1 where stepped without improving
        stopping = eligible & ~finite
        if self.patience > 0:
            stopping |= stepped & (self.wait >= self.patience)
        for i in stopping.nonzero()[0]:
            self.reasons[i] = self._reason(float(values[i]))
        return stopping

    def _reason(self, value: float) -> str:
        """Why a member stops at its monitored ``value``."""
        if not math.isfinite(value):
            return f"{self.monitor} = {value} is not finite"
        return f"{self.monitor} did not improve by {self.min_delta} for {self.patience} epochs"

    def state_dict(self) -> dict[str, Any]:
        return {"best": _saved(self.best), "wait": _saved(self.wait), "reasons": list(self.reasons)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = _host(state["best"], np.float64), _host(state["wait"], np.int64)
        self.reasons = [str(r) for r in state["reasons"]]


class BestState:
    """Per member: the best finite monitored value, its epoch (0: none yet) and the weights ``[M, P]`` at it."""

    def __init__(self, monitor: str, mode: Mode, members: int = 1) -> None:
        self.monitor = monitor
        self.mode: Mode = mode
        self.score: Floats = _worst(mode, members)
        self.epoch: Ints = np.zeros(members, dtype=np.int64)
        self.weights: Tensor | None = None

    def update(self, values: ArrayLike, epoch: int, weights: Tensor, eligible: Mask | None = None) -> Mask:
        """Keep ``weights`` ``[M, P]`` for the ``eligible`` members whose ``values`` ``[M]`` are a new finite
        best (equal is not better); returns that ``[M]`` mask."""
        values = np.asarray(values, dtype=np.float64)
        eligible = _all(len(self.score)) if eligible is None else eligible
        beats = values < self.score if self.mode == "min" else values > self.score
        better = eligible & np.isfinite(values) & beats
        if better.any():
            self.weights = where_rows(better, weights, self.weights)
            self.score = np.where(better, values, self.score)
            self.epoch[better] = epoch
        return better

    def found(self) -> Mask:
        """``[M]`` True where a member has a best epoch."""
        return self.epoch > 0

    def restore(self, weights: Tensor) -> Tensor:
        """``weights`` ``[M, P]`` with each member that has a best epoch set to its weights there."""
        return where_rows(self.found(), self.weights, weights) if self.weights is not None else weights

    def state_dict(self) -> dict[str, Any]:
        return {"score": _saved(self.score), "epoch": _saved(self.epoch), "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.score, self.epoch = _host(state["score"], np.float64), _host(state["epoch"], np.int64)
        self.weights = state["weights"]


class Divergence:
    """Per member: whether and where (epoch, 1-based step) its training loss turned non-finite, and its
    last weights ``[M, P]`` at the end of an epoch with a finite loss (epoch 0: the initial weights)."""

    def __init__(self, weights: Tensor) -> None:
        members = weights.shape[0]
        self.diverged: Mask = np.zeros(members, dtype=bool)
        self.epoch: Ints = np.zeros(members, dtype=np.int64)
        self.step: Ints = np.zeros(members, dtype=np.int64)
        #: per member: what was not finite first when it diverged (``training loss``, ``weights``, ``validation loss``)
        self.cause: list[str] = ["training loss"] * members
        self.last_good = weights
        self.last_good_epoch: Ints = np.zeros(members, dtype=np.int64)

    def check(self, epoch: int, train_loss: Floats, step_losses: Tensor, weights: Tensor, active: Mask,
              val_loss: Floats | None = None) -> Mask:
        """Record ``epoch`` of the ``active`` members from its mean training loss ``[M]`` (host), its step
        losses ``[steps, M]``, the weights ``[M, P]`` it ended with and its validation loss ``[M]`` (host, with
        validation rows); returns ``[M]`` True for the members that diverged in it: a training loss, a weight
        or a validation loss that is not finite (a last step can blow the weights or the outputs up after
        finite losses; a fit stopped on that non-finite validation loss would have kept them)."""
        causes = [(np.isfinite(train_loss), "training loss"),
                  (torch.isfinite(weights).all(dim=1).cpu().numpy(), "weights")]
        if val_loss is not None:
            causes.append((np.isfinite(val_loss), "validation loss"))
        finite = np.logical_and.reduce([ok for ok, _ in causes])
        diverged = active & ~finite
        if diverged.any():
            bad = ~torch.isfinite(step_losses)
            # the first step whose loss is not finite; 1 when none is (the mean overflowed, or the weights or the
            # outputs did: the epoch as a whole)
            first_bad = bad.to(torch.uint8).argmax(0).cpu().numpy() + 1
            self.diverged |= diverged
            self.epoch[diverged] = epoch
            self.step[diverged] = first_bad[diverged]
            for i in diverged.nonzero()[0]:
                self.cause[i] = next(name for ok, name in causes if not ok[i])
        healthy = active & finite
        self.last_good = where_rows(healthy, weights, self.last_good)
        self.last_good_epoch[healthy] = epoch
        return diverged

    def at(self, member: int) -> tuple[int, int] | None:
        """``(epoch, step)`` where ``member`` diverged, or None."""
        return (int(self.epoch[member]), int(self.step[member])) if self.diverged[member] else None

    def restore(self, weights: Tensor) -> Tensor:
        """``weights`` ``[M, P]`` with each diverged member set to its last finite weights."""
        return where_rows(self.diverged, self.last_good, weights)

    def state_dict(self) -> dict[str, Any]:
        return {"diverged": _saved(self.diverged), "epoch": _saved(self.epoch), "step": _saved(self.step),
                "last_good": self.last_good, "last_good_epoch": _saved(self.last_good_epoch)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.diverged = _host(state["diverged"], np.bool_)
        self.epoch, self.step = _host(state["epoch"], np.int64), _host(state["step"], np.int64)
        self.last_good = state["last_good"]
        self.last_good_epoch = _host(state["last_good_epoch"], np.int64)


class Stops:
    """Which members still train, when (``epoch``) and why each stopped, notes for its result, and the
    weights ``[M, P]`` of members that stopped while others trained on."""

    def __init__(self, members: int) -> None:
        self.active: Mask = np.ones(members, dtype=bool)
        self.epoch: Ints = np.zeros(members, dtype=np.int64)
        self.reasons = ["completed all epochs"] * members
        self.messages: list[list[str]] = [[] for _ in range(members)]
        self.weights: Tensor | None = None

    def stop(self, ending: Mask, epoch: int, weights: Tensor) -> None:
        """Members ``ending`` ``[M]`` stop after ``epoch`` with ``weights`` ``[M, P]`` (kept only while
        others go on: when none does, the final weights are those weights anyway)."""
        if not ending.any():
            return
        self.epoch[ending] = epoch
        self.active &= ~ending
        if self.active.any():
            self.weights = where_rows(ending, weights, self.weights)

    def finish(self, epoch: int) -> None:
        """The fit ended after ``epoch``: members still training stop there."""
        self.epoch[self.active] = epoch

    def restore(self, weights: Tensor, last_epoch: int) -> Tensor:
        """``weights`` ``[M, P]`` (where the fit ended) with each member that stopped earlier set to its
        weights then."""
        if self.weights is None:
            return weights
        return where_rows(~self.active & (self.epoch < last_epoch), self.weights, weights)

    def state_dict(self) -> dict[str, Any]:
        return {"active": _saved(self.active), "epoch": _saved(self.epoch), "reasons": list(self.reasons),
                "messages": [list(m) for m in self.messages], "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.active, self.epoch = _host(state["active"], np.bool_), _host(state["epoch"], np.int64)
        self.reasons = [str(r) for r in state["reasons"]]
        self.messages = [[str(m) for m in box] for box in state["messages"]]
        self.weights = state["weights"]
