"""Teacher conformance over the registry, and the GP / sklearn teachers against scikit-learn.

Every registered teacher kind is fitted on tiny iris / breast-cancer subsets and checked for the
Teacher contract (``fit -> self``, ``[N, K]`` finite log-probabilities, a not-fitted error, a zero
column for classes absent from the training rows). The GP teacher is compared with
``GaussianProcessClassifier`` fitted directly, and ``auto_kernel`` with ``scipy``'s ``pdist``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.spatial.distance import pdist
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.gaussian_process import GaussianProcessClassifier
from sklearn.gaussian_process.kernels import RBF, ConstantKernel

from distill.teachers.base import (
    PROBABILITY_FLOOR,
    TEACHERS,
    NotFittedError,
    Teacher,
    create_teacher,
    list_teachers,
    probabilities_to_logits,
    register_teacher,
)
from distill.teachers.gaussian_process import EstimatorTeacher, GaussianProcessTeacher, auto_kernel
from distill.teachers.kernels import parse_kernel

# --------------------------------------------------------------------------- tiny data


def _iris(per_class: int = 8) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    idx = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(3)])
    return x[idx], y[idx]


def _breast_cancer(per_class: int = 12) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True)
    idx = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(2)])
    x = x[idx]
    return (x - x.mean(0)) / x.std(0), y[idx]


DATASETS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, int]]] = {
    "iris": lambda: (*_iris(), 3),
    "breast_cancer": lambda: (*_breast_cancer(), 2),
}

# One small factory per registered kind; a kind without one is built with num_classes only
# (so a new registry entry is tested automatically, and fails loudly if it needs arguments).
FACTORIES: dict[str, Callable[[int], Teacher]] = {
    "gaussian_process": lambda k: create_teacher("gaussian_process", num_classes=k, restarts=0, random_state=0),
    "sklearn": lambda k: create_teacher(
        "sklearn", num_classes=k, estimator="sklearn.linear_model:LogisticRegression", params={"max_iter": 500}
    ),
}


def _network_teacher(num_classes: int) -> Teacher:
    """A network teacher over an MLP checkpoint trained on the matching tiny data set."""
    import tempfile
    from pathlib import Path

    import torch

    from distill import students
    from distill.students.checkpoint import CHECKPOINT_FORMAT

    x, y, _ = DATASETS["iris" if num_classes == 3 else "breast_cancer"]()
    in_features = x.shape[1]
    torch.manual_seed(0)
    model = students.build("mlp", (in_features,), num_classes, hidden=[16], activation="tanh")
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    for _ in range(200):  # a trained network, as a network teacher is
        out = model(xt)
        loss = (torch.nn.functional.cross_entropy(out, yt) if num_classes > 2
                else torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], yt.float()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = Path(tempfile.mkdtemp()) / "student.pt"
    torch.save(
        {
            "format": CHECKPOINT_FORMAT, "arch": "mlp", "kwargs": {"hidden": [16], "activation": "tanh"}, "in_shape": [in_features],
            "num_classes": num_classes, "num_outputs": 1 if num_classes == 2 else num_classes,
            "classes": [str(c) for c in range(num_classes)], "feature_names": [],
            "scaler": {"kind": "none", "shift": [0.0] * in_features, "scale": [1.0] * in_features},
            "state_dict": model.state_dict(),
        },
        path,
    )
    return create_teacher("network", num_classes=num_classes, checkpoint=str(path))


FACTORIES["network"] = _network_teacher
#: Kinds whose ``fit`` learns from the rows (a network teacher arrives trained: fit only loads it).
LEARNS_IN_FIT = [kind for kind in list_teachers() if kind != "network"]


def make_teacher(kind: str, num_classes: int) -> Teacher:
    factory = FACTORIES.get(kind, lambda k: create_teacher(kind, num_classes=k))
    return factory(num_classes)


# --------------------------------------------------------------------------- conformance


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("kind", list_teachers())
def test_fit_returns_self_and_logits_are_log_probabilities(kind: str, dataset: str) -> None:
    x, y, k = DATASETS[dataset]()
    teacher = make_teacher(kind, k)
    assert isinstance(teacher, Teacher)
    assert teacher.fit(x, y) is teacher
    logits = teacher.logits(x)
    assert logits.shape == (len(x), k)
    assert np.all(np.isfinite(logits))
    assert_allclose(np.exp(logits).sum(axis=1), 1.0, atol=1e-6)
    # A fitted teacher fits its own (easy) training rows better than chance.
    assert np.mean(logits.argmax(axis=1) == y) > 1.0 / k


@pytest.mark.parametrize("kind", list_teachers())
def test_logits_before_fit_raise_not_fitted(kind: str) -> None:
    x, _, k = DATASETS["iris"]()
    teacher = make_teacher(kind, k)
    with pytest.raises(NotFittedError, match="fit"):
        teacher.logits(x)


@pytest.mark.parametrize("kind", LEARNS_IN_FIT)
def test_class_absent_from_training_rows_gets_floor_logit(kind: str) -> None:
    x, y = _iris()
    keep = y < 2  # class 2 never seen, but the dataset has 3 classes
    teacher = make_teacher(kind, 3).fit(x[keep], y[keep])
    logits = teacher.logits(x)
    assert logits.shape == (len(x), 3)
    assert np.all(np.isfinite(logits))
    assert_allclose(logits[:, 2], np.log(PROBABILITY_FLOOR))
    assert np.all(logits[:, 2] < -20)
    assert_allclose(np.exp(logits).sum(axis=1), 1.0, atol=1e-6)


def test_probabilities_to_logits_clamps_zero_and_one() -> None:
    out = probabilities_to_logits(np.array([[0.0, 1.0], [0.25, 0.75]]))
    assert np.all(np.isfinite(out))
    assert out[0, 0] == pytest.approx(np.log(1e-12))
    assert out[0, 1] == 0.0
    assert_allclose(out[1], np.log([0.25, 0.75]))
    assert PROBABILITY_FLOOR == 1e-12


# --------------------------------------------------------------------------- GP teacher


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_gp_teacher_matches_sklearn_gpc(dataset: str) -> None:
    x, y, k = DATASETS[dataset]()
    kernel = "1.0 * RBF(1.0)"
    teacher = create_teacher("gaussian_process", num_classes=k, kernel=kernel, restarts=1, random_state=3).fit(x, y)
    reference = GaussianProcessClassifier(
        kernel=ConstantKernel(1.0) * RBF(1.0), n_restarts_optimizer=1, random_state=3
    ).fit(x, y)
    grid = np.concatenate([x, x[:5] + 0.3])
    assert_allclose(teacher.predict_proba(grid), reference.predict_proba(grid), rtol=1e-10, atol=1e-12)
    assert_allclose(teacher.logits(grid), np.log(np.clip(reference.predict_proba(grid), 1e-12, 1.0)), rtol=1e-10)


def test_auto_kernel_length_scale_is_median_pairwise_distance() -> None:
    x, y = _iris()
    kernel = auto_kernel(x)
    assert kernel.k2.length_scale == pytest.approx(float(np.median(pdist(x))))
    assert kernel.k1.constant_value == 1.0
    # The teacher starts its fit from that kernel.
    teacher = GaussianProcessTeacher(3, kernel="auto", restarts=0).fit(x, y)
    assert teacher.estimator.kernel.k2.length_scale == pytest.approx(float(np.median(pdist(x))))
    rng = np.random.default_rng(0)
    wide = rng.normal(size=(12, 7)) * 50.0
    assert auto_kernel(wide).k2.length_scale == pytest.approx(float(np.median(pdist(wide))))


def test_gp_one_vs_one_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="one_vs_rest"):
        create_teacher("gaussian_process", num_classes=3, multi_class="one_vs_one")
    with pytest.raises(ValueError, match="multi_class"):
        GaussianProcessTeacher(2, multi_class="one_vs_all")
    x, y, _ = DATASETS["breast_cancer"]()
    teacher = create_teacher("gaussian_process", num_classes=2, multi_class="one_vs_one", restarts=0).fit(x, y)
    proba = teacher.predict_proba(x)
    assert proba.shape == (len(x), 2)
    assert_allclose(proba.sum(axis=1), 1.0)


def test_gp_diagnostics_report_kernel_and_log_marginal_likelihood() -> None:
    x, y, _ = DATASETS["breast_cancer"]()
    teacher = create_teacher("gaussian_process", num_classes=2, kernel="1.0 * RBF(1.0)", restarts=0).fit(x, y)
    diag = teacher.diagnostics()
    assert diag["kernel"] == str(teacher.estimator_.kernel_)
    assert diag["log_marginal_likelihood"] == pytest.approx(teacher.estimator_.log_marginal_likelihood_value_)
    assert diag["warnings"] == []

    x3, y3 = _iris()
    teacher3 = create_teacher("gaussian_process", num_classes=3, kernel="1.0 * RBF(1.0)", restarts=0).fit(x3, y3)
    diag3 = teacher3.diagnostics()
    assert len(diag3["kernel"]) == 3 and len(diag3["log_marginal_likelihood"]) == 3
    # scikit-learn's one-vs-rest value is the mean of the binary models' values.
    assert np.mean(diag3["log_marginal_likelihood"]) == pytest.approx(teacher3.estimator_.log_marginal_likelihood_value_)


def test_gp_diagnostics_warn_when_length_scale_hits_bound() -> None:
    x, y = _iris()
    keep = y < 2
    x, y = x[keep] * 1e-3, y[keep]  # pairwise distances ~1e-3: the best length-scale is above 1e-3
    kernel = "1.0 * RBF(5e-4, length_scale_bounds=(1e-5, 1e-3))"
    teacher = create_teacher("gaussian_process", num_classes=2, kernel=kernel, restarts=0).fit(x, y)
    assert teacher.estimator_.kernel_.k2.length_scale == pytest.approx(1e-3, rel=1e-6)
    warnings = teacher.diagnostics()["warnings"]
    assert any("length_scale" in w and "upper bound" in w for w in warnings), warnings
    # Free bounds: the optimum lies inside, no bound warning.
    free = create_teacher("gaussian_process", num_classes=2, kernel="1.0 * RBF(5e-4)", restarts=0).fit(x, y)
    assert free.estimator_.kernel_.k2.length_scale > 1e-3
    assert not any("bound" in w for w in free.diagnostics()["warnings"])


def test_gp_diagnostics_before_fit_raise() -> None:
    with pytest.raises(NotFittedError, match="fit"):
        GaussianProcessTeacher(2).diagnostics()


def test_parsed_kernel_is_used() -> None:
    teacher = GaussianProcessTeacher(2, kernel="2.0 * RBF(0.5)")
    assert str(teacher._make_estimator(None).kernel) == str(parse_kernel("2.0 * RBF(0.5)"))


# --------------------------------------------------------------------------- sklearn teacher


def test_sklearn_teacher_matches_estimator() -> None:
    from sklearn.linear_model import LogisticRegression

    x, y, k = DATASETS["iris"]()
    teacher = create_teacher(
        "sklearn", num_classes=k, estimator="sklearn.linear_model:LogisticRegression", params={"C": 0.5}
    ).fit(x, y)
    assert isinstance(teacher, EstimatorTeacher)
    reference = LogisticRegression(C=0.5, random_state=0).fit(x, y)
    assert_allclose(teacher.predict_proba(x), reference.predict_proba(x), rtol=1e-6, atol=1e-9)
    assert teacher.diagnostics()["estimator"] == "LogisticRegression"


def test_sklearn_teacher_rejects_unknown_params() -> None:
    with pytest.raises(ValueError, match="max_iters") as info:
        create_teacher(
            "sklearn", num_classes=2, estimator="sklearn.linear_model:LogisticRegression", params={"max_iters": 5}
        )
    assert "max_iter" in str(info.value).split("accepted:")[1]


@pytest.mark.parametrize(
    "path", ["no_such_module_xyz:Classifier", "sklearn.linear_model:NoSuchClassifier", "sklearn.linear_model"]
)
def test_sklearn_teacher_rejects_bad_import_path(path: str) -> None:
    with pytest.raises(ValueError, match="no_such_module_xyz|NoSuchClassifier|import path"):
        create_teacher("sklearn", num_classes=2, estimator=path)


def test_sklearn_teacher_needs_estimator_and_predict_proba() -> None:
    with pytest.raises(ValueError, match="estimator"):
        create_teacher("sklearn", num_classes=2)
    with pytest.raises(ValueError, match="predict_proba"):
        create_teacher("sklearn", num_classes=2, estimator="sklearn.svm:LinearSVC")


def test_fit_rejects_labels_out_of_range_and_single_class() -> None:
    x, y = _iris()
    with pytest.raises(ValueError, match="0..1"):
        make_teacher("sklearn", 2).fit(x, y)
    with pytest.raises(ValueError, match="two classes"):
        make_teacher("sklearn", 3).fit(x[y == 0], y[y == 0])


# --------------------------------------------------------------------------- registry


def test_unknown_kind_lists_registered_kinds() -> None:
    with pytest.raises(KeyError) as info:
        create_teacher("nope", num_classes=2)
    message = str(info.value)
    assert "nope" in message
    for kind in list_teachers():
        assert kind in message


def test_registering_a_name_twice_raises() -> None:
    before = dict(TEACHERS._entries)
    for kind in list_teachers():
        with pytest.raises(ValueError, match="already registered"):
            register_teacher(kind)(lambda **kwargs: None)
    assert TEACHERS._entries == before
    assert {"gaussian_process", "sklearn"} <= set(list_teachers())


def test_describe_is_one_line_with_the_teachers_settings() -> None:
    gp = create_teacher("gaussian_process", num_classes=3, kernel="auto", restarts=2, multi_class="one_vs_rest")
    assert gp.describe() == "GaussianProcessClassifier, kernel auto, 2 restarts, one_vs_rest"
    forest = create_teacher("sklearn", num_classes=2, estimator="sklearn.ensemble:RandomForestClassifier",
                            params={"n_estimators": 200}, random_state=5)
    assert forest.describe() == "RandomForestClassifier (n_estimators=200)"  # the seed is not a setting
    plain = create_teacher("sklearn", num_classes=2, estimator="sklearn.linear_model:LogisticRegression")
    assert plain.describe() == "LogisticRegression"
    assert gp.learns and forest.learns and gp.input_space == "scaled" and gp.fingerprint() is None
