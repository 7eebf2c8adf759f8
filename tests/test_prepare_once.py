"""Prepare once (issue 17, point 2): what ``prepare`` resolves is shared by every episode, each teacher fit
builds one teacher, run and tune share one soft-target cache, and a student job's knobs are numbers.

The references are independent: ``prepare`` of the episode's own config (what every episode did before),
a count of the teacher's constructor calls against the fits the protocol needs, the student.pt payload as
``save_student`` wrote it before it used the shared builder.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from distill.config import config_dict, validate_config
from distill.experiment.cache import SoftTargetCache
from distill.experiment.episodes import run_protocol
from distill.experiment.prepare import TEACHER_FOLDS, episode_seed, prepare, prepare_episode
from distill.experiment.run import save_student
from distill.experiment.students import StudentJob, _fit_identity, train_students
from distill.experiment.teach import teach
from distill.students.checkpoint import CHECKPOINT_FORMAT
from distill.teachers.base import TEACHERS, Teacher, register_teacher
from distill.version import __version__

BASE: dict[str, Any] = {
    "seed": 5,
    "data": {"source": "sklearn:iris", "test_size": 30},
    "few_shot": {"per_class": 3, "validation": 1},
    "teacher": {"restarts": 0, "cache": False},
    "student": {"hidden": [8]},
    "train": {"epochs": 2, "device": "cpu"},
}


def config(**sections: Any) -> Any:
    raw = copy.deepcopy(BASE)
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return validate_config(raw)


# --------------------------------------------------------------------------- prepare_episode


def test_an_episode_draws_what_prepare_of_its_own_config_draws() -> None:
    """Episode e shares what prepare resolved and draws exactly the rows, scaler and hard criterion that
    ``prepare`` of the config with seed + e gives (what every episode ran before)."""
    cfg = config(objective={"class_weight": "balanced", "kl_weight": 1.0, "temperature": 2.0},
                 few_shot={"transfer": "augmented", "augment": {"count": 20}})
    first = prepare(cfg)
    for e in (0, 1, 3):
        episode = prepare_episode(first, e)
        alone = prepare(cfg.model_copy(update={"seed": episode_seed(cfg.seed, e)}))
        assert (episode.episode, episode.seed) == (e, cfg.seed + e)
        assert episode.teacher is first.teacher and episode.student is first.student  # resolved once
        assert config_dict(episode.config) == config_dict(alone.config)
        for part in ("test", "labelled", "validation", "pool"):
            assert np.array_equal(getattr(episode.split, part), getattr(alone.split, part)), part
        assert np.array_equal(episode.scaler.shift, alone.scaler.shift)
        assert np.array_equal(episode.scaler.scale, alone.scaler.scale)
        plain = {f.name for f in dataclasses.fields(episode.settings)} - {"criterion"}
        assert {n: getattr(episode.settings, n) for n in plain} == {n: getattr(alone.settings, n) for n in plain}
        assert episode.settings.seed == cfg.seed + e
        # The balanced class weights are this episode's: the criteria agree on any logits.
        z, y = torch.randn(12, 3, generator=torch.Generator().manual_seed(e)), torch.arange(12) % 3
        assert torch.equal(episode.settings.criterion(z, y), alone.settings.criterion(z, y))


# --------------------------------------------------------------------------- one teacher instance per fit


class _Counted(Teacher):
    """The labelled rows' log class frequencies; counts its constructions."""

    built = 0

    def __init__(self, num_classes: int, **_: Any) -> None:
        type(self).built += 1
        self.num_classes = num_classes

    def fit(self, x: np.ndarray, y: np.ndarray) -> "_Counted":
        self.prior_ = np.log((np.bincount(y, minlength=self.num_classes) + 1.0) / (y.size + self.num_classes))
        return self

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.tile(self.prior_, (len(x), 1))


class _CountedTrained(_Counted):
    """The same, arriving trained: fitted once per episode, never per fold."""

    learns = False

    def __init__(self, num_classes: int, **_: Any) -> None:
        super().__init__(num_classes)
        self.prior_ = np.full(num_classes, -np.log(num_classes))

    def fit(self, x: np.ndarray, y: np.ndarray) -> "_CountedTrained":
        return self


@pytest.mark.parametrize("cls, fits_per_episode", [(_Counted, 1 + TEACHER_FOLDS), (_CountedTrained, 1)])
def test_one_teacher_instance_per_fit(cls: type[_Counted], fits_per_episode: int) -> None:
    """Two episodes of a two-value kl_weight sweep: ``prepare`` builds each sweep value's teacher once to
    check it; then every teacher fit builds one teacher, and the sweep values share their episode's fits."""
    name = f"counted_{cls.__name__.lower()}"
    register_teacher(name, cls)
    try:
        cls.built = 0
        cfg = config(teacher={"kind": name}, objective={"kl_weight": [0.5, 2.0], "temperature": 1.0},
                     protocol={"episodes": 2})
        first, results = run_protocol(cfg)
    finally:
        TEACHERS.unregister(name)
    assert len(first) == 2 and len(results) == 4
    assert cls.built == len(first) + 2 * fits_per_episode


# --------------------------------------------------------------------------- one soft-target cache


def test_the_cache_remembers_outputs_under_the_disk_key_and_forgets_them(tmp_path: Path) -> None:
    """One object, one key: the outputs a cache computed come back from memory (no disk lookup), equal
    outputs of another draw do not, and ``forget`` leaves only the disk."""
    prepared = prepare(config(teacher={"cache": True, "cache_dir": str(tmp_path)}))
    cache: SoftTargetCache = SoftTargetCache(tmp_path)
    taught = teach(prepared, cache=cache)
    assert teach(prepared, cache=cache) is taught and (cache.hits, cache.misses) == (0, 1)
    other = teach(prepare_episode(prepared, 1), cache=cache)
    assert other is not taught and (cache.hits, cache.misses) == (0, 2)
    tuning = teach(prepared, cache=cache, score_test=False)  # other rows asked: another key
    assert tuning is not taught and tuning.test_logits.shape[0] == 0 and cache.misses == 3
    cache.forget()
    again = teach(prepared, cache=cache)
    assert again is not taught and (cache.hits, cache.misses) == (1, 3)
    assert torch.equal(again.train.teacher_logits, taught.train.teacher_logits)


# --------------------------------------------------------------------------- the jobs' knobs


def test_a_jobs_knobs_are_numbers_or_auto_and_its_fit_identity_is_unchanged() -> None:
    """A job takes the configured knobs as numbers, or "auto" until train_students chooses; the fit's
    identity records None for a configured knob, as it always has (a run resumed across versions matches)."""
    fixed = prepare(config(objective={"kl_weight": 0.5, "temperature": 3.0}))
    taught = teach(fixed, score_test=False)
    student = StudentJob.planned(fixed, taught, "student")
    baseline = StudentJob.planned(fixed, taught, "baseline", kl_weight=0.0)
    assert (student.kl_weight, student.temperature) == (0.5, 3.0)
    assert (student.fit_settings().kl_weight, student.fit_settings().temperature) == (0.5, 3.0)
    assert (baseline.fit_settings().kl_weight, baseline.fit_settings().temperature) == (0.0, 3.0)
    members = _fit_identity("k", [student, baseline])["members"]
    assert [(m["system"], m["kl_weight"], m["temperature"]) for m in members] == [
        ("student", None, None), ("baseline", 0.0, None)]

    auto = prepare(config())  # kl_weight and temperature "auto"
    job = StudentJob.planned(auto, teach(auto, score_test=False), "student")
    assert (job.kl_weight, job.temperature) == ("auto", "auto")
    with pytest.raises(ValueError, match="must be chosen before a fit"):
        job.fit_settings()
    train_students([job], batched=True)
    assert job.selection is not None
    assert (job.kl_weight, job.temperature) == (job.selection["kl_weight"], job.selection["temperature"])
    (member,) = _fit_identity("k", [job])["members"]
    assert (member["kl_weight"], member["temperature"]) == (job.kl_weight, job.temperature)


# --------------------------------------------------------------------------- one payload builder


def test_student_pt_holds_what_it_held_before_the_shared_builder(tmp_path: Path) -> None:
    """The payload ``save_student`` wrote itself before ``checkpoint_payload``: same keys in the same order,
    same values, same tensors."""
    first, (result,) = run_protocol(config(objective={"kl_weight": 1.0, "temperature": 2.0}))
    prepared = first[0]
    c = prepared.config
    before = {
        "format": CHECKPOINT_FORMAT,
        "distill_version": __version__,
        "arch": c.student.arch,
        "kwargs": c.student.kwargs,
        "in_shape": list(prepared.dataset.in_shape),
        "num_classes": prepared.dataset.num_classes,
        "num_outputs": prepared.num_outputs,
        "classes": list(prepared.dataset.classes),
        "feature_names": list(prepared.dataset.feature_names),
        "scaler": prepared.scaler.state(),
        "best_epoch": result.student_fit.best_epoch,
        "episode": result.episode,
        "seed": result.seed,
        "config": config_dict(c),
        "state_dict": {k: v.detach().cpu() for k, v in result.student.state_dict().items()},
    }
    now = torch.load(save_student(tmp_path / "student.pt", prepared, result), weights_only=True)
    assert list(now) == list(before)
    for key, value in before.items():
        if key == "state_dict":
            assert list(now[key]) == list(value)
            assert all(torch.equal(now[key][k], v) for k, v in value.items())
        else:
            assert now[key] == value, key
