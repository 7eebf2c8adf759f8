"""Teachers given as Python objects: ``distill.run(config, teacher=...)``.

* an **unfitted scikit-learn classifier** (anything with ``fit`` and ``predict_proba``): cloned and fit
  on the labelled rows of each episode, in the student's scaled feature space, exactly like
  ``teacher.kind = "sklearn"``;
* a **fitted scikit-learn classifier**: used as it is (it already learnt, so it is never refit), on the
  raw features it was fit on; its ``classes_`` must name the data's classes;
* a **torch ``nn.Module``**: a trained network whose outputs are logits (one per class, or one for two
  classes), run in eval mode without autograd on raw features (``teacher.input = "scaled"``: the
  run's scaled ones), like ``teacher.kind = "network"``.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from distill.data.sources import canonical_label
from distill.teachers.base import NotFittedError, Teacher, probabilities_to_logits

__all__ = ["teacher_factory", "is_fitted", "GivenEstimatorTeacher", "GivenModuleTeacher"]


def is_fitted(estimator: Any) -> bool:
    """Whether a scikit-learn estimator has been fit (scikit-learn's own test)."""
    from sklearn.exceptions import NotFittedError as SklearnNotFitted
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(estimator)
    except SklearnNotFitted:
        return False
    except TypeError:  # not an estimator scikit-learn recognises: judge by the fitted-attribute convention
        return any(k.endswith("_") and not k.startswith("__") for k in vars(estimator))
    return True


def _class_columns(estimator_classes: Any, classes: list[str]) -> np.ndarray:
    """Column ``j`` of the estimator's ``predict_proba`` is data class ``index[j]`` (matched by name)."""
    names = [str(c) for c in np.asarray(estimator_classes).tolist()]
    position = {canonical_label(name): i for i, name in enumerate(classes)}
    names = [canonical_label(n) for n in names]
    unknown = [n for n in names if n not in position]
    if unknown:
        raise ValueError(f"the fitted teacher's classes_ {names} are not the data's classes {classes} "
                         f"({', '.join(map(repr, unknown[:3]))} unknown)")
    missing = [c for c in classes if canonical_label(c) not in names]
    if missing:  # it would give them probability 0 on every row, and the student would learn never to say them
        raise ValueError(f"the fitted teacher's classes_ {names} lack the data's class(es) "
                         f"{', '.join(map(repr, missing[:3]))}: fit it on rows of every class")
    return np.asarray([position[n] for n in names], dtype=np.int64)


class GivenEstimatorTeacher(Teacher):
    """A scikit-learn classifier instance as a teacher (see the module docstring)."""

    def __init__(self, estimator: Any, num_classes: int, classes: list[str], identity: str,
                 feature_names: list[str] | None = None, random_state: int = 0) -> None:
        self.estimator = estimator
        self.num_classes = int(num_classes)
        self.classes = list(classes)
        self.prefit = is_fitted(estimator)
        self.input_space = "raw" if self.prefit else "scaled"  # a fitted estimator reads the features it was fit on
        self._identity = identity
        self.feature_names = list(feature_names or [])
        self.random_state = int(random_state)

    @property
    def learns(self) -> bool:  # type: ignore[override]  # Teacher's is a ClassVar; here it depends on the estimator
        return not self.prefit

    def fingerprint(self) -> str | None:
        # Unique per distill.run call: an object has no stable identity across processes, so its
        # soft targets are never shared through the disk cache (the run turns that cache off).
        return f"given:{self._identity}"

    def _columns(self) -> np.ndarray | None:
        """For a fitted estimator that knows its feature names: the data's column for each of them, in its
        order (None: it takes the data's columns as they are)."""
        names = getattr(self.estimator, "feature_names_in_", None)
        if names is None or not self.feature_names:
            return None
        names = [str(n) for n in names]
        missing = [n for n in names if n not in self.feature_names]
        if missing:
            raise ValueError(f"the fitted teacher was fit on feature(s) {', '.join(map(repr, missing[:3]))} that the data "
                             f"lacks (the data's: {', '.join(map(repr, self.feature_names[:5]))}...)")
        return np.asarray([self.feature_names.index(n) for n in names], dtype=np.int64)

    def _rows(self, x: np.ndarray) -> Any:
        """Rows as the estimator expects them: a DataFrame in its own column order when it knows names."""
        x = np.asarray(x, dtype=np.float64)
        columns = self._columns() if self.prefit else None
        if columns is None:
            return x
        import pandas as pd

        return pd.DataFrame(x[:, columns], columns=[self.feature_names[i] for i in columns])

    def check(self, in_shape: tuple[int, ...]) -> None:
        if self.prefit:
            _class_columns(self.estimator.classes_, self.classes)
            self._columns()
            width = getattr(self.estimator, "n_features_in_", None)
            if width is not None and int(width) != int(np.prod(in_shape)):
                raise ValueError(f"the fitted teacher takes {width} features but the data has {int(np.prod(in_shape))}")

    def fit(self, x: np.ndarray, y: np.ndarray) -> "GivenEstimatorTeacher":
        if self.prefit:
            self.estimator_ = self.estimator
            self.columns_ = _class_columns(self.estimator.classes_, self.classes)
            return self
        from sklearn.base import clone

        y = np.asarray(y)
        if np.unique(y).size < 2:
            raise ValueError("a teacher needs at least two classes among its training rows")
        estimator = clone(self.estimator)
        if "random_state" in estimator.get_params(deep=False) and estimator.get_params(deep=False)["random_state"] is None:
            estimator.set_params(random_state=self.random_state)  # as teacher.kind = "sklearn" does: reproducible
        self.estimator_ = estimator.fit(np.asarray(x, dtype=np.float64), y)
        self.columns_ = np.asarray(self.estimator_.classes_, dtype=np.int64)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if not hasattr(self, "estimator_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(x, y) first")
        proba = np.asarray(self.estimator_.predict_proba(self._rows(x)), dtype=np.float64)
        if proba.ndim != 2 or proba.shape != (len(x), self.columns_.size):
            raise ValueError(f"{type(self.estimator_).__name__}.predict_proba gave shape {proba.shape}, expected "
                             f"({len(x)}, {self.columns_.size}): one column per class in classes_")
        full = np.zeros((proba.shape[0], self.num_classes), dtype=np.float64)
        full[:, self.columns_] = proba
        return full

    def logits(self, x: np.ndarray) -> np.ndarray:
        return probabilities_to_logits(self.predict_proba(x))

    def diagnostics(self) -> dict[str, Any]:
        return {"estimator": type(self.estimator).__name__, "given": "fitted" if self.prefit else "unfitted",
                "warnings": []}

    def describe(self) -> str:
        how = "fitted, used as given on raw features" if self.prefit else "refit on each episode's labelled rows"
        return f"{type(self.estimator).__name__} given in Python ({how})"


class GivenModuleTeacher(Teacher):
    """A trained ``nn.Module`` as a teacher: its outputs are logits (see the module docstring)."""

    learns = False

    def __init__(self, module: nn.Module, num_classes: int, in_shape: tuple[int, ...], input: str,
                 identity: str, batch_size: int = 4096) -> None:
        self.module = module
        self.num_classes = int(num_classes)
        self.in_shape = tuple(in_shape)
        self.input_space = input
        self.batch_size = batch_size
        self._identity = identity
        first = next(iter(module.parameters()), None)  # the module runs where it is, in its own dtype
        self.device = first.device if first is not None else torch.device("cpu")
        self.dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32

    def fingerprint(self) -> str | None:
        return f"given:{self._identity}"

    def _forward(self, x: np.ndarray) -> torch.Tensor:
        rows = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(len(x), *self.in_shape), dtype=self.dtype)
        outs = []
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.inference_mode():
                for i in range(0, rows.shape[0], self.batch_size):
                    outs.append(self.module(rows[i: i + self.batch_size].to(self.device)).double().cpu())
        finally:
            self.module.train(was_training)  # the user's module is left as it came
        out = torch.cat(outs) if outs else torch.zeros((0, self.num_classes), dtype=torch.float64)
        return out.reshape(out.shape[0], -1)

    def check(self, in_shape: tuple[int, ...]) -> None:
        self.in_shape = tuple(in_shape)
        try:
            out = self._forward(np.zeros((2, int(np.prod(in_shape)))))
        except Exception as exc:  # noqa: BLE001 - any failure: the network cannot take these inputs
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"the teacher network cannot take inputs of shape {tuple(in_shape)}: {line}") from None
        width = out.shape[1]
        if width != self.num_classes and not (width == 1 and self.num_classes == 2):
            predicted = 2 if width == 1 else width
            raise ValueError(f"the teacher network predicts {predicted} classes but the data has {self.num_classes}")

    def fit(self, x: np.ndarray, y: np.ndarray) -> "GivenModuleTeacher":
        self.check(self.in_shape)
        self.fitted_ = True
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        from distill.metrics.classification import probabilities

        if not hasattr(self, "fitted_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(x, y) first")
        return probabilities(self._forward(x)).numpy()

    def logits(self, x: np.ndarray) -> np.ndarray:
        return probabilities_to_logits(self.predict_proba(x))

    def diagnostics(self) -> dict[str, Any]:
        return {"estimator": type(self.module).__name__, "given": "module", "warnings": []}

    def describe(self) -> str:
        return f"{type(self.module).__name__} network given in Python ({self.input_space} inputs)"


def teacher_factory(obj: Any, *, num_classes: int, classes: list[str], in_shape: tuple[int, ...],
                    input: str = "raw", feature_names: list[str] | None = None) -> Callable[[int], Teacher]:
    """A factory of fresh teachers (from an episode's seed) wrapping ``obj``, an ``nn.Module`` or a
    scikit-learn classifier; anything else is a ValueError naming what a teacher must be."""
    identity = uuid.uuid4().hex
    if isinstance(obj, type):
        raise ValueError(f"teacher: pass an instance, not the class {obj.__name__} (e.g. {obj.__name__}(...))")
    if isinstance(obj, nn.Module):
        return lambda seed: GivenModuleTeacher(obj, num_classes, in_shape, input, identity)
    if callable(getattr(obj, "predict_proba", None)) and callable(getattr(obj, "fit", None)):
        return lambda seed: GivenEstimatorTeacher(obj, num_classes, classes, identity, feature_names, seed)
    raise ValueError(f"teacher must be a scikit-learn classifier with fit and predict_proba, or a torch nn.Module; "
                     f"got {type(obj).__name__}")
