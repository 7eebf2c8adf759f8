"""Concurrent writers lose nothing.

Two ``distill run`` processes recording into the same MLflow server and experiment at the same
moment, and two ``distill tune`` workers adding trials to one journal study (tracked on that same
server): every run, episode and trial is present once, finished, and records what its own
``summary.json`` / ``tuning.json`` says.

The server is the real ``mlflow server`` fixture of tests/conftest.py (SQLite backend, proxied
artifacts, a free loopback port), one per session, shared with tests/test_tracking.py; the "Default"
experiment checked below receives nothing from either module (every tracked run names its experiment).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import metric_points, system_runs
from tests.processes import communicate_all
from tests.test_tuning import BASE as TUNE_BASE
from tests.test_tuning import load_study, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "breast_cancer_gp.toml"
#: A fixed KL term, not the experiment's "auto" (a cross-validation fit per episode, in every process at once,
#: for what concurrent recording does not depend on); tests/test_tracking.py checks that "auto" is recorded.
KL_WEIGHT = 1.0
FIXED_KL = ["--set", f"objective.kl_weight={KL_WEIGHT}", "--set", "objective.temperature=1.0"]
EPISODES = 2  # nesting and per-episode numbers need two; more only adds time
EPOCHS = 5
SEEDS = (11, 22)
SYSTEMS = ("teacher", "student", "baseline")
#: breast_cancer_gp's systems: SYSTEMS, its control and its reference (one MLflow child run each)
ALL_SYSTEMS = ("baseline", "logistic_regression", "null_teacher", "student", "teacher")


def _env(uri: str) -> dict[str, str]:
    """The test session's environment, minus its MLflow settings, pointed at ``uri``; one thread each."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=uri, MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false", PYTHONPATH=str(ROOT),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _run_together(commands: list[list[str]], cwd: Path, env: dict[str, str], timeout: float = 420) -> list[str]:
    """Start every command before waiting for any; return their stderr, each asserted exit 0."""
    procs = [subprocess.Popen([sys.executable, "-m", "distill", *cmd], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cmd in commands]
    results = communicate_all(procs, timeout)
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-4000:]
    return [err for _, err in results]


def _runs_in(client, *experiment_names: str) -> list:
    ids = [e.experiment_id for e in map(client.get_experiment_by_name, experiment_names) if e is not None]
    return client.search_runs(ids, max_results=1000) if ids else []


# --------------------------------------------------------------------------- two runs, one experiment


def test_two_runs_at_once_into_one_experiment_lose_nothing(mlflow_server: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    experiment_name = "concurrent-runs"
    outs = [tmp_path / f"run-seed{seed}" for seed in SEEDS]
    _run_together(
        [["run", str(EXPERIMENT), "-q", "--episodes", str(EPISODES), "--seed", str(seed), "--output", str(out),
          "--set", f"train.epochs={EPOCHS}", "--set", f'tracking.experiment="{experiment_name}"', *FIXED_KL]
         for seed, out in zip(SEEDS, outs, strict=True)],
        cwd=tmp_path, env=_env(mlflow_server),
    )
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()  # nothing went elsewhere

    client = MlflowClient(tracking_uri=mlflow_server)
    summaries = [json.loads((out / "summary.json").read_text()) for out in outs]
    run_ids = [s["mlflow_run_id"] for s in summaries]
    assert len(set(run_ids)) == 2 and None not in run_ids
    for seed, out, summary in zip(SEEDS, outs, summaries, strict=True):
        assert summary["status"] == "completed" and summary["seed"] == seed
        run_id = summary["mlflow_run_id"]
        parent = client.get_run(run_id)
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["distill.run_dir"] == out.name

        # Its own params, not the other run's.
        params = parent.data.params
        assert params["seed"] == str(seed)
        assert params["protocol.episodes"] == str(EPISODES)
        assert params["train.epochs"] == str(EPOCHS)
        assert float(params["objective.kl_weight"]) == KL_WEIGHT

        # Its aggregate test metrics are its summary's.
        metrics = parent.data.metrics
        for system in SYSTEMS:
            for metric in ("accuracy", "f1_macro"):
                assert metrics[f"{system}/test_{metric}"] == pytest.approx(summary[system][metric], abs=1e-9)
                assert summary[system][metric] == summary["aggregate"][system][metric]["mean"]
            low, high = summary["aggregate"][system]["accuracy"]["ci95"]
            assert metrics[f"{system}/test_accuracy_ci95_low"] == pytest.approx(low, abs=1e-9)
            assert metrics[f"{system}/test_accuracy_ci95_high"] == pytest.approx(high, abs=1e-9)
        paired = summary["paired"]["student_minus_baseline"]["accuracy"]
        assert metrics["student_minus_baseline/accuracy"] == pytest.approx(paired["mean"], abs=1e-9)

        # Its artifacts: the summary (naming this run), the student checkpoint, and the logged model.
        names = {a.path for a in client.list_artifacts(run_id)}
        for name in ("summary.json", "student.pt", "config.toml", "history.csv", "log.txt", "episodes.png"):
            assert name in names, (name, names)
        logged = json.loads(Path(client.download_artifacts(run_id, "summary.json", str(tmp_path))).read_text())
        assert logged["mlflow_run_id"] == run_id and logged["seed"] == seed
        assert logged["student"] == summary["student"]
        model_uri = summary["mlflow_model_uri"]
        assert model_uri and model_uri.startswith("models:/")
        assert client.get_logged_model(model_uri.removeprefix("models:/")).source_run_id == run_id

        # Exactly its systems, each FINISHED, nested under it, with every episode's numbers (step = episode).
        children = system_runs(client, run_id)
        assert sorted(children) == sorted(ALL_SYSTEMS)
        for system in SYSTEMS:
            child = children[system]
            assert child.info.status == "FINISHED"
            assert metric_points(client, child.info.run_id, "test_accuracy") == [
                (e, pytest.approx(row[system]["accuracy"], abs=1e-12)) for e, row in enumerate(summary["episodes"])]
        points = metric_points(client, children["student"].info.run_id, "train_loss")
        assert [step for step, _ in points] == list(range(1, EPOCHS + 1))

    # Nothing else was recorded (here or in "Default", see below): two parents and their systems.
    everything = _runs_in(client, experiment_name, "Default")
    assert len(everything) == 2 + 2 * len(ALL_SYSTEMS)
    assert {r.info.run_id for r in everything if "mlflow.parentRunId" not in r.data.tags} == set(run_ids)

    # Both runs are in tracking.experiment, also when both processes found it missing and raced to
    # create it (the loser looks it up again and starts its run by experiment id).
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None
    misplaced = {client.get_run(i).info.run_name: client.get_experiment(client.get_run(i).info.experiment_id).name
                 for i in run_ids if client.get_run(i).info.experiment_id != experiment.experiment_id}
    assert not misplaced, f"runs recorded outside '{experiment_name}': {misplaced}"
    in_experiment = client.search_runs([experiment.experiment_id], max_results=1000)
    assert len(in_experiment) == 2 + 2 * len(ALL_SYSTEMS)


def test_one_lock_per_local_store_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distill.outputs.tracking import _local_store_lock

    monkeypatch.chdir(tmp_path)
    relative = _local_store_lock("sqlite:///mlflow.db")
    assert relative is not None and relative.parent == Path(tempfile.gettempdir())
    assert _local_store_lock(f"sqlite:///{tmp_path}/mlflow.db") == relative  # the same file, however named
    assert _local_store_lock(f"sqlite:///{tmp_path}/other.db") != relative
    for remote in ("http://127.0.0.1:5000", "sqlite:///:memory:", "postgresql://u@h/db", "file:///tmp/mlruns"):
        assert _local_store_lock(remote) is None, remote


def test_runs_started_in_the_same_second_each_claim_their_own_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    from datetime import datetime

    from distill.outputs import rundir

    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(rundir, "datetime", FrozenClock)
    root = tmp_path / "runs"
    (root / "20260102-030405-exp").mkdir(parents=True)  # another process claimed the name a moment ago
    assert rundir.claim_run_dir("exp", None, root).path.name == "20260102-030405-exp-2"

    writers = 8  # released together, all in the same (frozen) second
    barrier = threading.Barrier(writers)
    claimed: list[Path] = []

    def claim() -> None:
        barrier.wait()
        claimed.append(rundir.claim_run_dir("exp", None, root).path)

    threads = [threading.Thread(target=claim) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    names = sorted(p.name for p in claimed)
    assert len(set(names)) == writers
    assert names == sorted(f"20260102-030405-exp-{n}" for n in range(3, 3 + writers))
    assert all(not any(p.iterdir()) for p in claimed)  # empty: no probe file left behind


def test_runs_started_together_in_a_fresh_folder_share_the_default_local_store(tmp_path: Path) -> None:
    """The README's default store (``sqlite:///mlflow.db`` in the working folder), made by three runs at once.

    MLflow creates a new SQLite store's tables on first use without a lock; before distill took a
    lock around it, two of three such runs died with "table _alembic_tmp_experiments already exists".
    """
    from mlflow.tracking import MlflowClient

    seeds = range(3)
    env = {k: v for k, v in _env("unused").items() if k != "MLFLOW_TRACKING_URI"}
    _run_together(  # no --output either: each claims its own runs/<timestamp>-<name>[-N] folder
        [["run", str(EXPERIMENT), "-q", "--seed", str(i), "--set", "train.epochs=5", "--episodes", "1", *FIXED_KL]
         for i in seeds],
        cwd=tmp_path, env=env,
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("breast_cancer_gp")
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id], max_results=100)
            if "mlflow.parentRunId" not in r.data.tags}  # the runs, not their system runs
    assert len(runs) == len(seeds)
    folders = sorted((tmp_path / "runs").iterdir())
    summaries = {json.loads((f / "summary.json").read_text())["seed"]: json.loads((f / "summary.json").read_text())
                 for f in folders}
    assert len(folders) == len(seeds) and sorted(summaries) == list(seeds)  # a folder each, none shared
    for i, summary in summaries.items():
        run = runs[summary["mlflow_run_id"]]
        assert run.info.status == "FINISHED" and run.data.params["seed"] == str(i)
        assert run.data.metrics["student/test_accuracy"] == pytest.approx(summary["student"]["accuracy"], abs=1e-9)


# --------------------------------------------------------------------------- two tune workers, one study
#
# tests/test_tuning.py::test_two_workers_share_one_journal_study already runs two `tune` processes on
# one journal file and asserts trial numbers 0..7 each once and every state COMPLETE or PRUNED, but
# without tracking, and without checking that each finished trial kept its params and value. This
# test adds both, with the two workers tracking into the same MLflow server.


def test_two_tune_workers_on_one_study_lose_no_trial_and_track_each_once(
    mlflow_server: str, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    per_worker = 3
    study_name = "shared-tracked"
    experiment_name = "concurrent-tune"
    client = MlflowClient(tracking_uri=mlflow_server)
    # The experiment does not exist yet: both workers may find it missing and race to create it
    # (the loser uses the winner's; see test_study_tracker_survives_losing_the_experiment_creation_race).
    assert client.get_experiment_by_name(experiment_name) is None
    toml = write_config(tmp_path, protocol={"episodes": 1}, tracking={"experiment": experiment_name},
                        objective={"kl_weight": KL_WEIGHT, "temperature": 1.0})  # untuned: no "auto" CV
    _run_together(
        [["tune", str(toml), "--trials", str(per_worker), "--study", study_name, "--storage", "journal.log",
          "-o", f"out{i}", "-q"] for i in range(2)],
        cwd=tmp_path, env=_env(mlflow_server),
    )

    # Optuna: every trial 0..N-1 once, finished, with its params and (when COMPLETE) a value.
    trials = load_study(tmp_path / "journal.log", study_name).trials
    n = 2 * per_worker
    assert sorted(t.number for t in trials) == list(range(n))
    space = set(TUNE_BASE["tune"]["space"])  # tests/test_tuning.py's search space
    for t in trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), (t.number, t.state)
        assert set(t.params) == space, (t.number, t.params)
        if t.state == TrialState.COMPLETE:
            assert t.value is not None and 0.0 <= t.value <= 1.0
    summaries = [json.loads((tmp_path / f"out{i}" / "tuning.json").read_text()) for i in range(2)]
    for s in summaries:
        assert s["status"] == "completed" and s["study"] == study_name
        assert per_worker <= s["trials"]["total"] <= n and s["trials"]["failed"] == 0

    # MLflow: one child run per finished trial, each once, with the trial's state, params and value.
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {s["mlflow_run_id"] for s in summaries} <= {p.info.run_id for p in parents}
    for parent in parents:
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["distill.study"] == study_name
    assert sorted(c.info.run_name for c in children) == sorted(f"trial {t.number}" for t in trials)
    by_name = {c.info.run_name: c for c in children}
    for t in trials:
        child = by_name[f"trial {t.number}"]
        assert child.data.tags["optuna.state"] == t.state.name
        assert child.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[t.state.name]
        assert child.data.params == {k: str(v) for k, v in t.params.items()}
        if t.state == TrialState.COMPLETE:
            assert child.data.metrics["validation/value"] == pytest.approx(t.value, abs=1e-12)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} <= {p.info.run_id for p in parents}
    assert len(runs) == len(parents) + n

    # "The MLflow study run": one parent holding every trial, even when both workers started on a new
    # study at the same moment (each keeps the earliest parent and deletes its own).
    assert len(parents) == 1, [p.info.run_id for p in parents]
    assert {s["mlflow_run_id"] for s in summaries} == {parents[0].info.run_id}


# --------------------------------------------------------------------------- the experiment-creation race
#
# Deterministic versions of the race two processes hit when both find the MLflow experiment missing:
# the other process creates it between this process's lookup and its own create_experiment.


@pytest.fixture()
def lost_race(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_mlflow_store):
    """A local store where experiment ``name`` exists, but this process's first lookup misses it."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    from tests.test_tracking import mlflow_state

    uri = fresh_mlflow_store(tmp_path / "mlflow.db")
    name = "raced"
    existing = MlflowClient(tracking_uri=uri).create_experiment(name)  # "the other process"
    real = TrackingServiceClient.get_experiment_by_name
    seen: list[str] = []

    def first_lookup_misses(self, experiment_name):
        seen.append(experiment_name)
        return None if len(seen) == 1 else real(self, experiment_name)

    monkeypatch.setattr(TrackingServiceClient, "get_experiment_by_name", first_lookup_misses)
    with mlflow_state():
        yield uri, name, existing
    assert mlflow.active_run() is None


def test_run_tracker_survives_losing_the_experiment_creation_race(lost_race) -> None:
    from mlflow.tracking import MlflowClient

    from distill.outputs.tracking import MlflowTracker

    uri, name, existing = lost_race
    tracker = MlflowTracker.start(uri, name, "raced-run", {})
    try:
        assert MlflowClient(tracking_uri=uri).get_run(tracker.run_id).info.experiment_id == existing
    finally:
        tracker.finish("FINISHED")


def test_study_tracker_survives_losing_the_experiment_creation_race(lost_race) -> None:
    from distill.config import validate_config
    from distill.outputs.tracking import StudyTracker

    uri, name, existing = lost_race
    config = validate_config({"name": name})
    tracker = StudyTracker.start(uri, config, "raced-study", "journal.log", "raced-run")
    try:
        assert tracker.experiment_id == existing
    finally:
        tracker.finish("FINISHED")


def test_a_study_parent_deleted_as_a_worker_reopens_it_is_looked_up_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_mlflow_store
) -> None:
    """Deterministic: worker B finds worker A's parent run of the study, and A deletes it (A then found an
    earlier parent, created at the same moment) before B sets it RUNNING. B looks again and joins the
    earlier one; before, B failed with "must be in the 'active' state" (seen with 4 workers on PostgreSQL)."""
    from mlflow.tracking import MlflowClient

    from distill.config import validate_config
    from distill.outputs.tracking import StudyTracker, study_key
    from tests.test_tracking import mlflow_state

    uri = fresh_mlflow_store(tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("parents")
    tags = {"distill.study_key": study_key("s", "journal.log")}
    earliest = client.create_run(experiment, tags=tags, start_time=1_000).info.run_id
    doomed = client.create_run(experiment, tags=tags, start_time=500).info.run_id  # looks earliest, then goes
    real = MlflowClient.update_run
    deleted: list[str] = []

    def its_creator_deletes_it_first(self, run_id, *args, **kwargs):
        if run_id == doomed and not deleted:
            MlflowClient(tracking_uri=uri).delete_run(run_id)
            deleted.append(run_id)
        return real(self, run_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "update_run", its_creator_deletes_it_first)
    with mlflow_state():
        tracker = StudyTracker.start(uri, validate_config({"name": "parents"}), "s", "journal.log", "r")
    try:
        assert deleted == [doomed]
        assert tracker.run_id == earliest
        assert client.get_run(earliest).info.status == "RUNNING"
    finally:
        tracker.finish("FINISHED")
    assert client.get_run(earliest).info.status == "FINISHED"


# --------------------------------------------------------------------------- the dataset-input race
#
# MLflow's SQL store logs a dataset input by looking the dataset up by (experiment, name, digest)
# and inserting it when absent, in one unlocked transaction. Two runs logging the same data into one
# experiment at the same moment can both miss it; the second insert then fails on the unique key
# (CI hit this in test_two_runs_at_once_into_one_experiment_lose_nothing). The tracker repeats the
# rolled-back call, which then finds the first run's dataset and adds only its own input edge.


def _dataset_frame():
    import numpy as np
    import pandas as pd

    return pd.DataFrame({"x": np.linspace(0.0, 1.0, 12), "label": ["a", "b"] * 6})


def _dataset_inputs(client, run_id: str) -> list[tuple[str, str, dict[str, str]]]:
    return [(d.dataset.name, d.dataset.digest, {t.key: t.value for t in d.tags})
            for d in client.get_run(run_id).inputs.dataset_inputs]


def test_a_run_that_loses_the_dataset_insert_race_still_records_its_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_mlflow_store
) -> None:
    """Deterministic: the other run inserts the dataset between this run's lookup and its insert."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from sqlalchemy import event

    from distill.outputs import tracking
    from tests.test_tracking import mlflow_state

    uri = fresh_mlflow_store(tmp_path / "mlflow.db")
    frame = _dataset_frame()
    with mlflow_state():
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        store = client._tracking_client.store
        experiment = client.create_experiment("raced-data")

        def race(name: str) -> tuple[str, str]:
            """Log dataset ``name`` from a new run while another new run logs it in between; both ids."""
            mine, theirs = (client.create_run(experiment).info.run_id for _ in range(2))
            fired: list[bool] = []

            def other_run_logs_in_between(conn, cursor, statement, parameters, context, executemany) -> None:
                if not fired and statement.lstrip().upper().startswith("SELECT") and "FROM datasets" in statement:
                    fired.append(True)  # before logging: the other run's own lookup must not fire again
                    tracking.MlflowTracker(theirs).log_dataset(frame, "sklearn:raced", name)

            event.listen(store.engine, "after_cursor_execute", other_run_logs_in_between)
            try:
                tracking.MlflowTracker(mine).log_dataset(frame, "sklearn:raced", name)
            finally:
                event.remove(store.engine, "after_cursor_execute", other_run_logs_in_between)
                assert fired == [True]  # the interleaving happened
            return mine, theirs

        # Without the repeat, this run's insert fails on the unique key: the bug CI hit.
        monkeypatch.setattr(tracking, "DATASET_RACE_ATTEMPTS", 1)
        # (A store failure reaches the user as one TrackingError line naming the store.)
        with pytest.raises(tracking.TrackingError, match="(?i)unique constraint"):
            race("first")
        # With it, the same interleaving leaves both runs with the one shared dataset.
        monkeypatch.undo()
        mine, theirs = race("second")

        inputs = _dataset_inputs(client, theirs)
        assert len(inputs) == 1
        name, digest, tags = inputs[0]
        assert name == "second" and tags == {"mlflow.data.context": "training"}
        assert _dataset_inputs(client, mine) == inputs
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # one row per dataset: no duplicate slipped in
        rows = db.execute("SELECT name, digest FROM datasets ORDER BY name").fetchall()
    assert rows == [("first", digest), ("second", digest)]


def test_many_runs_logging_one_dataset_at_once_each_record_it(mlflow_server: str) -> None:
    """Real concurrency: 8 runs, released together by a barrier, log the same data through the server."""
    import threading

    import mlflow
    from mlflow.tracking import MlflowClient

    from distill.outputs.tracking import MlflowTracker
    from tests.test_tracking import mlflow_state

    writers, rounds = 8, 4
    frame = _dataset_frame()
    with mlflow_state():
        mlflow.set_tracking_uri(mlflow_server)
        client = MlflowClient(mlflow_server)
        for r in range(rounds):  # a fresh experiment each round: each round is a new race to insert
            experiment = client.create_experiment(f"raced-data-{r}")
            run_ids = [client.create_run(experiment).info.run_id for _ in range(writers)]
            barrier = threading.Barrier(writers)
            errors: list[str] = []

            def log(run_id: str, barrier: threading.Barrier = barrier, errors: list[str] = errors) -> None:
                barrier.wait()
                try:
                    MlflowTracker(run_id).log_dataset(frame, "sklearn:raced", "sklearn:raced")
                except Exception as error:  # noqa: BLE001 -- collected and asserted below
                    errors.append(f"{type(error).__name__}: {str(error).splitlines()[0]}")

            threads = [threading.Thread(target=log, args=(run_id,)) for run_id in run_ids]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert errors == [], errors
            recorded = [_dataset_inputs(client, run_id) for run_id in run_ids]
            assert all(len(r) == 1 for r in recorded) and all(r == recorded[0] for r in recorded), recorded
            assert recorded[0][0][0] == "sklearn:raced"
