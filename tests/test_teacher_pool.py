"""Teacher fits in worker processes (``teacher.workers``): the same numbers whatever the worker count, errors as
in this process, only teachers a fresh process can rebuild, and the look-ahead's own promises."""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import pytest

from distill.config import ConfigError, validate_config
from distill.errors import UserError
from distill.experiment import lookahead
from distill.experiment.cache import SoftTargetCache
from distill.experiment.episodes import run_protocol
from distill.experiment.lookahead import EpisodesAhead
from distill.experiment.prepare import TEACHER_FOLDS, prepare, prepare_protocol
from distill.experiment.teach import fits_in_workers, teach, teacher_fit, teacher_request
from distill.experiment.teacher_cv import TeacherProblem, cross_fit
from distill.experiment.teacher_pool import AUTO_MIN_S, TeacherFit, TeacherPool, auto_workers, poolable

BASE: dict[str, Any] = {
    "seed": 3,
    "data": {"source": "sklearn:breast_cancer", "test_size": 60},
    "few_shot": {"labelled": 6},
    "teacher": {"restarts": 1, "cache": False},
    "student": {"hidden": [4]},
    "objective": {"kl_weight": [0.5, 2.0], "temperature": 2.0},
    "train": {"epochs": 3, "device": "cpu", "batch_size": 6},
    "protocol": {"episodes": 5, "references": ["logistic_regression"], "controls": ["null_teacher"]},
}


def config(**sections: Any) -> Any:
    out = copy.deepcopy(BASE)
    for key, value in sections.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return validate_config(out)


def _numbers(results: list[Any]) -> list[Any]:
    """Every number a result holds but the seconds: metrics, test probabilities, diagnostics without timings."""
    return [(r.episode, r.value, r.metrics, {k: v.tolist() for k, v in sorted(r.test_predictions.items())},
             {k: v for k, v in r.teacher_diagnostics.items()}) for r in results]


@pytest.mark.parametrize("teacher, workers", [
    ({}, 2),  # a Gaussian process, one per episode, shared by both sweep values
    ({"kind": "ensemble", "candidates": ["gaussian_process", "logistic_regression"]}, 1),  # two, averaged
])
def test_same_numbers_whatever_the_worker_count(teacher: dict[str, Any], workers: int) -> None:
    runs = {}
    for count in (0, workers):
        cfg = config(teacher={**BASE["teacher"], **teacher, "workers": count})
        _, runs[count] = run_protocol(cfg)
    assert len(runs[0]) == 5 * 2
    assert _numbers(runs[workers]) == _numbers(runs[0])


def test_a_pooled_fit_is_cross_fit_called_here() -> None:
    """The independent reference: ``cross_fit`` with the teacher built the way ``teach`` builds it."""
    prepared = prepare(config())
    request = teacher_request(prepared)
    fit = teacher_fit(prepared, request)
    assert fit is not None and fits_in_workers(prepared)
    rows = request.rows
    factories = [(c.name, lambda c=c: c.build(prepared.seed)) for c in prepared.teacher.candidates]
    here = cross_fit(factories, rows.fit_x, rows.fit_y, rows.asked, rows.cv_rows, mode="single",
                     calibration="temperature", learns=True, seed=prepared.seed, num_classes=2, max_folds=TEACHER_FOLDS)
    pool = TeacherPool(1)
    try:
        pool.submit(request.key, fit)
        pooled = pool.result(request.key)
    finally:
        pool.close()
    np.testing.assert_array_equal(pooled.logits, here.logits)
    np.testing.assert_array_equal(pooled.fold_logits, here.fold_logits)
    assert pooled.diagnostics == here.diagnostics
    # and teach, given the pool, hands on exactly what it computes alone
    alone = teach(prepared)
    pool = TeacherPool(1)
    try:
        pool.submit(request.key, fit)
        taught = teach(prepared, request=request, pool=pool)
        assert pool.pending() == 0
    finally:
        pool.close()
    np.testing.assert_array_equal(taught.test_logits, alone.test_logits)
    assert taught.train.teacher_logits.equal(alone.train.teacher_logits)


def test_a_fit_no_worker_started_is_taken_back() -> None:
    prepared = prepare(config())
    request = teacher_request(prepared)
    fit = teacher_fit(prepared, request)
    assert fit is not None
    pool = TeacherPool(1)
    try:
        pool.submit(request.key, fit)  # behind the warm-ups: not started yet
        crossed = pool.result(request.key)
        assert pool.stolen == 1 and pool.pending() == 0
    finally:
        pool.close()
    np.testing.assert_array_equal(crossed.logits, fit.run().logits)


def test_a_worker_error_is_the_error_this_process_raises() -> None:
    prepared = prepare(config())
    fit = teacher_fit(prepared, teacher_request(prepared))
    assert fit is not None
    bad = TeacherFit(**{**fit.__dict__, "candidates": (("gaussian_process", "gaussian_process",
                                                        {**fit.candidates[0][2], "kernel": "1.0 * RBF(-1.0)"}),)})
    with pytest.raises(TeacherProblem) as here:
        bad.run()
    pool = TeacherPool(1)
    try:
        pool._warming[0].result()  # a started worker takes the fit: it runs there, not here
        pool.submit("bad", bad)
        with pytest.raises(TeacherProblem) as there:
            pool.result("bad")
    finally:
        pool.close()
    assert str(there.value) == str(here.value)
    assert "gaussian_process" in str(here.value)


def test_poolable_teachers_are_the_ones_a_fresh_process_can_rebuild() -> None:
    assert poolable("gaussian_process", {}, given=False)
    assert poolable("sklearn", {"estimator": "sklearn.ensemble:RandomForestClassifier"}, given=False)
    assert not poolable("sklearn", {"estimator": "mypackage.models:Classifier"}, given=False)
    assert not poolable("sklearn", {"estimator": None}, given=False)
    assert not poolable("gaussian_process", {}, given=True)  # a teacher given in Python
    assert not poolable("network", {}, given=False)  # arrives trained, on the device
    assert not poolable("my_registered_teacher", {}, given=False)
    assert not poolable("tests.teachers:Anything", {}, given=False)  # an import path


def test_auto_starts_workers_only_when_the_fits_left_take_long_enough() -> None:
    assert auto_workers(100, AUTO_MIN_S / 100, cpus=2) == 1  # exactly the threshold; a core left to train on
    assert auto_workers(100, AUTO_MIN_S / 100 * 0.99, cpus=2) == 0
    assert auto_workers(100, 1.0, cpus=8) == 7
    assert auto_workers(3, 10.0, cpus=8) == 3  # never more workers than fits
    assert auto_workers(50, 1.0, cpus=1) == 0  # one core: nothing to overlap
    assert auto_workers(1, 100.0, cpus=4) == 0
    assert auto_workers(0, 100.0, cpus=4) == 0


@pytest.mark.parametrize("value", [-1, 1.5, "x", True, 257])
def test_teacher_workers_out_of_range_is_named(value: Any) -> None:
    with pytest.raises(ConfigError, match="teacher.workers"):
        config(teacher={"workers": value})


def test_worker_count_is_not_part_of_the_teachers_identity() -> None:
    a = prepare(config(teacher={"workers": 0}))
    b = prepare(config(teacher={"workers": 3}))
    assert a.teacher.identity(a.seed) == b.teacher.identity(b.seed)
    assert teacher_request(a).key == teacher_request(b).key  # the soft-target cache is shared


def test_workers_for_a_teacher_that_cannot_run_there_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from distill.teachers.base import Teacher

    class Constant(Teacher):
        def fit(self, x: np.ndarray, y: np.ndarray) -> "Constant":
            return self

        def logits(self, x: np.ndarray) -> np.ndarray:
            return np.zeros((len(x), 2))

    cfg = config(teacher={"workers": 2}, protocol={"episodes": 2})
    with caplog.at_level(logging.WARNING, logger="distill"):
        first = prepare_protocol(cfg, teacher=lambda seed: Constant())
        _, results = run_protocol(cfg, first)
    assert len(results) == 4
    assert any("teacher.workers = 2 is ignored" in r.getMessage() for r in caplog.records)


def test_an_episode_that_cannot_be_drawn_fails_when_the_loop_reaches_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(teacher={"workers": 1}, protocol={"episodes": 4}, objective={"kl_weight": 1.0})
    first = prepare_protocol(cfg)
    real = lookahead.prepare_episode

    def failing(prepared: Any, episode: int) -> Any:
        if episode == 2:
            raise UserError("episode 2 cannot be drawn")
        return real(prepared, episode)

    monkeypatch.setattr(lookahead, "prepare_episode", failing)
    with EpisodesAhead(cfg, first, SoftTargetCache(None), window=4) as ahead:
        prepared, _ = ahead.take(0)
        assert prepared.episode == 0
        assert ahead.pool is not None  # started at the first take: teacher.workers = 1
        assert ahead.take(1)[0].episode == 1  # episode 2 was drawn ahead, and failed, already
        with pytest.raises(UserError, match="episode 2 cannot be drawn"):
            ahead.take(2)
        assert ahead.take(3)[0].episode == 3
        pool = ahead.pool
        assert pool.pending() > 0  # episode 3's fit, never collected
    assert pool.pending() == 0  # cancelled when the loop ended


def test_a_fit_a_slow_worker_started_is_done_here_after_the_patience() -> None:
    """A worker busy elsewhere (starved on a loaded machine, say) never holds the run up for long."""
    import time

    from distill.experiment.teacher_pool import MIN_PATIENCE_S

    prepared = prepare(config())
    request = teacher_request(prepared)
    fit = teacher_fit(prepared, request)
    assert fit is not None
    pool = TeacherPool(1)
    try:
        for warm in pool._warming:
            warm.result()
        busy = pool._executor.submit(time.sleep, 30)  # the only worker, taken
        pool._executor.submit(time.sleep, 0)  # the call queue's spare place, taken: the fit below cannot be taken back
        pool.submit(request.key, fit)
        started = time.perf_counter()
        while not pool._futures[request.key][0].running():  # queued for the worker: no longer cancellable
            assert time.perf_counter() - started < 20
            time.sleep(0.05)
        assert pool.patience() == MIN_PATIENCE_S  # nothing timed yet
        waited = time.perf_counter()
        crossed = pool.result(request.key)
        assert time.perf_counter() - waited < MIN_PATIENCE_S + 10
        assert pool.duplicated == 1 and pool.stolen == 0
        assert not busy.done()
    finally:
        pool.close()
        pool._executor.shutdown(wait=False, kill_workers=True)  # the sleeping worker, not left for the next test
    np.testing.assert_array_equal(crossed.logits, fit.run().logits)
