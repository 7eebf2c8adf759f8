"""A shared MLflow server on PostgreSQL (issue 18): what several machines would record to.

The server is ``mlflow_postgres_server`` (tests/conftest.py): a real ``mlflow server`` with a PostgreSQL
backend store and proxied artifacts (``--serve-artifacts``), so every artifact and model travels over
HTTP; the clients run in a folder of their own and never see the artifact destination. Four ``distill
run`` processes record to it at once; four ``distill tune`` workers share one PostgreSQL Optuna study
tracked on it, by hand and under ``--workers``, with one killed mid-trial each time; ``distill predict``
and a network teacher load the logged model back through it.
Everything recorded is checked against the run directory's own ``summary.json`` / ``history.csv``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from distill.cli import main
from distill.config import load_config
from distill.experiment.prepare import prepare
from distill.students.checkpoint import load_checkpoint, servable_from_checkpoint
from tests.conftest import MlflowServer, metric_points, system_runs
from tests.processes import communicate_all, reaped
from tests.test_tracking import mlflow_state
from tests.test_tuning import FIXED_KL as TUNE_FIXED_KL
from tests.test_tuning import write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "breast_cancer_gp.toml"
EPOCHS = 3
KL_WEIGHT = 1.0
#: tests/test_cli.py's pinned fixed-KL settings: no "auto" cross-validation in every process at once
FIXED_KL = ["--set", f"objective.kl_weight={KL_WEIGHT}", "--set", "objective.temperature=1.0"]
SEEDS = (0, 1, 2, 3)
RUNS_EXPERIMENT = "pg-runs"
SYSTEMS = ("teacher", "student", "baseline")


def _env(uri: str | None) -> dict[str, str]:
    """The session's environment without its MLflow settings (conftest points them at SQLite), with
    MLFLOW_TRACKING_URI = ``uri`` when given; one thread per process (four share two cores)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    if uri is not None:
        env["MLFLOW_TRACKING_URI"] = uri
    return env


def _start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distill", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_all(procs: list[subprocess.Popen], timeout: float = 420) -> None:
    """Wait for every process (killing the rest if one hangs); each must exit 0."""
    results = communicate_all(procs, timeout)
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-4000:]


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _no_local_store(folder: Path) -> None:
    """Nothing MLflow writes locally (a SQLite store, a file store, an artifact folder) is in ``folder``."""
    for name in ("mlflow.db", "mlruns", "mlartifacts"):
        assert not (folder / name).exists(), f"{name} written in the client's folder"


@pytest.fixture(scope="module")
def four_runs(mlflow_postgres_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four ``distill run`` processes at once, recording to the server: two name it by MLFLOW_TRACKING_URI,
    two by ``tracking.uri`` (with no MLFLOW_TRACKING_URI at all). Their run directories, by seed."""
    server = mlflow_postgres_server
    client_dir = tmp_path_factory.mktemp("client")
    outs = [client_dir / f"run-seed{seed}" for seed in SEEDS]
    procs = []
    for seed, out in zip(SEEDS, outs, strict=True):
        by_env = seed % 2 == 0
        where = [] if by_env else ["--set", f'tracking.uri="{server.uri}"']
        procs.append(_start(
            ["run", str(EXPERIMENT), "-q", "--episodes", "1", "--seed", str(seed), "--output", str(out),
             "--set", f"train.epochs={EPOCHS}", "--set", f'tracking.experiment="{RUNS_EXPERIMENT}"', *FIXED_KL,
             *where],
            cwd=client_dir, env=_env(server.uri if by_env else None),
        ))
    _wait_all(procs)
    _no_local_store(client_dir)
    return outs


def test_four_runs_at_once_record_everything_through_the_server_and_load_back_from_it(
    four_runs: list[Path], mlflow_postgres_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One test over the four runs (a fixture of the module would start them again in each xdist worker)."""
    _check_recorded(four_runs, mlflow_postgres_server, tmp_path / "recorded")
    _check_predict(four_runs, mlflow_postgres_server, tmp_path / "predict", monkeypatch)
    _check_network_teacher(four_runs, mlflow_postgres_server, tmp_path / "teacher", monkeypatch)


def _check_recorded(four_runs: list[Path], mlflow_postgres_server: MlflowServer, tmp_path: Path) -> None:
    """Every run FINISHED with params, test metrics, per-epoch curves, artifacts and model, as its run dir."""
    from mlflow.tracking import MlflowClient

    tmp_path.mkdir()

    server = mlflow_postgres_server
    client = MlflowClient(tracking_uri=server.uri)
    experiment = client.get_experiment_by_name(RUNS_EXPERIMENT)
    assert experiment is not None
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), experiment.artifact_location  # proxied
    summaries = [_summary(out) for out in four_runs]
    run_ids = [s["mlflow_run_id"] for s in summaries]
    assert None not in run_ids and len(set(run_ids)) == len(SEEDS)
    parents = [r for r in client.search_runs([experiment.experiment_id], max_results=1000)
               if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.info.run_id for r in parents) == sorted(run_ids)  # all four, nothing else

    for seed, out, summary in zip(SEEDS, four_runs, summaries, strict=True):
        run_id = summary["mlflow_run_id"]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and summary["status"] == "completed"
        assert run.data.tags["distill.run_dir"] == out.name and run.info.experiment_id == experiment.experiment_id

        params = run.data.params
        assert params["seed"] == str(seed) == str(summary["seed"])
        assert params["train.epochs"] == str(EPOCHS)
        assert params["protocol.episodes"] == "1"
        assert float(params["objective.kl_weight"]) == KL_WEIGHT

        metrics = run.data.metrics
        for system in SYSTEMS:
            for metric in ("accuracy", "f1_macro"):
                assert metrics[f"{system}/test_{metric}"] == pytest.approx(summary[system][metric], abs=1e-9)

        # Per-epoch histories: the run's (single episode's) curves are history.csv's, step for step.
        history = pd.read_csv(out / "history.csv")
        children = system_runs(client, run_id)
        for system in ("student", "baseline"):
            points = metric_points(client, children[system].info.run_id, "train_loss")
            rows = history[history.system == system].sort_values("epoch")
            assert [step for step, _ in points] == rows.epoch.tolist() == list(range(1, EPOCHS + 1))
            np.testing.assert_allclose([v for _, v in points], rows["train_loss"].to_numpy(), rtol=1e-5, atol=1e-6)

        # Artifacts, uploaded through the server: the same bytes as the run directory's files.
        names = {a.path for a in client.list_artifacts(run_id)}
        for name in ("summary.json", "student.pt", "config.toml", "history.csv", "learning_curves.png",
                     "confusion_matrix.png"):
            assert name in names, (name, names)
        fetched = tmp_path / run_id
        fetched.mkdir()
        logged = json.loads(Path(client.download_artifacts(run_id, "summary.json", str(fetched))).read_text())
        assert logged == summary
        student = Path(client.download_artifacts(run_id, "student.pt", str(fetched))).read_bytes()
        assert student == (out / "student.pt").read_bytes()
        plot = Path(client.download_artifacts(run_id, "learning_curves.png", str(fetched))).read_bytes()
        assert plot == (out / "learning_curves.png").read_bytes()

        # The logged model belongs to this run.
        model_uri = summary["mlflow_model_uri"]
        assert model_uri and model_uri.startswith("models:/")
        assert client.get_logged_model(model_uri.removeprefix("models:/")).source_run_id == run_id

    # The runs are rows of the PostgreSQL backend store; the artifacts are in the server's destination
    # folder, not anywhere the clients write.
    import psycopg

    with psycopg.connect(server.backend, connect_timeout=5) as db, db.cursor() as cur:
        cur.execute("SELECT run_uuid, status FROM runs WHERE run_uuid = ANY(%s)", (run_ids,))
        assert sorted(cur.fetchall()) == sorted((run_id, "FINISHED") for run_id in run_ids)
    stored = list(server.artifacts.rglob("student.pt"))
    assert len(stored) >= len(SEEDS), stored


def _test_rows(out: Path) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """A run's test rows (raw features), the probabilities its student.pt gives them, its class names."""
    payload = load_checkpoint(out / "student.pt")
    prepared = prepare(load_config(out / "config.toml"))
    d = prepared.dataset
    rows = pd.DataFrame(d.x[prepared.split.test], columns=d.feature_names)
    with torch.inference_mode():
        probs = servable_from_checkpoint(payload)(torch.tensor(rows.to_numpy(), dtype=torch.float32)).numpy()
    return rows, probs, [str(c) for c in payload["classes"]]


def _check_predict(four_runs: list[Path], mlflow_postgres_server: MlflowServer, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``predict`` by run directory, ``models:/`` and ``runs:/`` URI through the server: the same predictions."""
    tmp_path.mkdir()
    out = four_runs[1]
    summary = _summary(out)
    rows, probs, classes = _test_rows(out)
    csv = tmp_path / "rows.csv"
    rows.to_csv(csv, index=False)
    monkeypatch.chdir(tmp_path)
    sources = {"dir": str(out), "models": summary["mlflow_model_uri"], "runs": f"runs:/{summary['mlflow_run_id']}/student"}
    written = {}
    with mlflow_state():
        for key, source in sources.items():
            extra = [] if key == "dir" else ["--tracking-uri", mlflow_postgres_server.uri]
            assert main(["predict", source, str(csv), "-o", str(tmp_path / f"{key}.csv"), *extra]) == 0, key
            written[key] = pd.read_csv(tmp_path / f"{key}.csv")
    _no_local_store(tmp_path)
    expected = [classes[i] for i in probs.argmax(axis=1)]
    assert written["dir"]["prediction"].astype(str).tolist() == expected
    probability_columns = [c for c in written["dir"].columns if c != "prediction"]
    assert len(probability_columns) == len(classes)
    np.testing.assert_allclose(written["dir"][probability_columns].to_numpy(), probs, atol=1e-6)
    for key in ("models", "runs"):
        pd.testing.assert_frame_equal(written[key], written["dir"], check_exact=True)


def _check_network_teacher(four_runs: list[Path], mlflow_postgres_server: MlflowServer, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A network teacher given a ``models:/`` URI loads through the server and scores as the logged student."""
    tmp_path.mkdir()
    out = four_runs[2]
    summary = _summary(out)
    toml = tmp_path / "from_uri.toml"
    toml.write_text(
        'name = "from_uri"\n[data]\nsource = "sklearn:breast_cancer"\ntest_size = 100\n[few_shot]\nper_class = 3\n'
        f'[teacher]\nkind = "network"\nuri = "{summary["mlflow_model_uri"]}"\n[train]\nepochs = 2\n'
        f'[tracking]\nuri = "{mlflow_postgres_server.uri}"\n'
    )
    monkeypatch.chdir(tmp_path)
    with mlflow_state():
        assert main(["run", str(toml), "-o", str(tmp_path / "run"), "-q", "--no-track"]) == 0
    _no_local_store(tmp_path)
    second = _summary(tmp_path / "run")
    assert second["episodes"][0]["teacher_diagnostics"]["source"] == summary["mlflow_model_uri"]
    # The teacher's test accuracy is the logged student's, on the new run's test rows.
    prepared = prepare(load_config(tmp_path / "run" / "config.toml"))
    rows = torch.as_tensor(prepared.dataset.x[prepared.split.test], dtype=torch.float32)
    with torch.inference_mode():
        probs = servable_from_checkpoint(load_checkpoint(out / "student.pt"))(rows).numpy()
    y = prepared.dataset.y[prepared.split.test]
    assert second["teacher"]["accuracy"] == pytest.approx(float(np.mean(probs.argmax(axis=1) == y)), abs=1e-6)


#: a trial long enough to be seen RUNNING (with its MLflow run) and killed; heartbeats every second, stale after 2
KILLABLE = {"objective": TUNE_FIXED_KL, "train": {"epochs": 400},
            "tune": {"pruner": "none", "sampler": "random", "heartbeat_interval": 1, "grace_period": 2, "max_retry": 2}}


def _tune(toml: Path, study: str, storage: str, out: str, *args: str) -> list[str]:
    return ["tune", str(toml), "--study", study, "--storage", storage, "-o", out, *args]


def _running_trial_with_run(storage: str, study_name: str, client: object, experiment_name: str,
                            deadline: float, procs: list[subprocess.Popen]) -> tuple[object, object]:
    """A trial seen RUNNING and its MLflow child run seen RUNNING (opened when the trial starts, tagged with
    the process id of the worker that runs it). Fails at once, with their output, when every process of
    ``procs`` has exited; on the deadline, with what it saw (trials by state, runs by status)."""
    import optuna
    from optuna.trial import TrialState

    seen: dict[str, object] = {}
    while time.monotonic() < deadline:
        if all(p.poll() is not None for p in procs):
            outputs = [p.communicate() for p in procs]
            raise AssertionError(f"every worker exited before a tracked trial was seen running: {seen}\n"
                                 + "\n".join(f"exit {p.returncode}: {err[-2000:]}"
                                             for p, (_, err) in zip(procs, outputs, strict=True)))
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:  # the workers have not created the study yet
            time.sleep(0.2)
            continue
        experiment = client.get_experiment_by_name(experiment_name)  # type: ignore[attr-defined]
        trials = study.get_trials(deepcopy=False)
        seen["trials"] = sorted((t.number, t.state.name) for t in trials)
        for trial in (t for t in trials if t.state == TrialState.RUNNING):
            if experiment is None:
                continue
            runs = client.search_runs(  # type: ignore[attr-defined]
                [experiment.experiment_id], filter_string=f"tags.`optuna.trial` = '{trial.number}'")
            seen[f"runs of trial {trial.number}"] = [r.info.status for r in runs]
            if runs and runs[0].info.status == "RUNNING":
                return trial, runs[0]
        time.sleep(0.2)
    raise AssertionError(f"no worker started a tracked trial in time; last seen: {seen}")


def _study_runs(client: object, experiment_name: str, study: object) -> tuple[object, dict[str, object]]:
    """The study's one parent run and its trial runs by trial number; none RUNNING, every trial's run
    under the parent, FINISHED with the trial's value when the trial is COMPLETE."""
    from optuna.trial import TrialState

    experiment = client.get_experiment_by_name(experiment_name)  # type: ignore[attr-defined]
    runs = client.search_runs([experiment.experiment_id], max_results=1000)  # type: ignore[attr-defined]
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [p.info.run_id for p in parents]  # one study run for every worker
    (parent,) = parents
    assert parent.info.status == "FINISHED" and parent.data.tags["distill.study"] == study.study_name
    by_trial = {r.data.tags["optuna.trial"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert sorted(by_trial, key=int) == [str(t.number) for t in sorted(study.trials, key=lambda t: t.number)]
    for t in study.trials:
        child = by_trial[str(t.number)]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.run_name == f"trial {t.number}"
        if t.state == TrialState.COMPLETE:
            assert child.info.status == "FINISHED" and child.data.tags["optuna.state"] == "COMPLETE"
            assert child.data.params == {k: str(v) for k, v in t.params.items()}
            assert child.data.metrics["validation/value"] == pytest.approx(t.value, abs=1e-12)
    return parent, by_trial


def _kill_mid_trial(storage: str, study_name: str, client: object, experiment_name: str, deadline: float,
                    procs: list[subprocess.Popen]) -> tuple[object, object, int]:
    """SIGKILL the worker of a trial that is RUNNING at the moment of the kill: the worker is frozen (SIGSTOP)
    while the trial's state is read again, so it cannot finish the trial between the check and the kill
    (it did once on a loaded machine: the trial taken for the victim had completed, another one died)."""
    import optuna
    from optuna.trial import TrialState

    while True:
        victim, victim_run = _running_trial_with_run(storage, study_name, client, experiment_name, deadline, procs)
        # the run's tag, not the trial read a moment before: that snapshot may predate its user attributes
        pid = int(victim_run.data.tags["distill.worker_pid"])  # type: ignore[attr-defined]
        os.kill(pid, signal.SIGSTOP)
        trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
        if next(t for t in trials if t.number == victim.number).state == TrialState.RUNNING:  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)
            return victim, victim_run, pid
        os.kill(pid, signal.SIGCONT)  # it finished its trial meanwhile: let it go on, and take another
        time.sleep(0.2)


def _retry_of(study: object, victim: object) -> object:
    """The dead trial is FAIL and was run again exactly once, COMPLETE, with every parameter it had drawn."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    dead = next(t for t in study.trials if t.number == victim.number)  # type: ignore[attr-defined]
    assert dead.state == TrialState.FAIL
    (retry,) = [t for t in study.trials  # type: ignore[attr-defined]
                if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == victim.number]
    assert retry.state == TrialState.COMPLETE
    assert dead.params and dead.params.items() <= retry.params.items()
    return retry


def test_four_hand_started_workers_one_killed_track_one_study_and_a_closing_worker_compares(
    mlflow_postgres_server: MlflowServer, postgres_database: str, tmp_path: Path
) -> None:
    """Four ``tune --trials 1 --no-compare`` processes started by hand (no supervisor) on one PostgreSQL study,
    tracked to the server; one is killed with SIGKILL mid-trial. The four open the empty database at once and
    race to create Optuna's tables (the losers retry and join; they exited 2 before): each runs the one trial
    it was asked for, numbered once (0-3). A fifth ``tune --trials 1`` started later
    finds the dead trial stale: it marks it FAIL, runs it again, ends the dead trial's MLflow run FAILED
    (nobody else would), and compares the study's best on the test rows once, on the one study run."""
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    study_name, experiment_name = "pg-shared", "pg-tune"
    toml = write_config(tmp_path, protocol={"episodes": 1}, tracking={"experiment": experiment_name}, **KILLABLE)
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    client = MlflowClient(tracking_uri=mlflow_postgres_server.uri)
    env = _env(mlflow_postgres_server.uri)
    procs = [_start(_tune(toml, study_name, postgres_database, f"out{i}", "--trials", "1", "--no-compare", "-q"),
                    cwd=client_dir, env=env) for i in range(4)]
    with reaped(procs):
        victim, victim_run, pid = _kill_mid_trial(postgres_database, study_name, client, experiment_name,
                                                  deadline=time.monotonic() + 180, procs=procs)
        (killed,) = [p for p in procs if p.pid == pid]
        killed.communicate(timeout=60)
        assert killed.returncode == -signal.SIGKILL
        _wait_all([p for p in procs if p is not killed])
        closing = _start(_tune(toml, study_name, postgres_database, "closing", "--trials", "1"), cwd=client_dir,
                         env=env)
        procs.append(closing)
        _, closing_err = closing.communicate(timeout=420)
    assert closing.returncode == 0, closing_err[-4000:]
    assert f"trial {victim.number} sent no heartbeat" in closing_err
    _no_local_store(client_dir)

    study = optuna.load_study(study_name=study_name, storage=postgres_database)
    assert sorted(t.number for t in study.trials) == list(range(5))
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 4
    retry = _retry_of(study, victim)
    parent, by_trial = _study_runs(client, experiment_name, study)
    dead = by_trial[str(victim.number)]
    assert dead.info.run_id == victim_run.info.run_id
    assert (dead.info.status, dead.data.tags["optuna.state"]) == ("FAILED", "FAIL")
    assert by_trial[str(retry.number)].data.tags["distill.worker_pid"] == str(closing.pid)

    # the searching workers wrote the best so far; the closing worker compared the whole study's best, once
    searched = [json.loads((client_dir / f"out{i}" / "tuning.json").read_text())
                for i in range(4) if procs[i] is not killed]
    assert {(s["status"], s["mlflow_run_id"]) for s in searched} == {("searched", parent.info.run_id)}
    compared = json.loads((client_dir / "closing" / "tuning.json").read_text())
    assert compared["status"] == "completed" and compared["mlflow_run_id"] == parent.info.run_id
    assert compared["trials"] == {"before": 3, "total": 5, "complete": 4, "pruned": 0, "failed": 1}
    assert (compared["best"]["trial"], compared["best"]["validation"]) == (study.best_trial.number, study.best_value)
    assert parent.data.metrics["best/validation"] == pytest.approx(study.best_value, abs=1e-12)
    tuned = _summary(client_dir / "closing" / "tuned")
    for metric in ("accuracy", "f1_macro"):
        assert parent.data.metrics[f"tuned/student/test_{metric}"] == pytest.approx(tuned["student"][metric],
                                                                                    abs=1e-9)


def test_tune_workers_one_killed_recover_the_study_and_its_runs_on_the_server(
    mlflow_postgres_server: MlflowServer, postgres_database: str, tmp_path: Path
) -> None:
    """``tune --workers 4 --trials 4`` on PostgreSQL, tracked to the server, one worker killed with SIGKILL
    mid-trial: the supervisor ends its trial's run FAILED and replaces it; the replacement runs the trial
    again; the study has 4 COMPLETE trials, nothing is left RUNNING, and the comparison runs once."""
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    study_name, experiment_name = "pg-dead", "pg-dead-tune"
    toml = write_config(tmp_path, protocol={"episodes": 1}, tracking={"experiment": experiment_name}, **KILLABLE)
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    client = MlflowClient(tracking_uri=mlflow_postgres_server.uri)
    proc = _start(_tune(toml, study_name, postgres_database, "out", "--trials", "4", "--workers", "4"),
                  cwd=client_dir, env=_env(mlflow_postgres_server.uri))
    with reaped([proc]):
        victim, victim_run, pid = _kill_mid_trial(postgres_database, study_name, client, experiment_name,
                                                  deadline=time.monotonic() + 180, procs=[proc])
        out, err = proc.communicate(timeout=420)
    assert proc.returncode == 0, err[-4000:]
    assert "killed by SIGKILL" in err and "4 worker(s) finished 4 trial(s)" in out

    study = optuna.load_study(study_name=study_name, storage=postgres_database)
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 4
    retry = _retry_of(study, victim)
    parent, by_trial = _study_runs(client, experiment_name, study)
    dead = by_trial[str(victim.number)]
    assert dead.info.run_id == victim_run.info.run_id
    assert (dead.info.status, dead.data.tags["optuna.state"]) == ("FAILED", "FAIL")
    assert by_trial[str(retry.number)].info.status == "FINISHED"
    dead_trial = next(t for t in study.trials if t.number == victim.number)
    assert dead_trial.user_attrs["distill_worker_pid"] == pid
    slot = dead_trial.user_attrs["distill_worker"].split("/")[0]  # its replacement writes worker-<slot>-1
    assert {p.name for p in (client_dir / "out").iterdir()} == {
        "study", "worker-1", "worker-2", "worker-3", "worker-4", f"worker-{slot}-1"}
    compared = json.loads((client_dir / "out" / "study" / "tuning.json").read_text())
    assert compared["trials"] == {"before": 5, "total": 5, "complete": 4, "pruned": 0, "failed": 1}
    assert compared["mlflow_run_id"] == parent.info.run_id
    assert out.count("test student f1_macro") == 1
