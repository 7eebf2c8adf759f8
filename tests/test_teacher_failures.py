"""A teacher that fails at run time (issue 16): whatever teacher code raises becomes one line naming the
teacher and the first line of its error (``TeacherProblem``, a ``distill.UserError`` in a run, exit 2 in the
CLI), and a run refused before it trained anything leaves no run directory. distill's own errors, stop
requests and memory exhaustion pass through ``cross_fit`` unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

import distill
from distill.cli import main
from distill.config import to_toml
from distill.experiment.teacher_cv import TeacherProblem, cross_fit
from distill.interrupts import Interrupted
from distill.teachers.base import TEACHERS, Teacher, register_teacher

#: small and fast, the KL term fixed; 12 labelled rows, 60 test rows: the teacher is asked about 72 rows
SETTINGS: dict[str, Any] = {
    "name": "failures",
    "seed": 3,
    "data": {"scale": "standard", "test_size": 60},
    "few_shot": {"labelled": 12, "validation": 0},
    "protocol": {"episodes": 1},
    "teacher": {"kind": "sklearn", "estimator": "sklearn.linear_model:LogisticRegression", "cache": False},
    "student": {"hidden": [8]},
    "objective": {"kl_weight": 1.0, "temperature": 1.0},
    "train": {"epochs": 5, "batch_size": 4, "threads": 1},
    "tracking": {"enabled": False},
}


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, np.ndarray]:
    return load_breast_cancer(return_X_y=True)


# ----------------------------------------------------------------------------- teachers that fail
class _FitRaises(ClassifierMixin, BaseEstimator):
    """An estimator whose fit raises a RuntimeError with a two-line message."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> "_FitRaises":
        raise RuntimeError("solver exploded\nsecond line of the error")

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        raise AssertionError("never reached")


class _ThreeColumns(ClassifierMixin, BaseEstimator):
    """Fits, then gives three probability columns for a two-class problem."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> "_ThreeColumns":
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.full((len(x), 3), 1 / 3)


class _SmallBatchesOnly(torch.nn.Module):
    """A trained network that passes distill's 2-row check but fails on any larger batch."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(30, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 2:
            raise RuntimeError(f"batch of {x.shape[0]} rows is too large")
        return self.linear(x)


REFIT = "given in Python (refit on each episode's labelled rows)"


@pytest.mark.parametrize("make, expected", [
    (_SmallBatchesOnly, "failed computing its logits on 72 rows: RuntimeError: batch of 72 rows is too large "
                        "[_SmallBatchesOnly network given in Python (raw inputs)]"),
    (lambda: KNeighborsClassifier(n_neighbors=50),
     "failed computing its logits on 72 rows: ValueError: Expected n_neighbors <= n_samples_fit, but "
     f"n_neighbors = 50, n_samples_fit = 12, n_samples = 72 [KNeighborsClassifier {REFIT}]"),
    (_FitRaises, f"cannot be fit on 12 labelled rows: RuntimeError: solver exploded [_FitRaises {REFIT}]"),
    (_ThreeColumns, "failed computing its logits on 72 rows: ValueError: _ThreeColumns.predict_proba gave shape "
                    f"(72, 3), expected (72, 2): one column per class in classes_ [_ThreeColumns {REFIT}]"),
], ids=["module", "knn", "fit-raises", "three-columns"])
def test_a_teacher_object_that_fails_is_one_line_and_leaves_no_run_directory(tmp_path: Path, cancer, make,
                                                                           expected: str) -> None:
    x, y = cancer
    with pytest.raises(distill.UserError) as info:
        distill.run(SETTINGS, data=(x, y), teacher=make(), output=tmp_path / "r", track=False, progress=False)
    # one line naming the episode by its seed; the error's second line is dropped
    assert info.value.problems == [f"teacher 'given' {expected} (in the episode of seed 3)"]
    assert not (tmp_path / "r").exists() and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- a plugin teacher
class _PluginFitRaises(Teacher):
    """A registered teacher whose fit raises a KeyError (its message is the quoted key)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def fit(self, x: np.ndarray, y: np.ndarray) -> "_PluginFitRaises":
        raise KeyError("weights")

    def describe(self) -> str:
        return "plugin that cannot fit"


class _PluginThreeLogits(_PluginFitRaises):
    """A registered teacher that fits but returns one logit column too many."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> "_PluginThreeLogits":
        return self

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.zeros((len(x), self.num_classes + 1))


@pytest.fixture
def plugins() -> Iterator[None]:
    register_teacher("fails_to_fit", _PluginFitRaises)
    register_teacher("three_logits", _PluginThreeLogits)
    yield
    for name in ("fails_to_fit", "three_logits"):
        TEACHERS.unregister(name)


@pytest.mark.parametrize("kind, expected", [
    ("fails_to_fit", "teacher 'fails_to_fit' cannot be fit on 12 labelled rows: KeyError: 'weights' "
                     "[plugin that cannot fit]"),
    ("three_logits", "teacher 'three_logits' returned logits of shape (72, 3) (finite: True); "
                     "expected (72, 2) and finite"),
])
def test_a_registered_teacher_that_fails_is_exit_2_with_one_line_and_no_run_directory(
        plugins, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, expected: str) -> None:
    experiment = tmp_path / "exp.toml"
    experiment.write_text(to_toml({**SETTINGS, "teacher": {"kind": kind, "cache": False}}))
    assert main(["run", str(experiment), "-o", str(tmp_path / "out"), "-q", "--no-track"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: {expected} (in the episode of seed 3)"], err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- a later episode
class _FailsInEpisodeTwo(ClassifierMixin, BaseEstimator):
    """A logistic regression whose second fit on all 12 labelled rows (episode 2's full fit) raises."""

    full_fits: list[int] = []

    def fit(self, x: np.ndarray, y: np.ndarray) -> "_FailsInEpisodeTwo":
        if len(x) == 12:
            self.full_fits.append(1)
            if len(self.full_fits) == 2:
                raise RuntimeError("episode two")
        self.model_ = LogisticRegression().fit(x, y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(x)


@pytest.mark.parametrize("batched", [True, False])
def test_a_teacher_failing_in_episode_two_never_leaves_a_summary_that_looks_finished(tmp_path: Path, cancer,
                                                                                    batched: bool) -> None:
    """Batched (the default), every episode's teacher runs before any student trains: nothing is left.
    Unbatched, episode 1 has trained: the run directory stays with its finished fits and the error in
    log.txt, and no summary.json (a run that did not finish has none)."""
    _FailsInEpisodeTwo.full_fits = []
    x, y = cancer
    config = {**SETTINGS, "protocol": {"episodes": 2}, "train": {**SETTINGS["train"], "batched": batched}}
    with pytest.raises(distill.UserError) as info:
        distill.run(config, data=(x, y), teacher=_FailsInEpisodeTwo(), output=tmp_path / "r", track=False,
                    progress=False)
    problem = info.value.problems[0]
    assert info.value.problems == [
        f"teacher 'given' cannot be fit on 12 labelled rows: RuntimeError: episode two [_FailsInEpisodeTwo {REFIT}] "
        "(in the episode of seed 4)"]  # the second episode: seeds 3, 4
    assert len(_FailsInEpisodeTwo.full_fits) == 2
    run_dir = tmp_path / "r"
    if batched:
        assert not run_dir.exists()
        return
    assert not (run_dir / "summary.json").exists()
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("fit-*.pt")) == [
        "fit-c0g0.done.pt", "fit-c0g1.done.pt"]  # episode 1's student and baseline, for the record
    last = (run_dir / "log.txt").read_text().strip().splitlines()[-1]
    assert last.endswith(f"ERROR run failed: {problem}")


# ----------------------------------------------------------------------------- cross_fit itself
def _rows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3))
    y = np.tile([0, 1], 10)
    return x[:12], y[:12], x


class _Configurable(Teacher):
    """A log-prior teacher that raises ``error`` in the method named ``where``."""

    def __init__(self, where: str, error: BaseException) -> None:
        self.num_classes, self.where, self.error = 2, where, error

    def _maybe(self, name: str) -> None:
        if self.where == name:
            raise self.error

    def fit(self, x: np.ndarray, y: np.ndarray) -> "_Configurable":
        self._maybe("fit")
        self.prior_ = np.log(np.bincount(y, minlength=2) / y.size)
        return self

    def logits(self, x: np.ndarray) -> np.ndarray:
        self._maybe("logits")
        return np.tile(self.prior_, (len(x), 1))

    def diagnostics(self) -> dict[str, Any]:
        self._maybe("diagnostics")
        return {"warnings": []}

    def describe(self) -> str:
        self._maybe("describe")
        return "configurable"


def _cross(factory: Any) -> Any:
    fit_x, fit_y, rows = _rows()
    return cross_fit([("c", factory)], fit_x, fit_y, rows, 12, mode="single", calibration="temperature",
                     learns=True, seed=0, num_classes=2)


@pytest.mark.parametrize("where, error, expected", [
    ("init", ZeroDivisionError("division by zero"), "teacher 'c' cannot be built: ZeroDivisionError: division by zero"),
    ("fit", np.linalg.LinAlgError("Singular matrix\ndetails"),
     "teacher 'c' cannot be fit on 12 labelled rows: LinAlgError: Singular matrix [configurable]"),
    ("logits", IndexError(), "teacher 'c' failed computing its logits on 20 rows: IndexError [configurable]"),
    ("diagnostics", TypeError("bad"), "teacher 'c' failed in diagnostics(): TypeError: bad [configurable]"),
    ("describe", RuntimeError("x"), None),  # describe is never needed when nothing fails
])
def test_cross_fit_turns_any_teacher_error_into_one_line(where: str, error: Exception, expected: str | None) -> None:
    def factory() -> _Configurable:
        if where == "init":
            raise error
        return _Configurable(where, error)

    if expected is None:
        out = _cross(factory)
        np.testing.assert_allclose(np.exp(out.logits), 0.5, rtol=1e-12)  # the prior of 6 + 6 rows, at any T
        return
    with pytest.raises(TeacherProblem) as info:
        _cross(factory)
    assert str(info.value) == expected
    assert info.value.__cause__ is error  # the original error stays attached for a debugger


def test_a_failing_describe_does_not_hide_the_real_error() -> None:
    class Both(_Configurable):
        def describe(self) -> str:
            raise RuntimeError("describe is broken too")

    with pytest.raises(TeacherProblem) as info:
        _cross(lambda: Both("logits", OSError("device not ready")))
    assert str(info.value) == "teacher 'c' failed computing its logits on 20 rows: OSError: device not ready"


def test_a_fit_that_does_not_return_the_teacher_is_named() -> None:
    class ReturnsNone(_Configurable):
        def fit(self, x: np.ndarray, y: np.ndarray) -> Any:
            super().fit(x, y)
            return None

    with pytest.raises(TeacherProblem, match=r"^teacher 'c': fit\(x, y\) returned a NoneType, not the teacher"):
        _cross(lambda: ReturnsNone("", RuntimeError()))


@pytest.mark.parametrize("error", [
    distill.UserError("teacher.params.depth must be >= 1"),
    MemoryError(),
    Interrupted("SIGINT", "while fitting the teacher"),
    KeyboardInterrupt(),
    TeacherProblem("teacher 'inner' returned logits of shape (1,)"),
], ids=lambda e: type(e).__name__)
def test_distills_own_errors_stop_requests_and_memory_errors_pass_through(error: BaseException) -> None:
    with pytest.raises(type(error)) as info:
        _cross(lambda: _Configurable("fit", error))
    assert info.value is error


class _CheckRaises(Teacher):
    """A registered teacher whose own check fails with an error of its own kind."""

    def __init__(self, num_classes: int, **_: Any) -> None:
        self.num_classes = num_classes

    def check(self, in_shape: tuple[int, ...]) -> None:
        raise RuntimeError("needs a GPU that is not here")


class _InputSpaceRaises(Teacher):
    def __init__(self, num_classes: int, **_: Any) -> None:
        self.num_classes = num_classes

    @property
    def input_space(self) -> str:  # type: ignore[override]
        raise OSError("the teacher's weights file vanished")


@pytest.mark.parametrize("cls, expected", [
    (_CheckRaises, "teacher: RuntimeError: needs a GPU that is not here"),
    (_InputSpaceRaises, "teacher: OSError: the teacher's weights file vanished"),
])
def test_a_registered_teacher_failing_its_own_hooks_is_one_line(tmp_path: Path, cancer, cls: type,
                                                                 expected: str) -> None:
    name = f"hooks_fail_{cls.__name__.lower()}"
    register_teacher(name, cls)
    try:
        with pytest.raises(distill.UserError) as caught:
            distill.run({**SETTINGS, "teacher": {"kind": name, "cache": False}}, data=cancer,
                        output=tmp_path / "r", progress=False)
    finally:
        TEACHERS.unregister(name)
    assert str(caught.value) == expected
    assert not (tmp_path / "r").exists()
