"""A fit's history: every epoch's logged numbers for each member, and the history rows a fit returns.

The numbers of an epoch arrive in one host read (``[keys, M]``) and go into one preallocated
``[epochs, keys, M]`` float64 table on the host, so a checkpoint holds one tensor rather than one
per epoch. Metrics
nobody watches during the fit are not scored every epoch: the epoch's outputs are kept (on the
device, while they fit in ``distill.engine.loop._LAZY_BYTES``) and scored after the last epoch, a slice
of epochs at a time (``SCORE_CHUNK_ELEMENTS``), so the scoring's memory does not grow with the history.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from distill.metrics.classification import batch_classification_metrics

__all__ = ["History", "score_outputs", "score_in_chunks"]


def _probabilities(logits: Tensor) -> Tensor:
    """``[..., N, C]`` class probabilities from ``[..., N, 1]`` (binary) or ``[..., N, C]`` outputs."""
    if logits.shape[-1] == 1:
        p = torch.sigmoid(logits[..., 0])
        return torch.stack([1.0 - p, p], dim=-1)
    return torch.softmax(logits, dim=-1)


def score_outputs(outputs: Tensor, targets: Tensor, num_classes: int) -> dict[str, Tensor]:
    """Accuracy, macro-F1, AUROC and ECE of outputs ``[..., M, N, K]`` against targets ``[M, N]``: ``[..., M]`` each."""
    return batch_classification_metrics(_probabilities(outputs), targets, num_classes)


#: outputs scored in one batched call after a fit, at most: AUROC sorts them (values and int64 indices), so
#: the temporaries are a few times this many elements; larger histories are scored a slice of epochs at a time
SCORE_CHUNK_ELEMENTS = 2**21


def score_in_chunks(outputs: Tensor, targets: Tensor, num_classes: int) -> dict[str, Tensor]:
    """``score_outputs`` of ``outputs [epochs, M, N, K]``, a slice of epochs at a time (the same numbers: each
    epoch and member is scored on its own): the scoring's memory is bounded, whatever the history's length."""
    if outputs.shape[0] == 0:
        return score_outputs(outputs, targets, num_classes)
    step = max(1, SCORE_CHUNK_ELEMENTS // max(1, outputs[0].numel()))
    parts = [score_outputs(outputs[i : i + step], targets, num_classes) for i in range(0, outputs.shape[0], step)]
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def _grown_outputs(store: Tensor | None, capacity: int, outputs: Tensor) -> Tensor:
    """``store`` with room for ``capacity`` epochs of ``outputs`` (itself when it has room)."""
    if store is not None and store.shape[0] >= capacity:
        return store
    grown = outputs.new_empty((capacity, *outputs.shape))
    if store is not None:
        grown[: store.shape[0]] = store
    return grown


class History:
    """Per epoch: its number and learning rate (``epochs``), the logged numbers ``[epochs, keys, M]``
    (float64, host) and, per split, outputs ``[epochs, M, N, K]`` kept to be scored after the fit."""

    def __init__(self) -> None:
        self.epochs: list[tuple[int, float]] = []
        self.keys: list[str] = []
        self.numbers: NDArray[np.float64] | None = None
        self.kept: dict[str, Tensor] = {}

    @property
    def completed(self) -> int:
        """How many epochs are recorded."""
        return len(self.epochs)

    def record(self, epoch: int, lr: float, keys: list[str], numbers: NDArray[np.float64], capacity: int) -> None:
        """Epoch ``epoch``'s numbers ``[keys, M]`` (room is made for ``capacity`` epochs at once)."""
        if self.numbers is not None and list(keys) != self.keys:  # resumed from a state that logged fewer numbers
            if not set(self.keys) <= set(keys):
                raise ValueError(f"the resumed fit logged {self.keys}, this one logs {list(keys)}: not the same fit")
            self.numbers = self._with_keys(list(keys))
        self.keys = list(keys)
        if self.numbers is None or self.numbers.shape[0] < capacity:
            grown = np.full((capacity, *numbers.shape), np.nan)
            if self.numbers is not None:
                grown[: self.numbers.shape[0]] = self.numbers
            self.numbers = grown
        self.numbers[epoch - 1] = numbers
        self.epochs.append((epoch, lr))

    def _with_keys(self, keys: list[str]) -> NDArray[np.float64]:
        """The table re-laid for ``keys``: a key it had keeps its column, a new one is NaN for the epochs before."""
        assert self.numbers is not None
        table = np.full((self.numbers.shape[0], len(keys), self.numbers.shape[2]), np.nan)
        for j, key in enumerate(keys):
            if key in self.keys:
                table[:, j] = self.numbers[:, self.keys.index(key)]
        return table

    def keep(self, split: str, epoch: int, outputs: Tensor, capacity: int) -> None:
        """Epoch ``epoch``'s outputs ``[M, N, K]`` on ``split``, to be scored after the last epoch."""
        store = self.kept[split] = _grown_outputs(self.kept.get(split), capacity, outputs)
        store[epoch - 1] = outputs

    def last(self, key: str) -> NDArray[np.float64]:
        """The last recorded epoch's ``key`` value of every member ``[M]``."""
        if self.numbers is None:
            raise LookupError("no epoch is recorded yet")
        return self.numbers[self.completed - 1, self.keys.index(key)]

    def rows(self, stopped: list[int], order: list[str],
             late: dict[str, list[list[float]]]) -> list[list[dict[str, float]]]:
        """Each member's history rows up to the epoch it ``stopped`` after: epoch, lr and the metrics named
        in ``order`` that were logged (``late``: the kept outputs' scores, ``name -> [epoch][member]``)."""
        table = self.numbers[: self.completed].tolist() if self.numbers is not None else []  # [epoch][key][member]
        out = []
        for member, epochs in enumerate(stopped):
            rows = []
            for e in range(epochs):
                found = {k: table[e][j][member] for j, k in enumerate(self.keys)}
                found.update({k: v[e][member] for k, v in late.items()})
                number, lr = self.epochs[e]
                rows.append({"epoch": number, "lr": lr, **{k: found[k] for k in order if k in found}})
            out.append(rows)
        return out

    def score_kept(self, targets: dict[str, Tensor | None], num_classes: int) -> dict[str, list[list[float]]]:
        """Metrics of the outputs kept per epoch, all epochs in one batched call per split:
        ``split_metric -> [epoch][member]``."""
        out: dict[str, list[list[float]]] = {}
        for split, outputs in self.kept.items():
            split_targets = targets[split]
            if self.completed == 0 or split_targets is None:
                continue
            scores = score_in_chunks(outputs[: self.completed], split_targets, num_classes)
            numbers = torch.stack(list(scores.values())).cpu().double().tolist()  # [metric][epoch][member]: one read
            out.update({f"{split}_{k}": numbers[j] for j, k in enumerate(scores)})
        return out

    def state_dict(self) -> dict[str, Any]:
        done = self.completed
        return {
            "epochs": list(self.epochs),
            "keys": list(self.keys),
            "numbers": torch.from_numpy(self.numbers[:done].copy()) if self.numbers is not None else None,
            "kept": {k: v[:done].clone() for k, v in self.kept.items()},
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | None = None) -> None:
        """Load a ``state_dict``; the kept outputs go to ``device`` (where the fit's outputs are)."""
        self.epochs = [(epoch, lr) for epoch, lr in state["epochs"]]
        self.keys = [str(k) for k in state["keys"]]
        numbers = state["numbers"]
        self.numbers = numbers.detach().cpu().numpy().astype(np.float64) if numbers is not None else None
        self.kept = {k: v.to(device).clone() for k, v in state["kept"].items()}
