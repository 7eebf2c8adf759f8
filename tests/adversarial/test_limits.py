"""Issue #13, point 6: every bad value or file is exit 2, one line naming the key or file, nothing written.

The classes, each end to end through the CLI (``distill.cli.main`` in-process):

- numbers that overflow or exhaust a resource (seeds, threads, counts, widths, batch sizes, epochs),
  and non-finite or out-of-range floats, for *every* integer and float key of the config model
  (hypothesis, over keys found by introspection, not listed by hand);
- tables and arrays nested too deeply, in a file and in ``--set``;
- data that would reach scikit-learn or the student as NaN / infinity (features of +-1e308, a
  jitter that leaves float32), and a GP kernel whose length-scale does not fit the features;
- ``npz`` / ``idx`` files whose headers claim more than the file holds, overflowing shapes, a
  zip bomb, a label of 2**31 - 1.

Every case runs through ``check`` and ``run``: ``check`` accepts exactly what ``run`` accepts, so
both refuse each case with the same line.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import typing
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.lib import format as npy
from pydantic import BaseModel

import distill.data.sources
from distill.cli import main
from distill.config import MAX_NESTING, Config

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = str(ROOT / "experiments" / "breast_cancer_gp.toml")
FAST = ["--set", "train.epochs=2", "--set", "teacher.cache=false", "--set", 'train.device="cpu"']


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


def _refused(argv_tail: list[str], needles: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
             experiment: str | Path = EXPERIMENT) -> None:
    """``check`` and ``run`` both exit 2 with the same one error line holding ``needles``; nothing written."""
    lines = {}
    for verb in ("check", "run"):
        out = tmp_path / f"out-{verb}"
        argv = [verb, str(experiment), *FAST, *argv_tail, "--no-track"]
        if verb == "run":
            argv += ["-o", str(out), "-q"]
        code = main(argv)
        captured = capsys.readouterr()
        errors = _errors(captured.err)
        assert code == 2, (verb, code, captured.err)
        assert len(errors) == 1, (verb, captured.err)
        assert "Traceback" not in captured.err
        for needle in needles:
            assert needle in errors[0], (verb, needle, errors[0])
        if verb == "run":
            assert captured.err.strip() == errors[0], captured.err  # -q: the one line and nothing else
        assert not out.exists()
        lines[verb] = errors[0]
    assert lines["check"] == lines["run"]
    assert not list(tmp_path.rglob("summary.json"))


def _sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


# --------------------------------------------------------------------------- overflow and resource limits

LIMITS = {
    "seed 2**64": (["seed=18446744073709551616"], ["seed", "does not fit in 64 bits"]),
    "seed 2**32 (sklearn's random_state limit)": (["seed=4294967296"], ["seed must be <= 4294967295"]),
    "seed + episodes past the limit": (["seed=4294967295", "protocol.episodes=2"], ["seed + protocol.episodes - 1"]),
    "threads 10**5": (["train.threads=100000"], ["train.threads must be <= 1024"]),
    "threads 10**11": (["train.threads=100000000000"], ["train.threads must be <= 1024"]),
    "augment.count 10**12": (['few_shot.transfer="augmented"', "few_shot.augment.count=1000000000000"],
                             ["few_shot.augment.count must be <= 1000000"]),
    "layer width 10**7": (["student.hidden=[10000000]"], ["student 'mlp'", "parameters, more than the limit",
                                                          "student.hidden"]),
    "layer width 10**12": (["student.hidden=[1000000000000]"], ["parameters, more than the limit"]),
    "batch size 10**20": (["train.batch_size=100000000000000000000"], ["train.batch_size", "64 bits"]),
    "batch size 10**9": (["train.batch_size=1000000000"], ["train.batch_size must be <= 1048576"]),
    "epochs 10**12": (["train.epochs=1000000000000"], ["train.epochs must be <= 1000000"]),
    "episodes 10**9": (["protocol.episodes=1000000000"], ["protocol.episodes must be <= 10000"]),
    "labelled rows 10**15": (["few_shot.labelled=1000000000000000"], ["few_shot.labelled must be <= 2147483647"]),
    "GP restarts 10**9": (["teacher.restarts=1000000000"], ["teacher.restarts must be <= 1000"]),
    "an int in a free-form table": (['teacher.params={ a = 100000000000000000000 }'], ["teacher.params.a",
                                                                                      "64 bits"]),
    # non-finite and absurd floats
    "jitter inf": (['few_shot.transfer="augmented"', "few_shot.augment.jitter=inf"],
                   ["few_shot.augment.jitter must be a finite number, got inf"]),
    "jitter 1e300 (finite, but the rows leave float32)": (
        ['few_shot.transfer="augmented"', "few_shot.augment.jitter=1e300"],
        ["few_shot.augment.jitter", "float32"]),
    "mixup_alpha inf": (["few_shot.augment.mixup_alpha=inf"], ["few_shot.augment.mixup_alpha must be a finite"]),
    "mixup_alpha 0": (["few_shot.augment.mixup_alpha=0"], ["few_shot.augment.mixup_alpha must be > 0"]),
    "lr inf": (["train.lr=inf"], ["train.lr must be a finite number"]),
    "lr nan": (["train.lr=nan"], ["train.lr must be a finite number, got nan"]),
    "lr beyond float32": (["train.lr=1e39"], ["train.lr", "float32"]),
    "class weights beyond float32": (["objective.class_weight=[1e39, 1]", 'objective.hard="ce"'],
                                     ["objective.class_weight", "float32"]),
    "nan inside a list": (["student.hidden=[8, nan]"], ["student.hidden[1] must be a finite number"]),
    "-inf in hard_params": (['objective.hard="focal"', "objective.hard_params={ gamma = -inf }"],
                            ["objective.hard_params.gamma must be a finite number"]),
    "a hard-loss parameter beyond float32": (['objective.hard="focal"', "objective.hard_params={ gamma = 1e300 }"],
                                             ["objective.hard_params: gamma must be at most", "float32"]),
    # check accepts exactly what run accepts: the estimator's own parameter rules, before any fit
    "an estimator parameter scikit-learn refuses": (
        ['teacher.kind="sklearn"', 'teacher.estimator="sklearn.ensemble:RandomForestClassifier"',
         "teacher.params={ n_estimators = -1 }"], ["teacher.params", "'n_estimators'", "Got -1"]),
    "kernel length-scale of 2 values on 30 features": (
        ['teacher.kernel="1.0 * RBF([1.0, 2.0])"'], ["teacher.kernel", "2 values", "30 feature(s)"]),
    "kernel length-scale of 31 values on 30 features": (
        ['teacher.kernel="1.0 * RBF([' + ", ".join(["1.0"] * 31) + '])"'], ["teacher.kernel", "31 values"]),
}


@pytest.mark.parametrize("name", list(LIMITS))
def test_a_value_beyond_a_limit_is_refused_by_check_and_run_alike(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides, needles = LIMITS[name]
    _refused(_sets(*overrides), needles, tmp_path, capsys)


@pytest.mark.slow
def test_a_length_scale_per_feature_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The kernel check refuses only a mismatch: one value per feature fits and the run completes."""
    kernel = "1.0 * RBF([" + ", ".join(["1.0"] * 30) + "])"
    code = main(["run", EXPERIMENT, *FAST, "--set", f'teacher.kernel="{kernel}"', "--no-track", "-q",
                 "-o", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "summary.json").is_file()


def test_limits_are_upper_bounds_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The largest seed whose episode seeds all fit still runs (sklearn's random_state takes it)."""
    code = main(["run", EXPERIMENT, *FAST, "--set", "seed=4294967294", "--episodes", "2", "--no-track", "-q",
                 "-o", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err


# --------------------------------------------------------------------------- every int and float key


def _leaf_keys(model: type[BaseModel], prefix: str = "") -> list[tuple[str, set[str]]]:
    """Every dotted scalar key of the config model with the number kinds it takes (found, not listed)."""
    keys: list[tuple[str, set[str]]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_leaf_keys(ann, f"{prefix}{name}."))
            continue
        if typing.get_origin(ann) in (dict, list):
            continue
        flat: list[typing.Any] = []
        for arg in typing.get_args(ann) or (ann,):
            flat.extend(a for a in (typing.get_args(arg) or (arg,)) if typing.get_origin(a) is not list)
        kinds = {k for k, t in (("int", int), ("float", float)) if t in flat}
        if kinds:
            keys.append((f"{prefix}{name}", kinds))
    return keys


NUMBER_KEYS = _leaf_keys(Config)
INT_KEYS = [k for k, kinds in NUMBER_KEYS if kinds == {"int"}]  # counts; int-or-float keys are numbers below
FLOAT_KEYS = [k for k, kinds in NUMBER_KEYS if "float" in kinds]


def test_the_key_lists_are_found_by_introspection() -> None:
    assert {"seed", "train.threads", "train.batch_size", "few_shot.augment.count", "tracking.retries"} <= set(INT_KEYS)
    assert {"train.lr", "few_shot.augment.jitter", "few_shot.augment.mixup_alpha", "tune.timeout"} <= set(FLOAT_KEYS)
    assert len(INT_KEYS) >= 15 and len(FLOAT_KEYS) >= 20


def _check_outcome(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["check", EXPERIMENT, *FAST, "--no-track", *argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, _errors(captured.err)


_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(key=st.sampled_from(INT_KEYS),
       value=st.one_of(st.integers(min_value=2**32, max_value=2**80), st.integers(min_value=-(2**80), max_value=-1)))
def test_every_int_key_refuses_huge_and_negative_values(key: str, value: int, capsys) -> None:
    """No int key takes a value >= 2**32 or < 0: each is exit 2 with one line naming the key."""
    code, errors = _check_outcome(["--set", f"{key}={value}"], capsys)
    assert code == 2 and len(errors) == 1, (key, value, errors)
    assert key in errors[0] or (key == "seed" and "seed" in errors[0]), errors[0]


@_SETTINGS
@given(key=st.sampled_from(FLOAT_KEYS), value=st.sampled_from(["inf", "-inf", "nan", "+inf"]))
def test_every_float_key_refuses_non_finite_values(key: str, value: str, capsys) -> None:
    code, errors = _check_outcome(["--set", f"{key}={value}"], capsys)
    assert code == 2 and len(errors) == 1, (key, value, errors)
    assert errors[0].startswith(f"error: {key} must be a finite number"), errors[0]


@_SETTINGS
@given(key=st.sampled_from(FLOAT_KEYS),
       value=st.one_of(st.floats(min_value=1e38, max_value=1e308), st.floats(min_value=-1e308, max_value=-1e-300),
                       st.integers(min_value=2**32, max_value=2**62)))
def test_every_float_key_takes_absurd_finite_values_cleanly(key: str, value: float, capsys) -> None:
    """A huge or negative finite float: refused in one line naming the key, or accepted by check
    (and then the value is one the run handles: bounded in float32 or a plain comparison)."""
    code, errors = _check_outcome(["--set", f"{key}={value!r}", "--set", 'few_shot.transfer="augmented"'], capsys)
    assert code in (0, 2), (key, value, code)
    if code == 2:
        assert len(errors) == 1 and key in errors[0], (key, value, errors)


# --------------------------------------------------------------------------- nesting


def test_deeply_nested_arrays_in_a_file_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Deep enough to exhaust the parser's recursion (RecursionError before the fix)."""
    path = tmp_path / "deep.toml"
    path.write_text(Path(EXPERIMENT).read_text() + "\n[deep]\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    _refused([], [str(path), "nest at most"], tmp_path, capsys, experiment=path)


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 600, 5000])
def test_deeply_nested_set_values_are_refused(depth: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(["--set", "student.hidden=" + "[" * depth + "8" + "]" * depth], ["student.hidden", "nest at most"],
             tmp_path, capsys)


def test_deeply_nested_tables_by_dotted_keys_are_refused(tmp_path: Path, capsys) -> None:
    """Dotted keys nest without recursion in the parser: the depth limit still holds, in a file and in --set."""
    deep = ".".join(["x"] * 5000)
    path = tmp_path / "deep.toml"
    path.write_text(Path(EXPERIMENT).read_text() + f"\n[{deep}]\na = 1\n")
    _refused([], ["x.x.x", "nest at most"], tmp_path, capsys, experiment=path)
    _refused(["--set", f"{deep}=1"], ["x.x.x", "nest at most"], tmp_path, capsys)


def test_nested_inline_tables_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    value = "{ a = " * 100 + "1" + " }" * 100
    _refused(["--set", f"teacher.params={value}"], ["teacher.params", "nest at most"], tmp_path, capsys)


# --------------------------------------------------------------------------- data that overflows


def test_features_of_1e308_are_refused_naming_column_and_row(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60), "label": ["x", "y", "z"] * 20})
    frame.loc[::2, "a"] = 1e308
    frame.loc[1::2, "a"] = -1e308
    path = tmp_path / "big.csv"
    frame.to_csv(path, index=False)
    for scale in ("minmax", "standard", "none"):
        _refused(_sets(f'data.source="csv:{path}"', "data.test_size=10", f'data.scale="{scale}"'),
                 ["'a'", "row"], tmp_path, capsys)


def _npy(shape: tuple[int, ...], dtype: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    npy.write_array_header_1_0(buffer, {"descr": npy.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                                        "shape": shape})
    return buffer.getvalue() + data


def _npz(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, payload in members.items():
            archive.writestr(name + ".npy", payload)
    return path


_X = np.random.default_rng(0).normal(size=(40, 3))
_Y = np.array([0, 1] * 20, dtype=np.int64)


def _declared_size(path: Path, member: str, size: int) -> None:
    """Rewrite the zip's central directory so that ``member`` claims ``size`` bytes uncompressed."""
    raw = bytearray(path.read_bytes())
    at = raw.find(b"PK\x01\x02")
    while at != -1:
        name_len = struct.unpack_from("<H", raw, at + 28)[0]
        if raw[at + 46: at + 46 + name_len].decode() == member:
            struct.pack_into("<I", raw, at + 24, size)
            break
        at = raw.find(b"PK\x01\x02", at + 4)
    else:  # pragma: no cover - the writer above always writes the member
        raise AssertionError(member)
    path.write_bytes(bytes(raw))


NPZ_CASES = {
    "a shape far beyond the file": (
        lambda p: _npz(p, {"x": _npy((10**6, 10**6), "<f8", _X.tobytes()), "y": _npy((40,), "<i8", _Y.tobytes())}),
        ["array 'x' claims shape (1000000, 1000000)", "holds 960 bytes"]),
    "a shape whose size overflows int64": (
        lambda p: _npz(p, {"x": _npy((2**62, 2**62), "<f8", _X.tobytes()), "y": _npy((40,), "<i8", _Y.tobytes())}),
        ["array 'x' claims shape (4611686018427387904, 4611686018427387904)"]),
    "labels claiming more rows than they hold": (
        lambda p: _npz(p, {"x": _npy((40, 3), "<f8", _X.tobytes()), "y": _npy((2**40,), "<i8", _Y.tobytes())}),
        ["array 'y' claims shape"]),
    "a member declaring 3 GiB uncompressed (a zip bomb)": (
        lambda p: (_npz(p, {"x": _npy((40, 3), "<f8", _X.tobytes()), "y": _npy((40,), "<i8", _Y.tobytes())}),
                   _declared_size(p, "x.npy", 3 * 2**30))[0],
        ["array 'x' (decompressed) takes 3,221,225,472 bytes", "MAX_DATA_BYTES"]),
}


@pytest.mark.parametrize("name", list(NPZ_CASES))
def test_npz_headers_are_checked_against_the_file_before_allocating(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build, needles = NPZ_CASES[name]
    path = build(tmp_path / "data.npz")
    _refused(_sets(f'data.source="npz:{path}"', "data.test_size=10"), [str(path), *needles], tmp_path, capsys)


def test_a_real_zip_bomb_is_refused_by_its_declared_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A truly compressed bomb (1 MB of zeros in ~1 KB) against a limit lowered to 100 kB: refused
    from the zip directory, before decompressing; the same file under the default limit loads."""
    rows = 2**17 // 3
    x = np.zeros((rows, 3))
    y = np.arange(rows) % 2
    path = _npz(tmp_path / "bomb.npz", {"x": _npy(x.shape, "<f8", x.tobytes()), "y": _npy(y.shape, "<i8",
                                                                                            y.astype("<i8").tobytes())},
                compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 20_000
    monkeypatch.setattr(distill.data.sources, "MAX_DATA_BYTES", 100_000)
    _refused(_sets(f'data.source="npz:{path}"', "data.test_size=10"),
             [str(path), "array 'x' (decompressed)", "more than the limit of 100,000"], tmp_path, capsys)
    monkeypatch.undo()
    assert distill.data.sources.load_npz(path).x.shape == (rows, 3)


def _idx(path: Path, code: int, shape: tuple[int, ...], data: bytes, gz: bool = False) -> None:
    raw = bytes([0, 0, code, len(shape)]) + b"".join(struct.pack(">I", s) for s in shape) + data
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(raw)
    else:
        path.write_bytes(raw)


_IMAGES = np.random.default_rng(0).integers(0, 255, size=(20, 4, 4), dtype=np.uint8)


def _idx_folder(tmp_path: Path, images_shape=(20, 4, 4), labels: np.ndarray | None = None, code: int = 0x08,
                extra: bytes = b"", gz: bool = False) -> Path:
    folder = tmp_path / "idx"
    folder.mkdir()
    _idx(folder / "train-images-idx3-ubyte", 0x08, images_shape, _IMAGES.tobytes() + extra, gz=gz)
    labels = np.array([0, 1] * 10, dtype=np.uint8) if labels is None else labels
    _idx(folder / "train-labels-idx1-ubyte", code, labels.shape, labels.tobytes())
    return folder


IDX_CASES = {
    "a header claiming 2**96 pixels": (lambda t: _idx_folder(t, images_shape=(2**32 - 1,) * 3),
                                       ["(4294967295, 4294967295, 4294967295)", "MAX_DATA_BYTES"]),
    "a header claiming more than the file holds": (lambda t: _idx_folder(t, images_shape=(2000, 4, 4)),
                                                   ["is truncated", "(2000, 4, 4)"]),
    "a gzip stream with 10 MB more than its header says": (
        lambda t: _idx_folder(t, extra=bytes(10**7), gz=True), ["after the data its header (20, 4, 4)"]),
    "a label of 2**31 - 1": (
        lambda t: _idx_folder(t, labels=np.array([0, 1] * 9 + [1, 2**31 - 1], dtype=">i4"), code=0x0C),
        ["label 2147483647", "20 row(s)"]),
}


@pytest.mark.parametrize("name", list(IDX_CASES))
def test_idx_headers_and_labels_are_bounded_by_the_file(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build, needles = IDX_CASES[name]
    folder = build(tmp_path)
    _refused(_sets(f'data.source="idx:{folder}"', "data.test_size=4", "few_shot.labelled=4", 'student.hidden=[4]'),
             needles, tmp_path, capsys)


def test_read_idx_reads_no_more_than_the_header_claims(tmp_path: Path) -> None:
    """Independent reference: the bytes read from a gzip bomb are bounded by the header, not the stream."""
    folder = _idx_folder(tmp_path, extra=bytes(5 * 10**6), gz=True)
    path = folder / "train-images-idx3-ubyte.gz"
    with pytest.raises(distill.data.sources.DataError, match="after the data"):
        distill.data.sources.read_idx(path)
    assert math.prod((20, 4, 4)) == _IMAGES.size
    with gzip.open(path, "rb") as handle:  # the whole stream really is that large
        assert len(handle.read()) == 4 + 12 + _IMAGES.size + 5 * 10**6


# --------------------------------------------------------------------------- command-line numbers


@pytest.mark.parametrize("flags, needle", [
    (["--trials", "10000000000"], "trials (--trials) must be between 0 and 1000000"),
    (["--jobs", "100000"], "jobs (--jobs) must be between 1 and 1024"),
    (["--jobs", "0"], "jobs (--jobs) must be between 1 and 1024"),
    (["--timeout", "nan"], "timeout (--timeout) must be > 0"),
    (["--timeout", "inf"], "timeout (--timeout) must be > 0"),
    (["--seed", "18446744073709551616"], "seed"),
    (["--episodes", "1000000000000"], "protocol.episodes must be <= 10000"),
])
def test_tune_flags_beyond_their_limits_are_one_line(flags: list[str], needle: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["tune", EXPERIMENT, *FAST, "--no-track", "-q", "--storage", str(tmp_path / "j.log"),
                 "-o", str(tmp_path / "out"), *flags])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.strip().startswith("error: ") and len(captured.err.strip().splitlines()) == 1, captured.err
    assert needle in captured.err
    assert not (tmp_path / "out").exists() and not (tmp_path / "j.log").exists()


def _upper_bound(dotted: str) -> int:
    """The ``le`` bound pydantic holds for a key (read from the model, not restated here)."""
    import annotated_types

    model: typing.Any = Config
    field = None
    for part in dotted.split("."):
        field = model.model_fields[part]
        model = field.annotation
    metadata = list(field.metadata)
    for member in typing.get_args(field.annotation):  # a number or "auto": the number's own bounds
        metadata += [m for arg in typing.get_args(member)[1:] for m in getattr(arg, "metadata", [arg])]
    bounds = [m.le for m in metadata if isinstance(m, annotated_types.Le)]
    assert bounds, f"{dotted} has no upper bound"
    return int(bounds[0])


@pytest.mark.parametrize("key", INT_KEYS)
def test_every_int_key_has_an_upper_bound_that_is_inclusive(key: str) -> None:
    """Each count takes its limit and refuses one more, naming the key (unit level, on the schema)."""
    from distill.config import validate_config
    from distill.errors import ConfigError

    limit = _upper_bound(key)
    assert limit < 2**32
    tree: dict[str, typing.Any] = {}
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = limit
    assert validate_config(tree) is not None
    node[parts[-1]] = limit + 1
    with pytest.raises(ConfigError) as caught:
        validate_config(tree)
    assert caught.value.problems == [f"{key} must be <= {limit}, got {limit + 1}"]


@pytest.mark.parametrize("arch, in_shape, kwargs", [
    ("mlp", (30,), {"hidden": [10, 10], "activation": "sigmoid"}),
    ("mlp", (64,), {"hidden": [128, 64, 32], "dropout": 0.1}),
    ("cnn", (1, 28, 28), {}),
])
def test_the_meta_device_count_equals_the_real_parameter_count(arch: str, in_shape, kwargs) -> None:
    """The size limit counts on the meta device; the count is the real model's, with nothing allocated."""
    from distill import students
    from distill.config import validate_config
    from distill.data.sources import Dataset
    from distill.experiment.prepare import StudentSpec

    config = validate_config({"student": {"arch": arch, **kwargs}})
    dataset = Dataset("t", np.zeros((2, math.prod(in_shape))), np.array([0, 1]), ["a", "b", "c"],
                      image_shape=in_shape if len(in_shape) > 1 else None)
    real = students.build(arch, in_shape, 3, num_outputs=3, **kwargs)
    spec = StudentSpec(arch=arch, kwargs=config.student.kwargs, init=config.student.init, in_shape=dataset.in_shape,
                       num_classes=dataset.num_classes, num_outputs=3)
    assert spec.meta_parameters() == sum(p.numel() for p in real.parameters()) > 0
