"""DistilledClassifier: scikit-learn's estimator contract, and the numbers against independent references."""

from __future__ import annotations

import ast
import doctest
import pickle
import random
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import expit, log_softmax, softmax
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import (
    GridSearchCV,
    StratifiedKFold,
    cross_val_predict,
    cross_val_score,
    train_test_split,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from torch import nn

import distill.estimator as estimator_module
from distill import students
from distill.config import InitConfig
from distill.engine.loop import FitSettings, TrainingRows, fit
from distill.errors import ConfigError
from distill.estimator import EXPECTED_FAILED_CHECKS, DistilledClassifier
from distill.experiment.weight_init import apply_init
from distill.seeding import seed_everything

ROOT = Path(__file__).resolve().parents[1]
FAST = {"student_params": {"hidden": [8]}, "epochs": 15, "batch_size": 64, "lr": 0.05}


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Breast cancer: 40 labelled rows (stratified), 200 unlabelled rows, the rest for the test."""
    X, y = load_breast_cancer(return_X_y=True)
    X_lab, X_rest, y_lab, y_rest = train_test_split(X, y, train_size=40, stratify=y, random_state=0)
    return X_lab, y_lab, X_rest[:200], X_rest[200:], y_rest[200:]


def lr_teacher() -> LogisticRegression:
    return LogisticRegression(max_iter=5000)


# ---------------------------------------------------------------------------------- soft targets
def test_uncalibrated_soft_targets_are_the_clone_fit_teachers_probabilities(cancer) -> None:
    X, y, U, _, _ = cancer
    teacher = lr_teacher()
    est = DistilledClassifier(teacher=teacher, calibrate_teacher=False, random_state=0, **FAST).fit(X, y, U)
    # the scaler: scikit-learn's MinMaxScaler fit on the labelled and unlabelled rows together
    both = np.vstack([X, U])
    np.testing.assert_allclose(est.scaler_.transform(both), MinMaxScaler().fit_transform(both), rtol=0, atol=1e-12)
    reference = lr_teacher().fit(est.scaler_.transform(X), y)
    np.testing.assert_allclose(est.soft_targets_, reference.predict_proba(est.scaler_.transform(both)),
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(est.teacher_.coef_, reference.coef_)
    assert est.teacher_temperature_ == 1.0
    assert est.teacher_ is not teacher and not hasattr(teacher, "coef_")  # the parameter is never fitted


def test_calibrated_soft_targets_use_the_temperature_minimising_out_of_fold_log_loss(cancer) -> None:
    X, y, U, _, _ = cancer
    est = DistilledClassifier(teacher=lr_teacher(), random_state=7, **FAST).fit(X, y, U)
    xs = est.scaler_.transform(X)
    # out-of-fold probabilities from scikit-learn with the folds distill's calibration draws
    folds = StratifiedKFold(n_splits=min(5, np.bincount(y).min()), shuffle=True, random_state=7)
    oof = np.log(np.clip(cross_val_predict(lr_teacher(), xs, y, cv=folds, method="predict_proba"), 1e-12, 1))

    def nll(t: float) -> float:
        return float(-np.mean(log_softmax(oof / t, axis=1)[np.arange(y.size), y]))

    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 4001))
    best = grid[np.argmin([nll(t) for t in grid])]
    t = est.teacher_temperature_
    assert t != 1.0 and abs(np.log(t) - np.log(best)) < 2e-3
    assert nll(t) <= min(nll(best), nll(1.0)) + 1e-9
    full = lr_teacher().fit(xs, y).predict_proba(est.scaler_.transform(np.vstack([X, U])))
    np.testing.assert_allclose(est.soft_targets_, softmax(np.log(np.clip(full, 1e-12, 1)) / t, axis=1), rtol=1e-10)


def test_a_pretrained_module_teacher_reads_unscaled_rows_and_is_left_as_it_was() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3)) * [1.0, 10.0, 100.0]
    y = (X[:, 0] > 0).astype(int)
    W = np.array([[0.5, -0.02, 0.003]])
    module = nn.Linear(3, 1).double()
    with torch.no_grad():
        module.weight.copy_(torch.as_tensor(W))
        module.bias.fill_(0.25)
    module.train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    est = DistilledClassifier(teacher=module, calibrate_teacher=False, random_state=0, **FAST).fit(X, y)
    p = expit(X @ W[0] + 0.25)  # one logit: the log-odds of classes_[1]
    np.testing.assert_allclose(est.soft_targets_, np.column_stack([1 - p, p]), rtol=1e-12, atol=1e-15)
    assert est.teacher_ is module and module.training
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())


def test_a_module_teacher_is_calibrated_by_default_on_its_own_outputs() -> None:
    # issue 16: calibrate_teacher=True (the default) with an nn.Module teacher crashed in cross_fit
    X, y = load_iris(return_X_y=True)
    reference = LogisticRegression(max_iter=5000).fit(X, y)
    W, b = reference.coef_, reference.intercept_  # L2-regularised: underconfident, so T < 1 is expected
    module = nn.Linear(4, 3).double()
    with torch.no_grad():
        module.weight.copy_(torch.as_tensor(W))
        module.bias.copy_(torch.as_tensor(b))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    est = DistilledClassifier(teacher=module, random_state=0, **FAST).fit(X, y)
    z = X @ W.T + b  # the module's logits on the unscaled rows, in float64 by hand

    def nll(t: float) -> float:
        return float(-np.mean(log_softmax(z / t, axis=1)[np.arange(y.size), y]))

    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 4001))
    best = grid[np.argmin([nll(t) for t in grid])]
    t = est.teacher_temperature_
    assert best < 0.5 and abs(np.log(t) - np.log(best)) < 2e-3
    assert nll(t) <= min(nll(best), nll(1.0)) + 1e-9
    np.testing.assert_allclose(est.soft_targets_, softmax(z / t, axis=1), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(est.soft_targets_.argmax(axis=1), z.argmax(axis=1))
    diagnostics = est.teacher_diagnostics_
    assert diagnostics["cv_folds"] == 5 and diagnostics["calibration"]["method"] == "temperature"
    assert diagnostics["calibration"]["after"]["log_loss"] < diagnostics["calibration"]["before"]["log_loss"]
    assert est.teacher_ is module and all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())


# ---------------------------------------------------------------------------------- the student
@pytest.mark.parametrize("init", [None, {"scheme": "normal", "std": 0.3}])
def test_kl_weight_zero_is_the_engine_fit_on_the_scaled_rows(cancer, init) -> None:
    X, y, U, X_test, _ = cancer
    params = {"hidden": [8]} if init is None else {"hidden": [8], "init": init}
    est = DistilledClassifier(kl_weight=0.0, student_params=params, epochs=12, batch_size=16, lr=0.02,
                              scale="standard", random_state=3).fit(X, y, U)
    assert est.teacher_ is None and est.soft_targets_ is None  # no teacher is fit for kl_weight 0
    rows = StandardScaler().fit(np.vstack([X, U]))
    np.testing.assert_allclose(est.scaler_.transform(X_test), rows.transform(X_test), rtol=1e-12, atol=1e-12)
    seed_everything(3)
    model = apply_init(students.build("mlp", (30,), 2, hidden=[8]), InitConfig.model_validate(init or {}))
    seed_everything(4)
    x = est.scaler_.transform(np.vstack([X, U]))
    train = TrainingRows(x=torch.as_tensor(x, dtype=torch.float32),
                         targets=torch.as_tensor(np.r_[y, np.full(len(U), -1)]),
                         labelled=torch.as_tensor(np.arange(len(x)) < len(X)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the estimator runs a small fit (and 10x faster on a busy 2-core machine)
    try:
        result = fit(model, train, FitSettings(epochs=12, batch_size=16, lr=0.02, seed=3, restore_best=False),
                     num_classes=2)
    finally:
        torch.set_num_threads(threads)
    got, want = est.student_.state_dict(), model.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert est.history_ == result.history and est.n_iter_ == 12 == len(est.history_)
    with torch.no_grad():
        z = model.double()(torch.as_tensor(est.scaler_.transform(X_test))).numpy()[:, 0]
    np.testing.assert_allclose(est.predict_proba(X_test)[:, 1], expit(z), rtol=1e-12)
    np.testing.assert_allclose(est.decision_function(X_test), z, rtol=1e-12)


def test_the_distilled_student_beats_chance_on_breast_cancer_with_40_labelled_rows(cancer) -> None:
    X, y, U, X_test, y_test = cancer
    est = DistilledClassifier(student_params={"hidden": [16]}, epochs=30, random_state=0).fit(X, y, U)  # GP teacher
    majority = np.mean(y_test == np.bincount(y).argmax())
    accuracy = accuracy_score(y_test, est.predict(X_test))
    assert est.score(X_test, y_test) == accuracy
    assert accuracy > 0.9 and accuracy > majority + 0.25, (accuracy, majority)
    assert type(est.teacher_).__name__ == "GaussianProcessClassifier" and 0.05 <= est.teacher_temperature_ <= 20


def test_string_labels_and_dataframe_feature_names() -> None:
    pd = pytest.importorskip("pandas")
    data = load_wine()
    names = np.array(["barolo", "grignolino", "barbera"])
    X = pd.DataFrame(data.data[::3], columns=data.feature_names)
    y = names[data.target[::3]]
    est = DistilledClassifier(teacher=lr_teacher(), random_state=0, **FAST).fit(X, y)
    np.testing.assert_array_equal(est.classes_, np.array(["barbera", "barolo", "grignolino"]))
    np.testing.assert_array_equal(est.feature_names_in_, np.array(data.feature_names, dtype=object))
    assert est.n_features_in_ == 13
    proba = est.predict_proba(X)
    assert proba.shape == (len(y), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(est.predict(X), est.classes_[proba.argmax(axis=1)])
    np.testing.assert_allclose(np.log(proba), est.predict_log_proba(X), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(proba, softmax(est.decision_function(X), axis=1), rtol=1e-12)
    assert est.score(X, y) > 0.9


# ---------------------------------------------------------------------------------- determinism and state
def test_a_fixed_random_state_gives_identical_numbers_and_leaves_global_state_alone(cancer) -> None:
    X, y, U, X_test, _ = cancer
    make = lambda seed: DistilledClassifier(teacher=lr_teacher(), random_state=seed, **FAST)  # noqa: E731
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        with torch.no_grad():  # fit trains anyway, and leaves grad mode off as it found it
            first = make(5).fit(X, y, U).predict_proba(X_test)
            assert not torch.is_grad_enabled()
        assert torch.get_default_dtype() == torch.float64 and torch.get_num_threads() == threads
    finally:
        torch.set_default_dtype(dtype)
    assert random.getstate() == states[0]
    np.testing.assert_array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    np.testing.assert_array_equal(make(5).fit(X, y, U).predict_proba(X_test), first)
    assert not np.array_equal(make(6).fit(X, y, U).predict_proba(X_test), first)


def test_random_state_none_draws_the_seed_from_numpys_global_generator(cancer) -> None:
    X, y, _, X_test, _ = cancer
    est = DistilledClassifier(teacher=lr_teacher(), **FAST)
    np.random.seed(0)
    a = clone(est).fit(X, y)
    b = clone(est).fit(X, y)
    assert a.seed_ == np.random.RandomState(0).randint(np.iinfo(np.int32).max)
    assert b.seed_ != a.seed_  # the draw advanced the global generator
    np.random.seed(0)
    np.testing.assert_array_equal(clone(est).fit(X, y).predict_proba(X_test), a.predict_proba(X_test))


def test_pickle_round_trip_predicts_the_same(cancer) -> None:
    X, y, U, X_test, _ = cancer
    est = DistilledClassifier(teacher=lr_teacher(), random_state=0, **FAST).fit(X, y, U)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict_proba(X_test), est.predict_proba(X_test))


# ---------------------------------------------------------------------------------- scikit-learn composition
def test_clone_copies_parameters_and_no_fitted_state(cancer) -> None:
    X, y, U, _, _ = cancer
    params = {"hidden": [8]}
    est = DistilledClassifier(teacher=lr_teacher(), student_params=params, kl_weight=0.5, temperature=3.0,
                              epochs=5, random_state=1).fit(X, y, U)
    copy = clone(est)
    assert copy.get_params()["kl_weight"] == 0.5 and copy.get_params()["temperature"] == 3.0
    assert copy.student_params == {"hidden": [8]} and copy.student_params is not params
    assert not hasattr(copy, "student_") and not hasattr(copy.teacher, "coef_")
    assert params == {"hidden": [8]} and est.student_params is params  # stored verbatim, never modified
    assert copy.set_params(kl_weight=2.0, teacher__C=0.1) is copy and copy.teacher.C == 0.1


def test_pipeline_and_cross_val_score_give_the_fold_fits_accuracies(cancer) -> None:
    X, y, _, X_test, y_test = cancer
    pipe = make_pipeline(StandardScaler(), DistilledClassifier(teacher=lr_teacher(), scale="none", random_state=0,
                                                               **FAST))
    pipe.fit(X, y)
    assert pipe.score(X_test, y_test) == accuracy_score(y_test, pipe.predict(X_test)) > 0.85
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    scores = cross_val_score(pipe, X, y, cv=cv)
    by_hand = [clone(pipe).fit(X[tr], y[tr]).score(X[te], y[te]) for tr, te in cv.split(X, y)]
    np.testing.assert_array_equal(scores, by_hand)


def test_grid_search_over_kl_weight_picks_from_the_grid_and_refits(cancer) -> None:
    X, y, U, X_test, _ = cancer
    est = DistilledClassifier(teacher=lr_teacher(), temperature=2.0, random_state=0, **FAST)
    grid = [0.0, 1.0, 4.0]
    search = GridSearchCV(est, {"kl_weight": grid}, cv=StratifiedKFold(3, shuffle=True, random_state=0))
    search.fit(X, y, X_unlabelled=U)
    means = search.cv_results_["mean_test_score"]
    assert search.best_params_["kl_weight"] == grid[int(np.argmax(means))]
    refit = clone(est).set_params(**search.best_params_).fit(X, y, X_unlabelled=U)
    np.testing.assert_array_equal(search.best_estimator_.predict_proba(X_test), refit.predict_proba(X_test))
    assert search.best_estimator_.kl_weight in grid and est.kl_weight == 1.0


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("params", "expected"), [
    ({"kl_weight": -1}, "kl_weight must be a finite number >= 0, got -1"),
    ({"temperature": 0}, "temperature must be a finite number > 0, got 0"),
    ({"lr": float("nan")}, "lr must be a finite number > 0, got nan"),
    ({"epochs": 0}, "epochs must be an integer in 1..1000000, got 0"),
    ({"batch_size": 2.5}, "batch_size must be an integer"),
    ({"optimizer": "rmsprop"}, "optimizer must be one of 'sgd', 'adam', 'adamw', got 'rmsprop'"),
    ({"scale": "robust"}, "scale must be one of 'minmax', 'standard', 'none', got 'robust'"),
    ({"direction": "both"}, "direction must be one of 'forward', 'reverse'"),
    ({"random_state": -1}, "random_state must be None, a RandomState or an int in 0..4294967295, got -1"),
    ({"teacher": object()}, "teacher must be None, a scikit-learn classifier with fit and predict_proba"),
    ({"teacher": LogisticRegression}, "teacher must be an instance, got the class LogisticRegression"),
    ({"student": "nope"}, "unknown student 'nope'"),
    ({"device": "nonsense"}, "device = 'nonsense': "),
    ({"student": "os:system"}, "'os:system' is a function, not an nn.Module subclass; refused"),
    ({"student_params": {"hidden": "x"}}, "student_params.hidden must be a list of positive integers"),
    ({"student_params": {"width": 3}}, "unknown key 'student_params.width' for student 'mlp'"),
    ({"student_params": {"init": {"scheme": "magic"}}}, "student_params.init:"),
])
def test_bad_parameters_are_one_line_value_errors_naming_the_parameter(cancer, params, expected) -> None:
    X, y, _, _, _ = cancer
    est = DistilledClassifier(**{"teacher": lr_teacher(), **FAST, **params})  # __init__ never validates
    with pytest.raises(ValueError) as caught:
        est.fit(X, y)
    message = str(caught.value)
    assert expected in message and "\n" not in message
    assert isinstance(caught.value, ConfigError)  # exit code 2 in the CLI


def test_bad_data_is_refused_in_one_line() -> None:
    X = np.array([[1e300, 0.0], [-1e300, 1.0], [0.0, 2.0], [1.0, 3.0]])
    y = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"column 0 \(row 0\) becomes 1e\+300, outside the float32 range"):
        DistilledClassifier(teacher=lr_teacher(), scale="none", **FAST).fit(X, y)
    with pytest.raises(ValueError, match=r"needs at least 2 classes, got 1 class \('a'\)"):
        DistilledClassifier(teacher=lr_teacher(), **FAST).fit(X[:, 1:], np.array(["a"] * 4))
    with pytest.raises(ValueError, match="Unknown label type"):
        DistilledClassifier(**FAST).fit(X[:, 1:], np.array([0.5, 1.5, 2.25, 3.0]))


# ---------------------------------------------------------------------------------- documentation
def test_the_docstring_example_runs() -> None:
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(DistilledClassifier, "DistilledClassifier", module=estimator_module,
                        globs={}, extraglobs={})
    examples = [t for t in tests if t.examples]
    assert examples
    for test in examples:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


@pytest.mark.slow
def test_the_grid_search_example_runs(capsys) -> None:
    runpy.run_path(str(ROOT / "examples" / "gridsearch_kl_weight.py"), run_name="__main__")
    out = capsys.readouterr().out
    best = [line for line in out.splitlines() if line.startswith("best params:")]
    assert best and ast.literal_eval(best[0].split(":", 1)[1].strip())["kl_weight"] in (0.0, 0.5, 1.0, 2.0)
    accuracy = float(out.split("test accuracy:")[1].split()[0])
    assert accuracy > 0.85


@pytest.mark.slow
def test_check_estimator_fails_only_the_documented_checks() -> None:
    from sklearn.utils.estimator_checks import check_estimator

    est = DistilledClassifier(teacher=LogisticRegression(), student_params={"hidden": [8]}, epochs=20,
                              batch_size=64, lr=0.05, random_state=0)
    results = check_estimator(est, on_fail=None, on_skip=None, expected_failed_checks=EXPECTED_FAILED_CHECKS)
    failed = {r["check_name"] for r in results if r["status"] in ("failed", "xfail")}
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert failed == set(EXPECTED_FAILED_CHECKS), [
        (r["check_name"], repr(r["exception"])[:300]) for r in results if r["status"] == "failed"]
    assert skipped <= {"check_array_api_input"}  # needs SCIPY_ARRAY_API set in the environment
    assert sum(r["status"] == "passed" for r in results) >= 50
