"""SIGTERM / SIGINT at any moment after training (issue #13, point 7), in a real process with a real signal.

A small driver runs ``python -m distill run`` in a subprocess whose signal is sent by the process to
itself at one chosen moment: just before a results file is renamed into place (the write is under
way), or as a step of the results phase begins. Whatever the moment, the run ends with the
"interrupted" summary (exit 143 / 130), no temporary file, the MLflow run KILLED, and
``--resume`` then finishes it to the numbers of a run never interrupted. A signal that arrives as
``summary.json`` is renamed into place comes after the run completed: it finishes (exit 0).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from distill.cli import main
from tests.conftest import metric_points, system_runs

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = str(ROOT / "experiments" / "breast_cancer_gp.toml")
# A fixed KL term: "auto" adds a cross-validation fit to every episode, before the results phase
# these signals aim at (tests/test_kd_selection.py covers a stop and resume around "auto").
SETTINGS = ["--set", "train.epochs=3", "--set", "protocol.episodes=2", "--set", "teacher.cache=false", "-q",
            "--set", "objective.kl_weight=1.0", "--set", "objective.temperature=1.0"]

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DRIVER = textwrap.dedent('''
    import os, signal, sys

    target, sig, argv = sys.argv[1], getattr(signal, sys.argv[2]), sys.argv[3:]
    fired = []

    def fire():
        if not fired:
            fired.append(True)
            os.kill(os.getpid(), sig)

    if target.startswith("file:"):  # while the file is written: after its bytes, before its rename
        name, real_replace = target[5:], os.replace

        def replace(src, dst, *args, **kwargs):
            if str(dst).endswith(name):
                fire()
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
    else:  # as a step begins: "module:attribute" or "module:Class.method"
        import importlib

        module, _, dotted = target.partition(":")
        owner = importlib.import_module(module)
        *path, attr = dotted.split(".")
        for part in path:
            owner = getattr(owner, part)
        real = getattr(owner, attr)

        def wrapped(*args, **kwargs):
            fire()
            return real(*args, **kwargs)

        setattr(owner, attr, wrapped)
    from distill.cli import main

    sys.exit(main(argv))
''')


def _signalled(tmp_path: Path, target: str, sig: signal.Signals, out: Path, *extra: str,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**(env or os.environ), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(driver), target, sig.name, "run", EXPERIMENT, "-o", str(out),
                           *SETTINGS, *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def _temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith(".write-test.")]


def _numbers(summary: dict) -> dict:
    from tests.test_interrupts import _numbers as strip

    return strip(summary)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("clean") / "run"
    assert main(["run", EXPERIMENT, "-o", str(out), *SETTINGS, "--no-track"]) == 0
    return json.loads((out / "summary.json").read_text())


MOMENTS = {
    "as the results phase begins": "distill.experiment.run:write_history",
    "while history.csv is written": "file:history.csv",
    "while student.pt is written": "file:student.pt",
}
# SIGINT takes the same handler as SIGTERM (only the exit code differs): one write under SIGINT shows it,
# student.pt's (the other atomic writes are SIGTERM's; SIGINT mid-fit is tests/test_interrupts.py's).
CASES = [(moment, signal.SIGINT if moment == "while student.pt is written" else signal.SIGTERM) for moment in MOMENTS]


@pytest.mark.parametrize(("moment", "sig"), CASES, ids=[f"{m}-{s.name}" for m, s in CASES])
def test_a_signal_while_the_results_are_written_ends_interrupted_and_resume_finishes(
        tmp_path: Path, clean: dict, moment: str, sig: signal.Signals) -> None:
    out = tmp_path / "run"
    done = _signalled(tmp_path, MOMENTS[moment], sig, out, "--no-track")
    assert done.returncode == {signal.SIGTERM: 143, signal.SIGINT: 130}[sig], done.stderr
    assert "Traceback" not in done.stderr
    assert f"resume with: python -m distill run --resume {out}" in done.stderr
    partial = json.loads((out / "summary.json").read_text())
    assert partial["status"] == "interrupted" and partial["signal"] == sig.name
    assert "after training" in partial["stopped"]
    assert not _temporary_files(out), _temporary_files(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["driver.py", "run"]  # nothing outside the run

    assert main(["run", "--resume", str(out), "--no-track", "-q"]) == 0
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["status"] == "completed"
    assert _numbers(resumed) == _numbers(clean)
    assert not (out / "checkpoints").exists() and not _temporary_files(out)


@pytest.mark.parametrize(("target", "sig"), [("file:summary.json", signal.SIGTERM),
                                           ("file:confusion_matrix.png", signal.SIGINT)],
                         ids=["as the completed summary lands", "while a plot is drawn, after the summary"])
def test_a_signal_once_the_summary_lands_lets_the_run_finish(tmp_path: Path, clean: dict, target: str,
                                                             sig: signal.Signals) -> None:
    """The plots are drawn after summary.json: a signal then (a Ctrl-C while they draw) changes nothing."""
    out = tmp_path / "run"
    done = _signalled(tmp_path, target, sig, out, "--no-track")
    assert done.returncode == 0, done.stderr
    assert "came after the run completed" in done.stderr and "Traceback" not in done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and _numbers(summary) == _numbers(clean)
    assert not (out / "checkpoints").exists() and not _temporary_files(out)
    assert {"learning_curves.png", "confusion_matrix.png"} <= {p.name for p in out.iterdir()}


@pytest.mark.parametrize("target", ["distill.outputs.tracking:MlflowTracker.log_student"])  # the MLflow model phase
def test_with_tracking_the_mlflow_run_is_killed_then_finished_by_resume(tmp_path: Path, target: str,
                                                                        fresh_mlflow_store) -> None:
    import mlflow

    uri = fresh_mlflow_store(tmp_path / "mlflow.db")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    out = tmp_path / "run"
    done = _signalled(tmp_path, target, signal.SIGTERM, out, "--set", "tracking.experiment='signals'", env=env)
    assert done.returncode == 143, done.stderr
    assert "Traceback" not in done.stderr
    partial = json.loads((out / "summary.json").read_text())
    assert partial["status"] == "interrupted" and "after training" in partial["stopped"]
    client = mlflow.MlflowClient(uri)
    run_id = partial["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "KILLED"
    assert not _temporary_files(out)
    first_attempt = system_runs(client, run_id)  # the system runs come before the model
    assert "student" in first_attempt

    resumed = subprocess.run([sys.executable, "-m", "distill", "run", "--resume", str(out), "-q"], cwd=tmp_path,
                             env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["mlflow_run_id"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    experiment = client.get_experiment_by_name("signals")
    statuses = [r.info.status for r in client.search_runs([experiment.experiment_id])]
    assert "RUNNING" not in statuses, statuses
    # the resumed run's system runs replace the first attempt's: each system once, each episode once
    again = system_runs(client, run_id)
    assert sorted(again) == sorted(first_attempt) and not {r.info.run_id for r in again.values()} & {
        r.info.run_id for r in first_attempt.values()}
    for system, child in again.items():
        assert child.info.status == "FINISHED"
        assert [step for step, _ in metric_points(client, child.info.run_id, "test_accuracy")] == list(
            range(len(summary["episodes"]))), system


# --------------------------------------------------------------------------- teacher train

TEACHER_MOMENTS = {
    "while training": "distill.engine.loop:_batches",
    "after training, before the checkpoint is written": "distill.experiment.teacher_training:predict_logits",
}
TEACHER_CASES = [("while training", signal.SIGTERM), ("after training, before the checkpoint is written", signal.SIGINT)]


@pytest.mark.parametrize(("moment", "sig"), TEACHER_CASES, ids=[f"{m}-{s.name}" for m, s in TEACHER_CASES])
def test_a_signal_during_teacher_train_writes_no_checkpoint(tmp_path: Path, moment: str, sig: signal.Signals) -> None:
    """teacher train stops after the step, writes nothing that looks finished, and says so in one line."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "teacher.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(driver), TEACHER_MOMENTS[moment], sig.name, "teacher", "train",
         str(ROOT / "experiments" / "digits_teacher.toml"), "-o", str(out), "--no-track", "-q",
         "--set", "train.epochs=3", "--set", "teacher.params={channels = [2], kernel_sizes = [3], hidden = [8]}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == {signal.SIGTERM: 143, signal.SIGINT: 130}[sig], done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1 and "no checkpoint was written" in lines[0], done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["driver.py"], list(tmp_path.iterdir())


# --------------------------------------------------------------------------- tune, after its search

TUNE_MOMENTS = {
    "as the test comparison begins": "distill.experiment.run:run_experiment",
    "while trials.csv is written": "file:trials.csv",
    "inside the tuned comparison run": "file:learning_curves.png",
}


@pytest.mark.parametrize("moment", list(TUNE_MOMENTS))
def test_a_signal_after_the_tune_search_ends_interrupted_with_a_command_that_continues(
        tmp_path: Path, moment: str) -> None:
    """The study is safe in its storage; tuning.json says interrupted, no temp file, exit 143."""
    from tests.test_tuning import write_config

    # The untuned config on a fixed KL term (the trials take theirs from the search space): "auto" would
    # add its cross-validation to the untuned validation score and test run.
    toml = write_config(tmp_path, objective={"kl_weight": 1.0, "temperature": 1.0})
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "tune-out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(driver), TUNE_MOMENTS[moment], "SIGTERM", "tune", str(toml), "--storage",
         str(tmp_path / "journal.log"), "-o", str(out), "--no-track", "-q", "--trials", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 143, done.stderr
    assert "Traceback" not in done.stderr
    partial = json.loads((out / "tuning.json").read_text())
    assert partial["status"] == "interrupted" and "after the search" in partial["stopped"], partial
    assert partial["trials"]["finished_here"] == 2
    assert "--study" in partial["resume"] and "--storage" in partial["resume"]
    assert not _temporary_files(out), _temporary_files(out)
