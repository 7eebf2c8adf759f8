"""The Python API: ``distill.run`` / ``tune`` / ``check`` / ``predict`` on in-memory data and teacher objects.

References are independent: the CLI on the same data written to CSV, scikit-learn's own estimators on
the same test rows, and the process settings read before the call.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.linear_model import LogisticRegression

import distill
import distill.api
from distill.cli import main
from distill.experiment.prepare import prepare

#: small and fixed: a few seconds a run; the KL term fixed (the "auto" choice is tested elsewhere)
SETTINGS: dict[str, Any] = {
    "name": "api",
    "seed": 3,
    "data": {"scale": "standard", "test_size": 60},
    "few_shot": {"labelled": 12, "validation": 0},
    "protocol": {"episodes": 2},
    "teacher": {"kind": "sklearn", "estimator": "sklearn.linear_model:LogisticRegression", "cache": False},
    "student": {"hidden": [8]},
    "objective": {"kl_weight": 1.0, "temperature": 2.0},
    "train": {"epochs": 15, "batch_size": 4, "threads": 1},
    "tracking": {"enabled": False},
}


def _toml(tree: dict[str, Any]) -> str:
    from distill.config import to_toml

    return to_toml(tree)


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True)
    return x, y


def _episode_numbers(summary: dict[str, Any]) -> list[dict[str, Any]]:
    systems = ("teacher", "student", "baseline")
    return [{s: e[s] for s in systems} for e in summary["episodes"]]


def test_arrays_give_the_numbers_the_cli_gives_on_the_same_data_as_csv(tmp_path: Path, cancer, capsys) -> None:
    x, y = cancer
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    frame["label"] = y
    csv = tmp_path / "cancer.csv"
    frame.to_csv(csv, index=False)  # pandas writes each float's shortest exact repr
    experiment = tmp_path / "api.toml"
    experiment.write_text(_toml({**SETTINGS, "data": {**SETTINGS["data"], "source": f"csv:{csv}"}}))
    assert main(["run", str(experiment), "-o", str(tmp_path / "cli"), "--no-track", "-q"]) == 0
    cli = json.loads((tmp_path / "cli" / "summary.json").read_text())

    result = distill.run(SETTINGS, data=(x, y), output=tmp_path / "api", progress=False)
    assert _episode_numbers(result.summary) == _episode_numbers(cli)
    assert result.metrics["student"] == {m: cli["student"][m] for m in result.metrics["student"]}
    cli_student = torch.load(tmp_path / "cli" / "student.pt", weights_only=True)["state_dict"]
    for name, tensor in result.student.student.state_dict().items():
        assert torch.equal(tensor, cli_student[name]), name
    # the DataFrame path: the same table, the same numbers
    framed = distill.run(SETTINGS, data=frame, output=tmp_path / "frame", progress=False)
    assert _episode_numbers(framed.summary) == _episode_numbers(cli)
    assert "run directory" in capsys.readouterr().out


def test_run_result_is_typed_and_to_json_is_summary_json(tmp_path: Path, cancer) -> None:
    x, y = cancer
    result = distill.run(SETTINGS, data=(x, y), output=tmp_path / "r", progress=False)
    assert isinstance(result, distill.RunResult)
    assert result.to_json() == (tmp_path / "r" / "summary.json").read_text()
    assert result.status == "completed" and len(result.episodes) == 2
    student = [e.metrics["student"]["accuracy"] for e in result.episodes]
    assert result.aggregate["student"]["accuracy"].mean == pytest.approx(np.mean(student), abs=1e-12)
    assert result.aggregate["student"]["accuracy"].n == 2
    differences = [e.metrics["student"]["accuracy"] - e.metrics["baseline"]["accuracy"] for e in result.episodes]
    assert result.paired["student_minus_baseline"]["accuracy"].mean == pytest.approx(np.mean(differences), abs=1e-12)
    table = result.table().splitlines()
    student_row = next(line for line in table if line.startswith("student "))
    assert f"{result.metrics['student']['accuracy']:.3f}" in student_row and table[-1] == result.verdict
    history = pd.read_csv(tmp_path / "r" / "history.csv")
    assert list(result.history.columns) == list(history.columns) and len(result.history) == len(history)
    np.testing.assert_allclose(result.history["train_loss"], history["train_loss"], rtol=1e-5)
    # .student: raw features in, probabilities out; the same as predict on the run directory
    probs = result.predict_proba(x[:20])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    frame = distill.predict(tmp_path / "r", pd.DataFrame(x[:20], columns=[f"x{i}" for i in range(30)]))
    np.testing.assert_allclose(frame[["p_0", "p_1"]].to_numpy(), probs, rtol=1e-6)
    predicted = result.predict(x[:20])
    assert list(frame["prediction"]) == [str(v) for v in predicted]  # the checkpoint names classes as text
    assert predicted.dtype.kind == "i" and result.classes == [0, 1]  # your own labels back, as you gave them
    assert (predicted == probs.argmax(axis=1)).all()


def test_config_as_dict_path_or_config_is_one_experiment(tmp_path: Path, cancer) -> None:
    path = tmp_path / "e.toml"
    path.write_text(_toml(SETTINGS))
    from_dict, from_path = distill.api.as_config(SETTINGS), distill.load_config(path)
    assert from_dict == from_path == distill.api.as_config(from_path)
    assert distill.api.as_config(SETTINGS, ["objective.kl_weight=0.5"]).objective.kl_weight == 0.5
    assert SETTINGS["objective"]["kl_weight"] == 1.0  # the caller's dict is not changed


def _test_rows(config: dict[str, Any], x: np.ndarray, y: np.ndarray, episode: int) -> np.ndarray:
    """The test rows of an episode, drawn as the run draws them (seed + episode)."""
    cfg = distill.api.as_config({**config, "seed": config["seed"] + episode})
    from distill.data.sources import dataset_from_arrays

    return prepare(cfg, dataset_from_arrays(x, y)).split.test


def test_a_fitted_sklearn_teacher_is_used_as_given(tmp_path: Path, cancer) -> None:
    x, y = cancer
    fitted = LogisticRegression(max_iter=5000).fit(x[::3], y[::3])  # on raw features, by the user
    result = distill.run(SETTINGS, data=(x, y), teacher=fitted, output=tmp_path / "r", progress=False)
    for e in result.episodes:  # calibration rescales probabilities, never their argmax
        test = _test_rows(SETTINGS, x, y, e.episode)
        assert e.metrics["teacher"]["accuracy"] == pytest.approx(fitted.score(x[test], y[test]), abs=1e-6)
    assert "LogisticRegression" in str(result.episodes[0].teacher)


def test_an_unfitted_sklearn_teacher_matches_the_config_teacher(tmp_path: Path, cancer) -> None:
    x, y = cancer
    by_config = distill.run(SETTINGS, data=(x, y), output=tmp_path / "c", progress=False)
    given = LogisticRegression(random_state=SETTINGS["seed"])  # the config's estimator gets random_state = seed
    by_object = distill.run(SETTINGS, data=(x, y), teacher=given, output=tmp_path / "o", progress=False)
    assert _episode_numbers(by_object.summary) == _episode_numbers(by_config.summary)
    assert not hasattr(given, "coef_")  # cloned, never fit in place


def test_an_nn_module_teacher_gives_its_own_predictions(tmp_path: Path) -> None:
    x, y = load_iris(return_X_y=True)
    reference = LogisticRegression(max_iter=5000).fit(x, y)
    net = torch.nn.Linear(4, 3).double()
    with torch.no_grad():  # the same linear model as a network emitting logits on raw features
        net.weight.copy_(torch.as_tensor(reference.coef_))
        net.bias.copy_(torch.as_tensor(reference.intercept_))
    net = net.float()
    config = {**SETTINGS, "data": {"scale": "standard", "test_size": 45}, "few_shot": {"labelled": 9, "validation": 0},
              "protocol": {"episodes": 1}}
    result = distill.run(config, data=(x, y), teacher=net, output=tmp_path / "r", progress=False)
    test = _test_rows(config, x, y, 0)
    assert result.metrics["teacher"]["accuracy"] == pytest.approx(reference.score(x[test], y[test]), abs=1e-6)
    assert net.training  # the user's module is left in the mode it came in


@pytest.mark.integration
def test_run_leaves_process_settings_as_it_found_them(tmp_path: Path, cancer, monkeypatch) -> None:
    import mlflow

    from distill.process_state import snapshot

    x, y = cancer
    store = os.environ["MLFLOW_TRACKING_URI"]  # the session's store (tests/conftest.py): created once
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # put back at teardown, whatever happens below
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mine.db'}")  # the user's own choice, never opened here
    torch.set_num_threads(2)
    np.random.seed(123)
    torch.manual_seed(123)
    before, uri = snapshot(), mlflow.get_tracking_uri()
    expected_np, expected_torch = np.random.rand(), torch.rand(1)
    np.random.seed(123)
    torch.manual_seed(123)
    config = {**SETTINGS, "protocol": {"episodes": 1}, "tracking": {"enabled": True, "uri": store, "timeout": 30}}
    try:
        result = distill.run(config, data=(x, y), output=tmp_path / "r", progress=False)
        assert result.mlflow_run_id is not None
        assert snapshot() == before
        assert mlflow.get_tracking_uri() == uri and os.environ.get("MLFLOW_TRACKING_URI") == uri
        assert np.random.rand() == expected_np and torch.equal(torch.rand(1), expected_torch)
    finally:
        mlflow.set_tracking_uri(None)


def test_tune_returns_the_study(tmp_path: Path, cancer) -> None:
    x, y = cancer
    config = {**SETTINGS, "protocol": {"episodes": 1}, "few_shot": {"labelled": 12, "validation": 12},
              "tune": {"trials": 2, "space": {"objective.kl_weight": {"low": 0.1, "high": 2.0}}}}
    result = distill.tune(config, data=(x, y), output=tmp_path / "t", storage=str(tmp_path / "journal.log"),
                          progress=False)
    assert isinstance(result, distill.TuneResult)
    assert len(result.study.trials) == 2 and result.best_value == pytest.approx(result.study.best_value)
    assert result.to_json() == (tmp_path / "t" / "tuning.json").read_text()
    assert result.best_config.objective.kl_weight == pytest.approx(result.best_params["objective.kl_weight"])


@pytest.mark.parametrize("data, message", [
    ((np.zeros((5, 2)), np.zeros(4)), "y must be one label per row of X (5)"),
    ((np.zeros(5), np.zeros(5)), "X must have one row per example"),
    ((np.array([[1.0], [np.nan]]), np.array([0, 1])), "NaN or infinite feature value"),
    ((np.ones((4, 2)), np.zeros(4)), "single class"),
    ([1, 2, 3], "data must be (X, y), a pandas DataFrame"),
    (pd.DataFrame({"a": [1.0, 2.0]}), "no label column 'label'"),
])
def test_bad_data_is_one_clear_error(tmp_path: Path, data: Any, message: str) -> None:
    with pytest.raises(distill.UserError) as caught:
        distill.run(SETTINGS, data=data, output=tmp_path / "r", progress=False)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "r").exists()


def test_a_teacher_that_is_not_one_is_refused(tmp_path: Path, cancer) -> None:
    with pytest.raises(distill.UserError, match="teacher must be a scikit-learn classifier"):
        distill.run(SETTINGS, data=cancer, teacher="RandomForest", output=tmp_path / "r")
    with pytest.raises(distill.UserError, match="pass an instance, not the class LogisticRegression"):
        distill.run(SETTINGS, data=cancer, teacher=LogisticRegression, output=tmp_path / "r")


def test_check_describes_without_training(tmp_path: Path, cancer) -> None:
    plan = distill.check(SETTINGS, data=cancer)
    assert "2 episode(s), seeds 3..4" in plan and "memory:arrays: 569 rows, 30 features" in plan
    assert not list(tmp_path.iterdir())


def test_the_public_names_resolve_and_are_documented() -> None:
    for name in distill.__all__:
        if name == "__version__":
            continue
        value = getattr(distill, name)
        assert (value.__doc__ or "").strip(), f"distill.{name} has no docstring"
    assert distill.predict is distill.api.predict  # no submodule shadows a public function
    with pytest.raises(AttributeError):
        distill.not_a_name  # noqa: B018


def test_predict_on_a_dataframe_warns_nothing(tmp_path: Path, cancer) -> None:
    """pandas 3 hands out read-only arrays; torch warns on those, so predict must copy (seen in docs/api.md)."""
    import warnings

    x, y = cancer
    result = distill.run({**SETTINGS, "protocol": {"episodes": 1}}, data=(x, y), output=tmp_path / "r", progress=False)
    frame = pd.DataFrame(x[:7], columns=[f"x{i}" for i in range(30)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predicted = distill.predict(result, frame.iloc[2:])
    np.testing.assert_allclose(predicted[["p_0", "p_1"]].to_numpy(), result.predict_proba(x[2:7]), rtol=1e-6)


# --------------------------------------------------------------------------- what a practitioner runs into


def test_predicting_with_a_result_checks_its_rows(tmp_path: Path, cancer) -> None:
    x, y = cancer
    result = distill.run({**SETTINGS, "protocol": {"episodes": 1}}, data=(x, y), output=tmp_path / "r",
                         progress=False)
    for rows, message in ((x[:3, :5], "has 5 feature columns; the student takes 30"),
                          (x[0], "must be [N, D] rows of features, got shape (30,) (one row: x.reshape(1, -1))"),
                          (np.full((2, 30), np.nan), "NaN or infinite"), (x[:0], "has no rows"),
                          ([["a"] * 30], "rows must be numbers")):
        with pytest.raises(distill.UserError) as caught:
            result.predict(rows)
        assert message in str(caught.value) and "\n" not in str(caught.value)


def test_float_labels_and_a_fitted_teacher_on_them(tmp_path: Path, cancer) -> None:
    x, y = cancer
    fitted = LogisticRegression(max_iter=5000).fit(x[::3], y[::3].astype(float))  # classes_ [0.0, 1.0]
    result = distill.run({**SETTINGS, "protocol": {"episodes": 1}}, data=(x, y.astype(float)), teacher=fitted,
                         output=tmp_path / "r", progress=False)
    test = _test_rows(SETTINGS, x, y, 0)
    assert result.metrics["teacher"]["accuracy"] == pytest.approx(fitted.score(x[test], y[test]), abs=1e-6)
    assert result.classes == [0.0, 1.0]


def test_a_fitted_teacher_gets_its_own_column_order(tmp_path: Path, cancer) -> None:
    x, y = cancer
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(30)])
    reversed_ = frame[frame.columns[::-1]]
    fitted = LogisticRegression(max_iter=5000).fit(reversed_.iloc[::3], y[::3])  # fit on the columns reversed
    data = frame.assign(label=y)
    result = distill.run({**SETTINGS, "protocol": {"episodes": 1}}, data=data, teacher=fitted,
                         output=tmp_path / "r", progress=False)
    test = _test_rows(SETTINGS, x, y, 0)
    assert result.metrics["teacher"]["accuracy"] == pytest.approx(fitted.score(reversed_.iloc[test], y[test]),
                                                                  abs=1e-6)
    other = LogisticRegression().fit(pd.DataFrame(x[:, :2], columns=["a", "b"]), y)
    with pytest.raises(distill.UserError, match="fit on feature\\(s\\) 'a', 'b' that the data lacks"):
        distill.run(SETTINGS, data=data, teacher=other, output=tmp_path / "o")


def test_a_fitted_teacher_must_know_exactly_the_data_classes(tmp_path: Path) -> None:
    """A teacher that lacks a class would give it probability 0 on every row; one with an extra class has a
    column nothing maps to. Both are one line, before anything is written."""
    x, y = load_iris(return_X_y=True)
    partial = LogisticRegression(max_iter=5000).fit(x[y < 2], y[y < 2])
    extra = LogisticRegression(max_iter=5000).fit(x, np.where(y == 2, 7, y))
    for teacher, message in ((partial, "lack the data's class(es) '2': fit it on rows of every class"),
                             (extra, "'7' unknown")):
        with pytest.raises(distill.UserError) as caught:
            distill.run({**SETTINGS, "protocol": {"episodes": 1}}, data=(x, y), teacher=teacher,
                        output=tmp_path / "r", progress=False)
        assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
        assert not (tmp_path / "r").exists()


def test_a_float64_module_teacher_runs_in_its_own_dtype(tmp_path: Path) -> None:
    x, y = load_iris(return_X_y=True)
    reference = LogisticRegression(max_iter=5000).fit(x, y)
    net = torch.nn.Linear(4, 3).double()
    with torch.no_grad():
        net.weight.copy_(torch.as_tensor(reference.coef_))
        net.bias.copy_(torch.as_tensor(reference.intercept_))
    config = {**SETTINGS, "data": {"scale": "standard", "test_size": 45}, "few_shot": {"labelled": 9, "validation": 0},
              "protocol": {"episodes": 1}}
    result = distill.run(config, data=(x, y), teacher=net, output=tmp_path / "r", progress=False)
    test = _test_rows(config, x, y, 0)
    assert result.metrics["teacher"]["accuracy"] == pytest.approx(reference.score(x[test], y[test]), abs=1e-6)
    assert net.weight.dtype == torch.float64
    plan = distill.check(config, data=(x, y), teacher=net)
    assert "teacher     given: Linear network given in Python" in plan


def test_a_run_with_a_teacher_object_resumes_only_with_it_again(tmp_path: Path, cancer, capsys) -> None:
    x, y = cancer
    teacher = LogisticRegression(max_iter=5000)
    first = distill.run(SETTINGS, data=(x, y), teacher=teacher, output=tmp_path / "r", progress=False)
    (tmp_path / "r" / "summary.json").unlink()  # as a killed run leaves it
    assert main(["run", "--resume", str(tmp_path / "r"), "--no-track", "-q"]) == 2
    error = capsys.readouterr().err
    assert "data.source 'memory:arrays' names data that was in memory" in error
    again = distill.resume(tmp_path / "r", data=(x, y), teacher=teacher, track=False, progress=False)
    assert _episode_numbers(again.summary) == _episode_numbers(first.summary)
    config = tmp_path / "r" / "config.toml"
    on_disk = distill.load_config(config)
    assert on_disk.teacher.given == "LogisticRegression (scikit-learn)"
    with pytest.raises(distill.UserError, match="teacher.given: this experiment's teacher was a Python object"):
        distill.run(on_disk, data=(x, y), output=tmp_path / "again")


@pytest.mark.integration
def test_run_inside_a_users_mlflow_run_and_logging(tmp_path: Path, cancer, monkeypatch) -> None:
    """A notebook's own ``with mlflow.start_run():`` and ``logging`` set-up survive a tracked run."""
    import logging

    import mlflow

    x, y = cancer
    store = os.environ["MLFLOW_TRACKING_URI"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    config = {**SETTINGS, "protocol": {"episodes": 1}, "tracking": {"enabled": True, "uri": store, "timeout": 30}}
    with mlflow.start_run() as mine:
        result = distill.run(config, data=(x, y), output=tmp_path / "r", progress=False)
        assert mlflow.active_run().info.run_id == mine.info.run_id  # still the user's run
    assert result.mlflow_run_id not in (None, mine.info.run_id)
    assert mlflow.get_run(result.mlflow_run_id).info.status == "FINISHED"
    assert list(root.handlers) == handlers and root.level == level
    log = (tmp_path / "r" / "log.txt").read_text()
    assert "teacher     sklearn: LogisticRegression" in log and "done in" in log  # the run log, as the CLI's


def test_progress_bars_in_a_notebook_without_ipywidgets_are_text_bars(monkeypatch) -> None:
    import importlib.util
    import types

    from tqdm.std import tqdm as text

    from distill.progress import _bar_class

    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))  # as inside Jupyter
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ipywidgets" else real(name, *a))
    assert _bar_class() is text  # tqdm.auto would pick the widget and warn "IProgress not found"
    assert distill.api._progress(None) is True  # bars on by default in a notebook


def test_the_result_comes_before_the_plots_and_no_plots_draws_none(tmp_path: Path, cancer, capsys) -> None:
    """``on_complete`` sees summary.json written and no PNG yet (the plots never delay a result); after the
    run every plot is there. ``--no-plots`` (``outputs.plots = false``) draws none and changes no number."""
    seen: list[list[str]] = []
    result = distill.run(SETTINGS, data=cancer, output=tmp_path / "plots", progress=False,
                         on_complete=lambda r: seen.append(sorted(p.name for p in r.run_dir.iterdir())))
    (at_completion,) = seen
    assert {"summary.json", "history.csv", "student.pt"} <= set(at_completion)
    assert not [name for name in at_completion if name.endswith(".png")]
    assert {"learning_curves.png", "confusion_matrix.png", "episodes.png"} <= {p.name for p in result.run_dir.iterdir()}

    frame = pd.DataFrame(cancer[0], columns=[f"f{i}" for i in range(cancer[0].shape[1])]).assign(label=cancer[1])
    csv = tmp_path / "cancer.csv"
    frame.to_csv(csv, index=False)
    experiment = tmp_path / "api.toml"
    experiment.write_text(_toml({**SETTINGS, "data": {**SETTINGS["data"], "source": f"csv:{csv}"}}))
    out = tmp_path / "no-plots"
    assert main(["run", str(experiment), "-o", str(out), "--no-track", "-q", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "student" in printed and f"run directory: {out}" in printed
    assert not list(out.glob("*.png"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["outputs"] == {"plots": False}
    assert _episode_numbers(summary) == _episode_numbers(result.summary)
