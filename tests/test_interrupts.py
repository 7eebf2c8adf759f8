"""Kills and signals during training: checkpoints, a partial summary, exit codes, and resume to the same numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill.cli import main
from tests.conftest import metric_points, system_runs

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = str(ROOT / "experiments/breast_cancer_gp.toml")
#: A fixed KL term: "auto" would first cross-validate 18 students of 400 epochs per episode, most of this
#: file's time, for what a signal, a checkpoint and resume do not depend on. tests/test_kd_selection.py
#: covers "auto" across a stop and resume (test_a_run_stopped_after_its_cross_validation_fit_resumes_...),
#: tests/test_fit_resume.py a stacked fit (as the cross-validation one is) stopped mid-epoch.
FIXED_KL = ["--set", "objective.kl_weight=1.0", "--set", "objective.temperature=1.0"]
# Long enough to be caught in training (about 2 s of epochs after the first checkpoint, in a process that
# writes a checkpoint at every epoch end), short enough for CI's budget.
SETTINGS = ["--set", "train.epochs=400", "--set", "protocol.episodes=3", "--set", "train.checkpoint_interval=0",
            "--set", "teacher.cache=false", "--set", 'protocol.controls=["null_teacher"]', *FIXED_KL]

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _start(out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "distill", "run", EXPERIMENT, "-q", "--output", str(out), *SETTINGS, *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _wait_for_checkpoint(run_dir: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list((run_dir / "checkpoints").glob("fit-*.pt")):
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def _numbers(summary: dict) -> dict:
    """The summary without wall times and paths: what must not change on resume."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()
                    if k not in ("run_dir", "mlflow_run_id", "mlflow_model_uri") and "second" not in k
                    and not k.endswith("_s")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(summary)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict:
    """The same run, never interrupted."""
    out = tmp_path_factory.mktemp("clean") / "run"
    assert main(["run", EXPERIMENT, "-q", "--no-track", "--output", str(out), *SETTINGS]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and not (out / "checkpoints").exists()
    return summary


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_writes_a_checkpoint_and_a_partial_summary_and_resume_finishes_the_same(
        tmp_path: Path, clean: dict, sig: signal.Signals, code: int) -> None:
    out = tmp_path / "run"
    process = _start(out, "--no-track")
    _wait_for_checkpoint(out, process)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    assert f"resume with: python -m distill run --resume {out}" in stderr
    partial = json.loads((out / "summary.json").read_text())
    assert partial["status"] == "interrupted" and partial["signal"] == sig.name
    assert "epoch" in partial["stopped"] and "step" in partial["stopped"]
    assert not (out / "history.csv").exists() and not (out / "student.pt").exists()  # nothing looks finished
    [state_file] = list((out / "checkpoints").glob("fit-*.pt"))
    import torch

    state = torch.load(state_file, weights_only=True)  # tensors and plain values only
    assert state["config"] == (out / "config.toml").read_text()  # the resolved config travels with the state
    assert {"weights", "optimizer", "generators", "rng", "stoppers", "progress", "partial"} <= state.keys()
    assert state["partial"]["step"] >= 1  # stopped after a step, mid-epoch

    assert main(["run", "--resume", str(out), "-q", "--no-track"]) == 0
    resumed = json.loads((out / "summary.json").read_text())
    assert _numbers(resumed) == _numbers(clean)
    assert not (out / "checkpoints").exists()


def test_sigkill_then_resume_gives_the_uninterrupted_numbers(tmp_path: Path, clean: dict) -> None:
    out = tmp_path / "run"
    process = _start(out, "--no-track")
    _wait_for_checkpoint(out, process)
    time.sleep(0.3)  # a few more epochs, so the kill lands between two checkpoints
    process.kill()
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    assert main(["run", "--resume", str(out), "-q", "--no-track"]) == 0
    assert _numbers(json.loads((out / "summary.json").read_text())) == _numbers(clean)


def test_mlflow_run_is_killed_then_reopened_and_finished_with_each_episode_once(tmp_path: Path,
                                                                                fresh_mlflow_store) -> None:
    import mlflow

    uri = fresh_mlflow_store(tmp_path / "mlflow.db")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    out = tmp_path / "run"
    # 100 epochs, not 400: a signal after the first checkpoint still lands with episodes left to run (the
    # checkpoint a signal mid-epoch writes is checked by the tests above).
    process = _start(out, "--set", "tracking.experiment='resume-test'", "--set", "train.epochs=100", env=env)
    _wait_for_checkpoint(out, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    run_id = json.loads((out / "summary.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(uri)
    assert client.get_run(run_id).info.status == "KILLED"

    resumed = subprocess.run([sys.executable, "-m", "distill", "run", "--resume", str(out), "-q"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mlflow_run_id"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    experiment = client.get_experiment_by_name("resume-test")
    # one run per system (none twice, though the killed attempt trained some episodes), each with every episode
    children = system_runs(client, run_id)
    assert sorted(children) == ["baseline", "logistic_regression", "null_teacher", "student", "teacher"]
    assert len(client.search_runs([experiment.experiment_id])) == 6
    for system, child in children.items():
        assert metric_points(client, child.info.run_id, "test_accuracy") == [
            (e, pytest.approx(row[system]["accuracy"], abs=1e-12)) for e, row in enumerate(summary["episodes"])]


def test_resume_refuses_what_it_cannot_resume(tmp_path: Path, clean: dict, capsys) -> None:
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    done = tmp_path / "done"
    assert main(["run", EXPERIMENT, "-q", "--no-track", "--output", str(done), "--set", "train.epochs=3",
                 *FIXED_KL]) == 0
    capsys.readouterr()
    assert main(["run", "--resume", str(done), "--no-track"]) == 2
    assert "already finished" in capsys.readouterr().err
    assert main(["run", EXPERIMENT, "--resume", str(done)]) == 2
    assert "takes no experiment file" in capsys.readouterr().err
    assert main(["run"]) == 2
    assert "needs an experiment file" in capsys.readouterr().err


def simulate_full_disk_at(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The atomic rename of the run's file ``name`` fails as on a full disk (ENOSPC); other writes work."""
    import errno

    import distill.outputs.rundir

    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(name):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(distill.outputs.rundir.os, "replace", replace)


def test_a_write_that_fails_midway_leaves_nothing_that_looks_finished(tmp_path: Path, monkeypatch, capsys) -> None:
    simulate_full_disk_at(monkeypatch, "history.csv")
    out = tmp_path / "run"
    assert main(["run", EXPERIMENT, "-q", "--no-track", "--output", str(out), "--set", "train.epochs=3",
                 *FIXED_KL]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "history.csv" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert not (out / "summary.json").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") or ".tmp." in p.name]  # no half-written file


# --------------------------------------------------------------------------- tune


def _wait_for_finished_trials(journal_path: Path, process: subprocess.Popen, count: int,
                              timeout: float = 120.0) -> None:
    from tests.test_tuning import load_study

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if journal_path.exists():
            try:
                if sum(t.state.is_finished() for t in load_study(journal_path).trials) >= count:
                    return
            except KeyError:  # the study is not in the journal yet
                pass
        assert process.poll() is None, process.communicate()
        time.sleep(0.5)  # each look reads the whole journal: CPU the other test worker would otherwise have
    raise AssertionError(f"fewer than {count} trials finished")


# SIGTERM only: a SIGINT takes the same handler (only the exit code differs). SIGINT in a real process
# mid-fit is the SIGINT case of test_a_signal_stops_writes_a_checkpoint_... above; SIGINT ending a tune
# search with 130 and its handler put back is the SIGINT case of test_a_signal_between_two_trials_... below.
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143)])
def test_a_signal_stops_tune_after_a_step_records_every_trial_and_the_printed_command_continues_the_study(
        tmp_path: Path, fresh_mlflow_store, sig: signal.Signals, code: int) -> None:
    import mlflow
    from optuna.trial import TrialState

    from tests.test_tuning import STUDY, load_study, write_config

    # Trials of a fraction of a second (two 150-epoch episodes), far more than will run. The untuned
    # config on a fixed KL term (the trials take theirs from the search space): "auto" would add its
    # cross-validation to the resumed study's untuned validation score and test run.
    toml = write_config(tmp_path, train={"epochs": 150}, tune={"trials": 500},
                        objective={"kl_weight": 1.0, "temperature": 1.0})
    uri = fresh_mlflow_store(tmp_path / "mlflow.db")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    journal_path = tmp_path / "journal.log"
    command = ["tune", str(toml), "-q", "--storage", journal_path.name, "-o", "first"]
    process = subprocess.Popen([sys.executable, "-m", "distill", *command], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_finished_trials(journal_path, process, 2)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr and "failed" not in stderr  # no Optuna "Trial N failed" noise

    # Optuna: nothing left RUNNING; the trial the signal cut short is FAIL, every other one finished.
    trials = load_study(journal_path).trials
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states
    partial = json.loads((tmp_path / "first" / "tuning.json").read_text())
    assert partial["status"] == "interrupted" and partial["signal"] == sig.name
    cut_short = partial["cut_short"]
    assert [t.number for t in trials if t.state == TrialState.FAIL] == cut_short
    assert len(cut_short) <= 1 and (not cut_short or f"trial {cut_short[0]}" in partial["stopped"])
    assert partial["trials"]["total"] == len(trials) == partial["trials"]["finished_here"] + len(cut_short)
    assert partial["trials"]["complete"] == states.count(TrialState.COMPLETE) >= 2
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert t.value is not None and 0.0 <= t.value <= 1.0

    # MLflow: the study's parent KILLED; one child per trial, the cut-short one KILLED too.
    client = mlflow.MlflowClient(uri)
    parent_id = partial["mlflow_run_id"]
    assert client.get_run(parent_id).info.status == "KILLED"
    experiment = client.get_experiment_by_name(STUDY)
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'",
                                  max_results=1000)
    by_name = {c.info.run_name: c for c in children}
    assert sorted(by_name) == sorted(f"trial {t.number}" for t in trials)
    for t in trials:
        expected = "KILLED" if t.number in cut_short else {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[t.state.name]
        assert by_name[f"trial {t.number}"].info.status == expected

    # The printed command continues the same study (two more trials here, not the hundreds left).
    printed = stderr.split("resume with: ", 1)[1].splitlines()[0]
    assert partial["resume"] == printed
    words = printed.split()
    assert words[:4] == ["python", "-m", "distill", "tune"]
    assert (tmp_path / words[4]).resolve() == (tmp_path / "first" / "config.toml").resolve()  # from the same folder
    assert words[words.index("--trials") + 1] == str(500 - partial["trials"]["finished_here"])
    words[words.index("--trials") + 1] = "2"
    resumed = subprocess.run([sys.executable, *words[1:], "-q", "-o", "second"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((tmp_path / "second" / "tuning.json").read_text())
    assert summary["status"] == "completed" and summary["study"] == STUDY
    after = load_study(journal_path).trials
    assert [t.number for t in after] == list(range(len(trials) + 2))
    assert summary["trials"]["before"] == len(trials) and summary["trials"]["total"] == len(trials) + 2
    assert summary["mlflow_run_id"] == parent_id  # the same MLflow study run, reopened and finished
    assert client.get_run(parent_id).info.status == "FINISHED"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_between_two_trials_ends_the_search_without_cutting_one_short(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, sig: signal.Signals, code: int) -> None:
    """Deterministic: the signal arrives as trial 1 returns its value, before Optuna asks for trial 2."""
    from optuna.trial import TrialState

    import distill.experiment.tune
    from tests.test_tuning import load_study, write_config

    real = distill.experiment.tune.validation_score
    calls: list[int] = []

    def score_then_signal(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2 and kwargs.get("report") is not None:  # trial 1 (a search trial, not the untuned score)
            os.kill(os.getpid(), sig)
        return result

    monkeypatch.setattr(distill.experiment.tune, "validation_score", score_then_signal)
    toml = write_config(tmp_path, tune={"trials": 10})
    journal_path = tmp_path / "journal.log"
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert main(["tune", str(toml), "-q", "--no-track", "--storage", str(journal_path),
                 "-o", str(tmp_path / "out")]) == code
    err = capsys.readouterr().err
    assert "after 2 trial(s), before the test comparison" in err and "Traceback" not in err
    trials = load_study(journal_path).trials
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.COMPLETE), (1, TrialState.COMPLETE)]
    partial = json.loads((tmp_path / "out" / "tuning.json").read_text())
    assert partial["status"] == "interrupted" and partial["signal"] == sig.name
    assert partial["cut_short"] == [] and partial["trials"]["finished_here"] == 2
    assert partial["resume"].split("--trials ")[1].split()[0] == "8"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back
    assert {s: signal.getsignal(s) for s in handlers} == handlers


def test_a_signal_a_nested_stop_took_reaches_the_enclosing_stop() -> None:
    """A tune's comparison run installs its own stop; a signal it took after its summary landed (it then
    finishes anyway) stops the tune too, at its next check, instead of being swallowed."""
    from distill.interrupts import Interrupted, StopRequest

    outer, inner, alone = StopRequest(), StopRequest(), StopRequest()
    with outer.installed():
        with inner.installed():
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 5
            while not inner() and time.monotonic() < deadline:  # delivered between bytecodes
                time.sleep(0.01)
        assert inner.signal_name == outer.signal_name == "SIGTERM"
        with pytest.raises(Interrupted):
            outer.check("after the nested work")
    with alone.installed():  # an untouched stop hands nothing on
        pass
    assert alone() is False


def _session_members(sid: int) -> list[int]:
    """Processes still alive in session ``sid`` (field 6 of /proc/PID/stat)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 3 and int(fields[3]) == sid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads sessions from /proc (Linux)")
def test_ctrl_c_with_teacher_workers_stops_cleanly_leaves_no_process_and_resumes_the_same(tmp_path: Path,
                                                                                          clean: dict) -> None:
    """Ctrl-C in a terminal signals the whole process group, teacher workers included: they leave it to the
    run, which stops as without workers; none of them outlives it; the numbers are the same."""
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "distill", "run", EXPERIMENT, "-q", "--no-track", "--output", str(out), *SETTINGS,
         "--set", "teacher.workers=1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    _wait_for_checkpoint(out, process)
    assert len(_session_members(process.pid)) >= 2  # the run and its worker
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    deadline = time.monotonic() + 30
    while _session_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _session_members(process.pid) == []
    assert main(["run", "--resume", str(out), "-q", "--no-track"]) == 0
    resumed = _numbers(json.loads((out / "summary.json").read_text()))
    assert resumed["config"]["teacher"].pop("workers") == 1
    expected = _numbers(clean)
    expected["config"]["teacher"].pop("workers")
    assert resumed == expected
