"""The per-member bookkeeping of a fit (``distill.engine.callbacks``), vectorised over M members.

Each object is fed as the fit loop feeds it (a member that stopped is no longer eligible) and checked
against hand-computed cases; early stopping also against the scalar rule it replaced, kept here as
the oracle; every ``state_dict`` goes through the disk mid-sequence and must continue identically.
"""

from __future__ import annotations

import io
import math
import random
from typing import Any

import numpy as np
import pytest
import torch

from distill.engine.callbacks import BestState, Divergence, EarlyStopping, Stops, where_rows

NAN, INF = math.nan, math.inf


def _through_disk(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _weights(epoch: int, members: int = 3, size: int = 4) -> torch.Tensor:
    """Recognisable ``[M, P]`` weights: member m at epoch e is all ``10 * m + e``."""
    return (10.0 * torch.arange(members, dtype=torch.float32)[:, None] + epoch).expand(members, size).clone()


def _feed_early(stopper: EarlyStopping, rows: list[list[float]], first_epoch: int = 1,
                stopped: dict[int, int] | None = None) -> dict[int, int]:
    """Step ``rows`` (one value per member each) as the loop does; returns member -> epoch it stopped at."""
    stopped = dict(stopped or {})
    for epoch, row in enumerate(rows, start=first_epoch):
        eligible = np.array([m not in stopped for m in range(len(row))])
        for m in np.flatnonzero(stopper.step(row, eligible)):
            stopped[int(m)] = epoch
    return stopped


# --------------------------------------------------------------------------- EarlyStopping

#: min, patience 2, min_delta 0.1; member 2's value turns NaN at epoch 4 (values after a stop are ignored)
EARLY_ROWS = [
    [1.0, 1.0, 1.0],    # all: best 1.0
    [0.95, 0.85, 0.5],  # m0 needs < 0.9: wait 1; m1 best 0.85; m2 best 0.5
    [0.8, 0.8, 0.45],   # m0 best 0.8; m1 needs < 0.75: wait 1; m2 needs < 0.4: wait 1
    [0.75, 0.7, NAN],   # m0 needs < 0.7: wait 1; m1 best 0.7; m2 stops: not finite
    [0.71, 0.65, 0.1],  # m0 wait 2: stops; m1 needs < 0.6: wait 1
    [0.1, 0.64, 0.1],   # m1 wait 2: stops
]


def test_members_stop_early_at_their_own_epochs() -> None:
    stopper = EarlyStopping("val_loss", "min", patience=2, min_delta=0.1, members=3)
    assert _feed_early(stopper, EARLY_ROWS) == {0: 5, 1: 6, 2: 4}
    assert stopper.best.tolist() == [0.8, 0.7, 0.5]
    assert stopper.wait.tolist() == [2, 2, 1]
    assert stopper.reasons == ["val_loss did not improve by 0.1 for 2 epochs"] * 2 + ["val_loss = nan is not finite"]


def test_a_member_outside_eligible_is_not_touched() -> None:
    stopper = EarlyStopping("val_accuracy", "max", patience=1, members=2)
    stopper.step([0.5, 0.5])
    assert stopper.step([0.4, NAN], np.array([True, False])).tolist() == [True, False]
    assert stopper.best.tolist() == [0.5, 0.5] and stopper.wait.tolist() == [1, 0] and stopper.reasons[1] == ""


class ScalarEarlyStopping:
    """The rule as it was, one member at a time (the oracle)."""

    def __init__(self, mode: str, patience: int, min_delta: float) -> None:
        self.mode, self.patience, self.min_delta = mode, patience, min_delta
        self.best, self.wait = (INF if mode == "min" else -INF), 0

    def step(self, value: float) -> bool:
        if not math.isfinite(value):
            return True
        better = value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        if better:
            self.best, self.wait = value, 0
            return False
        self.wait += 1
        return self.patience > 0 and self.wait >= self.patience


@pytest.mark.parametrize("seed", range(8))
def test_early_stopping_equals_the_scalar_rule_member_by_member(seed: int) -> None:
    rng = random.Random(seed)
    mode, patience, min_delta = rng.choice(["min", "max"]), rng.choice([0, 2, 4]), rng.choice([0.0, 0.01, 0.05])
    members, epochs = 6, 40
    trend = 1.0 if mode == "max" else -1.0

    def value(epoch: int) -> float:  # a noisy trend that flattens out, now and then not finite
        if rng.random() < 0.02:
            return rng.choice([NAN, INF, -INF])
        return round(trend * (1 - math.exp(-epoch / rng.uniform(3, 15))) + rng.gauss(0, 0.03), 3)

    rows = [[value(e) for _ in range(members)] for e in range(epochs)]
    stopped = _feed_early(EarlyStopping("m", mode, patience, min_delta, members), rows)
    for m in range(members):
        alone = ScalarEarlyStopping(mode, patience, min_delta)
        expected = next((e for e, row in enumerate(rows, start=1) if alone.step(row[m])), None)
        assert stopped.get(m) == expected, (m, [row[m] for row in rows])


def test_early_stopping_state_round_trip_mid_fit() -> None:
    whole = EarlyStopping("val_loss", "min", patience=2, min_delta=0.1, members=3)
    whole_stops = _feed_early(whole, EARLY_ROWS)
    first = EarlyStopping("val_loss", "min", patience=2, min_delta=0.1, members=3)
    stopped = _feed_early(first, EARLY_ROWS[:4])
    second = EarlyStopping("val_loss", "min", patience=2, min_delta=0.1, members=3)
    second.load_state_dict(_through_disk(first.state_dict()))
    assert _feed_early(second, EARLY_ROWS[4:], first_epoch=5, stopped=stopped) == whole_stops
    assert (second.best.tolist(), second.wait.tolist(), second.reasons) == \
        (whole.best.tolist(), whole.wait.tolist(), whole.reasons)


# --------------------------------------------------------------------------- BestState

#: max (val_accuracy); member 2 is not eligible at epoch 3 (it diverged there); member 3 never has a finite value
BEST_ROWS = [
    [0.5, NAN, 0.7, NAN],
    [0.6, 0.4, 0.7, INF],   # m2: equal is not better
    [0.55, 0.4, 0.9, NAN],  # m2 not eligible
    [0.6, 0.45, 0.1, NAN],  # m0: equal is not better
]


def _feed_best(best: BestState, rows: list[list[float]], first_epoch: int = 1) -> None:
    for epoch, row in enumerate(rows, start=first_epoch):
        eligible = np.array([not (m == 2 and epoch == 3) for m in range(4)])
        best.update(row, epoch, _weights(epoch, 4), eligible)


def test_best_state_keeps_each_members_best_epoch_and_weights() -> None:
    best = BestState("val_accuracy", "max", members=4)
    _feed_best(best, BEST_ROWS)
    assert best.epoch.tolist() == [2, 4, 1, 0]
    assert best.score[:3].tolist() == [0.6, 0.45, 0.7] and best.score[3] == -INF
    final = _weights(99, 4)
    restored = best.restore(final)
    for m, epoch in enumerate([2, 4, 1, 99]):  # member 3 has no best: it keeps the weights it is given
        assert torch.equal(restored[m], _weights(epoch, 4)[m]), m


def test_best_state_in_min_mode_and_its_mask() -> None:
    best = BestState("val_loss", "min", members=2)
    assert best.update([1.0, 2.0], 1, _weights(1, 2)).tolist() == [True, True]
    assert best.update([0.5, 2.0], 2, _weights(2, 2)).tolist() == [True, False]
    assert best.epoch.tolist() == [2, 1] and best.score.tolist() == [0.5, 2.0]


def test_best_state_round_trip_mid_fit() -> None:
    whole = BestState("val_accuracy", "max", members=4)
    _feed_best(whole, BEST_ROWS)
    first = BestState("val_accuracy", "max", members=4)
    _feed_best(first, BEST_ROWS[:2])
    second = BestState("val_accuracy", "max", members=4)
    second.load_state_dict(_through_disk(first.state_dict()))
    _feed_best(second, BEST_ROWS[2:], first_epoch=3)
    assert second.epoch.tolist() == whole.epoch.tolist()
    assert np.array_equal(second.score, whole.score)
    assert torch.equal(second.restore(_weights(99, 4)), whole.restore(_weights(99, 4)))


# --------------------------------------------------------------------------- Divergence


def _epoch_losses(bad: dict[tuple[int, int], float], steps: int = 3, members: int = 4) -> torch.Tensor:
    """Finite step losses ``[steps, M]`` with ``bad[(step, member)]`` (1-based step) put in."""
    losses = torch.full((steps, members), 0.5)
    for (step, member), value in bad.items():
        losses[step - 1, member] = value
    return losses


def _check(divergence: Divergence, epoch: int, losses: torch.Tensor, active: list[bool],
           train_loss: list[float] | None = None) -> list[bool]:
    mean = losses.mean(0).double().numpy() if train_loss is None else np.array(train_loss)
    return divergence.check(epoch, mean, losses, _weights(epoch, 4), np.array(active)).tolist()


def test_divergence_flags_exactly_the_diverged_members_and_where() -> None:
    divergence = Divergence(_weights(0, 4))
    assert _check(divergence, 1, _epoch_losses({}), [True] * 4) == [False] * 4
    # epoch 2: member 1 NaN at step 2, member 2 inf at steps 3 and 1 (first: 1), member 3 NaN but stopped
    losses = _epoch_losses({(2, 1): NAN, (3, 2): INF, (1, 2): INF, (2, 3): NAN})
    assert _check(divergence, 2, losses, [True, True, True, False]) == [False, True, True, False]
    assert [divergence.at(m) for m in range(4)] == [None, (2, 2), (2, 1), None]
    assert divergence.last_good_epoch.tolist() == [2, 1, 1, 1]
    for m, epoch in enumerate([2, 1, 1, 1]):  # the diverged and the stopped keep their last finite weights
        assert torch.equal(divergence.last_good[m], _weights(epoch, 4)[m]), m
    restored = divergence.restore(_weights(7, 4))
    for m, epoch in enumerate([7, 1, 1, 7]):  # only the diverged are restored
        assert torch.equal(restored[m], _weights(epoch, 4)[m]), m


def test_divergence_of_the_mean_alone_is_step_one() -> None:
    divergence = Divergence(_weights(0, 4))
    flagged = _check(divergence, 1, _epoch_losses({}), [True] * 4, train_loss=[0.5, INF, 0.5, 0.5])
    assert flagged == [False, True, False, False] and divergence.at(1) == (1, 1)
    assert divergence.last_good_epoch.tolist() == [1, 0, 1, 1]  # epoch 0: the initial weights


def test_weights_or_a_validation_loss_that_are_not_finite_are_divergence_too() -> None:
    """Finite step losses, then member 1's weights overflow, member 2's validation loss is NaN (its outputs
    overflowed), member 3's validation loss is finite: 1 and 2 diverged, each with its cause, and keep the
    weights of the last epoch that was finite in every respect."""
    divergence = Divergence(_weights(0, 4))
    weights = _weights(1, 4)
    weights[1, 2] = INF
    flagged = divergence.check(1, np.full(4, 0.5), _epoch_losses({}), weights, np.array([True] * 4),
                               val_loss=np.array([0.4, 0.4, NAN, 0.4])).tolist()
    assert flagged == [False, True, True, False]
    assert divergence.cause[1:3] == ["weights", "validation loss"]
    assert divergence.last_good_epoch.tolist() == [1, 0, 0, 1]
    assert torch.equal(divergence.restore(weights)[1], _weights(0, 4)[1])


def test_divergence_round_trip_mid_fit() -> None:
    epochs = [_epoch_losses({}), _epoch_losses({(3, 0): NAN}), _epoch_losses({(1, 2): NAN})]
    active = [[True] * 4, [True] * 4, [False, True, True, True]]
    whole = Divergence(_weights(0, 4))
    for e, (losses, act) in enumerate(zip(epochs, active, strict=True), start=1):
        _check(whole, e, losses, act)
    first = Divergence(_weights(0, 4))
    _check(first, 1, epochs[0], active[0])
    second = Divergence(_weights(5, 4))
    second.load_state_dict(_through_disk(first.state_dict()))
    for e in (2, 3):
        _check(second, e, epochs[e - 1], active[e - 1])
    assert [second.at(m) for m in range(4)] == [whole.at(m) for m in range(4)] == [(2, 3), None, (3, 1), None]
    assert second.last_good_epoch.tolist() == whole.last_good_epoch.tolist()
    assert torch.equal(second.restore(_weights(9, 4)), whole.restore(_weights(9, 4)))


# --------------------------------------------------------------------------- Stops


def test_stops_keep_the_weights_of_members_that_stop_while_others_train() -> None:
    stops = Stops(4)
    stops.stop(np.array([True, False, False, False]), 2, _weights(2, 4))
    stops.stop(np.array([False, True, False, False]), 4, _weights(4, 4))
    stops.finish(6)
    assert stops.active.tolist() == [False, False, True, True]
    assert stops.epoch.tolist() == [2, 4, 6, 6]
    final = stops.restore(_weights(6, 4), last_epoch=6)
    for m, epoch in enumerate([2, 4, 6, 6]):
        assert torch.equal(final[m], _weights(epoch, 4)[m]), m


def test_stops_when_the_last_members_stop_together() -> None:
    stops = Stops(2)
    stops.stop(np.array([True, True]), 3, _weights(3, 2))
    assert stops.weights is None  # nobody trains on: the weights where the fit ends are theirs
    stops.finish(3)
    assert stops.epoch.tolist() == [3, 3]
    assert torch.equal(stops.restore(_weights(3, 2), last_epoch=3), _weights(3, 2))


def test_stops_round_trip() -> None:
    stops = Stops(3)
    stops.messages[1].append("a note")
    stops.reasons[0] = "stopped"
    stops.stop(np.array([True, False, False]), 2, _weights(2))
    again = Stops(3)
    again.load_state_dict(_through_disk(stops.state_dict()))
    for other in (stops, again):
        other.stop(np.array([False, True, False]), 5, _weights(5))
        other.finish(7)
    assert (again.active.tolist(), again.epoch.tolist(), again.reasons, again.messages) == \
        (stops.active.tolist(), stops.epoch.tolist(), stops.reasons, stops.messages)
    assert torch.equal(again.restore(_weights(7), 7), stops.restore(_weights(7), 7))


def test_where_rows_shares_rather_than_copies_when_it_can() -> None:
    new, old = _weights(1), _weights(2)
    assert where_rows(np.array([True] * 3), new, old) is new
    assert where_rows(np.array([False] * 3), new, old) is old
    assert where_rows(np.array([False, True, False]), new, None) is new
    mixed = where_rows(np.array([False, True, False]), new, old)
    assert mixed[:, 0].tolist() == [2.0, 11.0, 22.0]
