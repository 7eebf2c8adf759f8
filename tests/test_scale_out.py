"""Beyond one process (issue 18): ``tune --workers`` supervising worker processes on one study.

Several workers on a real PostgreSQL server, each process started by hand and under ``--workers``, one of
them killed, are tests/test_mlflow_server.py's (tracked to a shared MLflow server, as several machines
would be); here, the supervisor on the default journal file and Ctrl-C reaching every worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.processes import communicate_all, reaped
from tests.test_tuning import FIXED_KL, ROOT, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _wait(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[str, str]]:
    return communicate_all(procs, timeout)


NO_PRUNING = {"pruner": "none", "sampler": "random"}


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state == TrialState.COMPLETE]


def _assert_best_is_read_back(study: optuna.Study) -> None:
    complete = _complete(study)
    pick = max if study.direction.name == "MAXIMIZE" else min
    best = pick(complete, key=lambda t: (t.value, -t.number))
    assert study.best_trial.value == best.value
    assert study.best_trial.params == next(t for t in complete if t.number == study.best_trial.number).params


def _supervisor(toml: Path, folder: Path, storage: str, workers: int, trials: int, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "distill", "tune", str(toml), "--trials", str(trials), "--workers", str(workers),
         "--study", "sup", "--storage", storage, "-o", "out", "--no-track", *extra],
        cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_tune_workers_on_a_journal_file_splits_trials_and_threads(tmp_path: Path) -> None:
    """``--workers 2 --trials 5`` on the default kind of storage: 5 trials in all (3 + 2), each worker
    says its thread count once, one run directory per worker."""
    toml = write_config(tmp_path, protocol={"episodes": 1}, objective=FIXED_KL, tune=NO_PRUNING)
    journal = tmp_path / "study.log"
    proc = _supervisor(toml, tmp_path, str(journal), workers=2, trials=5)
    (out, err), = _wait([proc])
    assert proc.returncode == 0, err
    study = optuna.load_study(study_name="sup", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    assert sorted(t.number for t in study.trials) == list(range(5))
    assert len(_complete(study)) == 5
    by_worker = sorted(t.user_attrs["distill_worker"] for t in study.trials)
    assert by_worker == ["1/2"] * 3 + ["2/2"] * 2
    from distill.experiment.workers import threads_per_worker
    from distill.seeding import available_cores

    threads = threads_per_worker(available_cores(), 2, 0)
    for label in ("1/2", "2/2"):
        assert err.count(f"worker {label}: {threads} thread(s)") == 1, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["study", "worker-1", "worker-2"]
    assert "2 worker(s) finished 5 trial(s)" in out
    _assert_best_is_read_back(study)
    # the workers only searched; the test comparison ran once, after them, on the whole study
    for worker in ("worker-1", "worker-2"):
        searched = json.loads((tmp_path / "out" / worker / "tuning.json").read_text())
        assert (searched["status"], searched["untuned"], searched["best"]["test"]) == ("searched", None, None)
        assert not (tmp_path / "out" / worker / "tuned").exists()
    compared = json.loads((tmp_path / "out" / "study" / "tuning.json").read_text())
    assert compared["status"] == "completed"
    assert compared["trials"] == {"before": 5, "total": 5, "complete": 5, "pruned": 0, "failed": 0}
    assert (compared["best"]["trial"], compared["best"]["validation"]) == (study.best_trial.number, study.best_value)
    assert compared["best"]["params"] == study.best_trial.params
    for side in ("tuned", "untuned"):
        assert json.loads((tmp_path / "out" / "study" / side / "summary.json").read_text())["status"] == "completed"
    assert compared["best"]["test"]["student"] == json.loads(
        (tmp_path / "out" / "study" / "tuned" / "summary.json").read_text())["student"]
    assert out.count("test student f1_macro") == 1


def _running_trial(storage: str, study_name: str, deadline: float) -> optuna.trial.FrozenTrial:
    """The first trial seen RUNNING with its worker's pid recorded (waits for the workers to get there)."""
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:  # the workers have not created the study yet
            time.sleep(0.2)
            continue
        for trial in study.get_trials(states=(TrialState.RUNNING,)):
            if "distill_worker_pid" in trial.user_attrs:
                return trial
        time.sleep(0.2)
    raise AssertionError("no worker started a trial in time")


def test_ctrl_c_on_the_supervisor_reaches_every_worker(tmp_path: Path) -> None:
    """SIGINT to ``tune --workers 2`` (a Ctrl-C): every worker receives it, stops, and the supervisor exits 130
    with no worker left alive; what finished is in the study."""
    toml = write_config(tmp_path, protocol={"episodes": 1}, objective=FIXED_KL, train={"epochs": 400},
                        tune=NO_PRUNING)
    journal = tmp_path / "study.log"
    proc = _supervisor(toml, tmp_path, str(journal), workers=2, trials=40)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    with reaped([proc]):
        running = _running_trial(storage, "sup", deadline=time.monotonic() + 120)
        pids = {running.user_attrs["distill_worker_pid"]}
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:  # both workers have started a trial
            study = optuna.load_study(study_name="sup", storage=storage)
            pids |= {t.user_attrs["distill_worker_pid"] for t in study.trials if "distill_worker_pid" in t.user_attrs}
            time.sleep(0.2)
        assert len(pids) == 2
        proc.send_signal(signal.SIGINT)
        (_, err), = _wait([proc], timeout=120)
    assert proc.returncode == 130, err
    for pid in pids:  # reaped by the supervisor: no such process any more
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    study = optuna.load_study(study_name="sup", storage=storage)
    assert len(study.trials) < 40  # stopped early, not run to the end
    assert not study.get_trials(states=(TrialState.RUNNING,))  # every started trial was closed by its worker
