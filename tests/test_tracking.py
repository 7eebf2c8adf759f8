"""MLflow tracking end to end, against a real ``mlflow server`` started once for the module.

What a ``distill run`` records (params, tags, per-epoch histories, test metrics, artifacts,
dataset input, the logged student), nested episode runs, honest FAILED/KILLED status, an
unreachable server (exit 2 or the local fallback), ``--no-track``, and ``distill predict``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import distill
import distill.experiment.run
from distill.cli import main
from distill.config import load_config
from distill.experiment.prepare import prepare
from distill.students.checkpoint import load_checkpoint, servable_from_checkpoint
from tests.conftest import free_port, metric_points, system_runs

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "breast_cancer_gp.toml"
EPOCHS = 6
KL_WEIGHT = "auto"  # breast_cancer_gp.toml's objective.kl_weight
#: A small, fast experiment with validation rows, so val_* metrics exist.
SMALL = [
    "--set", "protocol.episodes=1",
    "--set", "few_shot.labelled=10",
    "--set", "few_shot.validation=4",
    "--set", f"train.epochs={EPOCHS}",
    "--set", "student.hidden=[8]",
]


def run(out: Path, *extra: str) -> int:
    return main(["run", str(EXPERIMENT), "-o", str(out), "-q", *SMALL, *extra])


def tracked(uri: str, experiment: str) -> list[str]:
    return ["--set", f'tracking.uri="{uri}"', "--set", f'tracking.experiment="{experiment}"']


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def all_runs(client) -> list:
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=1000) if ids else []


@contextmanager
def mlflow_state() -> Iterator[None]:
    """``mlflow.set_tracking_uri`` also sets MLFLOW_TRACKING_URI: put both back afterwards."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    saved_uri, saved_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
    finally:
        while mlflow.active_run() is not None:  # a broken test must not leave a run open for the next
            mlflow.end_run("FAILED")
        utils._tracking_uri = saved_uri
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


@pytest.fixture(autouse=True)
def _restore_mlflow_state():
    with mlflow_state():
        yield


@pytest.fixture(scope="module")
def tracked_run(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory):
    """One single-episode run recorded to the server: (run directory, summary, client)."""
    from mlflow.tracking import MlflowClient

    out = tmp_path_factory.mktemp("tracked") / "run"
    with mlflow_state():
        assert run(out, *tracked(mlflow_server, "single")) == 0
    return out, summary_of(out), MlflowClient(tracking_uri=mlflow_server)


# --- what one run records ------------------------------------------------------------------------


def test_run_is_finished_with_params_and_tags(tracked_run) -> None:
    out, summary, client = tracked_run
    assert summary["mlflow_run_id"]
    r = client.get_run(summary["mlflow_run_id"])
    assert r.info.status == "FINISHED"
    assert r.info.run_name == "breast_cancer_gp · 1 episode"  # the experiment's name first, then what varies
    assert r.data.tags["distill.run_dir"] == out.name
    assert client.get_experiment(r.info.experiment_id).name == "single"
    params = r.data.params
    assert params["objective.kl_weight"] == KL_WEIGHT
    assert params["student.hidden"] == str([8])
    assert params["train.epochs"] == str(EPOCHS)
    assert params["few_shot.validation"] == "4"
    tags = r.data.tags
    assert tags["dataset"] == "sklearn:breast_cancer"
    assert tags["teacher.kind"] == "gaussian_process"
    assert tags["student.arch"] == "mlp"
    assert tags["distill.version"] == distill.__version__
    assert tags["device"] == summary["device"]
    if (Path.cwd() / ".git").exists():
        assert len(tags.get("git.commit", "")) >= 7


def test_the_teachers_cross_validated_calibration_reaches_mlflow(tracked_run) -> None:
    _, summary, client = tracked_run
    teacher = system_runs(client, summary["mlflow_run_id"])["teacher"]
    metrics = teacher.data.metrics
    calibration = summary["episodes"][0]["teacher_diagnostics"]["calibration"]
    assert calibration["method"] == "temperature"
    assert metrics["temperature"] == pytest.approx(calibration["temperature"], rel=1e-12)
    for stage in ("before", "after"):
        for name in ("accuracy", "log_loss", "ece"):
            assert metric_points(client, teacher.info.run_id, f"cv_{name}_{stage}") == [
                (0, pytest.approx(calibration[stage][name], rel=1e-12))]
    (row,) = summary["episodes"][0]["teacher_diagnostics"]["selection"]["candidates"]
    assert metrics["gaussian_process/cv_log_loss"] == pytest.approx(row["cv_log_loss"], rel=1e-12)


def test_one_child_run_per_system_with_the_same_metric_names(tracked_run) -> None:
    """Selecting the run's children overlays student and baseline on one axis in MLflow's charts: each system
    has its own child run and the curves are named alike; the hard loss and the KL term are logged apart."""
    out, summary, client = tracked_run
    children = system_runs(client, summary["mlflow_run_id"])
    assert sorted(children) == ["baseline", "logistic_regression", "null_teacher", "student", "teacher"]
    assert {name: c.data.tags["distill.system"] for name, c in children.items()} == {n: n for n in children}
    assert all(c.info.status == "FINISHED" for c in children.values())
    curves = {"train_loss", "train_hard_loss", "train_kl_term", "val_loss", "val_accuracy",
              "val_f1_macro", "val_auroc", "val_ece"}
    tests = {f"test_{m}" for m in ("accuracy", "f1_macro", "auroc", "ece")}
    for system in ("student", "baseline"):
        names = set(children[system].data.metrics)
        assert curves | tests <= names, (system, names)
    assert set(children["student"].data.metrics) - {"kl_weight", "temperature"} == set(
        children["baseline"].data.metrics) == set(children["null_teacher"].data.metrics)
    assert set(children["teacher"].data.metrics) >= tests and not set(children["teacher"].data.metrics) & curves


def test_histories_match_history_csv(tracked_run) -> None:
    out, summary, client = tracked_run
    children = system_runs(client, summary["mlflow_run_id"])
    history = pd.read_csv(out / "history.csv")
    for system in ("student", "baseline"):
        rows = history[history.system == system].sort_values("epoch")
        assert rows.epoch.tolist() == list(range(1, EPOCHS + 1))
        for name in ("train_loss", "train_hard_loss", "train_kl_term", "val_loss", "val_accuracy"):
            points = metric_points(client, children[system].info.run_id, name)
            assert [step for step, _ in points] == list(range(1, EPOCHS + 1)), (system, name)
            np.testing.assert_allclose([v for _, v in points], rows[name].to_numpy(), rtol=1e-5, atol=1e-6)
    # The loss is its hard term plus its KL term (no penalty here); the baseline has no KL term at all.
    student, baseline = (history[history.system == s] for s in ("student", "baseline"))
    np.testing.assert_allclose(student.train_loss, student.train_hard_loss + student.train_kl_term, rtol=1e-5)
    assert (baseline.train_kl_term == 0).all() and (baseline.train_loss == baseline.train_hard_loss).all()


def test_final_metrics_match_summary(tracked_run) -> None:
    _, summary, client = tracked_run
    metrics = client.get_run(summary["mlflow_run_id"]).data.metrics
    children = system_runs(client, summary["mlflow_run_id"])
    for system in ("teacher", "student", "baseline"):
        for metric in ("accuracy", "f1_macro"):
            assert metrics[f"{system}/test_{metric}"] == pytest.approx(summary[system][metric], abs=1e-9)
            # float64 all the way: a count ratio reaches MLflow as the exact fraction of the test rows
            (step, value), = metric_points(client, children[system].info.run_id, f"test_{metric}")
            assert step == 0 and value == pytest.approx(summary[system][metric], abs=1e-9)
        n = summary["episodes"][0]["split"]["test"]
        assert metrics[f"{system}/test_accuracy"] == round(metrics[f"{system}/test_accuracy"] * n) / n


def test_artifacts_and_dataset_input(tracked_run) -> None:
    _, summary, client = tracked_run
    run_id = summary["mlflow_run_id"]
    names = {a.path for a in client.list_artifacts(run_id)}
    for name in ("config.toml", "summary.json", "history.csv", "learning_curves.png",
                 "confusion_matrix.png", "student.pt", "log.txt"):
        assert name in names, (name, names)
    logged = json.loads(Path(client.download_artifacts(run_id, "summary.json")).read_text())
    assert logged["mlflow_run_id"] == run_id
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    assert inputs[0].dataset.digest
    # The logged model's page links the dataset: its metrics are the run's test figures, each naming the data.
    model = client.get_logged_model(summary["mlflow_model_uri"].removeprefix("models:/"))
    assert model.source_run_id == run_id
    linked = {m.key: m for m in model.metrics}
    assert linked["student/test_accuracy"].value == pytest.approx(summary["student"]["accuracy"], abs=1e-12)
    assert {(m.dataset_name, m.dataset_digest) for m in linked.values()} == {
        (inputs[0].dataset.name, inputs[0].dataset.digest)}


def test_logged_model_predicts_like_the_checkpoint(tracked_run, mlflow_server: str, tmp_path: Path) -> None:
    import mlflow
    import mlflow.pyfunc

    out, summary, _ = tracked_run
    payload = load_checkpoint(out / "student.pt")
    prepared = prepare(load_config(out / "config.toml"))
    d = prepared.dataset
    test = pd.DataFrame(d.x[prepared.split.test], columns=d.feature_names)
    with torch.inference_mode():
        expected = servable_from_checkpoint(payload)(torch.as_tensor(test.to_numpy(), dtype=torch.float32)).numpy()

    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(summary["mlflow_model_uri"])
    got = np.asarray(model.predict(test))
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    np.testing.assert_allclose(got, expected, atol=1e-5)

    csv, pred = tmp_path / "rows.csv", tmp_path / "pred.csv"
    test.to_csv(csv, index=False)
    assert main(["predict", summary["mlflow_model_uri"], str(csv), "-o", str(pred), "--tracking-uri", mlflow_server]) == 0
    written = pd.read_csv(pred)
    classes = payload["classes"]
    assert written["prediction"].astype(str).tolist() == [classes[i] for i in expected.argmax(axis=1)]


def test_network_teacher_from_an_mlflow_model_uri(tracked_run, mlflow_server: str, tmp_path: Path) -> None:
    # teacher.uri: the student logged by the tracked run becomes the teacher of a new run.
    out, summary, _ = tracked_run
    toml = tmp_path / "from_uri.toml"
    toml.write_text(
        'name = "from_uri"\n[data]\nsource = "sklearn:breast_cancer"\ntest_size = 100\n[few_shot]\nper_class = 3\n'
        f'[teacher]\nkind = "network"\nuri = "{summary["mlflow_model_uri"]}"\n[train]\nepochs = 3\n'
        f'[tracking]\nuri = "{mlflow_server}"\n'
    )
    assert main(["run", str(toml), "-o", str(tmp_path / "run"), "-q", "--no-track"]) == 0
    second = summary_of(tmp_path / "run")
    assert second["episodes"][0]["teacher_diagnostics"]["source"] == summary["mlflow_model_uri"]
    # The teacher's test predictions are the logged student's, on the new run's test rows.
    prepared = prepare(load_config(tmp_path / "run" / "config.toml"))
    rows = torch.as_tensor(prepared.dataset.x[prepared.split.test], dtype=torch.float32)
    with torch.inference_mode():
        probs = servable_from_checkpoint(load_checkpoint(out / "student.pt"))(rows).numpy()
    y = prepared.dataset.y[prepared.split.test]
    assert second["teacher"]["accuracy"] == pytest.approx(float(np.mean(probs.argmax(axis=1) == y)), abs=1e-6)


# --- several episodes ----------------------------------------------------------------------------


def test_episodes_are_steps_of_one_child_run_per_system(mlflow_server: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    assert run(out, *tracked(mlflow_server, "episodes"), "--episodes", "3",
               "--set", 'protocol.controls=["null_teacher"]', "--set", 'protocol.references=["logistic_regression"]') == 0
    summary = summary_of(out)
    client = MlflowClient(tracking_uri=mlflow_server)
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "breast_cancer_gp · 3 episodes"
    for name in ("baseline", "null_teacher", "logistic_regression"):
        assert f"student_minus_{name}/accuracy" in parent.data.metrics
        p_value = summary["paired"][f"student_minus_{name}"]["accuracy"]["p_value"]
        if p_value is None:  # fewer than two differing episodes: no test, nothing logged
            assert f"student_minus_{name}/accuracy_p_value" not in parent.data.metrics
        else:
            assert parent.data.metrics[f"student_minus_{name}/accuracy_p_value"] == pytest.approx(p_value, abs=1e-12)
    for system in ("student", "null_teacher", "logistic_regression"):
        assert parent.data.metrics[f"{system}/test_accuracy"] == pytest.approx(summary[system]["accuracy"], abs=1e-9)
    children = system_runs(client, parent.info.run_id)
    assert sorted(children) == ["baseline", "logistic_regression", "null_teacher", "student", "teacher"]
    assert len(client.search_runs([parent.info.experiment_id])) == 6  # one parent, its five systems, nothing else
    for system, child in children.items():
        assert child.info.status == "FINISHED"
        # every episode's test figures, one step per episode, each the summary's
        for metric in ("accuracy", "auroc"):
            expected = [(e, pytest.approx(row[system][metric], abs=1e-12)) for e, row in enumerate(summary["episodes"])]
            assert metric_points(client, child.info.run_id, f"test_{metric}") == expected, (system, metric)
    for system in ("student", "baseline", "null_teacher"):  # the first episode's curves of every trained system
        points = metric_points(client, children[system].info.run_id, "train_hard_loss")
        assert [step for step, _ in points] == list(range(1, EPOCHS + 1))


# --- honest status -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"), [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")], ids=["error", "interrupt"]
)
def test_a_broken_run_ends_failed_or_killed(
    error: BaseException, status: str, mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(distill.experiment.run, "log_files", broken)  # after the metrics, before summary.json
    experiment = f"broken-{status.lower()}"
    out = tmp_path / "run"
    if isinstance(error, KeyboardInterrupt):
        assert run(out, *tracked(mlflow_server, experiment)) == 130
    else:
        with pytest.raises(RuntimeError, match="boom"):
            run(out, *tracked(mlflow_server, experiment))
    assert not (out / "summary.json").exists()
    client = MlflowClient(tracking_uri=mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    r = parents[0]
    assert r.info.status == status
    assert r.data.params["objective.kl_weight"] == KL_WEIGHT
    assert "student/test_accuracy" in r.data.metrics  # what was logged before the failure is kept
    student = system_runs(client, r.info.run_id)["student"]
    assert len(client.get_metric_history(student.info.run_id, "train_hard_loss")) == EPOCHS
    assert len(runs) == 1 + len(system_runs(client, r.info.run_id))  # the parent and its systems, nothing else


# --- unreachable server --------------------------------------------------------------------------


def test_unreachable_server_is_exit_2_before_anything_is_written(tmp_path: Path, capsys) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "run"
    started = time.monotonic()
    assert run(out, "--set", f'tracking.uri="{uri}"') == 2
    assert time.monotonic() - started < 10
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert uri in lines[0] and "does not answer" in lines[0]
    assert not out.exists()


def test_unreachable_server_with_local_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    uri = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "run"
    assert run(out, "--set", f'tracking.uri="{uri}"', "--set", 'tracking.fallback="local"') == 0
    err = capsys.readouterr().err
    assert uri in err and "does not answer" in err
    assert (tmp_path / "mlflow.db").is_file()
    summary = summary_of(out)
    assert summary["mlflow_run_id"]
    from mlflow.tracking import MlflowClient

    r = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(summary["mlflow_run_id"])
    assert r.info.status == "FINISHED"


# --- tracking off --------------------------------------------------------------------------------


@pytest.mark.parametrize("off", [["--no-track"], ["--set", "tracking.enabled=false"]], ids=["no-track", "disabled"])
def test_tracking_off_creates_no_run(
    off: list[str], mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # both routes to a store lead to the server
    client = MlflowClient(tracking_uri=mlflow_server)
    before = len(all_runs(client))
    out = tmp_path / "run"
    assert run(out, *tracked(mlflow_server, "off"), *off) == 0
    assert len(all_runs(client)) == before
    assert client.get_experiment_by_name("off") is None
    assert summary_of(out)["mlflow_run_id"] is None


# --- predict from files --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def untracked_run(tmp_path_factory: pytest.TempPathFactory):
    """A run directory made without MLflow, and its test rows as raw features."""
    out = tmp_path_factory.mktemp("untracked") / "run"
    assert run(out, "--no-track") == 0
    prepared = prepare(load_config(out / "config.toml"))
    d = prepared.dataset
    test = pd.DataFrame(d.x[prepared.split.test], columns=d.feature_names)
    return out, test.assign(label=[d.classes[i] for i in d.y[prepared.split.test]]), d


@pytest.mark.parametrize("source", ["dir", "file"])
def test_predict_from_run_directory_or_checkpoint(
    source: str, untracked_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, test, d = untracked_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # no server is needed
    payload = load_checkpoint(out / "student.pt")
    features = torch.as_tensor(test[d.feature_names].to_numpy(), dtype=torch.float32)
    with torch.inference_mode():
        probs = servable_from_checkpoint(payload)(features).numpy()
    names = [d.classes[i] for i in probs.argmax(axis=1)]
    target = str(out if source == "dir" else out / "student.pt")

    csv, pred = tmp_path / "rows.csv", tmp_path / "pred.csv"
    test.to_csv(csv, index=False)  # with the extra `label` column, which predict ignores
    assert main(["predict", target, str(csv), "-o", str(pred)]) == 0
    written = pd.read_csv(pred)
    assert written["prediction"].astype(str).tolist() == names
    np.testing.assert_allclose(written[[f"p_{c}" for c in d.classes]].to_numpy(), probs, rtol=1e-5, atol=1e-6)


def test_predict_with_a_missing_feature_is_exit_2(untracked_run, tmp_path: Path, capsys) -> None:
    out, test, d = untracked_run
    dropped = d.feature_names[3]
    csv = tmp_path / "rows.csv"
    test.drop(columns=[dropped]).to_csv(csv, index=False)
    assert main(["predict", str(out), str(csv), "-o", str(tmp_path / "pred.csv")]) == 2
    err = capsys.readouterr().err
    assert dropped in err
    assert not (tmp_path / "pred.csv").exists()


def test_the_experiment_opens_on_its_training_runs_and_says_what_it_holds(tracked_run, mlflow_server: str) -> None:
    """MLflow 3's UI opens an experiment tagged ``mlflow.experimentKind = custom_model_development`` on its runs
    (untagged, an experiment may open on the GenAI traces overview); read back through the server's REST API."""
    import json as json_module
    import urllib.parse
    import urllib.request

    out, summary, client = tracked_run
    experiment_id = client.get_run(summary["mlflow_run_id"]).info.experiment_id
    query = urllib.parse.urlencode({"experiment_id": experiment_id})
    with urllib.request.urlopen(f"{mlflow_server}/api/2.0/mlflow/experiments/get?{query}", timeout=30) as response:
        experiment = json_module.loads(response.read())["experiment"]
    tags = {t["key"]: t["value"] for t in experiment.get("tags", [])}
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["dataset"] == "sklearn:breast_cancer" and tags["teacher.kind"] == "gaussian_process"
    assert tags["student.arch"] == "mlp"
    note = tags["mlflow.note.content"]
    assert "'single'" in note and "one child run per system" in note
    # the metrics the description points a reviewer to are the run's own
    metrics = client.get_run(summary["mlflow_run_id"]).data.metrics
    for prefix in ("student/test_", "baseline/test_", "student_minus_baseline/"):
        assert prefix in note and any(name.startswith(prefix) for name in metrics), prefix
    assert any(name.startswith("student_minus_baseline/") and name.endswith("_p_value") for name in metrics)


def test_the_run_links_its_page_on_the_training_view(tracked_run, mlflow_server: str) -> None:
    """MLflow 3.17's UI opens an experiment on its GenAI pages unless the link (or the browser's last choice)
    says ``workflowType=machine_learning``; the summary's link says it, on the server that holds the run."""
    import urllib.request

    out, summary, client = tracked_run
    run = client.get_run(summary["mlflow_run_id"])
    assert summary["mlflow_ui_url"] == (f"{mlflow_server}/#/experiments/{run.info.experiment_id}/runs/"
                                        f"{run.info.run_id}?workflowType=machine_learning")
    with urllib.request.urlopen(summary["mlflow_ui_url"].split("#")[0], timeout=30) as response:
        assert response.status == 200  # the UI itself answers there


def test_a_local_store_links_what_mlflow_ui_serves_and_says_how() -> None:
    from distill.outputs.tracking import LOCAL_UI, ui_url

    assert ui_url("sqlite:///mlflow.db", "3", "abc") == (
        "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning")
    assert LOCAL_UI == "http://127.0.0.1:5000"  # mlflow ui's own default address
    assert ui_url("https://mlflow.example.org/", "7", "r1").startswith("https://mlflow.example.org/#/experiments/7/")


def test_the_console_prints_the_link_and_for_a_local_store_the_command(capsys, monkeypatch) -> None:
    from distill.cli import _print_ui_url

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _print_ui_url("http://127.0.0.1:5000/#/x", {"tracking": {"uri": None}})
    assert capsys.readouterr().out == ("MLflow UI: http://127.0.0.1:5000/#/x "
                                       "(serve it with: mlflow ui --backend-store-uri sqlite:///mlflow.db)\n")
    _print_ui_url("http://host:5000/#/x", {"tracking": {"uri": "http://host:5000"}})
    assert capsys.readouterr().out == "MLflow UI: http://host:5000/#/x\n"
    _print_ui_url(None, {})
    assert capsys.readouterr().out == ""


def test_an_experiment_that_exists_keeps_its_own_tags(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from distill.outputs.tracking import _experiment_id

    with mlflow_state():
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
        mine = client.create_experiment("mine", tags={"mlflow.experimentKind": "genai_development"})
        assert _experiment_id(client, "mine", {"dataset": "x"}) == mine
        assert client.get_experiment(mine).tags == {"mlflow.experimentKind": "genai_development"}
        new = _experiment_id(client, "new", {"dataset": "x", "other": "y"})
        assert client.get_experiment(new).tags["mlflow.experimentKind"] == "custom_model_development"
        assert client.get_experiment(new).tags["dataset"] == "x" and "other" not in client.get_experiment(new).tags


def test_run_names_lead_with_the_experiment_and_stay_within_what_sql_stores_keep() -> None:
    from distill.experiment.run import RUN_NAME_CHARS, run_name

    config = load_config(EXPERIMENT, ["protocol.episodes=3"])
    assert run_name(config) == "breast_cancer_gp · 3 episodes"
    swept = load_config(EXPERIMENT, ["objective.kl_weight=[0, 0.1, 1]"])
    assert run_name(swept) == "breast_cancer_gp · objective.kl_weight=0,0.1,1 · 10 episodes"
    many = load_config(EXPERIMENT, ["objective.kl_weight=[" + ", ".join(f"{i / 1000}" for i in range(1, 41)) + "]"])
    assert run_name(many) == "breast_cancer_gp · objective.kl_weight=0.001…0.04 (40 values) · 10 episodes"
    long = load_config(EXPERIMENT, ["name=" + repr("x" * 300).replace("'", '"')])
    assert len(run_name(long)) == RUN_NAME_CHARS
