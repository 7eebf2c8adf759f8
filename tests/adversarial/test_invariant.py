"""Issue 13, point 8: the standing invariant, checked on drawn configs and CSV files.

For any experiment file and any CSV that hypothesis draws, ``distill run`` either

- exits 0 with a complete ``summary.json`` (status ``completed`` or ``diverged``, every system's
  metrics present) in the output folder, or
- exits 2 with one ``error:`` line per problem on stderr (every problem at once, each a single line
  naming its key, file or value) and no output folder at all;

never anything else (no traceback, no other exit code), and nothing is created outside the output
folder (the soft-target cache and tracking are off here: both write to the working folder by design).

The drawn values favour what breaks programs: huge and negative integers, 2**64, NaN and infinities,
1e308, empty and control-character strings, deep arrays, wrong types; CSVs with extreme floats,
labels that collide as floats, single classes, missing cells and ragged rows. Values that are valid
but slow (10**9 epochs) are not drawn: a bound on them is a resource choice, not a correctness one.
Derandomised (fixed seed, no example database), so CI sees the same examples on every run.
"""

from __future__ import annotations

import json
import math
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill.cli import main

#: Examples per test: 20 in CI; ``DISTILL_FUZZ_EXAMPLES=1000`` for a longer hunt.
INVARIANT = settings(max_examples=int(os.environ.get("DISTILL_FUZZ_EXAMPLES", "20")), deadline=None, derandomize=True, database=None, print_blob=False,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SECONDS_PER_EXAMPLE = 60

BASE: dict[str, Any] = {
    "name": "fuzz",
    "seed": 0,
    "data": {"source": "sklearn:iris", "test_size": 30},
    "few_shot": {"per_class": 2},
    "teacher": {"cache": False, "restarts": 0},
    "student": {"hidden": [8]},
    "train": {"epochs": 2, "batch_size": 8},
    "tracking": {"enabled": False},
}

# Cheap to run whatever their value, so any value of the hostile pools may be drawn for them.
KEYS = [
    "seed", "name", "data.scale", "data.test_size", "data.label", "data.source",
    "few_shot.per_class", "few_shot.labelled", "few_shot.validation", "few_shot.transfer",
    "few_shot.augment.count", "few_shot.augment.jitter", "few_shot.augment.mixup", "few_shot.augment.mixup_alpha",
    "teacher.kind", "teacher.kernel", "teacher.multi_class", "teacher.estimator", "teacher.validation",
    "student.arch", "student.hidden", "student.activation", "student.dropout",
    "objective.hard", "objective.kl_weight", "objective.temperature", "objective.direction",
    "objective.class_weight", "objective.pos_weight", "objective.label_smoothing",
    "train.optimizer", "train.lr", "train.momentum", "train.weight_decay", "train.batch_size",
    "train.scheduler", "train.step_size", "train.gamma", "train.grad_clip", "train.threads",
    "train.device", "train.checkpoint_every", "train.early_stopping.patience", "train.early_stopping.monitor",
    "protocol.metric", "protocol.ci", "unknown_key", "train.unknown",
]
# Valid values of these cost time in proportion: only small or invalid values are drawn.
COSTLY = ["train.epochs", "protocol.episodes", "teacher.restarts"]

HOSTILE_INTS = [-(2**64), -1, 0, 1, 2, 3, 7, 2**31 - 1, 2**63 - 1, 2**63, 2**64, 10**12, 10**7]
HOSTILE_FLOATS = [math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, 1e-300, 1e-6, 0.5, 1.0, -1.0, 1e308, 3.5e38]
HOSTILE_STRINGS = ["", "x", "a\nb", "../../etc/passwd", "os:system", "subprocess:Popen", "sklearn:iris",
                   "csv:/nonexistent.csv", "npz:/dev/null", "ümlaut \u202e", "'\"\\", "auto", "mlp", "cnn",
                   "1.0 * RBF(1.0)", "RBF([1.0, 2.0])", "__import__('os')", "cuda", "cuda:7", "cpu", "balanced"]


class Deep:
    """An array nested ``depth`` deep, written as TOML text directly (a Python list that deep would
    overflow this test's own recursion before distill ever saw it)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def __repr__(self) -> str:
        return f"Deep({self.depth})"


def _deep(depth: int) -> Deep:
    return Deep(depth)


SMALL_COSTLY = st.sampled_from([-(2**64), -1, 0, 1, 2, 2**64, 2.5, math.nan, "3", True, [1, 2], _deep(3)])

scalar = st.one_of(
    st.sampled_from(HOSTILE_INTS),
    st.sampled_from(HOSTILE_FLOATS),
    st.sampled_from(HOSTILE_STRINGS),
    st.booleans(),
)
value = st.one_of(
    scalar,
    st.lists(scalar, min_size=0, max_size=3),  # a sweep, or a list-valued key such as student.hidden
    st.sampled_from([_deep(3), _deep(60), _deep(3000), {}, {"a": 1}, [[1, 2], [3]]]),
)


def _set(config: dict[str, Any], dotted: str, item: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            return
    node[leaf] = item


#: Values a user would write: half the examples combine these, so that the invariant is checked on
#: runs that complete (exit 0) as well as on refusals.
VALID: dict[str, list[Any]] = {
    "seed": [0, 7, 123456],
    "data.scale": ["minmax", "standard", "none"],
    "data.test_size": [0.2, 30, 0.5],
    "few_shot.per_class": [1, 2, 3],
    "few_shot.validation": [0, 1],
    "few_shot.transfer": ["labelled", "pool", "augmented"],
    "few_shot.augment.count": [1, 50],
    "few_shot.augment.jitter": [0.0, 0.1, 5.0],
    "few_shot.augment.mixup": [0.0, 0.5, 1.0],
    "few_shot.augment.mixup_alpha": [0.1, 1.0, 10.0],
    "teacher.kernel": ["auto", "1.0 * RBF(1.0)", "RBF(length_scale=[1.0, 1.0, 1.0, 1.0])"],
    "student.hidden": [[], [4], [8, 8]],
    "student.activation": ["relu", "gelu", "tanh", "sigmoid"],
    "student.dropout": [0.0, 0.5],
    "objective.hard": ["auto", "ce", "focal", "sce", "label_smoothing"],
    "objective.kl_weight": [0.0, 0.5, 10.0, [0.0, 1.0]],
    "objective.temperature": [0.1, 1.0, 20.0],
    "objective.direction": ["forward", "reverse"],
    "train.optimizer": ["sgd", "adam", "adamw"],
    "train.lr": [1e-3, 0.1, 1.0],
    "train.weight_decay": [0.0, 1e-3],
    "train.batch_size": [1, 8, 1000],
    "train.scheduler": ["none", "cosine", "step"],
    "train.grad_clip": [0.1, 1.0],
    "train.replacement": [True, False],
    "protocol.ci": ["t", "bootstrap"],
    "protocol.metric": ["accuracy", "f1_macro", "auroc", "ece"],
    "protocol.episodes": [1, 2],
}


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    config = json.loads(json.dumps(BASE))
    if draw(st.booleans()):  # a user's config
        for key in draw(st.lists(st.sampled_from(sorted(VALID)), min_size=1, max_size=5, unique=True)):
            _set(config, key, draw(st.sampled_from(VALID[key])))
        return config
    for key in draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True)):
        _set(config, key, draw(value))
    if draw(st.booleans()):
        _set(config, draw(st.sampled_from(COSTLY)), draw(SMALL_COSTLY))
    return config


# --------------------------------------------------------------------------- CSV files

CELLS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([1e308, -1e308, 3.5e38, -3.5e38, 1e-320, 0.0, "", " ", "nan", "inf", "1e400", "0x10", "abc"]),
    st.integers(min_value=-(2**70), max_value=2**70),
)
LABELS = st.sampled_from([
    [0, 1], [0, 1, 2], ["a", "b"], ["a", "b", "c"], [1e20, 1e20 + 1e5], [2**63, 2**63 + 1], [2**70, 2**70 + 1],
    [0.5, 0.50000001], [-1, 1], [0], ["only"], [1.5, 2.5, 3.5], [True, False], ["", "x"],
])


@st.composite
def csv_texts(draw: st.DrawFn) -> str:
    features = draw(st.integers(min_value=1, max_value=3))
    rows = draw(st.integers(min_value=0, max_value=36))
    labels = draw(LABELS)
    mostly_clean = draw(st.integers(0, 3)) > 0  # three in four files are clean but for the odd cell
    lines = [",".join([f"f{i}" for i in range(features)] + ["label"])]
    for r in range(rows):
        cells = []
        for i in range(features):
            if mostly_clean and not draw(st.integers(0, 40)) == 0:
                cells.append(repr(float((r * 7 + i * 3) % 11) / 3.0))
            else:
                cells.append(str(draw(CELLS)))
        cells.append(str(labels[r % len(labels)]))
        if draw(st.integers(0, 60)) == 0:
            cells = cells[:-1]  # a ragged row
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the invariant


def _toml_value(item: Any) -> str:
    if isinstance(item, Deep):
        return "[" * item.depth + "1" + "]" * item.depth
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        return "nan" if math.isnan(item) else ("inf" if item > 0 else "-inf") if math.isinf(item) else repr(item)
    if isinstance(item, str):
        return json.dumps(item)  # a TOML basic string is a JSON string
    if isinstance(item, list):
        return "[" + ", ".join(_toml_value(v) for v in item) + "]"
    if isinstance(item, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in item.items()) + "}"
    raise TypeError(item)


def _toml(config: dict[str, Any], prefix: str = "") -> str:
    scalars = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in config.items() if not isinstance(v, dict) or not v]
    tables = [(k, v) for k, v in config.items() if isinstance(v, dict) and v]
    text = "\n".join(scalars) + "\n"
    for key, table in tables:
        name = f"{prefix}{json.dumps(key)}"
        text += f"[{name}]\n" + _toml(table, name + ".")
    return text


@contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"one example ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def check_invariant(folder: Path, config_text: str, capsys: pytest.CaptureFixture[str], verb: str = "run") -> int:
    """Run ``distill <verb>`` on ``config_text`` in ``folder``; assert the invariant; return the exit code."""
    work = folder / "work"
    work.mkdir()
    experiment = work / "exp.toml"
    experiment.write_text(config_text, encoding="utf-8")
    out = work / "out"
    before = _listing(folder)
    capsys.readouterr()
    argv = [verb, str(experiment)] + (["-o", str(out), "--no-track", "-q"] if verb == "run" else [])
    with _time_limit(SECONDS_PER_EXAMPLE):
        code = main(argv)
    captured = capsys.readouterr()
    context = f"\n--- config\n{config_text}\n--- stderr\n{captured.err}"
    assert "Traceback" not in captured.err, context
    assert code in (0, 2), f"exit {code}" + context
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    if code == 2:
        assert errors, "exit 2 without an error line" + context  # one line per problem, every problem at once
        assert not out.exists(), "exit 2 left an output folder" + context
    elif verb == "run":
        assert not errors, context
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] in ("completed", "diverged"), context
        for block in ([summary] if "sweep" not in summary else summary["sweep"]["points"]):
            for system in ("teacher", "student", "baseline"):
                assert set(block[system]) >= {"accuracy", "f1_macro", "auroc", "ece"}, context
    created = {p for p in _listing(folder) - before if p != "work/out" and not p.startswith("work/out/")}
    assert not created, f"created outside the output folder: {sorted(created)}" + context
    return code


@pytest.mark.slow
@INVARIANT
@given(config=configs())
def test_any_config_is_a_complete_run_or_one_line(config: dict[str, Any], tmp_path_factory, capsys) -> None:
    check_invariant(tmp_path_factory.mktemp("cfg"), _toml(config), capsys)


@pytest.mark.slow
@INVARIANT
@given(config=configs())
def test_check_accepts_exactly_what_run_accepts(config: dict[str, Any], tmp_path_factory, capsys) -> None:
    """``check`` says ok exactly when ``run`` does not refuse the input (exit 2)."""
    text = _toml(config)
    checked = check_invariant(tmp_path_factory.mktemp("chk"), text, capsys, verb="check")
    ran = check_invariant(tmp_path_factory.mktemp("run"), text, capsys)
    assert checked == ran, f"check exit {checked}, run exit {ran}\n{text}"


@pytest.mark.slow
@INVARIANT
@given(csv=csv_texts(), per_class=st.sampled_from([1, 2]), scale=st.sampled_from(["minmax", "standard", "none"]))
def test_any_csv_is_a_complete_run_or_one_line(csv: str, per_class: int, scale: str, tmp_path_factory, capsys) -> None:
    folder = tmp_path_factory.mktemp("csv")
    data = folder / "data.csv"
    data.write_text(csv, encoding="utf-8")
    config = json.loads(json.dumps(BASE))
    config["data"] = {"source": f"csv:{data}", "test_size": 0.3, "scale": scale}
    config["few_shot"] = {"per_class": per_class}
    check_invariant(folder, _toml(config), capsys)
