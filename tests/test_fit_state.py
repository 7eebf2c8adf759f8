"""The ``distill.fit-state/2`` payload a fit checkpoints: its layout, its values, and states written before.

``tests/fixtures/fit_state_v1.pt`` holds three states written by the engine as it was before the
fit loop was split into phases (commit 5ee86b3), from the fits ``tests/test_fit_resume.py`` runs:
``epoch_end`` (3 stacked members, early stopping, after epoch 5, member 0 stopped at 4),
``interrupted`` (the same fit stopped after step 3 of epoch 3) and ``lean`` (2 members, losses only,
after epoch 4). ``fit_state_v2.pt`` holds the same three states as version 2 writes them (each epoch also
logs the loss's hard and KL terms; each step keeps ``[3, M]`` losses). The engine must write the version-2
states and resume from both. Do not regenerate a fixture unless the format itself changes (and then under a
new name).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.engine.fit_state import FIT_STATE_FORMAT
from distill.engine.loop import FitInterrupted, FitSettings
from tests.test_fit_resume import _fits, _through_disk

pytestmark = pytest.mark.filterwarnings("ignore:No (positive|negative) samples in targets:UserWarning")

FIXTURE = Path(__file__).parent / "fixtures" / "fit_state_v2.pt"
FIXTURE_V1 = Path(__file__).parent / "fixtures" / "fit_state_v1.pt"
#: what version 2 logs per epoch that version 1 did not: NaN after resuming a version-1 state, for its epochs
NEW_IN_V2 = ("train_hard_loss", "train_kl_term")
EARLY = FitSettings(epochs=30, batch_size=5, optimizer="adam", lr=0.05, patience=3)
LEAN = FitSettings(epochs=10, batch_size=6, epoch_metrics=False, replacement=True)
#: fixture case -> (members, settings, epoch of the state, step count after which a stop is requested)
CASES: dict[str, tuple[int, FitSettings, int, int | None]] = {
    "epoch_end": (3, EARLY, 5, None),
    "lean": (2, LEAN, 4, None),
    "interrupted": (3, EARLY, 2, 13),
}

TOP_KEYS = ["format", "members", "weights", "optimizer", "generators", "rng", "stoppers", "progress", "partial"]
PROGRESS_KEYS = ["epoch", "best_score", "best_epoch", "best_weights", "last_good", "last_good_epoch", "at_stop",
                 "active", "stopped_epoch", "stop_reason", "status", "diverged_at", "messages", "epochs_seen",
                 "numbers", "keys", "kept"]


def _state(case: str) -> dict[str, Any]:
    """The state the engine writes now at the point the fixture's ``case`` was written."""
    m, settings, epoch, stop_after = CASES[case]
    saved: list[dict[str, Any]] = []
    if stop_after is None:
        _fits(m, settings, checkpoint=saved.append)
        return next(s for s in saved if s["progress"]["epoch"] == epoch)
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] == stop_after

    with pytest.raises(FitInterrupted) as info:
        _fits(m, settings, checkpoint=saved.append, stop_requested=stop)
    return info.value.state


def _assert_same(new: Any, old: Any, path: str = "state") -> None:
    """Same layout and types, equal plain values, float tensors equal to float32 rounding."""
    if isinstance(old, torch.Tensor):
        assert isinstance(new, torch.Tensor), path
        assert (new.dtype, new.shape) == (old.dtype, old.shape), path
        if old.is_floating_point():
            torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-6, equal_nan=True, msg=path)
        else:
            assert torch.equal(new, old), path
        return
    assert type(new) is type(old), (path, type(new), type(old))
    if isinstance(old, dict):
        assert list(new) == list(old), path
        for key in old:
            _assert_same(new[key], old[key], f"{path}.{key}")
    elif isinstance(old, (list, tuple)):
        assert len(new) == len(old), path
        for i, (a, b) in enumerate(zip(new, old, strict=True)):
            _assert_same(a, b, f"{path}[{i}]")
    elif isinstance(old, float):
        assert new == pytest.approx(old, rel=1e-5, abs=1e-6, nan_ok=True), path
    else:
        assert new == old, path


def _close(a: tuple[list[torch.nn.Module], list[Any]], b: tuple[list[torch.nn.Module], list[Any]]) -> None:
    """Two fits end alike: the same epochs and reasons, histories and weights equal to float32 rounding
    (the fixture may come from another CPU than the one that resumes it)."""
    (models_a, results_a), (models_b, results_b) = a, b
    for ra, rb in zip(results_a, results_b, strict=True):
        assert (ra.best_epoch, ra.stopped_epoch, ra.stop_reason, ra.messages, ra.status) == \
            (rb.best_epoch, rb.stopped_epoch, rb.stop_reason, rb.messages, rb.status)
        for row_a, row_b in zip(ra.history, rb.history, strict=True):
            assert row_a.keys() == row_b.keys()
            assert list(row_a.values()) == pytest.approx(list(row_b.values()), rel=1e-5, abs=1e-6)
    for ma, mb in zip(models_a, models_b, strict=True):
        for (name, pa), (_, pb) in zip(ma.state_dict().items(), mb.state_dict().items(), strict=True):
            torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def written_before() -> dict[str, dict[str, Any]]:
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parametrize("case", list(CASES))
def test_the_engine_writes_the_state_it_wrote_before(case: str, written_before: dict[str, Any]) -> None:
    _assert_same(_through_disk(_state(case)), written_before[case])


@pytest.mark.parametrize("case", list(CASES))
def test_a_state_written_before_resumes_to_the_unbroken_fit(case: str, written_before: dict[str, Any]) -> None:
    m, settings, _, _ = CASES[case]
    _close(_fits(m, settings), _fits(m, settings, resume=written_before[case]))


@pytest.mark.parametrize("case", list(CASES))
def test_a_version_1_state_resumes_to_the_unbroken_fit_its_new_numbers_unknown_before(case: str) -> None:
    """A version-1 state (written before the hard and KL terms were logged) resumes to the same fit; the two
    new numbers are NaN for the epochs it had begun and the unbroken fit's from there on."""
    old = torch.load(FIXTURE_V1, weights_only=True)[case]
    m, settings, _, _ = CASES[case]
    unbroken = _fits(m, settings)
    resumed = _fits(m, settings, resume=old)
    begun = old["progress"]["epoch"] + (old["partial"] is not None)
    for ra, rb in zip(unbroken[1], resumed[1], strict=True):
        for row_a, row_b in zip(ra.history, rb.history, strict=True):
            for key in NEW_IN_V2:
                new_a, new_b = row_a.pop(key), row_b.pop(key)
                if row_b["epoch"] <= begun:
                    assert math.isnan(new_b), (key, row_b["epoch"])
                else:
                    assert new_b == pytest.approx(new_a, rel=1e-5, abs=1e-6), (key, row_b["epoch"])
    _close(unbroken, resumed)


def test_the_layout_and_its_values_agree_with_the_results() -> None:
    """Every field of a mid-fit state, read against the history of the same fit run to the end."""
    state = _through_disk(_state("epoch_end"))
    _, results = _fits(3, EARLY)
    progress, epoch = state["progress"], 5
    assert list(state) == TOP_KEYS and list(progress) == PROGRESS_KEYS
    assert (state["format"], state["members"], state["partial"], progress["epoch"]) == (FIT_STATE_FORMAT, 3, None, 5)
    assert state["weights"].shape[0] == 3 and state["weights"].dtype == torch.float32
    keys, numbers = progress["keys"], progress["numbers"]
    assert numbers.dtype == torch.float64 and tuple(numbers.shape) == (epoch, len(keys), 3)
    assert progress["epochs_seen"] == [(e, 0.05) for e in range(1, epoch + 1)]
    stopped = [min(r.stopped_epoch, epoch) for r in results]
    assert stopped[0] < epoch, "member 0 stops before the state is written"
    for m, result in enumerate(results):
        val = [row["val_loss"] for row in result.history[: stopped[m]]]
        assert numbers[: stopped[m], keys.index("val_loss"), m].tolist() == val
        best = min(range(len(val)), key=val.__getitem__)  # first minimum: equal is not better
        assert progress["best_epoch"][m] == best + 1
        assert progress["best_score"][m].item() == -val[best]  # sign * value: higher is better
        wait = stopped[m] - 1 - best
        assert state["stoppers"][m] == {"best": val[best], "wait": wait, "reason": result.stop_reason if m == 0 else ""}
    assert progress["active"].tolist() == [False, True, True]
    assert progress["stopped_epoch"].tolist() == [stopped[0], 0, 0]
    assert progress["stop_reason"] == [results[0].stop_reason, "completed all epochs", "completed all epochs"]
    assert progress["last_good_epoch"].tolist() == stopped
    assert progress["status"] == ["completed"] * 3 and progress["diverged_at"] == [None] * 3
    assert progress["messages"] == [[], [], []]
    assert torch.equal(progress["at_stop"][0], progress["last_good"][0])  # stopped after its last finite epoch
    assert set(progress["kept"]) == {"train", "val"} and progress["kept"]["val"].shape[:2] == (epoch, 3)


def test_an_interrupted_state_holds_the_rest_of_its_epoch() -> None:
    state = _state("interrupted")
    partial = state["partial"]
    assert (partial["epoch"], partial["step"]) == (3, 3)  # 13 steps: 5 per epoch, so step 3 of epoch 3
    assert [tuple(b.shape) for b in partial["batches"]] == [(3, 5)] * 4 + [(3, 4)]  # 24 rows, batches of 5
    # three steps, each [loss, hard term, KL term] x 3 members
    assert len(partial["losses"]) == 3 and all(tuple(loss.shape) == (3, 3) for loss in partial["losses"])
    assert state["progress"]["epoch"] == 2 and len(state["progress"]["epochs_seen"]) == 2


def test_a_fit_without_a_logged_monitor_has_no_stoppers() -> None:
    saved: list[dict[str, Any]] = []
    _fits(2, dataclasses.replace(LEAN, monitor="val_nothing"), checkpoint=saved.append)
    assert saved and all(s["stoppers"] is None for s in saved)
    assert all(s["progress"]["best_epoch"] == [None, None] and s["progress"]["best_weights"] is None for s in saved)


# --------------------------------------------------------------------------- a finished fit's history, packed


_finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=64)


@given(st.lists(st.tuples(st.integers(-(2**53) + 1, 2**53 - 1), _finite_or_not, _finite_or_not), max_size=30))
@settings(max_examples=60, deadline=None)
def test_packed_history_unpacks_to_the_very_same_rows(rows: list[tuple[int, float, float]]) -> None:
    from distill.outputs.checkpoints import pack_history, unpack_history

    history = [{"epoch": e, "lr": lr, "train_loss": loss} for e, lr, loss in rows]
    back = unpack_history(pack_history(history))
    assert len(back) == len(history)
    for a, b in zip(back, history, strict=True):
        assert list(a) == list(b)
        assert type(a["epoch"]) is int and a["epoch"] == b["epoch"]
        for key in ("lr", "train_loss"):  # bit for bit, NaN and the sign of zero included
            assert np.float64(a[key]).tobytes() == np.float64(b[key]).tobytes()


def test_history_rows_that_do_not_pack_are_kept_as_they_are() -> None:
    from distill.outputs.checkpoints import pack_history, unpack_history

    ragged = [{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.4, "val_loss": 0.7}]
    flagged = [{"epoch": 1, "train_loss": 0.5, "note": "x"}]
    assert pack_history(ragged) is ragged and unpack_history(pack_history(ragged)) == ragged
    assert pack_history(flagged) is flagged
    assert unpack_history([]) == [] and pack_history([]) == []
    packed = pack_history([{"epoch": 3, "train_loss": 1.0}])
    assert packed["ints"] == ["epoch"] and packed["values"].dtype == torch.float64
