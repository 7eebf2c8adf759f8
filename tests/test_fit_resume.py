"""A fit stopped between steps or checkpointed between epochs resumes to the numbers of an unbroken fit."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch

from distill.engine.loop import FitInterrupted, FitSettings, fit_many
from distill.students import build
from tests.test_batched import _data

pytestmark = pytest.mark.filterwarnings("ignore:No (positive|negative) samples in targets:UserWarning")


def _students(m: int, dropout: float = 0.0) -> list[torch.nn.Module]:
    out = []
    for i in range(m):
        torch.manual_seed(i)
        out.append(build("mlp", (3,), 3, hidden=[6], activation="relu", dropout=dropout))
    return out


def _through_disk(state: dict) -> dict:
    """Save and reload the state the way the runner does: weights_only, nothing executable."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _fits(m: int, settings: FitSettings, dropout: float = 0.0, **kwargs):
    data = [_data(i, k=3) for i in range(m)]
    models = _students(m, dropout)
    torch.manual_seed(123)  # the dropout stream
    results = fit_many(models, [t for t, _ in data], [dataclasses.replace(settings, seed=i, kl_weight=0.5 * i)
                                                      for i in range(m)],
                       num_classes=3, validations=[v for _, v in data], **kwargs)
    return models, results


def _same(a, b) -> None:
    (models_a, results_a), (models_b, results_b) = a, b
    for ra, rb in zip(results_a, results_b, strict=True):
        assert ra.history == rb.history  # bit for bit on the CPU
        assert (ra.best_epoch, ra.stopped_epoch, ra.stop_reason, ra.messages) == \
            (rb.best_epoch, rb.stopped_epoch, rb.stop_reason, rb.messages)
    for ma, mb in zip(models_a, models_b, strict=True):
        for (name, pa), (_, pb) in zip(ma.state_dict().items(), mb.state_dict().items(), strict=True):
            assert torch.equal(pa, pb), name


CASES = {
    "stacked, early stopping, adam": (3, FitSettings(epochs=30, batch_size=5, optimizer="adam", lr=0.05, patience=3)),
    "single, sgd momentum, cosine": (1, FitSettings(epochs=12, batch_size=7, optimizer="sgd", lr=0.1, momentum=0.9,
                                                    scheduler="cosine")),
    "stacked, lean metrics": (2, FitSettings(epochs=10, batch_size=6, epoch_metrics=False, replacement=True)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("stop_after", [1, 7, 13])
def test_interrupt_between_steps_then_resume(case: str, stop_after: int) -> None:
    m, settings = CASES[case]
    unbroken = _fits(m, settings)
    calls = {"n": 0}
    saved: list[dict] = []

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] == stop_after

    with pytest.raises(FitInterrupted) as info:
        _fits(m, settings, stop_requested=stop, checkpoint=saved.append)
    assert saved and saved[-1] is info.value.state
    assert info.value.state["partial"]["step"] >= 1
    resumed = _fits(m, settings, resume=_through_disk(saved[-1]))
    _same(unbroken, resumed)


@pytest.mark.parametrize("case", list(CASES))
def test_resume_from_an_epoch_checkpoint(case: str) -> None:
    m, settings = CASES[case]
    unbroken = _fits(m, settings)
    saved: list[dict] = []
    _fits(m, settings, checkpoint=saved.append, checkpoint_every=2)
    assert [s["progress"]["epoch"] for s in saved] == list(range(2, 2 * len(saved) + 1, 2))
    for state in (saved[0], saved[-1]):
        _same(unbroken, _fits(m, settings, resume=_through_disk(state)))


def test_dropout_stream_resumes_too() -> None:
    settings = FitSettings(epochs=6, batch_size=5, optimizer="adam", lr=0.05)
    unbroken = _fits(1, settings, dropout=0.3)
    saved: list[dict] = []
    _fits(1, settings, dropout=0.3, checkpoint=saved.append, checkpoint_every=3)
    assert [s["progress"]["epoch"] for s in saved] == [3]
    _same(unbroken, _fits(1, settings, dropout=0.3, resume=_through_disk(saved[0])))  # bit for bit
    assert unbroken[1][0].stopped_epoch == 6
