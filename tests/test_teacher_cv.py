"""Cross-fitted teachers (distill.experiment.teacher_cv) and their integration in teach(): out-of-fold outputs
against scikit-learn fits of our own, calibration, selection, the ensemble, no test-row leakage, the
soft-target cache and the config errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.optimize
import scipy.special
import torch

from distill.cli import main
from distill.config import ConfigError, validate_config
from distill.experiment.cache import SoftTargetCache
from distill.experiment.prepare import TEACHER_FOLDS, prepare
from distill.experiment.teach import teach
from distill.experiment.teacher_cv import cross_fit
from distill.metrics.calibration import TEMPERATURE_BOUNDS, labelled_folds
from distill.teachers.base import Teacher
from distill.teachers.gaussian_process import EstimatorTeacher, GaussianProcessTeacher


def _linear_problem(seed: int = 0, n_fit: int = 24, n_other: int = 30, k: int = 3) -> dict[str, np.ndarray]:
    """A linearly separable-ish problem: class = argmax of a fixed linear map plus a little noise."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(4, k))
    x = rng.normal(size=(n_fit + n_other, 4))
    y = np.argmax(x @ w + 0.3 * rng.normal(size=(x.shape[0], k)), axis=1)
    # every class at least 4 times among the fit rows: stratified folds exist
    order = np.concatenate([np.flatnonzero(y == c)[:n_fit // k] for c in range(k)])
    rest = np.setdiff1d(np.arange(x.shape[0]), order)
    return {"fit_x": x[order], "fit_y": y[order], "rows": np.concatenate([x[order], x[rest]])}


def _nll64(z: np.ndarray, y: np.ndarray, t: float) -> float:
    return float(-np.mean(scipy.special.log_softmax(z / t, axis=1)[np.arange(y.size), y]))


def _reference_temperature(z: np.ndarray, y: np.ndarray) -> float:
    return float(scipy.optimize.minimize_scalar(lambda t: _nll64(z, y, t), bounds=TEMPERATURE_BOUNDS,
                                                method="bounded", options={"xatol": 1e-10}).x)


def _lr_log_proba(x: np.ndarray, y: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """log p of a LogisticRegression we fit ourselves (classes in order 0..k-1, clamped at 1e-12)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=10_000).fit(x, y)
    full = np.zeros((rows.shape[0], k))
    full[:, model.classes_] = model.predict_proba(rows)
    return np.log(np.clip(full, 1e-12, 1.0))


def _lr_factory(k: int):
    from sklearn.linear_model import LogisticRegression

    return lambda: EstimatorTeacher(LogisticRegression(max_iter=10_000), k)


@pytest.mark.parametrize("calibration", ["temperature", "none"])
def test_fold_logits_are_out_of_fold_logistic_regressions(calibration: str) -> None:
    d = _linear_problem()
    k, n, m = 3, d["fit_y"].size, 40
    out = cross_fit([("lr", _lr_factory(k))], d["fit_x"], d["fit_y"], d["rows"], m, mode="single",
                    calibration=calibration, learns=True, seed=5, num_classes=k)
    folds = labelled_folds(d["fit_y"], 5)
    assert folds is not None and out.folds is not None and len(out.folds) == len(folds) == 5
    assert all(np.array_equal(a, b) for a, b in zip(out.folds, folds, strict=True))
    assert out.fold_logits is not None and out.fold_logits.shape == (5, m, k) and out.fold_logits.dtype == np.float64
    raw_folds = []
    oof = np.empty((n, k))
    for held in folds:
        keep = np.setdiff1d(np.arange(n), held)
        raw_folds.append(_lr_log_proba(d["fit_x"][keep], d["fit_y"][keep], d["rows"][:m], k))
        oof[held] = raw_folds[-1][held]
    raw_full = _lr_log_proba(d["fit_x"], d["fit_y"], d["rows"], k)
    t = _reference_temperature(oof, d["fit_y"]) if calibration == "temperature" else 1.0
    assert out.diagnostics["calibration"]["temperature"] == pytest.approx(t, rel=1e-4)
    t_used = out.diagnostics["calibration"]["temperature"]
    for f in range(5):
        np.testing.assert_allclose(out.fold_logits[f], scipy.special.log_softmax(raw_folds[f] / t_used, axis=1),
                                   rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(out.logits, scipy.special.log_softmax(raw_full / t_used, axis=1), rtol=1e-7, atol=1e-9)
    # before: the raw OOF figures; after: each fold scaled by the T of the other folds' OOF rows only
    before = out.diagnostics["calibration"]["before"]
    assert before["log_loss"] == pytest.approx(_nll64(oof, d["fit_y"], 1.0), rel=1e-9)
    assert before["accuracy"] == pytest.approx(np.mean(oof.argmax(1) == d["fit_y"]))
    honest = np.empty_like(oof)
    for held in folds:
        rest = np.setdiff1d(np.arange(n), held)
        t_f = _reference_temperature(oof[rest], d["fit_y"][rest]) if calibration == "temperature" else 1.0
        honest[held] = scipy.special.log_softmax(oof[held] / t_f, axis=1)
    after = out.diagnostics["calibration"]["after"]
    assert after["log_loss"] == pytest.approx(-np.mean(honest[np.arange(n), d["fit_y"]]), rel=1e-4)
    assert out.diagnostics["cv_folds"] == 5
    json.dumps(out.diagnostics)  # JSON-serialisable as it stands


def test_auto_picks_the_better_candidate_and_ties_go_to_the_first() -> None:
    from sklearn.dummy import DummyClassifier

    d = _linear_problem(seed=1)
    k = 3
    prior = ("prior", lambda: EstimatorTeacher(DummyClassifier(strategy="prior"), k))
    out = cross_fit([prior, ("lr", _lr_factory(k))], d["fit_x"], d["fit_y"], d["rows"], 30, mode="auto",
                    calibration="temperature", learns=True, seed=0, num_classes=k)
    rows = {r["name"]: r for r in out.diagnostics["selection"]["candidates"]}
    assert rows["lr"]["cv_log_loss"] < rows["prior"]["cv_log_loss"]
    assert out.diagnostics["selection"]["chosen"] == "lr" and out.diagnostics["selection"]["mode"] == "auto"
    single = cross_fit([("lr", _lr_factory(k))], d["fit_x"], d["fit_y"], d["rows"], 30, mode="single",
                       calibration="temperature", learns=True, seed=0, num_classes=k)
    np.testing.assert_array_equal(out.logits, single.logits)
    np.testing.assert_array_equal(out.fold_logits, single.fold_logits)
    assert out.diagnostics["calibration"] == single.diagnostics["calibration"]
    tie = cross_fit([("a", _lr_factory(k)), ("b", _lr_factory(k))], d["fit_x"], d["fit_y"], d["rows"], 30,
                    mode="auto", calibration="temperature", learns=True, seed=0, num_classes=k)
    assert tie.diagnostics["selection"]["chosen"] == "a"


def test_auto_prefers_logistic_regression_to_a_gp_with_an_absurd_kernel() -> None:
    d = _linear_problem(seed=2)
    k = 3
    absurd = ("gp", lambda: GaussianProcessTeacher(k, kernel="1.0 * RBF(1e-05, length_scale_bounds='fixed')",
                                                   restarts=0))
    out = cross_fit([absurd, ("lr", _lr_factory(k))], d["fit_x"], d["fit_y"], d["rows"], 30, mode="auto",
                    calibration="temperature", learns=True, seed=0, num_classes=k)
    assert out.diagnostics["selection"]["chosen"] == "lr"
    assert "kernel" not in out.diagnostics  # the chosen teacher's own diagnostics, not the GP's


def test_ensemble_is_the_average_of_calibrated_probabilities() -> None:
    from sklearn.naive_bayes import GaussianNB

    d = _linear_problem(seed=3)
    k, m = 3, 35
    nb = ("nb", lambda: EstimatorTeacher(GaussianNB(), k))
    out = cross_fit([("lr", _lr_factory(k)), nb], d["fit_x"], d["fit_y"], d["rows"], m, mode="ensemble",
                    calibration="temperature", learns=True, seed=4, num_classes=k)
    parts = [cross_fit([c], d["fit_x"], d["fit_y"], d["rows"], m, mode="single", calibration="temperature",
                       learns=True, seed=4, num_classes=k) for c in (("lr", _lr_factory(k)), nb)]
    temperatures = [p.diagnostics["calibration"]["temperature"] for p in parts]
    assert out.diagnostics["calibration"]["temperature"] == temperatures
    assert [r["temperature"] for r in out.diagnostics["selection"]["candidates"]] == temperatures
    expected = np.log(np.clip(np.mean([np.exp(p.logits) for p in parts], axis=0), 1e-12, 1))
    np.testing.assert_allclose(out.logits, expected, rtol=1e-12, atol=1e-12)
    expected_folds = np.log(np.clip(np.mean([np.exp(p.fold_logits) for p in parts], axis=0), 1e-12, 1))
    np.testing.assert_allclose(out.fold_logits, expected_folds, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.exp(out.logits).sum(1), 1.0, rtol=1e-9)
    assert out.diagnostics["selection"]["chosen"] == "ensemble"
    assert set(out.diagnostics["members"]) == {"lr", "nb"}
    assert out.diagnostics["calibration"]["after"]["log_loss"] is not None


def test_without_folds_nothing_is_calibrated_or_selected_and_the_reason_is_given() -> None:
    d = _linear_problem(seed=4)
    k = 3
    y = d["fit_y"].copy()
    keep = np.concatenate([np.flatnonzero(y == 0)[:1], np.flatnonzero(y != 0)])  # class 0: one row
    from sklearn.dummy import DummyClassifier

    prior = ("prior", lambda: EstimatorTeacher(DummyClassifier(strategy="prior"), k))
    rows = np.concatenate([d["fit_x"][keep], d["rows"][d["fit_y"].size:]])
    out = cross_fit([prior, ("lr", _lr_factory(k))], d["fit_x"][keep], y[keep], rows, keep.size + 3, mode="auto",
                    calibration="temperature", learns=True, seed=0, num_classes=k)
    assert out.folds is None and out.fold_logits is None and out.diagnostics["cv_folds"] == 0
    assert out.diagnostics["selection"]["chosen"] == "prior"  # the first, said so
    assert out.diagnostics["calibration"]["method"] == "none"
    assert any("a labelled class has 1 row(s)" in w for w in out.diagnostics["warnings"])
    raw = EstimatorTeacher(DummyClassifier(strategy="prior"), k).fit(d["fit_x"][keep], y[keep]).logits(rows)
    np.testing.assert_array_equal(out.logits, raw)


class _FixedLinearTeacher(Teacher):
    """A teacher that arrives trained (like a network): softmax of a fixed linear map; fit learns nothing."""

    learns = False

    def __init__(self, w: np.ndarray) -> None:
        self.w = w
        self.num_classes = w.shape[1]
        self.fits = 0

    def fingerprint(self) -> str:
        return "fixed"

    def fit(self, x: np.ndarray, y: np.ndarray) -> "_FixedLinearTeacher":
        self.fits += 1
        return self

    def logits(self, x: np.ndarray) -> np.ndarray:
        return scipy.special.log_softmax(np.asarray(x) @ self.w, axis=1)


def test_a_teacher_that_does_not_learn_is_fit_once_and_calibrated_on_its_labelled_outputs() -> None:
    d = _linear_problem(seed=5)
    k, n, m = 3, d["fit_y"].size, 30
    teacher = _FixedLinearTeacher(np.random.default_rng(0).normal(size=(4, k)) * 3)
    out = cross_fit([("net", lambda: teacher)], d["fit_x"], d["fit_y"], d["rows"], m, mode="single",
                    calibration="temperature", learns=False, seed=0, num_classes=k)
    assert teacher.fits == 1
    raw = teacher.logits(d["rows"])
    t = _reference_temperature(raw[:n], d["fit_y"])
    assert out.diagnostics["calibration"]["temperature"] == pytest.approx(t, rel=1e-4)
    t_used = out.diagnostics["calibration"]["temperature"]
    np.testing.assert_allclose(out.logits, scipy.special.log_softmax(raw / t_used, axis=1), rtol=1e-9, atol=1e-12)
    assert out.fold_logits is not None and out.fold_logits.shape == (5, m, k)
    for f in range(5):
        np.testing.assert_array_equal(out.fold_logits[f], out.logits[:m])


@pytest.mark.slow
def test_calibration_lowers_the_cv_log_loss_of_a_one_vs_rest_gp_on_digits() -> None:
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import MinMaxScaler

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    labelled = np.concatenate([rng.choice(np.flatnonzero(y == c), 5, replace=False) for c in range(10)])
    scaler = MinMaxScaler().fit(x[labelled])
    fit_x = scaler.transform(x[labelled])
    make = ("gp", lambda: GaussianProcessTeacher(10, restarts=0, multi_class="one_vs_rest"))
    out = cross_fit([make], fit_x, y[labelled], fit_x, labelled.size, mode="single", calibration="temperature",
                    learns=True, seed=0, num_classes=10)
    c = out.diagnostics["calibration"]
    assert c["after"]["log_loss"] <= c["before"]["log_loss"]
    assert c["after"]["accuracy"] == c["before"]["accuracy"]  # one T per fold never changes an argmax
    assert c["temperature"] < 1  # the one-vs-rest GP is under-confident: calibration sharpens it


# ------------------------------------------------------------------------------------------ teach()

BASE: dict[str, Any] = {
    "seed": 2,
    "data": {"source": "sklearn:iris", "test_size": 30},
    "few_shot": {"per_class": 4, "validation": 1, "transfer": "pool"},
    "teacher": {"kind": "auto", "restarts": 0, "cache": False,
                "candidates": [{"kind": "gaussian_process", "restarts": 0}, "logistic_regression"]},
    "student": {"hidden": [8]},
    "train": {"epochs": 2, "device": "cpu"},
}


def _config(**teacher: Any):
    raw = json.loads(json.dumps(BASE))
    raw["teacher"].update(teacher)
    return validate_config(raw)


@pytest.mark.slow
def test_poisoned_test_rows_change_nothing_a_fold_teacher_or_the_calibration_sees() -> None:
    prepared = prepare(_config())
    clean = teach(prepared)
    data, test = prepared.dataset, prepared.split.test
    rng = np.random.default_rng(9)
    x, y = data.x.copy(), data.y.copy()
    x[test] = rng.uniform(-50, 50, size=x[test].shape)
    y[test] = rng.integers(0, data.num_classes, size=test.size)
    poisoned = teach(dataclasses.replace(prepared, dataset=dataclasses.replace(data, x=x, y=y)))
    assert not np.array_equal(clean.test_logits, poisoned.test_logits)  # the poison did reach the test rows
    assert clean.fold_logits is not None and poisoned.fold_logits is not None
    assert torch.equal(clean.fold_logits, poisoned.fold_logits)
    assert all(np.array_equal(a, b) for a, b in zip(clean.folds, poisoned.folds, strict=True))
    assert torch.equal(clean.train.teacher_logits, poisoned.train.teacher_logits)
    for key in ("selection", "calibration", "cv_folds"):
        assert clean.diagnostics[key] == poisoned.diagnostics[key]


def test_teach_gives_the_transfer_rows_fold_logits_and_the_calibrated_teacher() -> None:
    prepared = prepare(_config(kind="ensemble"))
    taught = teach(prepared)
    n_train = taught.train.x.shape[0]
    split = prepared.split
    assert n_train == split.labelled.size + split.pool.size
    folds = labelled_folds(prepared.dataset.y[split.labelled], prepared.config.seed, TEACHER_FOLDS)
    assert folds is not None and len(taught.folds) == len(folds) == TEACHER_FOLDS == 3
    assert all(np.array_equal(a, b) for a, b in zip(folds, taught.folds, strict=True))
    assert taught.fold_logits is not None and taught.fold_logits.dtype == torch.float32
    assert tuple(taught.fold_logits.shape) == (3, n_train, 3)
    assert taught.diagnostics["selection"]["mode"] == "ensemble"
    assert {r["name"] for r in taught.diagnostics["selection"]["candidates"]} == {"gaussian_process",
                                                                                "logistic_regression"}
    assert "validation_accuracy" in taught.diagnostics and "warnings" in taught.diagnostics
    # A fold teacher never saw its held-out labelled rows: it differs from the full teacher there.
    held = taught.folds[0]
    assert not torch.equal(taught.fold_logits[0, held], taught.train.teacher_logits[held])


def test_a_cache_hit_gives_identical_fold_logits(tmp_path: Path) -> None:
    prepared = prepare(_config(cache=True, cache_dir=str(tmp_path / "cache")))
    cache, later = SoftTargetCache(tmp_path / "cache"), SoftTargetCache(tmp_path / "cache")  # a later run's
    first = teach(prepared, cache=cache)
    second = teach(prepared, cache=later)
    assert (first.diagnostics["cache"], second.diagnostics["cache"]) == ("miss", "hit")
    assert (cache.hits, cache.misses, later.hits, later.misses) == (0, 1, 1, 0)
    # The same cache answers again from memory: the very same outputs, no second lookup on disk.
    assert teach(prepared, cache=cache) is first and (cache.hits, cache.misses) == (0, 1)
    assert torch.equal(first.fold_logits, second.fold_logits)
    assert torch.equal(first.train.teacher_logits, second.train.teacher_logits)
    np.testing.assert_array_equal(first.test_logits, second.test_logits)
    assert all(np.array_equal(a, b) for a, b in zip(first.folds, second.folds, strict=True))
    assert first.diagnostics["calibration"] == second.diagnostics["calibration"]
    # Another calibration is another entry, never the stored one.
    third = teach(prepare(_config(cache=True, cache_dir=str(tmp_path / "cache"), calibration="none")), cache=cache)
    assert third.diagnostics["cache"] == "miss"
    assert third.diagnostics["calibration"]["method"] == "none"


def test_calibration_none_keeps_a_single_teachers_raw_outputs() -> None:
    prepared = prepare(_config(kind="sklearn", estimator="sklearn.linear_model:LogisticRegression",
                               params={"max_iter": 10_000}, calibration="none"))
    taught = teach(prepared)
    split, data = prepared.split, prepared.dataset
    x = prepared.scaler.transform(data.x)
    rows = np.concatenate([split.labelled, split.pool])
    expected = _lr_log_proba(x[split.labelled], data.y[split.labelled], x[rows], 3)
    np.testing.assert_allclose(taught.train.teacher_logits.numpy(), expected, rtol=1e-6, atol=1e-6)
    assert taught.diagnostics["calibration"]["method"] == "none"


# ------------------------------------------------------------------------------------------ config

@pytest.mark.parametrize(
    ("candidates", "needle"),
    [
        (["gaussian_process", {"kind": "sklearn"}], "teacher.candidates[1].estimator is required"),
        (["gaussian_process", "svm"], "teacher.candidates[1]: must be one of gaussian_process, logistic_regression"),
        ([{"kind": "gaussian_process", "kernel": "RBF(("}], "teacher.candidates[0].kernel: invalid kernel"),
        ([{"kind": "gaussian_process", "restarts": -1}], "teacher.candidates[0].restarts must be >= 0, got -1"),
        (["random_forest", {"kind": "sklearn", "estimator": "x:y", "depth": 3}],
         "unknown key 'teacher.candidates[1].depth'"),
        ([], "teacher.candidates must list at least one teacher"),
    ],
)
def test_bad_candidates_are_config_errors_naming_the_key(candidates: list[Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        _config(candidates=candidates)
    assert any(needle in p for p in info.value.problems), info.value.problems


@pytest.mark.parametrize(
    ("candidate", "needle"),
    [
        ({"kind": "sklearn", "estimator": "sklearn.linear_model:LogisticRegression", "params": {"depth": 3}},
         "teacher.candidates[1].params: depth not accepted"),
        ({"kind": "sklearn", "estimator": "os:system"}, "teacher.candidates[1].estimator 'os:system' is a function"),
        ({"kind": "sklearn", "estimator": "sklearn.ensemble:RandomForestClassifier", "params": {"n_estimators": -3}},
         "teacher.candidates[1].params:"),
    ],
)
def test_prepare_checks_every_candidate_before_any_fit(candidate: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        prepare(_config(candidates=["gaussian_process", candidate]))
    assert any(needle in p for p in info.value.problems), info.value.problems


def test_a_bad_candidate_is_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "exp.toml"
    toml.write_text(
        'seed = 0\n[data]\nsource = "sklearn:iris"\n[teacher]\nkind = "auto"\n'
        'candidates = ["gaussian_process", { kind = "sklearn", estimator = "sklearn.svm:NoSuchThing" }]\n'
    )
    assert main(["run", str(toml), "-o", str(tmp_path / "out"), "-q", "--no-track"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "teacher.candidates[1].estimator" in errors[0], err
    assert "Traceback" not in err


def test_the_run_line_counts_choices_and_summarises_calibration() -> None:
    from distill.experiment.teacher_cv import teacher_summary_text

    def diag(chosen: str, t: float, before: float, after: float) -> dict[str, Any]:
        return {"selection": {"chosen": chosen}, "calibration": {"temperature": t, "before": {"log_loss": before},
                                                                 "after": {"log_loss": after}}}

    line = teacher_summary_text([diag("random_forest", 0.5, 0.6, 0.4), diag("logistic_regression", 2.0, 0.8, 0.7),
                                 diag("random_forest", 1.0, 0.7, 0.5), {"warnings": []}])
    assert line == ("teacher: random_forest (2), logistic_regression (1) of 3 episode(s); calibration T 0.5..2 "
                    "(median 1); cross-validated log-loss 0.700 -> 0.533 (mean)")
    assert teacher_summary_text([{"warnings": []}]) is None
