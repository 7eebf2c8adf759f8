"""``DistilledClassifier``: knowledge distillation as a scikit-learn estimator.

A teacher (any scikit-learn classifier, a pretrained ``nn.Module``, or by default a Gaussian
process) is fit on the labelled rows, its soft targets are computed on the labelled and unlabelled
rows, and a small torch student is trained on them with distill's own engine and loss. The
estimator follows scikit-learn's conventions, so it works in ``Pipeline``, ``cross_val_score``,
``GridSearchCV`` and ``clone``, and passes ``check_estimator`` (see ``EXPECTED_FAILED_CHECKS``).
"""

from __future__ import annotations

import copy
import logging
import math
import random
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from numbers import Integral, Real
from typing import Any, Literal, cast

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from distill import students
from distill.config import FLOAT32_MAX, MAX_BATCH, MAX_EPOCHS, MAX_SEED, InitConfig
from distill.data.scaling import Scaler, fit_scaler
from distill.engine.loop import FitSettings, TrainingRows, fit, predict_logits
from distill.errors import ConfigError
from distill.experiment.teacher_cv import cross_fit
from distill.experiment.weight_init import apply_init
from distill.seeding import SMALL_WORKLOAD, resolve_device, seed_everything
from distill.teachers.base import Teacher
from distill.teachers.gaussian_process import EstimatorTeacher, GaussianProcessTeacher

__all__ = ["DistilledClassifier", "EXPECTED_FAILED_CHECKS"]

log = logging.getLogger("distill")

#: scikit-learn's ``check_estimator`` checks this estimator is known to fail, each with its reason.
#: Empty: every check passes (tests/test_estimator.py asserts exactly this set fails).
EXPECTED_FAILED_CHECKS: dict[str, str] = {}

_OPTIMIZERS = ("sgd", "adam", "adamw")
_SCALES = ("minmax", "standard", "none")
_DIRECTIONS = ("forward", "reverse")
#: ``calibrate_teacher``: at most this many stratified folds of the labelled rows (as the protocol's teacher).
_TEACHER_FOLDS = 5


class _InvalidParameter(ConfigError, ValueError):
    """A constructor parameter of ``DistilledClassifier`` is invalid: a one-line ``ValueError`` (scikit-learn's
    convention) that is also a distill ``ConfigError`` (exit code 2 in the CLI)."""


def _module_teacher_logits(module: nn.Module, x: np.ndarray, num_classes: int,
                           batch_size: int = 8192) -> np.ndarray:
    """Float64 log-probabilities ``[N, K]`` of a pretrained module on the rows ``x`` (eval mode, no
    autograd, its training flag restored); a one-output module of a binary problem gives log-odds."""
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    rows = torch.as_tensor(np.ascontiguousarray(x), dtype=dtype)
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            outs = [module(rows[i : i + batch_size].to(device)).double().cpu() for i in range(0, rows.shape[0],
                                                                                              batch_size)]
    finally:
        module.train(was_training)
    z = torch.cat(outs) if outs else torch.zeros((0, num_classes), dtype=torch.float64)
    if z.ndim == 1:
        z = z.unsqueeze(1)
    if num_classes == 2 and z.ndim == 2 and z.shape[1] == 1:
        z = torch.cat([torch.zeros_like(z), z], dim=1)  # log-odds z -> logits [0, z]
    if z.shape != (x.shape[0], num_classes) or not bool(torch.isfinite(z).all()):
        raise ValueError(f"teacher: the nn.Module returned outputs of shape {tuple(z.shape)} (finite: "
                         f"{bool(torch.isfinite(z).all())}); expected ({x.shape[0]}, {num_classes}) finite logits "
                         f"(or one logit per row for a binary problem)")
    return torch.log_softmax(z, dim=1).numpy()


class _ModuleTeacher(Teacher):
    """A pretrained ``nn.Module`` as a distill ``Teacher``: ``fit`` learns nothing, ``logits`` runs it.

    A ``Teacher`` subclass so that ``cross_fit`` finds every hook (``diagnostics``, ...); ``learns = False``:
    it is fit once and its outputs on the labelled rows are its "out-of-fold" outputs for calibration.
    """

    learns = False
    input_space = "raw"  # the module reads the unscaled rows, as it was trained

    def __init__(self, module: nn.Module, num_classes: int) -> None:
        self.module = module
        self.num_classes = int(num_classes)

    def fit(self, x: np.ndarray, y: np.ndarray) -> _ModuleTeacher:
        return self

    def logits(self, x: np.ndarray) -> np.ndarray:
        return _module_teacher_logits(self.module, x, self.num_classes)

    def diagnostics(self) -> dict[str, Any]:
        return {"estimator": type(self.module).__name__, "given": "module", "warnings": []}

    def describe(self) -> str:
        return f"{type(self.module).__name__} network (pretrained, unscaled inputs)"


@contextmanager
def _torch_state(elements: int, *, training: bool) -> Iterator[None]:
    """Run torch work, then leave the process as it was found.

    Restored on exit: torch's thread count and default dtype, grad mode, and (``training``) the global
    random generators of Python, NumPy and torch that ``seed_everything`` reseeds. A small workload
    (fewer than ``SMALL_WORKLOAD`` elements) runs on one torch and one BLAS thread, as distill's
    ``configure_threads`` does for ``train.threads = 0``: tiny students are slower on more threads.
    """
    from threadpoolctl import threadpool_limits

    threads, dtype, grad = torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled()
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state()) if training else None
    cuda = torch.cuda.get_rng_state_all() if training and torch.cuda.is_initialized() else None
    small = elements < SMALL_WORKLOAD
    try:
        torch.set_default_dtype(torch.float32)
        if small and threads != 1:
            torch.set_num_threads(1)
        with threadpool_limits(limits=1, user_api="blas") if small else nullcontext():
            with torch.enable_grad() if training else nullcontext():
                yield
    finally:
        torch.set_default_dtype(dtype)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)
        if states is not None:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _check_float32(x: np.ndarray, what: str, feature_names: Any) -> None:
    """Refuse rows that leave float32 (the student's dtype), naming the first column that does."""
    bad = ~(np.abs(x) <= FLOAT32_MAX)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        name = f"'{feature_names[col]}'" if feature_names is not None else str(col)
        raise ValueError(f"{what}: column {name} (row {row}) becomes {x[row, col]}, outside the float32 range "
                         f"the student computes in; rescale that column")


def _student_message(message: str) -> str:
    """A ``students.build`` message in this estimator's terms: ``student.hidden`` -> ``student_params.hidden``."""
    return re.sub(r"\bstudent\.(?=[a-z_])", "student_params.", message)


class DistilledClassifier(ClassifierMixin, BaseEstimator):
    """A small torch student distilled from a teacher, as a scikit-learn classifier.

    ``fit`` scales the features (fit on the labelled and unlabelled rows), fits the teacher on the
    labelled rows, optionally calibrates it by temperature scaling on its out-of-fold outputs, and
    trains the student on distill's loss (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a
    Neural Network")::

        loss = hard(student, y) + kl_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))

    over the labelled rows for the hard term (cross-entropy, or BCE with one logit for two classes)
    and every row, labelled and unlabelled, for the KL term (``direction = "reverse"``: the KL of
    the student against the teacher). The parameters are stored as given; they are checked in
    ``fit``, which raises a one-line ``ValueError`` (also a distill ``ConfigError``) naming the
    parameter.

    Parameters
    ----------
    teacher : None, scikit-learn classifier or torch.nn.Module, default=None
        ``None``: a Gaussian-process classifier as distill's default teacher (``GaussianProcessTeacher``:
        RBF kernel starting at the median pairwise distance, 2 optimizer restarts, one-vs-rest). A
        scikit-learn classifier with ``predict_proba`` is cloned and fit on the scaled labelled rows
        (the instance passed is never modified; a ``random_state`` left at None is set to the
        estimator's seed). An ``nn.Module`` is a pretrained teacher used as given: its outputs on the
        *unscaled* rows are logits, column k for ``classes_[k]`` (one column of log-odds for two
        classes); it is never trained.
    student : str, default="mlp"
        A registered student architecture (``distill.students.list_students()``) or ``"module:Class"``
        naming an ``nn.Module`` subclass.
    student_params : dict or None, default=None
        Keyword arguments of the student's constructor (e.g. ``{"hidden": [16]}``), plus optionally
        ``init``, a ``student.init`` table (``distill.experiment.weight_init``). None: the architecture's defaults.
    kl_weight : float, default=1.0
        Weight of the KL term (>= 0). ``0`` trains on the hard labels alone, and the teacher is not fit.
    temperature : float, default=1.0
        The distillation temperature T (> 0).
    direction : {"forward", "reverse"}, default="forward"
        ``forward``: KL(teacher || student); ``reverse``: KL(student || teacher).
    calibrate_teacher : bool, default=True
        Temperature-scale the teacher's log-probabilities (Guo et al. 2017) with a T fitted on its
        out-of-fold outputs over stratified folds of the labelled rows (``distill.experiment.teacher_cv.cross_fit``,
        as distill's protocol does). Skipped, with a note in ``teacher_diagnostics_``, when a class
        has a single labelled row.
    epochs : int, default=100
        Passes over the rows.
    batch_size : int, default=32
        Rows per step (drawn without replacement).
    lr : float, default=0.01
        Learning rate.
    optimizer : {"adam", "adamw", "sgd"}, default="adam"
        The optimizer.
    weight_decay : float, default=0.0
        The optimizer's weight decay.
    scale : {"minmax", "standard", "none"}, default="minmax"
        Feature scaling, fit on the labelled and unlabelled rows (distill's ``data.scale`` default).
    device : str, default="cpu"
        Torch device of the student (``"auto"``: CUDA when present).
    random_state : int, RandomState instance or None, default=None
        An int in ``0..2**32 - 1`` is the seed of everything (folds, teacher, student weights, batches):
        two fits give identical numbers on the CPU. None draws a seed from NumPy's global generator.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels (``np.unique(y)``); the student's output k is ``classes_[k]``.
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names of ``X`` when it is a DataFrame with string column names.
    scaler_ : distill.data.scaling.Scaler
        The feature scaling (``(x - shift) / scale``).
    teacher_ : object or None
        The fitted teacher: the fitted clone of a scikit-learn teacher, the fitted
        ``GaussianProcessClassifier`` of the default, the module itself for an ``nn.Module``; None
        when ``kl_weight == 0``.
    teacher_temperature_ : float
        The calibration temperature applied to the teacher's log-probabilities (1.0: not calibrated).
    teacher_diagnostics_ : dict
        What ``cross_fit`` reports on the teacher (calibration before/after, warnings); empty without one.
    soft_targets_ : ndarray of shape (n_rows, n_classes) or None
        The (calibrated) teacher's probabilities at T = 1 on the labelled rows, then the unlabelled rows.
    student_ : torch.nn.Module
        The trained student (float32, in eval mode), taking rows scaled by ``scaler_``.
    history_ : list of dict
        One dict per epoch: ``epoch``, ``lr``, ``train_loss`` and the train metrics on the labelled rows.
    n_iter_ : int
        Epochs run.
    seed_ : int
        The seed used (``random_state``, or the one drawn).

    Notes
    -----
    The student trains in float32; ``predict_proba``, ``predict`` and ``decision_function`` run a float64
    copy of it, so that a row's output does not depend on the other rows of the call (float32 matrix
    kernels change with the batch size). Small fits and predictions run on one torch thread and one BLAS
    thread (faster for tiny students); the thread counts are restored afterwards, so run parallel
    searches in processes (joblib's default), not threads. ``kl_weight``/``temperature`` = "auto" of
    distill's config has no equivalent here: search them with ``GridSearchCV``.

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.model_selection import train_test_split
    >>> from distill.estimator import DistilledClassifier
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> X_lab, X_rest, y_lab, y_rest = train_test_split(X, y, train_size=40, stratify=y, random_state=0)
    >>> clf = DistilledClassifier(teacher=LogisticRegression(max_iter=1000), student_params={"hidden": [16]},
    ...                           epochs=30, random_state=0)
    >>> clf.fit(X_lab, y_lab, X_unlabelled=X_rest[:300]).predict_proba(X_rest[300:]).shape
    (229, 2)
    >>> bool(clf.score(X_rest[300:], y_rest[300:]) > 0.85)
    True
    """

    def __init__(
        self,
        teacher: Any = None,
        student: str = "mlp",
        student_params: dict[str, Any] | None = None,
        kl_weight: float = 1.0,
        temperature: float = 1.0,
        direction: str = "forward",
        calibrate_teacher: bool = True,
        epochs: int = 100,
        batch_size: int = 32,
        lr: float = 1e-2,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        scale: str = "minmax",
        device: str = "cpu",
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.teacher = teacher
        self.student = student
        self.student_params = student_params
        self.kl_weight = kl_weight
        self.temperature = temperature
        self.direction = direction
        self.calibrate_teacher = calibrate_teacher
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.scale = scale
        self.device = device
        self.random_state = random_state

    # ------------------------------------------------------------------ parameters
    def _check_params(self) -> None:
        """Every parameter against its rule, before any work; the first problem as a one-line error."""

        def number(name: str, low: float, *, strict: bool) -> None:
            value = getattr(self, name)
            ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (value > low if strict else value >= low) and abs(value) <= FLOAT32_MAX
            if not ok:
                raise _InvalidParameter(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, "
                                        f"got {value!r}")

        def integer(name: str, high: int) -> None:
            value = getattr(self, name)
            if not (isinstance(value, Integral) and not isinstance(value, bool) and 1 <= int(value) <= high):
                raise _InvalidParameter(f"{name} must be an integer in 1..{high}, got {value!r}")

        def choice(name: str, options: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if not (isinstance(value, str) and value in options):
                raise _InvalidParameter(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")

        number("kl_weight", 0, strict=False)
        number("temperature", 0, strict=True)
        number("lr", 0, strict=True)
        number("weight_decay", 0, strict=False)
        integer("epochs", MAX_EPOCHS)
        integer("batch_size", MAX_BATCH)
        choice("optimizer", _OPTIMIZERS)
        choice("scale", _SCALES)
        choice("direction", _DIRECTIONS)
        if not isinstance(self.calibrate_teacher, (bool, np.bool_)):
            raise _InvalidParameter(f"calibrate_teacher must be True or False, got {self.calibrate_teacher!r}")
        if not isinstance(self.student, str) or not self.student:
            raise _InvalidParameter(f"student must be a registered architecture name or 'module:Class', "
                                    f"got {self.student!r}")
        if self.student_params is not None and not (
                isinstance(self.student_params, dict) and all(isinstance(k, str) for k in self.student_params)):
            raise _InvalidParameter(f"student_params must be a dict of keyword arguments or None, "
                                    f"got {self.student_params!r}")
        if not isinstance(self.device, str):
            raise _InvalidParameter(f"device must be a string such as 'cpu', 'cuda' or 'auto', got {self.device!r}")
        rs = self.random_state
        if not (rs is None or isinstance(rs, np.random.RandomState)
                or (isinstance(rs, Integral) and not isinstance(rs, bool) and 0 <= rs <= MAX_SEED)):
            raise _InvalidParameter(f"random_state must be None, a RandomState or an int in 0..{MAX_SEED}, got {rs!r}")
        t = self.teacher
        if isinstance(t, type):
            raise _InvalidParameter(f"teacher must be an instance, got the class {t.__name__}; "
                                    f"write teacher={t.__name__}()")
        if not (t is None or isinstance(t, nn.Module)
                or all(hasattr(t, name) for name in ("get_params", "fit", "predict_proba"))):
            raise _InvalidParameter(f"teacher must be None, a scikit-learn classifier with fit and predict_proba, "
                                    f"or a torch nn.Module; got {type(t).__name__}")

    def _seed(self) -> int:
        """The seed of this fit: ``random_state`` itself, or drawn from the given or global NumPy generator."""
        if isinstance(self.random_state, Integral):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any, X_unlabelled: Any = None) -> DistilledClassifier:
        """Fit the teacher on ``(X, y)`` and distil it into the student on ``X`` and ``X_unlabelled``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The labelled rows.
        y : array-like of shape (n_samples,)
            Their labels, of any dtype (strings too); at least two classes.
        X_unlabelled : array-like of shape (n_unlabelled, n_features), default=None
            Rows without labels: the teacher's soft targets on them enter the KL term. In
            ``GridSearchCV(...).fit(X, y, X_unlabelled=U)``, a ``U`` with exactly as many rows as
            ``X`` would be split with the folds, as scikit-learn splits any such fit parameter.

        Returns
        -------
        self : DistilledClassifier
        """
        self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        classes, y_enc = np.unique(y, return_inverse=True)
        if classes.size < 2:
            raise ValueError(f"y: DistilledClassifier needs at least 2 classes, got 1 class ({classes.tolist()[0]!r})")
        if X_unlabelled is None:
            unlabelled = np.empty((0, X.shape[1]), dtype=np.float64)
        else:
            unlabelled = validate_data(self, X_unlabelled, reset=False, dtype=np.float64, ensure_min_samples=0)
        seed = self._seed()  # before _torch_state saves the global generators: None draws anew every fit
        try:
            device = resolve_device(self.device)
        except (ConfigError, ValueError, RuntimeError) as exc:  # ConfigError names the config key train.device
            message = str(exc).replace("train.device", "device").splitlines()[0]
            raise _InvalidParameter(message if message.startswith("device") else
                                    f"device = {self.device!r}: {message}") from None
        k, n = int(classes.size), X.shape[0]
        names = getattr(self, "feature_names_in_", None)

        raw = np.concatenate([X, unlabelled])
        scaler = fit_scaler(self.scale, raw)  # type: ignore[arg-type]
        rows = scaler.transform(raw)
        _check_float32(rows, f"X: scale = {self.scale!r}", names)

        params = dict(self.student_params or {})
        init = params.pop("init", None)
        try:
            init_spec = InitConfig.model_validate(init) if init is not None else InitConfig()
        except Exception as exc:  # pydantic's ValidationError: its first problem, in one line
            first = str(exc).splitlines()
            raise _InvalidParameter(f"student_params.init: {first[2].strip() if len(first) > 2 else first[0]}, "
                                    f"got {init!r}") from None

        with _torch_state(raw.size, training=True):
            teacher_, logits, temperature, diagnostics = self._teach(X, y_enc, raw, rows, k, seed)
            seed_everything(seed)  # the student's initial weights, as distill.experiment.students.build_student
            try:
                model = students.build(self.student, (X.shape[1],), k, key="student", **params)
                model = apply_init(model, init_spec, self.student)
            except ValueError as exc:
                raise _InvalidParameter(_student_message(str(exc))) from None
            model = model.to(device)
            targets = np.full(rows.shape[0], -1, dtype=np.int64)
            targets[:n] = y_enc
            train = TrainingRows(
                x=torch.as_tensor(rows, dtype=torch.float32).to(device),
                targets=torch.as_tensor(targets).to(device),
                labelled=torch.as_tensor(np.arange(rows.shape[0]) < n).to(device),
                teacher_logits=torch.as_tensor(logits, dtype=torch.float32).to(device) if logits is not None else None,
            )
            kl = float(self.kl_weight)
            settings = FitSettings(
                epochs=int(self.epochs), batch_size=int(self.batch_size),
                optimizer=cast(Literal["sgd", "adam", "adamw"], self.optimizer),  # checked by _check_params
                lr=float(self.lr), weight_decay=float(self.weight_decay), kl_weight=kl,
                temperature=float(self.temperature) if kl > 0 else 1.0,
                direction=cast(Literal["forward", "reverse"], self.direction),  # checked by _check_params
                restore_best=False, seed=seed,  # no validation rows: the final weights are the student
            )
            seed_everything(seed + 1)  # the dropout stream, as distill.experiment.students.train_students
            result = fit(model, train, settings, num_classes=k)
        if result.status == "diverged":
            warnings.warn(f"DistilledClassifier: {result.stop_reason}; lower lr or kl_weight", ConvergenceWarning,
                          stacklevel=2)
        model.eval()
        self.classes_ = classes
        self.scaler_: Scaler = scaler
        self.teacher_ = teacher_
        self.teacher_temperature_ = temperature
        self.teacher_diagnostics_ = diagnostics
        self.soft_targets_ = None if logits is None else np.exp(logits - np.logaddexp.reduce(logits, axis=1,
                                                                                              keepdims=True))
        self.student_ = model
        self.history_ = result.history
        self.n_iter_ = int(result.stopped_epoch)
        self.seed_ = seed
        self.device_ = device
        return self

    def _teach(self, X: np.ndarray, y: np.ndarray, raw: np.ndarray, rows: np.ndarray, k: int,
               seed: int) -> tuple[Any, np.ndarray | None, float, dict[str, Any]]:
        """The fitted teacher and its float64 (calibrated) log-probabilities ``[N, K]`` on every row."""
        if float(self.kl_weight) == 0:
            return None, None, 1.0, {}
        n, t = X.shape[0], self.teacher
        if isinstance(t, nn.Module):
            _check_float32(raw, "X (the nn.Module teacher reads unscaled rows as float32)",
                           getattr(self, "feature_names_in_", None))
            made: list[Any] = []
            factory: Any = lambda: _ModuleTeacher(t, k)  # noqa: E731
            fit_x, teacher_rows, learns = raw[:n], raw, False
        else:
            if t is None:
                template = None
            else:
                template = clone(t)
                if "random_state" in template.get_params(deep=False) and template.get_params()["random_state"] is None:
                    template.set_params(random_state=seed)
            made = []

            def factory() -> Any:
                teacher = (GaussianProcessTeacher(k, random_state=seed) if template is None
                           else EstimatorTeacher(template, k))
                made.append(teacher)
                return teacher

            fit_x, teacher_rows, learns = rows[:n], rows, True
        if self.calibrate_teacher:
            # the full teacher is fit first, then one per fold (cross_fit): made[0] is the full one
            crossed = cross_fit([("teacher", factory)], fit_x, y, teacher_rows, n, mode="single",
                                calibration="temperature", learns=learns, seed=seed, num_classes=k,
                                max_folds=_TEACHER_FOLDS)
            logits, diagnostics = crossed.logits, crossed.diagnostics
            temperature = float(diagnostics["calibration"]["temperature"])
            full = made[0] if made else None
        else:
            full = factory().fit(fit_x, y)
            logits = full.logits(teacher_rows)
            if logits.shape != (teacher_rows.shape[0], k) or not np.isfinite(logits).all():
                raise ValueError(f"teacher: returned logits of shape {logits.shape} (finite: "
                                 f"{bool(np.isfinite(logits).all())}); expected ({teacher_rows.shape[0]}, {k}) finite")
            temperature, diagnostics = 1.0, {}
        for message in diagnostics.get("warnings", []):
            log.debug("DistilledClassifier teacher: %s", message)
        if isinstance(t, nn.Module):
            fitted: Any = t
        else:
            assert full is not None  # cross_fit fit the full teacher first: made[0]
            fitted = full.estimator_
        return fitted, np.asarray(logits, dtype=np.float64), temperature, diagnostics

    # ------------------------------------------------------------------ predict
    def _logits(self, X: Any) -> np.ndarray:
        """The student's float64 outputs ``[N, 1]`` (binary: log-odds of ``classes_[1]``) or ``[N, K]``."""
        check_is_fitted(self, "student_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        rows = self.scaler_.transform(X)
        _check_float32(rows, f"X: scale = {self.scaler_.kind!r}", getattr(self, "feature_names_in_", None))
        with _torch_state(rows.size, training=False):
            # float64 inference: float32 GEMM kernels change with the batch size, and so would the last
            # bits of a row's output with the rows it comes with (scikit-learn's subset invariance)
            student = copy.deepcopy(self.student_).double()
            x = torch.as_tensor(rows, dtype=torch.float64).to(self.device_)
            out = predict_logits(student, x)
        return out.cpu().numpy().reshape(rows.shape[0], -1)

    def decision_function(self, X: Any) -> np.ndarray:
        """The student's logits: shape (n,) log-odds of ``classes_[1]`` for two classes, else (n, n_classes)."""
        z = self._logits(X)
        return z[:, 0] if z.shape[1] == 1 else z

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log-probabilities ``[n, n_classes]`` (computed from the logits in float64, not as log(p))."""
        z = self._logits(X)
        if z.shape[1] == 1:
            z = np.concatenate([np.zeros_like(z), z], axis=1)
        return z - np.logaddexp.reduce(z, axis=1, keepdims=True)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``[n, n_classes]``, columns in ``classes_`` order; rows sum to 1."""
        return np.exp(self.predict_log_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row (ties: the first in ``classes_``)."""
        best = np.argmax(self.predict_log_proba(X), axis=1)
        return self.classes_[best]

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False  # deterministic for an int random_state (tested)
        return tags

