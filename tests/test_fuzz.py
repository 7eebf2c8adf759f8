"""Property tests (hypothesis): configs drawn from the schema, and the objective on random finite logits.

1. A config built from the pydantic schema -- valid values, boundary values or garbage of another
   type in any field, unknown keys, sweeps, missing or mangled sections -- either validates or
   raises ``ConfigError`` whose problems are single lines naming a key; never another exception.
   What validates survives ``to_toml`` -> ``load_config`` unchanged and expands its sweep, and
   ``prepare`` (on iris) returns or raises a ``UserError``.
2. Finite logits (up to +-1e4, the float32 exp edge +-88, tiny values, ties) give a finite
   distillation objective and finite gradients: ``distillation_loss``, ``MemberObjective``, every
   hard loss of the registry, and the metric-learning term on finite embeddings.

Every test is derandomised (a fixed seed per test, no example database), so CI sees the same
examples on every run.
"""

from __future__ import annotations

import copy
import math
import types
import typing
from typing import Any, Literal, Union

import annotated_types as at
import numpy as np
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from distill.config import (
    Config,
    config_dict,
    expand_sweep,
    load_config,
    sweepable_keys,
    to_toml,
    validate_config,
)
from distill.errors import ConfigError, UserError
from distill.losses.fused import MemberObjective
from distill.losses.hard import HARD_LOSSES, create_loss
from distill.losses.objective import HardCriterion, distillation_loss, metric_loss
from distill.students import num_outputs_for

FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=False)


def fuzz(max_examples: int, **kwargs: Any) -> settings:
    """The shared deterministic settings with this test's example count."""
    return settings(FUZZ, max_examples=max_examples, **kwargs)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread, as the engine uses for small fits. (With two threads on a
    busy machine, F.logsigmoid's parallel region alone costs up to a millisecond per call.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# =========================================================================== configs from the schema


def _model_of(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _leaves(annotation: Any) -> list[Any]:
    """The alternatives of an annotation, Annotated and Optional/Union unwrapped."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _leaves(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [leaf for arg in typing.get_args(annotation) for leaf in _leaves(arg)]
    return [annotation]


def _schema_fields(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every dotted key of the schema (sections and their fields) -> its pydantic FieldInfo."""
    out = {}
    for name, field in model.model_fields.items():
        out[prefix + name] = field
        sub = _model_of(field.annotation)
        if sub is not None:
            out.update(_schema_fields(sub, f"{prefix}{name}."))
    return out


FIELDS = _schema_fields(Config)
SCHEMA_PATHS = list(FIELDS)

HUGE_INTS = [2**31, 2**63 - 1, -(2**63), 10**30, -(10**30)]
EDGE_FLOATS = [0.0, -0.0, 1e-300, 5e-324, 1e300, math.inf, -math.inf, math.nan, 0.5, 1.0 - 1e-16]

scalars = st.one_of(
    st.integers(),
    st.sampled_from(HUGE_INTS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=12),
)
# Text keys, including empty, dotted, quoted, unicode and control characters.
any_key = st.one_of(st.text(max_size=8), st.sampled_from(["", "a.b", "x y", "kl weight", "'", '"', "\n", "é"]))
garbage = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),  # a list where a scalar is expected means a sweep
        st.dictionaries(any_key, inner, max_size=3),
    ),
    max_leaves=6,
)


def _mostly(valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` four times in five, else ``other`` (shrinks towards ``valid``)."""
    return st.sampled_from([valid] * 4 + [other]).flatmap(lambda strategy: strategy)


def _hint(valid: list[str], invalid: list[str]) -> st.SearchStrategy[str]:
    other = st.text(max_size=12)
    return _mostly(st.sampled_from(valid), st.sampled_from(invalid) | other if invalid else other)


STRING_HINTS: dict[str, st.SearchStrategy[str]] = {
    "name": _hint(["exp", "a.b-c_1", "9"], ["", "-x", "has space", "new\nline", "é"]),
    "data.source": _hint(
        ["sklearn:iris", "sklearn:breast_cancer", "sklearn:nope", "csv:missing.csv", "npz:missing.npz", "idx:nodir"],
        ["http:x", "sklearn:", ":", "iris", "csv:a\nb.csv", ""],
    ),
    "data.label": _hint(["label", "target", ""], []),
    "teacher.kernel": _hint(
        ["auto", " auto ", "RBF()", "1.0 * RBF(1.0)", "Matern(nu=1.5) + WhiteKernel(0.1)",
         'RBF(length_scale=[1.0, 2.0], length_scale_bounds="fixed")', "(" * 60 + "RBF()" + ")" * 60],
        ["RBF(", "(" * 2000, "2 ** 3", "__import__('os')", "RBF(nu=1)", "1e999 * RBF()", "RBF(-1)", "RBF(nan)", ""],
    ),
    "teacher.estimator": _hint(
        ["sklearn.ensemble:RandomForestClassifier", "sklearn.linear_model:LogisticRegression"],
        ["sklearn.linear_model:LinearRegression", "nope.module:X", "a\nb:C", "sklearn.ensemble", ":", ""],
    ),
    "teacher.checkpoint": _hint(["missing/student.pt"], ["", "mi\nssing.pt"]),
    "teacher.uri": _hint(["runs:/0123/model", "models:/x/1"], [""]),
    "teacher.arch": _hint(["mlp", "cnn"], ["nope"]),
    "teacher.kind": _hint(
        ["gaussian_process", "sklearn", "network", "auto", "ensemble",
         "distill.teachers.gaussian_process:GaussianProcessTeacher"],
        ["svm", "", "os:system", "collections:OrderedDict", ".x:Y", "a\nb"],
    ),
    "objective.hard": _hint(["auto", "bce", "ce", "focal", "sce", "label_smoothing"], ["nope", "CE", "", "auto:x"]),
    "student.arch": _hint(["mlp", "distill.students.mlp:MLP"], ["cnn", "nope", "os:getcwd", "a:b:c", "a\nb", ""]),
    "train.device": _hint(["auto", "cpu"], ["cuda", "cuda:0", "cuda:7", "mps", "tpu", "CPU", "cuda:", ""]),
    "train.early_stopping.monitor": _hint(["val_loss", "val_accuracy", "train_loss"], ["loss", "val\nloss", ""]),
}


def _bounds(field: Any) -> dict[str, float]:
    """The field's numeric bounds: ``{"ge": 0, "lt": 1}`` and the like."""
    out: dict[str, float] = {}
    for meta in field.metadata:
        for attr in ("ge", "gt", "le", "lt"):
            if isinstance(meta, (at.Ge, at.Gt, at.Le, at.Lt)) and getattr(meta, attr, None) is not None:
                out[attr] = getattr(meta, attr)
    return out


def _bound_values(field: Any) -> list[float]:
    """The field's bounds and their neighbours (boundary values, on both sides)."""
    out: list[float] = [0, -1, 1, 0.0]
    for b in _bounds(field).values():
        out += [b, b - 1, b + 1, b - 1e-9, b + 1e-9, float(b)]
    return out


def _numbers(field: Any, integer: bool) -> st.SearchStrategy[Any]:
    """Numbers inside the field's bounds (huge ones included where there is no upper bound)."""
    b = _bounds(field)
    low = b.get("ge", b.get("gt", -1e3))
    high = b.get("le", b.get("lt", 1e3 if "ge" not in b and "gt" not in b else low + 1e3))
    if integer:
        low_i = int(low) + (1 if "gt" in b and int(low) == low else 0)
        high_i = int(high) - (1 if "lt" in b and int(high) == high else 0)
        if low_i > high_i:  # no integer inside, e.g. teacher.validation in (0, 1)
            return st.nothing()
        huge = [h for h in HUGE_INTS if low_i <= h] if "le" not in b and "lt" not in b else []
        return st.integers(low_i, high_i) | st.sampled_from(huge or [low_i])
    return st.floats(low, high, exclude_min="gt" in b, exclude_max="lt" in b)


def _hard_params() -> st.SearchStrategy[dict[str, Any]]:
    names = st.sampled_from(["label_smoothing", "smoothing", "gamma", "alpha", "beta", "clamp", "nope"])
    values = st.one_of(
        st.floats(-1, 3), st.sampled_from(EDGE_FLOATS), st.lists(st.floats(0, 2), max_size=4), garbage,
    )
    return _mostly(st.just({}), st.dictionaries(names, values, max_size=3))


SEARCHABLE = ["objective.kl_weight", "objective.temperature", "train.lr", "train.weight_decay", "student.hidden"]


def _space() -> st.SearchStrategy[dict[str, Any]]:
    number = st.one_of(st.integers(-3, 10), st.floats(allow_nan=True), st.sampled_from(EDGE_FLOATS))
    valid = st.dictionaries(
        st.sampled_from(SEARCHABLE),
        st.one_of(
            st.builds(lambda a, b, log: {"low": min(a, b), "high": max(a, b), "log": log},
                      st.floats(1e-3, 10), st.floats(1e-3, 10), st.booleans()),
            st.builds(lambda c: {"choices": c}, st.lists(st.integers(1, 8), min_size=1, max_size=3)),
        ),
        min_size=1, max_size=2,
    )
    invalid = st.dictionaries(
        st.one_of(st.sampled_from(SCHEMA_PATHS + ["student.hidden", "student.dropout"]), any_key),
        st.one_of(
            st.fixed_dictionaries({"low": number, "high": number},
                                  optional={"log": garbage | st.booleans(), "step": number}),
            st.fixed_dictionaries({"choices": st.lists(scalars, max_size=3) | garbage}, optional={"low": number}),
            garbage,
        ),
        max_size=3,
    )
    return _mostly(valid, invalid)


def _student_kwargs(tame: bool) -> st.SearchStrategy[dict[str, Any]]:
    """Free-form student kwargs (``extra="allow"``); ``tame`` keeps sizes small enough to build."""
    wild = st.one_of(st.floats(-1, 2), st.text(max_size=4), st.booleans(), st.integers(-2, 4))
    hidden = _mostly(st.integers(1, 16) | st.lists(st.integers(1, 16), max_size=3), wild | st.integers(-1, 0))
    return st.fixed_dictionaries(
        {},
        optional={
            "hidden": hidden if tame else hidden | garbage,
            "activation": _mostly(st.sampled_from(["relu", "gelu", "tanh", "sigmoid"]), st.just("nope") | wild),
            "dropout": _mostly(st.floats(0, 0.9), st.sampled_from([1.0, -0.1, 1.5, math.nan]) | wild),
            "channels": st.lists(st.integers(-1, 8), max_size=2) | wild,
            "bogus": wild,
        },
    )


def _valid_value(path: str, field: Any, tame: bool) -> st.SearchStrategy[Any]:
    """A value of the field's annotated type, mostly valid (strings and dicts sometimes are not)."""
    if path == "objective.hard_params":
        return _hard_params()
    if path == "tune.space":
        return _space()
    if path == "data.test_size":  # an int row count >= 1 or a fraction in (0, 1)
        return st.integers(1, 200) | st.floats(0, 1, exclude_min=True, exclude_max=True)
    if path == "objective.pos_weight":  # > 0, or "balanced"
        return st.floats(1e-3, 100) | st.just("balanced")
    if path in ("objective.kl_weight", "objective.temperature"):  # also finite
        return _numbers(field, integer=False) | st.integers(1, 10)
    options: list[st.SearchStrategy[Any]] = []
    for leaf in _leaves(field.annotation):
        origin = typing.get_origin(leaf)
        if leaf is type(None):
            continue
        if leaf is bool:
            options.append(st.booleans())
        elif leaf is int:
            options.append(_numbers(field, integer=True))
        elif leaf is float:
            options.append(_numbers(field, integer=False))
        elif leaf is str:
            options.append(STRING_HINTS.get(path, st.text(max_size=12)))
        elif origin is Literal:
            options.append(st.sampled_from(typing.get_args(leaf)))
        elif origin is dict:
            options.append(st.dictionaries(any_key, scalars, max_size=3))
        elif origin is list:
            options.append(st.lists(st.floats(0, 3) | st.integers(0, 3), min_size=1, max_size=4))
        elif _model_of(leaf) is not None:
            options.append(section(_model_of(leaf), path + ".", tame))
        else:  # pragma: no cover - a new kind of annotation: teach the strategy about it
            raise AssertionError(f"no strategy for {path}: {leaf!r}")
    return st.one_of(options)


def section(model: type[BaseModel], prefix: str = "", tame: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    """A dict for ``model``: each field present or not, with a valid-looking (or boundary) value."""
    optional = {name: _valid_value(prefix + name, f, tame) for name, f in model.model_fields.items()}
    fields = st.fixed_dictionaries({}, optional=optional)
    if prefix == "student.":
        return st.builds(lambda a, b: {**a, **b}, fields, _student_kwargs(tame))
    return fields


#: Keys a sweep may name (the scalars the protocol reads per value).
SWEEPABLE = sweepable_keys()
MUTATIONS = ("sweep", "sweep", "garbage", "garbage", "boundary", "delete", "unknown key")


@st.composite
def raw_configs(draw, tame: bool = False, max_mutations: int = 3) -> dict[str, Any]:
    """Whole config dicts: every section drawn from the schema, then a few mutations.

    A mutation puts, at a key of the schema: a list of valid values (a sweep; two are an error),
    garbage of any type (a table where a scalar belongs, a scalar where a section belongs, ...),
    a boundary value, nothing (the key or section removed), or adds an unknown key.
    ``tame``: no garbage and no unknown keys (for ``prepare``, which needs configs that validate).
    """
    raw = draw(section(Config, "", tame))
    mutations = draw(st.lists(st.tuples(st.sampled_from(SCHEMA_PATHS), st.sampled_from(MUTATIONS)),
                              max_size=max_mutations))
    for path, kind in mutations:
        if tame and kind in ("garbage", "unknown key"):
            continue
        if kind == "sweep" and draw(st.booleans()):
            path = draw(st.sampled_from(SWEEPABLE))
        *parents, last = path.split(".")
        node = raw
        for part in parents:  # a garbage section is replaced by a table on the way down
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if kind == "sweep":  # mostly 2-3 distinct values; sometimes empty, repeated or one value
            values = _valid_value(path, FIELDS[path], tame)
            distinct = st.lists(values, min_size=2, max_size=3, unique_by=repr)
            node[last] = draw(_mostly(distinct, st.lists(values, max_size=3)))
        elif kind == "garbage":
            node[last] = draw(garbage)
        elif kind == "boundary":
            node[last] = draw(st.sampled_from(_bound_values(FIELDS[path]) + EDGE_FLOATS + ["", True]))
        elif kind == "delete":
            node.pop(last, None)
        else:
            node[draw(any_key)] = draw(garbage)
    return raw


def _paths_in(tree: Any, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(tree, dict):
        for key, value in tree.items():
            dotted = f"{prefix}{key}"
            out.add(dotted)
            out |= _paths_in(value, dotted + ".")
    return out


def _check_problems(exc: UserError, raw: dict[str, Any], extra_names: tuple[str, ...] = ()) -> None:
    """Every problem: one non-empty line that names a key (of the schema or of the input)."""
    names = set(SCHEMA_PATHS) | {p for p in _paths_in(raw) if p} | set(extra_names)
    assert exc.problems, "a ConfigError with no problem"
    for line in exc.problems:
        assert isinstance(line, str) and line.strip(), f"empty problem line in {exc.problems!r}"
        assert len(line.splitlines()) == 1, f"problem is not one line: {line!r}"
        assert any(name in line for name in names), f"problem names no key: {line!r}"


def _same(a: Any, b: Any) -> bool:
    """Deep equality that treats NaN as equal to NaN and tells 1 from 1.0 and True from 1."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _check_valid_config(config: Config, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Round trip through TOML, and the sweep expands into one valid Config per value."""
    text = to_toml(config_dict(config))
    path = tmp_path_factory.mktemp("rt") / "config.toml"
    path.write_text(text, encoding="utf-8")
    again = load_config(path)  # a ConfigError here (invalid TOML, a value lost) is a failure
    assert _same(config_dict(again), config_dict(config)), text
    assert _same(again.sweep, config.sweep)
    expanded = expand_sweep(config)
    if config.sweep is None:
        assert len(expanded) == 1 and expanded[0][0] is None
    else:
        key, values = config.sweep
        assert [v for v, _ in expanded] == list(values)
        for value, plain in expanded:
            assert plain.sweep is None
            node: Any = config_dict(plain)
            for part in key.split("."):
                node = node[part]
            # The validators may turn an int into a float (kl_weight, temperature): equal, not identical.
            assert _same(node, value) or (type(value) is int and node == value), (key, value, node)


@pytest.mark.slow
@fuzz(400)
@given(raw=raw_configs())
@example(raw={"data": {"\n": 0}})  # found: the unknown key's newline split the problem in two lines
@example(raw={"student": {"channels": "\x08"}})  # found: to_toml wrote the control character raw
@example(raw={"teacher": {"kernel": "RBF(nu=1)"}})  # found: "unknown keyword ..." lost its key (teacher.kernel)
def test_validate_config_raises_only_config_error(raw: dict[str, Any], tmp_path_factory) -> None:
    """A dict from the schema: a Config or a ConfigError (one line per problem, naming a key), never
    another exception; the caller's dict is left as it was; what validates round-trips and expands."""
    before = copy.deepcopy(raw)
    try:
        config = validate_config(raw)
    except ConfigError as exc:
        _check_problems(exc, raw)
        return
    finally:
        assert _same(raw, before), "validate_config changed its input"
    assert isinstance(config, Config)
    _check_valid_config(config, tmp_path_factory)


def _set_items() -> st.SearchStrategy[list[str]]:
    """``--set KEY=VALUE`` items: schema keys or not, TOML literals (a list: a sweep) or bare text."""
    keys = st.one_of(
        st.sampled_from(SCHEMA_PATHS),
        st.sampled_from(["student.hidden", "nope", "data.nope", "a..b", "", " x"]),
        st.text(max_size=6),
    )
    literal = st.one_of(
        st.integers(-2, 10), st.floats(-1, 2), st.booleans(), st.sampled_from(EDGE_FLOATS + HUGE_INTS),
        st.lists(st.integers(0, 3), max_size=3),
    ).map(lambda v: to_toml({"v": v}).removeprefix("v = ").strip())
    separators = st.sampled_from(["=", "=", " = ", ":", ""])
    item = st.builds(lambda k, sep, v: f"{k}{sep}{v}", keys, separators, literal | st.text(max_size=10))
    return st.lists(item, max_size=3)


@pytest.mark.slow
@fuzz(150)
@given(raw=raw_configs(), items=_set_items(), drop_name=st.booleans())
@example(raw={"student": {"note": "a\x00\r\x7f\u2028b"}, "tune": {"spa\nce": 1}}, items=["data.label=\"\\n\""],
         drop_name=True)
def test_load_config_from_toml_raises_only_config_error(raw, items, drop_name, tmp_path_factory) -> None:
    """The user's path: the dict written as a TOML file, then ``load_config(path, --set items)``."""
    if drop_name:
        raw = {k: v for k, v in raw.items() if k != "name"}
    path = tmp_path_factory.mktemp("fuzz") / "experiment.toml"
    path.write_text(to_toml(raw), encoding="utf-8")
    try:
        config = load_config(path, items)
    except ConfigError as exc:
        assert not any("invalid TOML" in p for p in exc.problems), f"to_toml wrote unreadable TOML: {exc.problems}"
        _check_problems(exc, raw, ("--set", *(i.partition("=")[0].strip() for i in items)))
        return
    assert isinstance(config, Config)
    _check_valid_config(config, tmp_path_factory)


@fuzz(40)
@given(raw=raw_configs(tame=True))
@example(raw={"student": {"arch": "a\nb"}})  # found: protocol/student messages quote the text raw
@example(raw={"teacher": {"kind": "network", "checkpoint": "mi\nssing.pt"}})
def test_prepare_on_iris_raises_only_user_errors(raw: dict[str, Any]) -> None:
    """Configs that validate, checked against real (tiny) data: a Prepared, or a UserError.

    Tame configs (no garbage, no unknown keys; about two in three validate): iris, student sizes
    small enough to build, and no MLflow-model teacher (the URI lookup would start a tracking store).
    """
    from distill.experiment.prepare import prepare

    raw = dict(raw)
    data, teacher = raw.get("data"), raw.get("teacher")
    raw["data"] = {**(data if isinstance(data, dict) else {}), "source": "sklearn:iris"}
    raw["teacher"] = {k: v for k, v in (teacher if isinstance(teacher, dict) else {}).items() if k != "uri"}
    raw["tune"] = {}
    try:
        config = validate_config(raw)
    except ConfigError:
        return
    for _, plain in expand_sweep(config):
        try:
            prepare(plain)
        except UserError as exc:
            _check_problems(exc, raw, ("teacher", "student", "data", "few_shot"))


# =========================================================================== finite logits

EDGE_LOGITS = [0.0, -0.0, 1e-30, -1e-30, 1e-7, 88.0, -88.0, 88.73, -88.73, 103.0, -103.0, 1e4, -1e4, 9999.5]
logit = st.one_of(
    st.sampled_from(EDGE_LOGITS),
    st.floats(-1e4, 1e4, width=32),
    st.floats(-3, 3, width=32),
)


@st.composite
def logit_array(draw, shape: tuple[int, ...]) -> np.ndarray:
    values = draw(st.lists(logit, min_size=math.prod(shape), max_size=math.prod(shape)))
    if draw(st.booleans()):  # ties: all logits equal
        fill = draw(logit)
        values = [fill] * len(values)
    return np.asarray(values, dtype=np.float32).reshape(shape)


@st.composite
def problems(draw, min_rows: int = 1, max_rows: int = 8) -> dict[str, Any]:
    """Student/teacher logits, targets with unlabelled rows, and the KL knobs."""
    n = draw(st.integers(min_rows, max_rows))
    binary = draw(st.booleans())
    c = 1 if binary else draw(st.integers(2, 10))
    student_shape = (n,) if binary and draw(st.booleans()) else (n, c)
    teacher_cols = draw(st.sampled_from([1, 2])) if binary else c
    teacher_shape = (n,) if binary and teacher_cols == 1 and draw(st.booleans()) else (n, teacher_cols)
    classes = 2 if binary else c
    targets = np.asarray(draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n)), dtype=np.int64)
    mask = np.asarray(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    targets = np.where(mask, targets, -1)  # unlabelled rows carry anything
    return {
        "student": draw(logit_array(student_shape)),
        "teacher": draw(logit_array(teacher_shape)),
        "targets": targets,
        "mask": mask,
        "classes": classes,
        "kl_weight": draw(st.sampled_from([0.0, 100.0]) | st.floats(0, 100)),
        "temperature": draw(st.sampled_from([0.05, 1.0, 20.0]) | st.floats(0.05, 20)),
        "direction": draw(st.sampled_from(["forward", "reverse"])),
    }


def _assert_finite(value: torch.Tensor, grad: torch.Tensor | None, what: str) -> None:
    assert torch.isfinite(value).all(), f"{what}: non-finite value {value}"
    assert grad is not None, f"{what}: no gradient"
    assert torch.isfinite(grad).all(), f"{what}: non-finite gradient {grad}"


@pytest.mark.slow
@fuzz(300)
@given(p=problems(), mask_none=st.booleans())
def test_distillation_loss_finite(p: dict[str, Any], mask_none: bool) -> None:
    z = torch.tensor(p["student"], requires_grad=True)
    t = torch.tensor(p["teacher"])
    targets = torch.tensor(np.where(p["mask"], p["targets"], 0) if mask_none else p["targets"])
    mask = None if mask_none else torch.tensor(p["mask"])
    loss = distillation_loss(
        z, t, targets, kl_weight=p["kl_weight"], temperature=p["temperature"], direction=p["direction"],
        labelled_mask=mask,
    )
    loss.backward()
    _assert_finite(loss, z.grad, "distillation_loss")
    # hard >= 0 and KL >= 0, so the loss is >= 0 up to rounding (checked in float64).
    loss64 = distillation_loss(
        z.detach().double(), t.double(), targets, kl_weight=p["kl_weight"], temperature=p["temperature"],
        direction=p["direction"], labelled_mask=mask,
    )
    assert loss64.item() >= -_rounding(p["kl_weight"], p["temperature"], z, t)


def _rounding(kl_weight: float, temperature: float, *logits: torch.Tensor) -> float:
    """A generous float64 rounding bound for a loss on these logits: ~1e4 ulps of its largest term."""
    u = max(float(x.detach().abs().max()) if x.numel() else 0.0 for x in logits) / temperature
    classes = max(x.shape[-1] if x.ndim > 1 else 2 for x in logits)
    return 1e-12 * (1.0 + kl_weight * temperature**2) * (1.0 + u) * (1 + classes)


@st.composite
def member_problems(draw) -> dict[str, Any]:
    m = draw(st.integers(1, 3))
    n = draw(st.integers(1, 6))
    b = draw(st.integers(1, 6))
    binary = draw(st.booleans())
    k = 1 if binary else draw(st.integers(2, 10))
    teacher_cols = draw(st.sampled_from([1, 2])) if binary else k
    classes = 2 if binary else k
    return {
        "z": draw(logit_array((m, b, k))),
        "teacher": draw(logit_array((m, n, teacher_cols))) if draw(st.integers(0, 5)) else None,
        "targets": np.asarray(draw(st.lists(st.integers(-1, classes - 1), min_size=m * n, max_size=m * n)))
        .reshape(m, n),
        "labelled": np.asarray(draw(st.lists(st.booleans(), min_size=m * n, max_size=m * n))).reshape(m, n),
        "idx": np.asarray(draw(st.lists(st.integers(0, n - 1), min_size=m * b, max_size=m * b))).reshape(m, b),
        "kl_weights": draw(st.lists(st.sampled_from([0.0, 100.0]) | st.floats(0, 100), min_size=m, max_size=m)),
        "temperatures": draw(
            st.lists(st.sampled_from([0.05, 1.0, 20.0]) | st.floats(0.05, 20), min_size=m, max_size=m)
        ),
        "direction": draw(st.sampled_from(["forward", "reverse"])),
        "k": k,
    }


@pytest.mark.slow
@fuzz(300)
@given(p=member_problems())
def test_member_objective_finite_and_matches_reference(p: dict[str, Any]) -> None:
    """MemberObjective (the step's fused loss and closed-form gradient) is finite and agrees with
    ``distillation_loss`` member by member (float64, where rounding is not the question)."""
    targets = torch.tensor(p["targets"])
    labelled = torch.tensor(p["labelled"]) & (targets >= 0)
    teacher = None if p["teacher"] is None else torch.tensor(p["teacher"])
    idx = torch.tensor(p["idx"])
    for dtype in (torch.float32, torch.float64):
        objective = MemberObjective(
            targets, labelled, teacher, p["kl_weights"], p["temperatures"], p["direction"], p["k"], dtype=dtype
        )
        z = torch.tensor(p["z"], dtype=dtype, requires_grad=True)
        loss = objective(z, idx)
        assert loss.shape == (z.shape[0],)
        loss.sum().backward()
        _assert_finite(loss, z.grad, f"MemberObjective ({dtype})")
        if dtype != torch.float64:
            continue
        for member in range(z.shape[0]):
            rows = idx[member]
            zm = z.detach()[member].clone().requires_grad_(True)
            w = p["kl_weights"][member] if teacher is not None else 0.0
            tm = teacher[member, rows].double() if teacher is not None else torch.zeros(len(rows), p["k"], dtype=dtype)
            ref = distillation_loss(
                zm if p["k"] > 1 else zm[:, 0], tm, targets[member, rows], kl_weight=w,
                temperature=p["temperatures"][member], direction=p["direction"], labelled_mask=labelled[member, rows],
            )
            ref.backward()
            tol = _rounding(w, p["temperatures"][member], zm, tm)
            assert abs(loss[member].item() - ref.item()) <= tol + 1e-12 * abs(ref.item()), (member, loss, ref)
            torch.testing.assert_close(z.grad[member], zm.grad, rtol=1e-9, atol=tol)


def _hard_loss_cases() -> st.SearchStrategy[tuple[str, dict[str, Any], bool]]:
    """(registered name, its params, one-logit input?) for every hard loss in the registry."""
    unit = st.floats(0, 1)
    params = {
        "ce": st.fixed_dictionaries({}, optional={"label_smoothing": unit}),
        "label_smoothing": st.fixed_dictionaries({}, optional={"smoothing": unit}),
        "bce": st.just({}),
        "focal": st.fixed_dictionaries({}, optional={"gamma": st.sampled_from([0.0, 0.5, 2.0, 5.0]) | st.floats(0, 5),
                                                     "alpha": unit}),
        "sce": st.fixed_dictionaries({}, optional={"alpha": st.floats(0, 2), "beta": st.floats(0, 2),
                                                   "clamp": st.sampled_from([1e-4, 1e-30, 1.0]) | st.floats(1e-6, 1)}),
    }
    names = HARD_LOSSES.names()
    assert set(names) <= set(params), f"a new hard loss needs a strategy here: {sorted(set(names) - set(params))}"
    return st.sampled_from(names).flatmap(
        lambda name: st.tuples(
            st.just(name), params[name],
            st.just(True) if name == "bce" else st.booleans() if num_outputs_for(2, name) == 1 else st.just(False),
        )
    )


@fuzz(300)
@given(
    case=_hard_loss_cases(), p=problems(), weighted=st.booleans(), reduction=st.sampled_from(["mean", "sum", "none"]),
    via_objective=st.booleans(), data=st.data(),
)
@pytest.mark.slow
def test_hard_losses_finite(case, p, weighted, reduction, via_objective, data) -> None:
    """Every registered hard loss, alone and as the objective's configured hard term."""
    name, params, one_logit = case
    n = p["student"].shape[0]
    if one_logit:
        classes, z_np = 2, p["student"].reshape(n, -1)[:, :1]
    else:
        classes = data.draw(st.integers(2, 10))
        z_np = data.draw(logit_array((n, classes)))
    targets = torch.tensor(np.asarray(data.draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n))))
    kwargs: dict[str, Any] = dict(params)
    if weighted and one_logit:
        kwargs["pos_weight"] = torch.tensor(data.draw(st.sampled_from([1e-3, 1.0, 50.0]) | st.floats(1e-3, 50)))
    elif weighted:
        kwargs["weight"] = torch.tensor(data.draw(st.lists(st.floats(0, 10), min_size=classes, max_size=classes)))
    if not via_objective and reduction == "mean" and "weight" in kwargs and name in ("ce", "label_smoothing", "sce"):
        # PyTorch's weighted mean divides by the targets' weights: 0/0 (NaN) when they are all 0, as in
        # torch.nn.CrossEntropyLoss. The objective's HardCriterion guards that case (tested below).
        assume(kwargs["weight"][targets].sum() > 0)
    loss_fn = create_loss(name, classes, reduction="none" if via_objective else reduction, **kwargs)
    z = torch.tensor(z_np if not (one_logit and data.draw(st.booleans())) else z_np[:, 0], requires_grad=True)
    if via_objective:
        mean_weight = kwargs.get("weight") if name in ("ce", "label_smoothing", "sce") else None
        criterion = HardCriterion(loss_fn, mean_weight)
        t = torch.tensor(data.draw(logit_array(tuple(z.shape))))
        value = distillation_loss(z, t, targets, kl_weight=p["kl_weight"], temperature=p["temperature"],
                                  direction=p["direction"], labelled_mask=torch.tensor(p["mask"]), criterion=criterion)
    else:
        value = loss_fn(z, targets.to(z.dtype) if one_logit else targets)
    value.sum().backward()
    _assert_finite(value, z.grad, f"hard loss {name!r} {params} ({reduction})")


@fuzz(120)
@given(
    n=st.integers(1, 40),  # above 25 rows torch.cdist switches to the matmul form
    d=st.integers(1, 6),
    kind=st.sampled_from(["triplet", "margin_ranking"]),
    margin=st.sampled_from([0.0, 1.0]) | st.floats(0, 10),
    data=st.data(),
)
def test_metric_loss_finite(n: int, d: int, kind: str, margin: float, data) -> None:
    """The metric-learning term on finite embeddings (duplicates and ties included)."""
    e = torch.tensor(data.draw(logit_array((n, d))), requires_grad=True)
    if n > 1 and data.draw(st.booleans()):  # duplicate rows: zero distances between different rows
        with torch.no_grad():
            e[1:2] = e[0:1]
    y = torch.tensor(np.asarray(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))))
    mask = torch.tensor(np.asarray(data.draw(st.lists(st.booleans(), min_size=n, max_size=n))))
    value = metric_loss(e, y, mask, kind=kind, margin=margin)
    value.backward()
    _assert_finite(value, e.grad, f"metric_loss {kind}")
