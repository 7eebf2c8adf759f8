"""Output folders (issue #13, points 3 and 6): no verb deletes, overwrites or leaves behind what it did not write.

- ``run -o`` / ``tune -o`` take only a new or an empty folder; ``--resume`` is the one way into an
  existing run directory. Any other folder is exit 2 naming it, and stays byte for byte as it was.
- ``teacher train -o`` never replaces an existing file; ``predict -o`` refuses a folder, and an
  existing file unless ``--force``.
- A run refused before it trained anything leaves no run directory (nor the parents it created).
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill.cli import main
from distill.errors import UserError
from distill.outputs.rundir import claim_run_dir

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = str(ROOT / "experiments" / "breast_cancer_gp.toml")
DIGITS_TEACHER = str(ROOT / "experiments" / "digits_teacher.toml")
# One episode on a fixed KL term (not the shipped ten on "auto", each with a cross-validation fit): what
# is claimed, refused or left behind does not depend on either.
FAST = ["--set", "train.epochs=2", "--set", "teacher.cache=false", "--no-track", "-q", "--episodes", "1",
        "--set", "objective.kl_weight=1.0", "--set", "objective.temperature=1.0"]
#: A teacher whose fit fails (a UserError raised in the protocol, after the run directory is claimed).
# Valid by scikit-learn's parameter rules (so check passes), refused by the estimator's fit: priors must sum to 1.
BAD_FIT = ["--set", 'teacher.kind="sklearn"', "--set", 'teacher.estimator="sklearn.naive_bayes:GaussianNB"',
           "--set", "teacher.params={priors=[0.2, 0.2]}"]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for a folder): what must not change."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def one_error(err: str, *names: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete tiny run: a student.pt for predict, and a folder full of another run's files."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", EXPERIMENT, "-o", str(out), *FAST]) == 0
    return out


def _user_files(folder: Path) -> None:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "precious.bin").write_bytes(b"\x00\x01")
    (folder / "summary.json").write_text('{"status": "mine"}')


OCCUPIED = {
    "a user's checkpoints/ and summary.json": _user_files,
    "one hidden file": lambda f: (f / ".keep").write_text(""),
    "one empty subfolder": lambda f: (f / "sub").mkdir(),
    "a notes file": lambda f: (f / "notes.txt").write_text("do not delete"),
}


@pytest.mark.parametrize("fill", list(OCCUPIED.values()), ids=list(OCCUPIED))
def test_run_into_a_folder_that_holds_anything_is_refused_and_the_folder_is_untouched(
        tmp_path: Path, fill, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    fill(out)
    before = snapshot(out)
    assert main(["run", EXPERIMENT, "-o", str(out), *FAST]) == 2
    line = one_error(capsys.readouterr().err, f"'{out}'", "is not empty", f"--resume {out}")
    assert "choose a new folder" in line
    assert snapshot(out) == before


def test_a_finished_run_directory_is_not_overwritten(finished_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(finished_run)
    assert main(["run", EXPERIMENT, "-o", str(finished_run), *FAST, "--seed", "7"]) == 2
    one_error(capsys.readouterr().err, str(finished_run), "is not empty")
    assert snapshot(finished_run) == before


def test_run_into_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "a-file"
    target.write_text("x")
    assert main(["run", EXPERIMENT, "-o", str(target), *FAST]) == 2
    one_error(capsys.readouterr().err, str(target), "is a file")
    assert target.read_text() == "x"


def test_run_into_an_empty_folder_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    assert main(["run", EXPERIMENT, "-o", str(out), *FAST]) == 0
    assert (out / "summary.json").is_file() and (out / "student.pt").is_file()


_names = st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=12).filter(
    lambda n: n not in (".", ".."))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=st.lists(st.tuples(st.lists(_names, min_size=0, max_size=2), _names, st.binary(max_size=16)),
                     min_size=1, max_size=5))
def test_any_non_empty_folder_is_refused_untouched_and_an_empty_one_is_given_back_empty(
        tmp_path_factory: pytest.TempPathFactory, tree) -> None:
    """The class, not the example: whatever a folder holds, claiming it fails and changes nothing."""
    root = tmp_path_factory.mktemp("tree")
    out = root / "out"
    out.mkdir()
    for parents, name, data in tree:
        folder = out.joinpath(*parents)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            continue  # a name already used as a file / folder: the tree holds something anyway
    before = snapshot(out)
    assert before
    with pytest.raises(UserError, match="is not empty"):
        claim_run_dir("x", out)
    assert snapshot(out) == before
    # An empty folder is claimed, and a failed run puts it back as it was: empty, still there.
    empty = root / "empty"
    empty.mkdir()
    claim = claim_run_dir("x", empty)
    (claim.path / "config.toml").write_text("written by the run")
    claim.discard()
    assert empty.is_dir() and not list(empty.iterdir())


def test_two_claims_of_one_empty_folder_cannot_both_win(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    claim_run_dir("x", out)
    with pytest.raises(UserError, match="not empty"):
        claim_run_dir("x", out)


# --------------------------------------------------------------------------- partial run directories


@pytest.mark.parametrize("where", ["new", "nested", "empty"])
def test_a_run_refused_after_claiming_its_folder_leaves_nothing(
        tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The teacher's fit fails inside the protocol (exit 2): no run directory, no parents it made."""
    out = {"new": tmp_path / "out", "nested": tmp_path / "a" / "b" / "out", "empty": tmp_path / "empty"}[where]
    if where == "empty":
        out.mkdir()
    assert main(["run", EXPERIMENT, "-o", str(out), *FAST, *BAD_FIT]) == 2
    one_error(capsys.readouterr().err, "teacher 'sklearn' cannot be fit")
    assert sorted(p.name for p in tmp_path.iterdir()) == (["empty"] if where == "empty" else [])
    if where == "empty":
        assert not list(out.iterdir())


def test_a_run_refused_with_the_default_folder_leaves_no_runs_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", EXPERIMENT, *FAST, *BAD_FIT]) == 2
    one_error(capsys.readouterr().err, "cannot be fit")
    assert not list(tmp_path.iterdir())


def test_a_run_refused_before_training_does_not_touch_a_resumed_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--resume of a folder with no config.toml: exit 2, the folder as it was."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    assert main(["run", "--resume", str(out), "--no-track"]) == 2
    one_error(capsys.readouterr().err, str(out), "not a run directory")
    assert snapshot(out) == {"mine.txt": b"x"}


# --------------------------------------------------------------------------- tune -o


def test_tune_into_a_non_empty_folder_is_refused_untouched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_tuning import write_config

    toml = write_config(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    _user_files(out)
    before = snapshot(out)
    assert main(["tune", str(toml), "--storage", str(tmp_path / "journal.log"), "-o", str(out), "--no-track",
                 "-q", "--trials", "1"]) == 2
    line = one_error(capsys.readouterr().err, f"'{out}'", "is not empty")
    assert "--resume" not in line  # tune has no --resume: the hint is only "choose a new folder"
    assert snapshot(out) == before


@pytest.mark.parametrize("where", ["new", "default"])
def test_a_tune_refused_in_its_first_trial_leaves_no_run_directory(
        tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The teacher cannot be fit: exit 2 from the first trial, and neither ``-o DIR`` nor ``runs/`` is left."""
    from tests.test_tuning import write_config

    toml = write_config(tmp_path, teacher={"kind": "sklearn", "estimator": "sklearn.naive_bayes:GaussianNB",
                                           "params": {"priors": [0.2, 0.2]}})
    monkeypatch.chdir(tmp_path)
    out = ["-o", str(tmp_path / "a" / "out")] if where == "new" else []
    assert main(["tune", str(toml), "--storage", "journal.log", *out, "--no-track", "-q", "--trials", "2"]) == 2
    one_error(capsys.readouterr().err, "teacher 'sklearn' cannot be fit")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.log", "tune.toml"]  # the study is outside


# --------------------------------------------------------------------------- teacher train -o


@pytest.mark.parametrize("kind", ["checkpoint", "summary beside it", "folder", "json suffix"])
def test_teacher_train_never_replaces_a_file_it_did_not_write(
        tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "t.pt"
    if kind == "checkpoint":
        target.write_bytes(b"someone's checkpoint")
        expect = [f"'{target}' already exists", "does not overwrite"]
    elif kind == "summary beside it":
        target.with_suffix(".json").write_text("{}")
        expect = [f"'{target.with_suffix('.json')}' already exists"]
    elif kind == "folder":
        target.mkdir()
        expect = [f"'{target}' is a folder"]
    else:
        target = tmp_path / "t.json"
        expect = ["would collide"]
    before = snapshot(tmp_path)
    assert main(["teacher", "train", DIGITS_TEACHER, "-o", str(target), "--no-track", "-q",
                 "--set", "train.epochs=1"]) == 2
    one_error(capsys.readouterr().err, "--output", *expect)
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- predict -o


@pytest.fixture()
def rows(tmp_path: Path) -> Path:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns="target").head(5)
    path = tmp_path / "rows.csv"
    frame.to_csv(path, index=False)
    return path


def test_predict_into_a_folder_is_one_line_not_isadirectoryerror(
        finished_run: Path, rows: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "preds"
    folder.mkdir()
    assert main(["predict", str(finished_run), str(rows), "-o", str(folder)]) == 2
    one_error(capsys.readouterr().err, f"'{folder}' is a folder")
    assert not list(folder.iterdir())


def test_predict_keeps_an_existing_file_unless_forced(
        finished_run: Path, rows: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "pred.csv"
    target.write_text("mine\n")
    assert main(["predict", str(finished_run), str(rows), "-o", str(target)]) == 2
    one_error(capsys.readouterr().err, f"'{target}' already exists", "--force")
    assert target.read_text() == "mine\n"
    assert main(["predict", str(finished_run), str(rows), "-o", str(target), "--force"]) == 0
    lines = target.read_text().splitlines()
    assert lines[0].startswith("prediction,") and len(lines) == 6
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert main(["predict", str(finished_run), str(rows), "-o", str(tmp_path / "new.csv")]) == 0
    assert (tmp_path / "new.csv").read_text() == target.read_text()


def test_the_refusals_leave_the_working_folder_clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is created outside the output folder by a refused run (no runs/, no mlflow.db)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    assert main(["run", EXPERIMENT, "-o", "out", *FAST]) == 2
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_teacher_train_with_a_dead_tracking_server_stops_before_training_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The tracking check comes first: no hour of training that ends in exit 2 with a checkpoint left behind."""
    target = tmp_path / "teachers" / "t.pt"
    assert main(["teacher", "train", DIGITS_TEACHER, "-o", str(target), "-q", "--set", "train.epochs=1",
                 "--set", 'tracking.uri="http://127.0.0.1:9"']) == 2
    one_error(capsys.readouterr().err, "tracking.uri http://127.0.0.1:9", "does not answer")
    assert not list(tmp_path.iterdir())
