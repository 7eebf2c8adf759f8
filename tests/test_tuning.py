"""``distill tune``: Optuna search on validation rows only, then best vs untuned on the test rows.

Every study here is small (iris, 9 labelled rows, a 4-8-3 MLP, 5 epochs) and lives in a journal
file under the test's temporary folder; torch runs on one thread (many times faster for such
models on a small, busy machine).
"""

from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import tomllib
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from sklearn.metrics import f1_score

import distill.experiment.prepare
import distill.experiment.run
from distill.cli import main
from distill.config import load_config, to_toml
from distill.data.scaling import fit_scaler
from distill.data.sources import Dataset, load_dataset
from distill.data.split import split_dataset
from distill.engine.loop import predict_logits
from distill.errors import UserError
from distill.experiment.cache import SoftTargetCache
from distill.experiment.prepare import episode_seed, prepare
from distill.experiment.students import StudentJob, train_students
from distill.experiment.teach import teach
from distill.experiment.tune import run_tuning, trial_config, validation_score
from distill.outputs.report import SYSTEMS

ROOT = Path(__file__).resolve().parents[1]
STUDY = "iris_tune"

BASE: dict[str, Any] = {
    "name": STUDY,
    "seed": 0,
    "data": {"source": "sklearn:iris", "test_size": 30},
    "few_shot": {"per_class": 3, "validation": 2},
    "protocol": {"episodes": 2},
    "teacher": {"restarts": 0},
    "student": {"arch": "mlp", "hidden": [8]},
    "train": {"epochs": 5, "lr": 0.05, "device": "cpu"},
    "tune": {
        "trials": 3,
        "space": {
            "objective.kl_weight": {"low": 0.0, "high": 5.0},
            "objective.temperature": {"low": 1.0, "high": 5.0},
        },
    },
}


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "space":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


#: The untuned config on a fixed KL term, for studies not about what "auto" does (first_study is): its
#: cross-validation would run in every untuned validation score and comparison run, and in every trial
#: whose search space leaves the KL term alone.
FIXED_KL = {"kl_weight": 1.0, "temperature": 1.0}


def write_config(folder: Path, name: str = "tune.toml", **sections: Any) -> Path:
    """BASE with ``sections`` merged in (a given ``tune.space`` replaces the default one), as TOML."""
    path = folder / name
    path.write_text(to_toml(_merge(BASE, sections)), encoding="utf-8")
    return path


def journal(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def load_study(path: Path, name: str = STUDY) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=journal(path))


def tune(toml: Path, storage: Path, out: Path, *extra: str) -> int:
    return main(["tune", str(toml), "--storage", str(storage), "-o", str(out), *extra])


def dotted(tree: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models: one intra-op thread is many times faster than two on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def first_study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real ``tune`` of 6 trials (2 episodes each), shared by the read-only tests below."""
    folder = tmp_path_factory.mktemp("first")
    toml = write_config(folder)
    storage, out = folder / "journal.log", folder / "out"
    assert tune(toml, storage, out, "--trials", "6", "--no-track", "-q") == 0
    return {"folder": folder, "toml": toml, "storage": storage, "out": out}


# --------------------------------------------------------------------------- 1. what a run leaves


def test_best_is_the_best_completed_trial_and_run_directory_is_complete(first_study) -> None:
    out = first_study["out"]
    study = load_study(first_study["storage"])
    summary = json.loads((out / "tuning.json").read_text())

    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(study.trials) == 6 and complete
    assert study.metric_names == [summary["metric"]]  # "validation f1_macro": optuna-dashboard's axis label
    best_value = max(t.value for t in complete)
    assert summary["best"]["validation"] == best_value
    best = study.trials[summary["best"]["trial"]]
    assert best.state == TrialState.COMPLETE and best.value == best_value
    assert summary["best"]["params"] == best.params
    assert set(best.params) == {"objective.kl_weight", "objective.temperature"}
    assert summary["trials"] == {
        "before": 0,
        "total": 6,
        "complete": len(complete),
        "pruned": sum(t.state == TrialState.PRUNED for t in study.trials),
        "failed": 0,
    }
    assert summary["study"] == STUDY and summary["direction"] == "maximize"
    # Untuned: the config's own values, here the defaults, chosen per episode by cross-validation.
    assert summary["untuned"]["params"] == {"objective.kl_weight": "auto", "objective.temperature": "auto"}

    # best_config.toml is the experiment with the best params, loadable as is.
    best_cfg = tomllib.loads((out / "best_config.toml").read_text())
    for key, value in best.params.items():
        assert dotted(best_cfg, key) == value
    assert load_config(out / "best_config.toml") == trial_config(load_config(first_study["toml"]), best.params)

    # The honest test numbers come from the two full runs written beside it.
    for side, block in (("tuned", summary["best"]["test"]), ("untuned", summary["untuned"]["test"])):
        run = json.loads((out / side / "summary.json").read_text())
        assert run["status"] == "completed"
        for system in SYSTEMS:
            assert block[system] == run[system]
    tuned_run_cfg = tomllib.loads((out / "tuned" / "config.toml").read_text())
    for key, value in best.params.items():
        assert dotted(tuned_run_cfg, key) == value

    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == [t.number for t in study.trials] == list(range(6))
    for row, trial in zip(rows, study.trials, strict=True):
        assert row["state"] == trial.state.name
        if trial.state == TrialState.COMPLETE:
            assert float(row["value"]) == pytest.approx(trial.value, abs=1e-12)

    distinct = {json.dumps(t.params, sort_keys=True) for t in complete}
    expected = {"optimization_history", "slice"} | ({"param_importances"} if len(distinct) >= 2 else set())
    assert set(summary["plots"]) == {f"tune_{name}.png" for name in expected}
    for name in expected:
        png = out / f"tune_{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "config.toml").is_file() and (out / "log.txt").is_file()


# --------------------------------------------------------------------------- 2. what a trial's value is


def test_trial_value_is_the_mean_validation_macro_f1_over_episodes(first_study) -> None:
    config = load_config(first_study["toml"])
    study = load_study(first_study["storage"])
    best = study.best_trial
    cfg = trial_config(config, best.params)
    assert cfg.objective.kl_weight == best.params["objective.kl_weight"]
    dataset = load_dataset(cfg.data.source)

    scores = []
    for e in range(cfg.protocol.episodes):
        seed = episode_seed(cfg.seed, e)
        assert seed == cfg.seed + e
        episode_cfg = cfg.model_copy(update={"seed": seed})
        prepared = prepare(episode_cfg, dataset)
        # Re-derive the validation rows: the seed's own draw, scaled by the labelled rows only.
        split = split_dataset(dataset, test_size=30, labelled=None, per_class=3, validation=2, seed=seed)
        assert split.validation.size == 6 and not set(split.validation) & set(split.test)
        scaler = fit_scaler("minmax", dataset.x[split.labelled])
        taught = teach(prepared, score_test=False)
        assert taught.validation is not None
        np.testing.assert_allclose(taught.validation.x.numpy(), scaler.transform(dataset.x[split.validation]), rtol=1e-6)
        job = StudentJob.planned(prepared, taught, "student")
        train_students([job])
        predicted = predict_logits(job.model, taught.validation.x).argmax(1).numpy()
        scores.append(f1_score(dataset.y[split.validation], predicted, average="macro", labels=[0, 1, 2], zero_division=0))

    # torchmetrics computes F1 in float32 (an exact 0.5 comes back as 0.50000001...): agreement to
    # float32 precision is the best a float64 recomputation can reach.
    assert best.value == pytest.approx(float(np.mean(scores)), abs=1e-6)
    assert validation_score(cfg, dataset, SoftTargetCache(None))[0] == pytest.approx(best.value, abs=1e-12)


# --------------------------------------------------------------------------- 3. no test leakage


def _poisoned(dataset: Dataset, config) -> tuple[Dataset, np.ndarray]:
    split = split_dataset(dataset, test_size=config.data.test_size, labelled=None,
                          per_class=config.few_shot.per_class, validation=config.few_shot.validation, seed=config.seed)
    x = dataset.x.copy()
    x[split.test] = np.nan
    return Dataset(dataset.name, x, dataset.y.copy(), list(dataset.classes), list(dataset.feature_names)), split.test


def test_search_never_reads_the_test_rows(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, protocol={"episodes": 1}))
    clean = load_dataset(config.data.source)
    poisoned, test_rows = _poisoned(clean, config)
    assert test_rows.size == 30 and np.isnan(poisoned.x[test_rows]).all()

    for params in ({}, {"objective.kl_weight": 3.0, "objective.temperature": 2.5}):
        cfg = trial_config(config, params)
        value_clean, scores_clean = validation_score(cfg, clean, SoftTargetCache(None))
        value_poisoned, scores_poisoned = validation_score(cfg, poisoned, SoftTargetCache(None))
        assert np.isfinite(value_clean) and 0.0 <= value_clean <= 1.0
        assert value_poisoned == value_clean and scores_poisoned == scores_clean

    prepared = prepare(config, poisoned)
    taught = teach(prepared, score_test=False)
    assert taught.test_logits.shape == (0, 3)
    assert np.isfinite(taught.train.teacher_logits.numpy()).all()
    # The poison bites whenever the test rows are read: the teacher's error, in one line naming it.
    with pytest.raises(UserError, match=r"^teacher 'gaussian_process' failed computing its logits on 45 rows: "
                                        r"ValueError: Input X contains NaN\. \[GaussianProcessClassifier"):
        teach(prepared, score_test=True)


def test_whole_search_on_poisoned_test_rows_scores_like_clean_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_tuning end to end: data loading returns NaN test rows for the search; the final runs get clean data."""
    config = load_config(write_config(tmp_path, protocol={"episodes": 1}))
    clean = load_dataset(config.data.source)
    poisoned, _ = _poisoned(clean, config)
    loads: list[str] = []

    def poisoned_load(source: str, label: str = "label") -> Dataset:
        loads.append(source)
        return poisoned

    real_run = distill.experiment.run.run_experiment

    def clean_run(*args, **kwargs):
        monkeypatch.setattr(distill.experiment.prepare, "load_dataset", load_dataset)  # the honest test runs read test rows
        return real_run(*args, **kwargs)

    monkeypatch.setattr(distill.experiment.prepare, "load_dataset", poisoned_load)
    monkeypatch.setattr(distill.experiment.run, "run_experiment", clean_run)
    result = run_tuning(config, trials=3, storage=str(tmp_path / "journal.log"), output=tmp_path / "out", track=False)
    assert loads == [config.data.source]  # the search loaded its data through the poisoned loader

    study = load_study(tmp_path / "journal.log")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    cache: SoftTargetCache = SoftTargetCache(None)
    for trial in study.trials:
        assert np.isfinite(trial.value)
        assert trial.value == validation_score(trial_config(config, trial.params), clean, cache)[0]
    assert result.untuned_value == validation_score(config, clean, cache)[0]
    assert np.isfinite(result.summary["best"]["test"]["student"]["accuracy"])


# --------------------------------------------------------------------------- 4. resume


def test_resume_adds_trials_to_the_same_study(first_study, tmp_path: Path) -> None:
    storage = tmp_path / "journal.log"
    shutil.copy(first_study["storage"], storage)  # leave the shared study alone
    before = load_study(storage).trials
    assert len(before) == 6

    assert tune(first_study["toml"], storage, tmp_path / "out", "--study", STUDY, "--trials", "3", "--no-track", "-q") == 0
    after = load_study(storage).trials
    assert [t.number for t in after] == list(range(9))
    for old, new in zip(before, after[: len(before)], strict=True):  # resume appends; the old trials are unchanged
        assert (old.params, old.value, old.state) == (new.params, new.value, new.state)
    summary = json.loads((tmp_path / "out" / "tuning.json").read_text())
    assert summary["trials"]["before"] == 6 and summary["trials"]["total"] == 9
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    assert summary["best"]["validation"] == max(t.value for t in complete)
    with open(tmp_path / "out" / "trials.csv", newline="") as f:
        assert [int(r["number"]) for r in csv.DictReader(f)] == list(range(9))


# --------------------------------------------------------------------------- 5. pruning


def test_median_pruner_prunes_a_clearly_worse_trial(tmp_path: Path) -> None:
    toml = write_config(
        tmp_path,
        protocol={"episodes": 3},
        tune={"pruner": "median", "space": {"train.lr": {"choices": [1e-6, 0.05]}}},
        objective=FIXED_KL,  # the space leaves the KL term alone: "auto" would run in every trial
    )
    storage = tmp_path / "journal.log"
    # Five good trials first (the median pruner's startup), then two with a learning rate that learns nothing.
    study = optuna.create_study(study_name="prune", storage=journal(storage), direction="maximize")
    for lr in [0.05] * 5 + [1e-6] * 2:
        study.enqueue_trial({"train.lr": lr})

    assert tune(toml, storage, tmp_path / "out", "--study", "prune", "--trials", "7", "--no-track", "-q") == 0
    trials = load_study(storage, "prune").trials
    assert len(trials) == 7
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(complete) == 5 and len(pruned) == 2
    for t in complete:
        assert t.params == {"train.lr": 0.05}
        assert sorted(t.intermediate_values) == [0, 1, 2]  # the running mean after each episode
        assert t.intermediate_values[2] == pytest.approx(t.value, abs=1e-12)
    median = float(np.median([t.intermediate_values[1] for t in complete]))
    for t in pruned:
        assert t.params == {"train.lr": 1e-6}
        assert sorted(t.intermediate_values) == [0, 1]  # stopped after episode 1 (warm-up: episode 0)
        assert t.value == t.intermediate_values[1]  # Optuna keeps the last reported running mean
        assert t.intermediate_values[1] < median

    summary = json.loads((tmp_path / "out" / "tuning.json").read_text())
    # ("before" counts the 7 enqueued WAITING trials too; not asserted here.)
    assert {k: v for k, v in summary["trials"].items() if k != "before"} == {
        "total": 7, "complete": 5, "pruned": 2, "failed": 0}
    assert summary["best"]["params"] == {"train.lr": 0.05}
    assert summary["pruner"] == "median"


# --------------------------------------------------------------------------- 6. several workers


@pytest.mark.integration
@pytest.mark.slow
def test_two_workers_share_one_journal_study(tmp_path: Path) -> None:
    toml = write_config(tmp_path, protocol={"episodes": 1}, objective=FIXED_KL)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "distill", "tune", str(toml), "--trials", "4", "--study", "shared",
             "--storage", "journal.log", "-o", f"out{i}", "--no-track", "-q"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    results = []
    try:
        for p in procs:
            results.append(p.communicate(timeout=240))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (_out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    trials = load_study(tmp_path / "journal.log", "shared").trials
    assert sorted(t.number for t in trials) == list(range(8))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    for i in range(2):
        summary = json.loads((tmp_path / f"out{i}" / "tuning.json").read_text())
        assert summary["study"] == "shared" and 4 <= summary["trials"]["total"] <= 8
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- 7. reproducibility


@pytest.mark.slow
def test_same_seed_gives_the_same_study(tmp_path: Path) -> None:
    toml = write_config(tmp_path, protocol={"episodes": 1}, objective=FIXED_KL)  # "auto" alike: test_kd_selection
    studies, summaries = [], []
    for i in range(2):
        storage = tmp_path / f"journal{i}.log"
        assert tune(toml, storage, tmp_path / f"out{i}", "--trials", "4", "--seed", "5", "--jobs", "1",
                    "--no-track", "-q") == 0
        studies.append(load_study(storage).trials)
        summaries.append(json.loads((tmp_path / f"out{i}" / "tuning.json").read_text()))
    a, b = studies
    assert len(a) == len(b) == 4
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.value for t in a] == [t.value for t in b]
    assert len({json.dumps(t.params, sort_keys=True) for t in a}) == 4
    assert summaries[0]["best"] == summaries[1]["best"]  # params, validation and the test numbers
    assert summaries[0]["untuned"] == summaries[1]["untuned"]
    assert summaries[0]["sampler"] == {"kind": "tpe", "seed": 5}
    assert summaries[0]["config"]["seed"] == 5


# --------------------------------------------------------------------------- 8. bad input


@pytest.mark.parametrize(
    ("sections", "args", "key"),
    [
        ({"few_shot": {"per_class": 3, "validation": 0}}, [], "few_shot.validation"),
        ({"tune": {"space": {"objective.kl_weight": {"low": 5.0, "high": 1.0}}}}, [], "tune.space.objective.kl_weight"),
        ({"tune": {"space": {"objective.kl_wieght": {"low": 0.0, "high": 1.0}}}}, [], "objective.kl_wieght"),
        ({"tune": {"space": {"train.lr": {"low": 0.0, "high": 0.1, "log": True}}}}, [], "tune.space.train.lr"),
        ({"tune": {"space": {"objective.kl_weight": {"low": -1.0, "high": 1.0}}}}, [], "objective.kl_weight"),
        ({"objective": {"temperature": [1.0, 2.0]}}, [], "objective.temperature"),
        ({}, ["--trials", "-1"], "--trials"),
        ({}, ["--trials", "0"], "--trials 0"),  # compare only: the study must exist
        ({}, ["--trials", "0", "--no-compare"], "--no-compare"),
    ],
    ids=["no-validation", "low-above-high", "unknown-key", "log-through-zero", "end-invalid", "sweep", "negative-trials",
         "compare-a-missing-study", "nothing-to-do"],
)
def test_bad_input_exits_2_with_one_line_naming_the_key(
    sections: dict, args: list[str], key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    toml = write_config(tmp_path, **sections)
    assert tune(toml, tmp_path / "journal.log", tmp_path / "out", "--no-track", "-q", *args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and key in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()
    assert not (tmp_path / "journal.log").exists()


# --------------------------------------------------------------------------- 9. MLflow


@pytest.mark.slow
def test_mlflow_records_a_parent_run_with_one_child_per_trial(tmp_path: Path, fresh_mlflow_store) -> None:
    from mlflow.tracking import MlflowClient

    uri = fresh_mlflow_store(tmp_path / "mlflow.db")
    toml = write_config(tmp_path, protocol={"episodes": 1}, objective=FIXED_KL)
    storage = tmp_path / "journal.log"
    track = ["--set", f'tracking.uri="{uri}"', "-q"]
    assert tune(toml, storage, tmp_path / "out1", "--trials", "3", *track) == 0
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(STUDY)
    assert experiment is not None

    def check(out: Path, n_trials: int) -> str:
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(parents) == 1
        parent = client.get_run(parents[0].info.run_id)
        summary = json.loads((out / "tuning.json").read_text())
        assert summary["mlflow_run_id"] == parent.info.run_id
        # its page, trials nested under it, on the UI's model-training view (a local store: as `mlflow ui` serves it)
        assert summary["mlflow_ui_url"] == (f"http://127.0.0.1:5000/#/experiments/{parent.info.experiment_id}/runs/"
                                            f"{parent.info.run_id}?workflowType=machine_learning")
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["distill.study"] == STUDY
        # like a run's parent: named after the experiment first, with its user, source and commit
        assert parent.info.run_name.startswith(f"{STUDY} · tune ")
        assert parent.data.tags["mlflow.user"] and parent.data.tags["mlflow.source.name"]
        assert parent.data.tags["mlflow.source.type"] == "LOCAL"
        if (ROOT / ".git").exists():
            assert parent.data.tags["git.commit"] == subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        for k, v in summary["best"]["params"].items():
            assert parent.data.tags[f"best.{k}"] == str(v)
        assert parent.data.tags["best.trial"] == str(summary["best"]["trial"])
        metrics = parent.data.metrics
        assert metrics["best/validation"] == pytest.approx(summary["best"]["validation"], abs=1e-12)
        assert metrics["tuned/student/test_accuracy"] == pytest.approx(summary["best"]["test"]["student"]["accuracy"])
        assert metrics["untuned/student/test_accuracy"] == pytest.approx(summary["untuned"]["test"]["student"]["accuracy"])

        trials = load_study(storage).trials
        assert len(trials) == n_trials
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.info.run_name for r in children) == sorted(f"trial {t.number}" for t in trials)
        by_name = {r.info.run_name: r for r in children}
        for t in trials:
            child = by_name[f"trial {t.number}"]
            assert child.data.tags["optuna.state"] == t.state.name
            assert child.data.params == {k: str(v) for k, v in t.params.items()}
            if t.state == TrialState.COMPLETE:
                assert child.data.metrics["validation/value"] == pytest.approx(t.value, abs=1e-12)
                assert child.info.status == "FINISHED"
                # the child run spans the trial: it starts as the trial starts and ends when Optuna says it did
                assert abs(child.info.start_time - t.datetime_start.timestamp() * 1000) < 250
                assert child.info.end_time == int(t.datetime_complete.timestamp() * 1000)
        assert len(runs) == 1 + n_trials
        return parent.info.run_id

    first = check(tmp_path / "out1", 3)
    # A resumed study adds its children to the same parent run.
    assert tune(toml, storage, tmp_path / "out2", "--trials", "2", *track) == 0
    assert check(tmp_path / "out2", 5) == first


@pytest.mark.slow
def test_an_rdb_url_is_used_as_given(tmp_path: Path) -> None:
    # Any RDB URL goes straight to Optuna's RDBStorage (here SQLite; PostgreSQL/MySQL alike).
    toml = write_config(tmp_path, objective=FIXED_KL)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["tune", str(toml), "--storage", url, "-o", str(tmp_path / "out"), "--trials", "2",
                 "--no-track", "-q"]) == 0
    study = optuna.load_study(study_name=STUDY, storage=url)
    assert [t.number for t in study.trials] == [0, 1]
    assert all(t.state.is_finished() for t in study.trials)
    summary = json.loads((tmp_path / "out" / "tuning.json").read_text())
    assert summary["storage"] == url
    assert summary["best"]["validation"] == max(t.value for t in study.trials if t.value is not None)


# --------------------------------------------------------------------------- 9. plots leave matplotlib alone

#: the smallest tune that draws all three plots: 2 trials (distinct learning rates), 1 episode, a fixed KL
#: term (no cross-validated "auto" choice) and a logistic-regression teacher
PLOT_TUNE: dict[str, Any] = {
    "protocol": {"episodes": 1},
    "teacher": {"kind": "sklearn", "estimator": "sklearn.linear_model:LogisticRegression"},
    "objective": {"kl_weight": 1.0, "temperature": 1.0},
    "train": {"epochs": 2, "threads": 1},
    "tune": {"trials": 2, "space": {"train.lr": {"low": 0.001, "high": 0.1}}},
    "tracking": {"enabled": False},
}
PLOTS = ["tune_optimization_history.png", "tune_param_importances.png", "tune_slice.png"]


def test_tune_leaves_matplotlibs_rcparams_and_figures_as_they_were(tmp_path: Path) -> None:
    """issue 16: optuna's plots call ``plt.style.use("ggplot")``, which stayed in force after distill.tune."""
    import matplotlib
    import matplotlib.pyplot as plt

    import distill

    assert matplotlib.style.library["ggplot"]["axes.facecolor"] != matplotlib.rcParams["axes.facecolor"]
    before = dict(matplotlib.rcParams)
    figures = plt.get_fignums()
    result = distill.tune(_merge(BASE, PLOT_TUNE), storage=str(tmp_path / "journal.log"), output=tmp_path / "out",
                          track=False, progress=False)
    assert dict(matplotlib.rcParams) == before
    assert plt.get_fignums() == figures  # every figure the plots opened is closed
    assert sorted(result.summary["plots"]) == PLOTS  # the style was in force while they were drawn


@pytest.mark.integration
def test_tune_under_a_non_agg_backend_writes_its_plots(tmp_path: Path) -> None:
    """issue 16: with ``MPLBACKEND=svg`` the importance plot failed (no renderer): exit 1, no tuning.json."""
    toml = write_config(tmp_path, **PLOT_TUNE)
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="svg", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    code = ("import sys, matplotlib; from distill.cli import main; code = main(sys.argv[1:]); "
            "print('backend', matplotlib.get_backend()); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, "tune", str(toml), "--storage", "journal.log", "-o", "out",
                           "--no-track", "-q"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "backend svg" in proc.stdout  # the process's backend was left as the user chose it
    summary = json.loads((tmp_path / "out" / "tuning.json").read_text())
    assert summary["status"] == "completed" and sorted(summary["plots"]) == PLOTS
    for name in PLOTS:
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_plot_that_breaks_is_logged_and_skipped_never_a_failed_tune(tmp_path: Path, monkeypatch, caplog) -> None:
    """Any exception from optuna's plotting (here an AssertionError after a half-drawn figure) costs that plot
    only: the others are written, the figure is closed and the rcParams come back."""
    import matplotlib
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    from distill.experiment.tune import _save_plots

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("x", -2.0, 2.0) - 0.5) ** 2, n_trials=3)

    def broken_slice(study: Any) -> Any:
        plt.style.use("ggplot")
        plt.subplots()  # a figure opened, then the plot fails
        raise AssertionError("no renderer")

    monkeypatch.setattr(vis, "plot_slice", broken_slice)
    before, figures = dict(matplotlib.rcParams), plt.get_fignums()
    with caplog.at_level("INFO", logger="distill"):
        written = _save_plots(study, tmp_path)
    assert written == ["tune_optimization_history.png", "tune_param_importances.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == written  # no PNG and no temporary file for the slice
    assert [(r.levelname, r.getMessage()) for r in caplog.records if "plot" in r.getMessage()] == [
        ("WARNING", "no slice plot: AssertionError: no renderer")]
    assert dict(matplotlib.rcParams) == before and plt.get_fignums() == figures


def test_worker_trials_split_to_the_requested_total() -> None:
    """``--trials`` over ``--workers``: shares differ by at most one, sum to the total, none is empty."""
    from distill.experiment.workers import split_trials

    assert split_trials(10, 4) == [3, 3, 2, 2]
    assert split_trials(8, 4) == [2, 2, 2, 2]
    assert split_trials(3, 8) == [1, 1, 1]  # more workers than trials: only as many workers as trials
    assert split_trials(1, 1) == [1]
    for total in range(1, 40):
        for workers in range(1, 12):
            shares = split_trials(total, workers)
            assert sum(shares) == total and min(shares) >= 1 and max(shares) - min(shares) <= 1


def test_threads_per_worker_never_oversubscribe() -> None:
    """cores // N threads each (at least one) unless ``train.threads`` is set; N * threads <= cores."""
    from distill.experiment.workers import threads_per_worker

    assert threads_per_worker(16, 4, 0) == 4
    assert threads_per_worker(16, 3, 0) == 5
    assert threads_per_worker(2, 4, 0) == 1  # fewer cores than workers: one each
    assert threads_per_worker(16, 4, 7) == 7  # set explicitly: as given
    for cores in range(1, 33):
        for workers in range(1, cores + 1):
            assert workers * threads_per_worker(cores, workers, 0) <= cores


def test_each_worker_samples_with_its_own_seed() -> None:
    """Workers of one ``tune --workers N`` do not repeat each other's first suggestions: worker i's sampler
    seed is seed + i - 1; the first worker and a plain process keep the experiment's seed."""
    from distill.experiment.tune import sampler_seed_for

    assert sampler_seed_for(7, None) == 7
    assert [sampler_seed_for(7, f"{i}/4") for i in range(1, 5)] == [7, 8, 9, 10]
