"""The bad-input catalogue: every case is exit 2, one line naming the problem, and nothing that looks finished.

Each case runs through the real CLI (``distill.cli.main``, in-process with ``capsys``; a subprocess
where the real process's stderr matters) and must give:

- exit code 2;
- exactly the expected number of ``error:`` lines on stderr (one), each naming the key, file or
  value at fault, no traceback, and no other stderr line unless the case allows it by name;
- no ``summary.json`` anywhere, and no ``--output`` folder at all (every case fails before anything
  is written), no ``runs/`` or ``mlflow.db`` in the working folder;
- with tracking ON (a local SQLite store in ``MLFLOW_TRACKING_URI``), no MLflow run in FINISHED state;
- for the cases that smuggle code in (a pickle, a kernel expression), the code's side effect absent.

Many of these are also tested where the feature lives (tests/test_cli.py, tests/test_data*.py,
tests/teachers/test_network*.py); this module is the one table of them all. "A write that fails
midway" is tests/test_interrupts.py::test_a_write_that_fails_midway_leaves_nothing_that_looks_finished
(without tracking); test_a_write_that_fails_midway_with_tracking_ends_failed below adds the MLflow side.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from distill import students
from distill.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = str(ROOT / "experiments" / "breast_cancer_gp.toml")
#: Fast, and no soft-target cache that a case could read or leave behind.
FAST = ["--set", "train.epochs=2", "--set", "teacher.cache=false", "--set", "protocol.episodes=1"]
#: The only warning a failing run may print besides its error (a network teacher without held-out rows).
NO_HELDOUT = r"the network teacher records no held-out rows"


@dataclass
class Case:
    argv: list[str]
    expect: list[str]  # substrings of the one error line
    errors: int = 1
    allowed: list[str] = field(default_factory=list)  # regexes other stderr lines may match
    marker: Path | None = None  # a file the smuggled code would create
    output: Path | None = None  # what must not exist afterwards (default: the --output folder)


class _Touch:
    """A pickle payload whose loading creates ``path`` (what a malicious checkpoint would do)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


# --------------------------------------------------------------------------- building the cases


def _run(tmp: Path, experiment: str | Path, *extra: str) -> list[str]:
    return ["run", str(experiment), "-o", str(tmp / "out"), "-q", *FAST, *extra]


def _frame(rows: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": rng.normal(size=rows), "b": rng.normal(size=rows),
                         "label": ["yes", "no", "maybe"] * (rows // 3)})


def _csv_case(tmp: Path, content: pd.DataFrame | str | bytes, expect: list[str], names_file: bool = True) -> Case:
    data = tmp / "data.csv"
    if isinstance(content, pd.DataFrame):
        content.to_csv(data, index=False)
    else:
        data.write_bytes(content if isinstance(content, bytes) else content.encode())
    toml = tmp / "exp.toml"
    toml.write_text(f'name = "bad"\n[data]\nsource = "csv:{data}"\ntest_size = 6\n[few_shot]\nper_class = 2\n')
    return Case(_run(tmp, toml), [str(data), *expect] if names_file else expect)


def _with(frame: pd.DataFrame, column: str, row: int, value) -> pd.DataFrame:
    frame.loc[row, column] = value
    return frame


def _few_maybes() -> pd.DataFrame:
    frame = _frame()
    frame.loc[frame.label == "maybe", "label"] = ["maybe"] + ["yes"] * 9  # one 'maybe' row, 2 asked per class
    return frame


def _unreadable(tmp: Path) -> Case:
    data = tmp / "data.csv"
    _frame().to_csv(data, index=False)
    toml = tmp / "exp.toml"
    toml.write_text(f'name = "bad"\n[data]\nsource = "csv:{data}"\ntest_size = 6\n[few_shot]\nper_class = 2\n')
    if os.geteuid() != 0:
        data.chmod(0o000)
        return Case(_run(tmp, toml), [str(data), "cannot be read", "Permission denied"])
    # root reads any file whatever its mode: a directory in the file's place is unreadable as a file.
    data.unlink()
    data.mkdir()
    return Case(_run(tmp, toml), [f"data file '{data}' is a folder, not a CSV file"])


def _network_toml(tmp: Path, source: str, checkpoint: Path, arch: str = "") -> Path:
    toml = tmp / "exp.toml"
    toml.write_text(f'name = "bad"\n[data]\nsource = "{source}"\ntest_size = 30\n[few_shot]\nper_class = 2\n'
                    f'[teacher]\nkind = "network"\ncheckpoint = "{checkpoint}"\n{arch}')
    return toml


def _teacher_other_classes(tmp: Path) -> Case:
    torch.manual_seed(0)
    path = tmp / "three_classes.pt"
    torch.save(students.build("mlp", (30,), 3, hidden=[8]).state_dict(), path)  # 30 inputs, but 3 classes
    toml = _network_toml(tmp, "sklearn:breast_cancer", path, 'arch = "mlp"\nparams = { hidden = [8] }\n')
    return Case(_run(tmp, toml), ["teacher", "predicts 3 classes but the data has 2"], allowed=[NO_HELDOUT])


def _checkpoint_of_another_arch(tmp: Path) -> Case:
    torch.manual_seed(0)
    path = tmp / "cnn.pt"
    torch.save(students.build("cnn", (1, 8, 8), 10).state_dict(), path)  # a CNN's weights, declared an MLP
    toml = _network_toml(tmp, "sklearn:digits", path, 'arch = "mlp"\nparams = { hidden = [8] }\n')
    return Case(_run(tmp, toml), [str(path), "does not fit teacher.arch 'mlp'"], allowed=[NO_HELDOUT])


def _pickled_teacher(tmp: Path) -> Case:
    marker = tmp / "PWNED-teacher"
    evil = tmp / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": "distill.student/1", "state_dict": _Touch(marker)}))
    toml = _network_toml(tmp, "sklearn:iris", evil)
    return Case(_run(tmp, toml), [str(evil), "weights_only=True", "refused"], allowed=[NO_HELDOUT], marker=marker)


def _pickled_torch_save(tmp: Path) -> Case:
    marker = tmp / "PWNED-torch-save"
    evil = tmp / "evil_state_dict.pt"
    torch.save({"net.0.weight": _Touch(marker)}, evil)  # torch's own zip format, a pickle inside
    toml = _network_toml(tmp, "sklearn:iris", evil, 'arch = "mlp"\nparams = { hidden = [8] }\n')
    return Case(_run(tmp, toml), [str(evil), "weights_only=True", "refused"], allowed=[NO_HELDOUT], marker=marker)


def _pickled_npz(tmp: Path) -> Case:
    marker = tmp / "PWNED-npz"
    data = tmp / "evil.npz"
    np.savez(data, x=np.array([_Touch(marker)] * 10, dtype=object), y=np.arange(10) % 2)
    return Case(_run(tmp, EXPERIMENT, "--set", f'data.source="npz:{data}"'),
                [str(data), "Python objects", "refusing to unpickle"], marker=marker)


def _pickled_predict(tmp: Path) -> Case:
    marker = tmp / "PWNED-predict"
    evil = tmp / "student.pt"
    evil.write_bytes(pickle.dumps({"format": "distill.student/1", "state_dict": _Touch(marker)}))
    rows = tmp / "rows.csv"
    pd.DataFrame({"a": [1.0, 2.0]}).to_csv(rows, index=False)
    pred = tmp / "pred.csv"
    return Case(["predict", str(evil), str(rows), "-o", str(pred)], [str(evil), "weights_only=True"],
                marker=marker, output=pred)


def _kernel_that_runs_code(tmp: Path) -> Case:
    marker = tmp / "PWNED-kernel"
    kernel = f"__import__('os').system('touch {marker}')"
    return Case(_run(tmp, EXPERIMENT, "--set", f'teacher.kernel="{kernel}"'), ["teacher.kernel", "not allowed"],
                marker=marker)


def _student_of_fixed_input_size(tmp: Path) -> Case:
    (tmp / "fixed_input_student.py").write_text(
        "from torch import nn\n\n\n"
        "class FourInputs(nn.Module):\n"
        "    def __init__(self, in_features, num_outputs, **kwargs):\n"
        "        super().__init__()\n"
        "        self.linear = nn.Linear(4, num_outputs)  # ignores in_features: 4 inputs, whatever the data\n\n"
        "    def forward(self, x):\n"
        "        return self.linear(x)\n"
    )
    return Case(_run(tmp, EXPERIMENT, "--set", 'student.arch="fixed_input_student:FourInputs"'),
                ["student 'fixed_input_student:FourInputs'", "cannot take inputs of shape (30,)"])


def _unwritable_output(tmp: Path) -> Case:
    if os.geteuid() != 0:
        locked = tmp / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        out = locked / "run"
    else:  # root writes into a 0o500 folder anyway: a regular file where a folder must be
        blocker = tmp / "a-file"
        blocker.write_text("x")
        out = blocker / "run"
    return Case(["run", EXPERIMENT, "-o", str(out), "-q", *FAST], [str(out), "is not writable"], output=out)


def _set(tmp: Path, *overrides: str) -> list[str]:
    return _run(tmp, EXPERIMENT, *[a for o in overrides for a in ("--set", o)])


CASES: dict[str, Callable[[Path], Case]] = {
    # files
    "missing experiment file": lambda t: Case(_run(t, t / "nope.toml"), [f"'{t / 'nope.toml'}' not found"]),
    "missing data file": lambda t: Case(_set(t, f'data.source="csv:{t / "nope.csv"}"'),
                                        [f"'{t / 'nope.csv'}' not found"]),
    "missing teacher checkpoint": lambda t: Case(
        _set(t, 'teacher.kind="network"', f'teacher.checkpoint="{t / "nope.pt"}"', 'teacher.arch="mlp"'),
        ["teacher.checkpoint", f"'{t / 'nope.pt'}' not found"]),
    # CSV data
    "empty csv": lambda t: _csv_case(t, "", ["is empty"]),
    "csv with a header only": lambda t: _csv_case(t, "a,b,label\n", ["has a header but no rows"]),
    "csv not utf-8": lambda t: _csv_case(t, b"a,b,label\n\xff\xfe\x81,2,x\n", ["cannot be read as CSV", "utf-8"]),
    "csv with ragged rows": lambda t: _csv_case(t, "a,b,label\n1,2,x\n1,2,3,4,5\n",
                                                ["cannot be read as CSV", "Expected 3 fields"]),
    "unreadable csv": _unreadable,
    "non-numeric feature": lambda t: _csv_case(t, _frame().assign(a="x"), ["'a'", "not numeric"]),
    "nan feature": lambda t: _csv_case(t, _with(_frame(), "a", 3, np.nan), ["NaN or infinite", "row 3", "'a'"]),
    "inf feature": lambda t: _csv_case(t, _with(_frame(), "b", 5, np.inf), ["NaN or infinite", "row 5", "'b'"]),
    "one class": lambda t: _csv_case(t, _frame().assign(label="yes"), ["single class (yes)"]),
    "too few rows of a class": lambda t: _csv_case(t, _few_maybes(), ["few_shot.per_class", "2 per class"],
                                                   names_file=False),  # names the key, not the file
    # teacher vs data, student vs data
    "teacher classes differ": _teacher_other_classes,
    "student input size": _student_of_fixed_input_size,
    "cnn student on a table": lambda t: Case(_set(t, 'student.arch="cnn"'),
                                             ["student 'cnn' needs image inputs", "(30,)"]),
    # values
    "kl_weight < 0": lambda t: Case(_set(t, "objective.kl_weight=-0.5"),
                                    ["objective.kl_weight must be >= 0, got -0.5"]),
    "temperature = 0": lambda t: Case(_set(t, "objective.temperature=0"),
                                      ["objective.temperature must be > 0, got 0"]),
    "temperature < 0": lambda t: Case(_set(t, "objective.temperature=-1.5"),
                                      ["objective.temperature must be > 0, got -1.5"]),
    # names
    "unknown student": lambda t: Case(_set(t, 'student.arch="mpl"'), ["unknown student 'mpl'", "mlp"]),
    "unknown teacher": lambda t: Case(_set(t, 'teacher.kind="svm"'), ["teacher.kind", "'svm'"]),
    "malformed kernel": lambda t: Case(_set(t, 'teacher.kernel="1.0 * RBF("'),
                                       ["teacher.kernel", "invalid kernel expression", "1.0 * RBF("]),
    "kernel that would run code": _kernel_that_runs_code,
    "student import path missing": lambda t: Case(_set(t, 'student.arch="nowhere_pkg.nets:Net"'),
                                                  ["student.arch", "cannot import module 'nowhere_pkg.nets'"]),
    "estimator module missing": lambda t: Case(
        _set(t, 'teacher.kind="sklearn"', 'teacher.estimator="sklearn.nothing:Here"'),
        ["teacher.estimator", "cannot import module 'sklearn.nothing'"]),
    "estimator class missing": lambda t: Case(
        _set(t, 'teacher.kind="sklearn"', 'teacher.estimator="sklearn.ensemble:NoSuchForest"'),
        ["teacher.estimator", "no attribute 'NoSuchForest'"]),
    # checkpoints and pickles
    "checkpoint of another architecture": _checkpoint_of_another_arch,
    "pickle as teacher checkpoint": _pickled_teacher,
    "pickle inside a torch.save file": _pickled_torch_save,
    "pickle inside an npz dataset": _pickled_npz,
    "pickle as predict checkpoint": _pickled_predict,
    # output
    "unwritable output folder": _unwritable_output,
}


# --------------------------------------------------------------------------- the table


@pytest.fixture()
def local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tracking stays ON, into a SQLite store of this test's own; the working folder is tmp_path."""
    store = tmp_path / "store" / "mlflow.db"
    store.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # for the case with a student class of its own
    return store


def _finished_runs(store: Path) -> list[str]:
    """Names of FINISHED runs in the store; none when no run ever created the file."""
    if not store.exists():
        return []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return [r.info.run_name for r in client.search_runs(ids) if r.info.status == "FINISHED"] if ids else []


def _stderr_lines(err: str) -> tuple[list[str], list[str]]:
    lines = [line for line in err.splitlines() if line.strip()]
    return [line for line in lines if line.startswith("error: ")], [line for line in lines if not line.startswith("error: ")]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_exit_2_with_one_line_and_nothing_finished(
    name: str, tmp_path: Path, local_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = CASES[name](tmp_path)
    assert main(case.argv) == 2
    captured = capsys.readouterr()

    errors, others = _stderr_lines(captured.err)
    assert len(errors) == case.errors, captured.err
    for needle in case.expect:
        assert needle in errors[0], (needle, errors[0])
    for line in others:
        assert any(re.search(p, line) for p in case.allowed), f"unexpected stderr line: {line!r}"
    assert "Traceback" not in captured.err
    assert "run directory:" not in captured.out

    output = case.output or tmp_path / "out"
    assert not output.exists()  # every case fails before anything is written
    assert not list(tmp_path.rglob("summary.json"))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
    assert not local_store.exists()  # no case gets as far as opening the MLflow store...
    assert _finished_runs(local_store) == []  # ...so certainly no run claims success
    if case.marker is not None:
        assert not case.marker.exists(), "the smuggled code ran"


def test_the_catalogue_covers_the_issue() -> None:
    """The issue's list, each entry mapped to its case(s) above (or the test that covers it)."""
    issue = {
        "missing file": ["missing experiment file", "missing data file", "missing teacher checkpoint"],
        "unreadable or empty CSV": ["unreadable csv", "csv not utf-8", "csv with ragged rows", "empty csv",
                                    "csv with a header only"],
        "a non-numeric feature column": ["non-numeric feature"],
        "NaN or inf features": ["nan feature", "inf feature"],
        "a label column with one class": ["one class"],
        "fewer rows of a class than asked": ["too few rows of a class"],
        "teacher and dataset disagreeing on classes": ["teacher classes differ"],
        "student input size not matching the data": ["student input size", "cnn student on a table"],
        "kl_weight < 0": ["kl_weight < 0"],
        "temperature <= 0": ["temperature = 0", "temperature < 0"],
        "unknown student or teacher": ["unknown student", "unknown teacher"],
        "malformed kernel expression": ["malformed kernel", "kernel that would run code"],
        "an import path that does not exist": ["student import path missing", "estimator module missing",
                                               "estimator class missing"],
        "a checkpoint of another architecture": ["checkpoint of another architecture"],
        "a pickle that would execute code on load": ["pickle as teacher checkpoint", "pickle inside a torch.save file",
                                                     "pickle inside an npz dataset", "pickle as predict checkpoint"],
        "an unwritable output folder": ["unwritable output folder"],
        # "a write that fails midway": tests/test_interrupts.py and the tracked test below.
    }
    assert {c for cases in issue.values() for c in cases} == set(CASES)


# --------------------------------------------------------------------------- what only a real process shows


@pytest.mark.integration
def test_a_refused_pickle_prints_one_line_in_a_real_process(tmp_path: Path) -> None:
    """In-process, pytest swallows Python warnings; a real ``python -m distill`` prints them to stderr."""
    case = _pickled_teacher(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'store.db'}"}
    done = subprocess.run([sys.executable, "-m", "distill", *case.argv], check=False, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr
    errors, others = _stderr_lines(done.stderr)
    assert len(errors) == 1 and all(n in errors[0] for n in case.expect), done.stderr
    assert "Traceback" not in done.stderr
    assert not case.marker.exists() and not (tmp_path / "out").exists() and not (tmp_path / "store.db").exists()
    others = [line for line in others if not re.search(NO_HELDOUT, line)]
    assert not others, others  # no warning printed around the one error line


# --------------------------------------------------------------------------- a write that fails midway, tracked


def test_a_write_that_fails_midway_with_tracking_ends_failed(
    tmp_path: Path, local_store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    fresh_mlflow_store
) -> None:
    """tests/test_interrupts.py has this case without MLflow; here the MLflow run must end FAILED."""
    from mlflow.tracking import MlflowClient

    from tests.test_interrupts import simulate_full_disk_at
    from tests.test_tracking import mlflow_state

    fresh_mlflow_store(local_store)  # its tables made once a session: the run records into a copy

    simulate_full_disk_at(monkeypatch, "history.csv")
    out = tmp_path / "out"
    with mlflow_state():
        assert main(["run", EXPERIMENT, "-q", "-o", str(out), *FAST, "--set", 'tracking.experiment="midway"']) == 2
    err = capsys.readouterr().err
    errors, _ = _stderr_lines(err)
    assert len(errors) == 1 and "history.csv" in errors[0] and "No space left on device" in errors[0]
    assert "Traceback" not in err
    assert not (out / "summary.json").exists()
    client = MlflowClient(tracking_uri=f"sqlite:///{local_store}")
    runs = client.search_runs([client.get_experiment_by_name("midway").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
