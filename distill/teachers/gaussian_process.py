"""Teachers from scikit-learn: a Gaussian-process classifier, or any estimator with ``predict_proba``.

A GP is the teacher that is good with very little data. Its defaults matter: scikit-learn's GP
with a unit length-scale and a single optimizer start collapses to a flat kernel on wide data,
so ``kernel="auto"`` starts the RBF length-scale at the median pairwise distance of the rows it
is fit on, and the optimizer restarts a few times.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from distill.registry import has_methods, import_class
from distill.teachers.base import (
    NotFittedError,
    Teacher,
    probabilities_to_logits,
    register_teacher,
)
from distill.teachers.kernels import parse_kernel

__all__ = ["EstimatorTeacher", "GaussianProcessTeacher", "auto_kernel"]


class EstimatorTeacher(Teacher):
    """Wraps any scikit-learn classifier with ``predict_proba`` as a Teacher.

    Args:
        estimator: an unfitted scikit-learn classifier (cloned at ``fit``).
        num_classes: classes of the whole dataset; columns for classes absent from the
            labelled rows get probability 0 (a finite, very negative logit).
    """

    def __init__(self, estimator: Any, num_classes: int) -> None:
        if not hasattr(estimator, "predict_proba"):
            raise ValueError(f"{type(estimator).__name__} has no predict_proba; a teacher needs probabilities")
        self.estimator = estimator
        self.num_classes = int(num_classes)

    def check(self, in_shape: tuple[int, ...]) -> None:
        """The estimator's parameters against scikit-learn's own constraints, before any fit, so that
        ``check`` refuses the ``teacher.params`` that ``run`` would fail on."""
        validate = getattr(self.estimator, "_validate_params", None)
        if callable(validate):
            try:
                validate()
            except ValueError as exc:
                raise ValueError(f"teacher.params: {str(exc).strip().splitlines()[0]}") from None

    def fit(self, x: np.ndarray, y: np.ndarray) -> "EstimatorTeacher":
        from sklearn.base import clone

        y = np.asarray(y)
        if np.unique(y).size < 2:
            raise ValueError("a teacher needs at least two classes among its training rows")
        if y.min() < 0 or y.max() >= self.num_classes:
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1}, got {y.min()}..{y.max()}")
        self.estimator_ = clone(self.estimator).fit(np.asarray(x, dtype=np.float64), y)
        self.classes_ = np.asarray(self.estimator_.classes_, dtype=np.int64)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """``[N, num_classes]`` probabilities in class order; absent classes get 0."""
        if not hasattr(self, "estimator_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(x, y) first")
        proba = np.asarray(self.estimator_.predict_proba(np.asarray(x, dtype=np.float64)), dtype=np.float64)
        full = np.zeros((proba.shape[0], self.num_classes), dtype=np.float64)
        full[:, self.classes_] = proba
        return full

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Clamped log-probabilities ``[N, num_classes]``: finite even where p is 0 or 1."""
        return probabilities_to_logits(self.predict_proba(x))

    def diagnostics(self) -> dict[str, Any]:
        """What a user should see about the fitted teacher (estimator and parameters)."""
        if not hasattr(self, "estimator_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(x, y) first")
        return {"estimator": type(self.estimator_).__name__, "warnings": []}

    def describe(self) -> str:
        """The estimator's class and the parameters set away from its defaults, e.g.
        ``RandomForestClassifier (n_estimators=200)`` (``random_state``, the experiment seed, left out)."""
        changed = _changed_params(self.estimator)
        return type(self.estimator).__name__ + (f" ({', '.join(f'{k}={v!r}' for k, v in changed.items())})"
                                                if changed else "")


def auto_kernel(x: np.ndarray) -> Any:
    """``1.0 * RBF(median pairwise distance)``: a length-scale on the scale of the data."""
    from scipy.spatial.distance import pdist
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel

    distances = pdist(np.asarray(x, dtype=np.float64).reshape(len(x), -1))
    positive = distances[distances > 0]
    length_scale = float(np.median(positive)) if positive.size else 1.0
    return ConstantKernel(1.0) * RBF(length_scale=length_scale)


class GaussianProcessTeacher(EstimatorTeacher):
    """scikit-learn's GaussianProcessClassifier as a teacher.

    Args:
        num_classes: classes of the whole dataset.
        kernel: ``"auto"`` or a kernel expression (``"1.0 * RBF(1.0)"``), parsed without eval.
        restarts: ``n_restarts_optimizer`` of the GP.
        multi_class: ``"one_vs_rest"`` or ``"one_vs_one"`` (binary problems only: scikit-learn
            gives no probabilities for one-vs-one with more than two classes).
        random_state: seed of the optimizer restarts.
    """

    def __init__(
        self,
        num_classes: int,
        kernel: str = "auto",
        restarts: int = 2,
        multi_class: str = "one_vs_rest",
        random_state: int = 0,
    ) -> None:
        if multi_class == "one_vs_one" and num_classes > 2:
            raise ValueError(
                f"teacher.multi_class = 'one_vs_one' gives no probabilities for {num_classes} classes "
                "in scikit-learn; use 'one_vs_rest'"
            )
        if multi_class not in ("one_vs_rest", "one_vs_one"):
            raise ValueError(f"teacher.multi_class must be 'one_vs_rest' or 'one_vs_one', got {multi_class!r}")
        self.kernel = kernel
        self.restarts = int(restarts)
        self.multi_class = multi_class
        self.random_state = random_state
        super().__init__(self._make_estimator(None), num_classes)

    def describe(self) -> str:
        """``GaussianProcessClassifier, kernel auto, 2 restarts, one_vs_rest``."""
        return f"GaussianProcessClassifier, kernel {self.kernel}, {self.restarts} restarts, {self.multi_class}"

    def check(self, in_shape: tuple[int, ...]) -> None:
        """The kernel against the data, before any fit: every hyperparameter finite and > 0, and an
        anisotropic length-scale with one value per feature (scikit-learn fails mid-run otherwise)."""
        super().check(in_shape)
        if self.kernel.strip() == "auto":
            return
        features = int(np.prod(in_shape))
        kernel = parse_kernel(self.kernel)
        params = kernel.get_params(deep=True)
        for hp in kernel.hyperparameters:
            value = np.asarray(params.get(hp.name), dtype=np.float64)
            if not (np.isfinite(value).all() and (value > 0).all()):
                raise ValueError(f"teacher.kernel: {hp.name.split('__')[-1]} must be finite and > 0, "
                                 f"got {params.get(hp.name)!r} in {self.kernel!r}")
            if hp.name.endswith("length_scale") and value.ndim == 1 and value.size not in (1, features):
                raise ValueError(
                    f"teacher.kernel: the length-scale has {value.size} values but the data has {features} "
                    f"feature(s); give one value, or one per feature, in {self.kernel!r}"
                )

    def _make_estimator(self, x: np.ndarray | None) -> Any:
        from sklearn.gaussian_process import GaussianProcessClassifier

        if self.kernel.strip() == "auto":
            kernel = auto_kernel(x) if x is not None else None
        else:
            kernel = parse_kernel(self.kernel)
        return GaussianProcessClassifier(
            kernel=kernel,
            n_restarts_optimizer=self.restarts,
            multi_class=self.multi_class,
            random_state=self.random_state,
        )

    def fit(self, x: np.ndarray, y: np.ndarray) -> "GaussianProcessTeacher":
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        self.estimator = self._make_estimator(np.asarray(x, dtype=np.float64))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            super().fit(x, y)
        self.fit_warnings_ = [
            str(w.message).splitlines()[0] for w in caught if issubclass(w.category, ConvergenceWarning)
        ]
        self.initial_kernel_ = str(self.estimator.kernel) if self.estimator.kernel is not None else "1.0 * RBF(1.0)"
        self.train_x_ = np.asarray(x, dtype=np.float64)
        return self

    def _binary_estimators(self) -> list[Any]:
        base = self.estimator_.base_estimator_
        return list(getattr(base, "estimators_", [base]))

    def diagnostics(self) -> dict[str, Any]:
        """Fitted kernel(s), log marginal likelihood, parameters at their bounds, and warnings."""
        if not hasattr(self, "estimator_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(x, y) first")
        estimators = self._binary_estimators()
        kernels = [str(e.kernel_) for e in estimators]
        lml = [float(e.log_marginal_likelihood_value_) for e in estimators]
        at_bound: list[str] = []
        for i, est in enumerate(estimators):
            theta, bounds = est.kernel_.theta, est.kernel_.bounds  # log-space, free parameters only
            position = 0
            for hp in est.kernel_.hyperparameters:
                if hp.fixed:
                    continue
                sides = set()
                for _ in range(hp.n_elements):
                    lo, hi = bounds[position]
                    if np.isclose(theta[position], hi, atol=1e-2):
                        sides.add("upper")
                    elif np.isclose(theta[position], lo, atol=1e-2):
                        sides.add("lower")
                    position += 1
                if sides:
                    where = f" (model {i})" if len(estimators) > 1 else ""
                    at_bound.append(f"{hp.name} at its {'/'.join(sorted(sides))} bound{where}")
        warnings_: list[str] = []
        if at_bound:
            warnings_.append(
                "GP hyper-parameter " + "; ".join(at_bound)
                + ": the kernel may be degenerate, try teacher.kernel = 'auto' or other bounds"
            )
        proba = self.predict_proba(self.train_x_)
        spread = float(np.max(proba.max(axis=1) - proba.min(axis=1))) if proba.size else 0.0
        if spread < 0.05:
            warnings_.append(
                f"GP probabilities are nearly uniform on its own training rows (max spread {spread:.3f}):"
                " the teacher is close to chance"
            )
        warnings_.extend(self.fit_warnings_)
        return {
            "estimator": "GaussianProcessClassifier",
            "initial_kernel": self.initial_kernel_,
            "kernel": kernels[0] if len(kernels) == 1 else kernels,
            "log_marginal_likelihood": lml[0] if len(lml) == 1 else lml,
            "multi_class": self.multi_class,
            "restarts": self.restarts,
            "warnings": warnings_,
        }


@register_teacher("gaussian_process")
def _create_gaussian_process(
    num_classes: int,
    kernel: str = "auto",
    restarts: int = 2,
    multi_class: str = "one_vs_rest",
    random_state: int = 0,
    **_: Any,
) -> GaussianProcessTeacher:
    return GaussianProcessTeacher(num_classes, kernel, restarts, multi_class, random_state)


@register_teacher("sklearn")
def _create_estimator(
    num_classes: int,
    estimator: str | None = None,
    params: dict[str, Any] | None = None,
    random_state: int = 0,
    **_: Any,
) -> EstimatorTeacher:
    """Any scikit-learn classifier named by import path, e.g. ``sklearn.ensemble:RandomForestClassifier``."""
    if not estimator:
        raise ValueError("teacher.estimator is required for teacher.kind = 'sklearn'")
    cls = import_class(estimator, "teacher.estimator", "a classifier class with fit and predict_proba",
                       is_classifier_class)
    params = dict(params or {})
    accepted = _init_params(cls)
    unknown = sorted(set(params) - accepted) if accepted is not None else []
    if unknown:
        raise ValueError(
            f"teacher.params: {', '.join(unknown)} not accepted by {estimator}; accepted: {', '.join(sorted(accepted or []))}"
        )
    if accepted is not None and "random_state" in accepted and "random_state" not in params:
        params["random_state"] = random_state
    try:
        model = cls(**params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"teacher.params for {estimator}: {exc}") from None
    return EstimatorTeacher(model, num_classes)


def is_classifier_class(cls: type) -> bool:
    """A scikit-learn-style classifier class: ``fit`` and ``predict_proba`` (what ``teacher.estimator`` may name)."""
    return has_methods(cls, "fit", "predict_proba")


def _changed_params(estimator: Any) -> dict[str, Any]:
    """The estimator's constructor parameters that differ from their defaults (not ``random_state``)."""
    try:
        params = estimator.get_params(deep=False)
        defaults = {n: p.default for n, p in inspect.signature(type(estimator)).parameters.items()}
    except (AttributeError, TypeError, ValueError):
        return {}
    changed = {}
    for name, value in params.items():
        default = defaults.get(name, inspect.Parameter.empty)
        try:
            same = default is not inspect.Parameter.empty and bool(value == default) and type(value) is type(default)
        except (TypeError, ValueError):  # arrays and other values without a plain ==
            same = False
        if name != "random_state" and not same:
            changed[name] = value
    return changed


def _init_params(cls: Any) -> set[str] | None:
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


