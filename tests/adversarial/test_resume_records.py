"""``--resume`` never mixes two configs, and a damaged record is one line (issue #13, point 4).

Every record of a run (``run.json``, an in-progress fit state, a finished fit) carries the hash of
the resolved config; fit records also carry the fit's identity. These cases take one real
interrupted run (SIGTERM after its first finished fit), damage or edit a copy of it, and resume.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill.cli import main
from distill.errors import UserError
from distill.outputs.checkpoints import Checkpoints

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = str(ROOT / "experiments" / "breast_cancer_gp.toml")
#: Two episodes, one fit at a time (four fits: student and baseline of each), a state at every epoch end;
#: a fixed KL weight, so that no cross-validation fit comes first (tests/test_kd_selection.py resumes those).
SETTINGS = ["--set", "train.epochs=6", "--set", "protocol.episodes=2", "--set", "train.batched=false",
            "--set", "train.checkpoint_interval=0", "--set", "teacher.cache=false",
            "--set", "objective.kl_weight=0.1", "--set", "objective.temperature=1.0", "--no-track", "-q"]


def _interrupted_run(out: Path) -> None:
    """A real run, SIGTERM delivered as its first fit is recorded: it stops in the second fit."""
    import distill.outputs.checkpoints

    real = distill.outputs.checkpoints.Checkpoints.finish
    calls: list[str] = []

    def finish_then_signal(self, key, *args, **kwargs):
        real(self, key, *args, **kwargs)
        calls.append(key)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distill.outputs.checkpoints.Checkpoints, "finish", finish_then_signal)
        assert main(["run", EXPERIMENT, "-o", str(out), *SETTINGS]) == 143


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("interrupted") / "run"
    _interrupted_run(out)
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["fit-c0g0.done.pt", "fit-c0g1.pt", "run.json"], names
    return out


@pytest.fixture()
def run_dir(interrupted: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(interrupted, copy)
    return copy


def _refused(run_dir: Path, capsys: pytest.CaptureFixture[str], *names: str) -> str:
    assert main(["run", "--resume", str(run_dir), "--no-track", "-q"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and "Errno" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"  # never "completed"
    return lines[0]


def _edit_kl_weight(run_dir: Path) -> None:
    text = (run_dir / "config.toml").read_text()
    assert "kl_weight = 0.1\n" in text
    (run_dir / "config.toml").write_text(text.replace("kl_weight = 0.1\n", "kl_weight = 0.25\n"))


def test_an_edited_config_and_a_deleted_state_do_not_give_a_completed_summary(
        run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's case: kl_weight edited, the in-progress file deleted; resume must refuse, naming the key."""
    _edit_kl_weight(run_dir)
    (run_dir / "checkpoints" / "fit-c0g1.pt").unlink()
    _refused(run_dir, capsys, "objective.kl_weight", "0.1", "0.25", "run.json")


def test_the_finished_fit_record_alone_still_catches_the_edit(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """run.json and the in-progress state gone too: the finished fit's own hash refuses the mixed run."""
    _edit_kl_weight(run_dir)
    (run_dir / "checkpoints" / "fit-c0g1.pt").unlink()
    (run_dir / "checkpoints" / "run.json").unlink()
    _refused(run_dir, capsys, "fit-c0g0.done.pt", "another config", "objective.kl_weight")


@pytest.mark.parametrize("edit", ["train.epochs = 6|train.epochs = 7", "seed = 0|seed = 3"])
def test_any_edited_key_is_named(run_dir: Path, edit: str, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = edit.split("|")
    key = old.split(" =")[0]
    text = (run_dir / "config.toml").read_text()
    section, name = key.split(".") if "." in key else ("", key)
    lines = text.splitlines()
    current = ""
    for i, line in enumerate(lines):
        if line.startswith("["):
            current = line.strip("[]")
        if current == section and line.startswith(f"{name} = "):
            lines[i] = f"{name} = {new.split(' = ')[1]}"
            break
    else:
        pytest.fail(f"{key} not in config.toml")
    (run_dir / "config.toml").write_text("\n".join(lines) + "\n")
    _refused(run_dir, capsys, key)


def test_a_record_of_another_fit_is_refused(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Episode 0's student record put in the place of episode 1's student: the identity does not match."""
    folder = run_dir / "checkpoints"
    shutil.copy(folder / "fit-c0g0.done.pt", folder / "fit-c1g0.done.pt")
    _refused(run_dir, capsys, "fit-c1g0.done.pt", "another fit", "seed 0", "seed 1")


def test_an_untouched_interrupted_run_resumes_to_completion(run_dir: Path) -> None:
    assert main(["run", "--resume", str(run_dir), "--no-track", "-q"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and len(summary["episodes"]) == 2
    assert not (run_dir / "checkpoints").exists()


def _torch_bytes(value) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


RUN_JSON = {
    "empty": b"",
    "truncated": b'{"logged": 0, "mlflow',
    "a list": b"[1, 2]",
    "logged not a count": b'{"logged": "many"}',
    "negative count": b'{"logged": -1}',
    "not utf-8": b"\xff\xfe\x00",
}


@pytest.mark.parametrize("content", list(RUN_JSON.values()), ids=list(RUN_JSON))
def test_a_damaged_run_json_is_one_line_naming_it(run_dir: Path, content: bytes,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = run_dir / "checkpoints" / "run.json"
    path.write_bytes(content)
    _refused(run_dir, capsys, str(path))


FIT_RECORD = {
    "empty": lambda b: b"",
    "first 10 bytes": lambda b: b[:10],
    "half": lambda b: b[: len(b) // 2],
    "last 5 bytes cut (was Errno 22)": lambda b: b[:-5],
    "JSON text": lambda b: b'{"weights": []}',
    "a tensor, not a record": lambda b: _torch_bytes(torch.zeros(3)),
    "a list": lambda b: _torch_bytes([1, 2]),
}


@pytest.mark.parametrize("record", ["fit-c0g0.done.pt", "fit-c0g1.pt"])
@pytest.mark.parametrize("damage", list(FIT_RECORD.values()), ids=list(FIT_RECORD))
def test_a_damaged_fit_record_is_one_line_naming_it(run_dir: Path, record: str, damage,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = run_dir / "checkpoints" / record
    path.write_bytes(damage(path.read_bytes()))
    _refused(run_dir, capsys, str(path))


def test_a_record_with_the_right_hash_but_no_weights_is_one_line(run_dir: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = run_dir / "checkpoints" / "fit-c0g0.done.pt"
    payload = torch.load(path, weights_only=True)
    del payload["weights"]
    torch.save(payload, path)
    _refused(run_dir, capsys, str(path), "not a complete fit record")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_a_record_cut_anywhere_is_a_user_error_naming_it(interrupted: Path, tmp_path_factory, cut: float) -> None:
    """Unit level, the whole class: any truncation of a real record is a ``UserError`` naming the file."""
    folder = tmp_path_factory.mktemp("cut") / "checkpoints"
    shutil.copytree(interrupted / "checkpoints", folder)
    config = (interrupted / "config.toml").read_text()
    path = folder / "fit-c0g0.done.pt"
    data = path.read_bytes()
    path.write_bytes(data[: int(cut * len(data))])
    with pytest.raises(UserError) as caught:
        Checkpoints(folder, config=config).verify_resume()
    [problem] = caught.value.problems
    assert str(path) in problem and "Errno" not in problem
    assert Checkpoints(folder, config=config + "\n").config_sha256 != Checkpoints(folder, config=config).config_sha256
