"""``distill teacher train``: a network teacher's checkpoint, and distilling from it on rows it never saw."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.cli import main
from distill.config import load_config
from distill.data.scaling import fit_scaler
from distill.data.sources import load_dataset
from distill.data.split import draw_stratified
from distill.experiment.cache import data_hash
from distill.experiment.prepare import episode_seed, prepare
from distill.students.checkpoint import CHECKPOINT_FORMAT, servable_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
DIGITS_TEACHER = EXPERIMENTS / "digits_teacher.toml"
DIGITS_CNN_TO_MLP = EXPERIMENTS / "digits_cnn_to_mlp.toml"
FASHION = EXPERIMENTS / "fashion_mnist_lenet.toml"


@pytest.fixture(scope="module")
def digits() -> object:
    return load_dataset("sklearn:digits")


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory: pytest.TempPathFactory):
    """One digits CNN teacher (3 epochs), trained in a throwaway working folder."""
    tmp = tmp_path_factory.mktemp("digits_teacher")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        code = main(["teacher", "train", str(DIGITS_TEACHER), "-o", str(tmp / "t.pt"), "--no-track", "-q",
                     "--set", "train.epochs=3"])
    assert code == 0
    path = tmp / "t.pt"
    return tmp, path, torch.load(path, map_location="cpu", weights_only=True)


def test_teacher_train_writes_a_weights_only_checkpoint(digits_teacher, digits) -> None:
    tmp, path, payload = digits_teacher
    assert path.is_file() and path.with_suffix(".json").is_file()
    assert payload["format"] == CHECKPOINT_FORMAT
    assert payload["role"] == "teacher"
    assert payload["arch"] == "cnn"
    assert payload["kwargs"] == {"channels": [16, 32], "kernel_sizes": [3, 3], "hidden": [64]}
    assert payload["in_shape"] == [1, 8, 8]
    assert payload["num_classes"] == 10 and payload["num_outputs"] == 10
    assert payload["classes"] == [str(i) for i in range(10)]
    assert payload["label_mapping"] == {str(i): i for i in range(10)}
    assert payload["data_hash"] == data_hash(digits.x, digits.y)
    assert payload["seed"] == 0
    assert all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values())
    # Nothing was written beside it but its summary and log; no cache, no MLflow store.
    assert sorted(p.name for p in tmp.iterdir()) == ["t.json", "t.log", "t.pt"]
    logged = (tmp / "t.log").read_text()  # the whole training's log, from its first line
    assert "teacher train: cnn" in logged and "test accuracy" in logged


def test_the_heldout_rows_are_a_stratified_test_split(digits_teacher, digits) -> None:
    _, _, payload = digits_teacher
    heldout = np.asarray(payload["heldout_rows"])
    assert heldout.size == 500  # data.test_size
    assert np.unique(heldout).size == 500
    assert heldout.min() >= 0 and heldout.max() < digits.x.shape[0]
    counts = np.bincount(digits.y[heldout], minlength=10)
    assert counts.min() >= 45 and counts.max() <= 55  # ~50 per class
    assert payload["train_rows"] + 500 < digits.x.shape[0]  # the validation split is out of training too


def test_the_checkpoint_holds_the_keys_and_rows_it_held_before_the_shared_builder(digits_teacher, digits) -> None:
    """The shared ``checkpoint_payload`` writes the keys the teacher's own dict held, and the shared test
    split draws the rows the teacher's own split code drew (re-implemented here as it was)."""
    _, _, payload = digits_teacher
    assert set(payload) == {
        "format", "role", "distill_version", "arch", "kwargs", "in_shape", "num_classes", "num_outputs", "classes",
        "label_mapping", "feature_names", "scaler", "data_source", "data_hash", "heldout_rows", "train_rows",
        "test_accuracy", "test_metrics", "best_epoch", "seed", "config", "state_dict"}
    config = load_config(DIGITS_TEACHER)
    n, k = digits.x.shape[0], digits.num_classes
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0x7EAC]))
    test = draw_stratified(digits.y, np.arange(n), 500, "total", rng, k, "data.test_size")
    rest = np.setdiff1d(np.arange(n), test, assume_unique=True)
    val = draw_stratified(digits.y, rest, max(k, int(round(0.1 * rest.size))), "total", rng, k, "teacher.validation")
    train = np.setdiff1d(rest, val, assume_unique=True)
    assert payload["heldout_rows"] == test.tolist() and payload["train_rows"] == train.size
    assert payload["scaler"] == fit_scaler("minmax", digits.x[train]).state()
    assert payload["data_source"] == "sklearn:digits" and payload["test_accuracy"] == payload["test_metrics"]["accuracy"]


def test_the_recorded_test_accuracy_is_the_networks_on_the_heldout_rows(digits_teacher, digits) -> None:
    _, _, payload = digits_teacher
    heldout = np.asarray(payload["heldout_rows"])
    model = servable_from_checkpoint(payload)  # raw features in, probabilities out (its own min-max scaling)
    with torch.no_grad():
        proba = model(torch.as_tensor(digits.x[heldout], dtype=torch.float32)).numpy()
    accuracy = float(np.mean(proba.argmax(1) == digits.y[heldout]))
    assert payload["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert accuracy > 0.3  # 3 epochs: learning, not chance
    summary = json.loads(Path(str(digits_teacher[1])).with_suffix(".json").read_text())
    assert summary["status"] == "completed"
    assert summary["test"]["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert summary["rows"]["heldout_test"] == 500
    assert summary["fit"]["epochs_run"] == 3
    assert summary["data_hash"] == payload["data_hash"]
    assert summary["mlflow_run_id"] is None


def test_distilling_from_it_tests_only_on_rows_it_never_saw(digits_teacher, tmp_path: Path, monkeypatch) -> None:
    _, path, payload = digits_teacher
    heldout = set(payload["heldout_rows"])
    monkeypatch.chdir(tmp_path)
    code = main(["run", str(DIGITS_CNN_TO_MLP), "-o", "run", "-q", "--no-track", "--set", f'teacher.checkpoint="{path}"',
                 "--set", "protocol.episodes=2", "--set", "train.epochs=3"])
    assert code == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and len(summary["episodes"]) == 2
    assert all(e["split"]["test"] == 300 for e in summary["episodes"])
    assert summary["episodes"][0]["teacher_diagnostics"]["role"] == "teacher"
    # The run's own config, episode by episode (seed + e): every test row is one the teacher never saw.
    config = load_config(tmp_path / "run" / "config.toml")
    dataset = load_dataset(config.data.source)
    tests = []
    for e in range(2):
        prepared = prepare(config.model_copy(update={"seed": episode_seed(config.seed, e)}), dataset)
        test = set(prepared.split.test.tolist())
        assert len(test) == 300 and test <= heldout
        # ... and none of the student's rows is a test row.
        seen = np.concatenate([prepared.split.labelled, prepared.split.pool, prepared.split.validation])
        assert not test & set(seen.tolist())
        tests.append(test)
    assert tests[0] != tests[1]  # two draws from the 500 held-out rows


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def _tiny_fashion(folder: Path) -> None:
    """40 training and 12 t10k 28x28 uint8 images, labels 0..9 (train gzipped, t10k plain)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for part, n, compress in (("train", 40, True), ("t10k", 12, False)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[:, labels, :] = 255  # a learnable stripe per class
        _write_idx(folder / f"{part}-images-idx3-ubyte", images, compress)
        _write_idx(folder / f"{part}-labels-idx1-ubyte", labels, compress)


def test_fashion_mnist_lenet_on_tiny_idx_files(tmp_path: Path, monkeypatch) -> None:
    _tiny_fashion(tmp_path / "data" / "fashion-mnist")
    monkeypatch.chdir(tmp_path)
    code = main(["teacher", "train", str(FASHION), "--no-track", "-q", "--set", "data.test_size=10",
                 "--set", "train.epochs=1", "--set", "train.batch_size=16"])
    assert code == 0
    path = tmp_path / "runs" / "teachers" / "fashion_mnist_lenet.pt"
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["in_shape"] == [1, 28, 28]
    assert payload["num_classes"] == 10 and payload["role"] == "teacher"
    assert len(payload["heldout_rows"]) == 10
    state = payload["state_dict"]
    convs = [tuple(v.shape) for k, v in state.items() if k.endswith("weight") and v.dim() == 4]
    linears = [tuple(v.shape) for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    assert convs == [(6, 1, 5, 5), (16, 6, 5, 5)]
    assert linears == [(120, 400), (84, 120), (10, 84)]
    assert sum(v.numel() for v in state.values()) == 61_706  # LeNet-5 for 10 classes
    model = servable_from_checkpoint(payload)
    with torch.no_grad():
        out = model(torch.zeros(3, 784))
    assert out.shape == (3, 10)


def test_the_shipped_teacher_experiments_in_order(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["teacher", "train", str(DIGITS_TEACHER), "--no-track", "-q", "--set", "train.epochs=5"]) == 0
    checkpoint = tmp_path / "runs" / "teachers" / "digits_cnn.pt"
    assert checkpoint.is_file()  # teacher.checkpoint, relative to the working folder
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert main(["run", str(DIGITS_CNN_TO_MLP), "-o", "run", "--no-track", "-q",
                 "--set", "protocol.episodes=2", "--set", "train.epochs=5"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["name"] == "digits_cnn_to_mlp"
    assert summary["protocol"]["episodes"] == 2 and len(summary["episodes"]) == 2
    for system in ("teacher", "student", "baseline"):
        assert set(summary["aggregate"][system]) >= {"accuracy", "f1_macro", "auroc", "ece"}
    assert summary["soft_target_cache"] == {"dir": ".distill-cache", "hits": 0, "misses": 2}
    teacher_accuracy = summary["aggregate"]["teacher"]["accuracy"]
    assert abs(teacher_accuracy["mean"] - payload["test_accuracy"]) < 0.1  # the same network, a subset of its rows
    assert (tmp_path / "run" / "student.pt").is_file()


def test_teacher_train_needs_a_network_teacher(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["teacher", "train", str(DIGITS_TEACHER), "--no-track", "-q", "--set", 'teacher.kind="gaussian_process"'])
    assert code == 2
    err = capsys.readouterr().err
    assert "teacher.kind" in err and "gaussian_process" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_teacher_train_needs_teacher_arch(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    toml = tmp_path / "no_arch.toml"
    toml.write_text('[data]\nsource = "sklearn:digits"\n[teacher]\nkind = "network"\ncheckpoint = "t.pt"\n')
    assert main(["teacher", "train", str(toml), "--no-track", "-q"]) == 2
    err = capsys.readouterr().err
    assert "teacher.arch" in err and "Traceback" not in err
    assert not (tmp_path / "t.pt").exists()


def test_teacher_train_records_to_mlflow(tmp_path: Path, monkeypatch, fresh_mlflow_store, capsys) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = fresh_mlflow_store(tmp_path / "m.db")
    code = main(["teacher", "train", str(DIGITS_TEACHER), "-o", "t.pt", "-q", "--set", "train.epochs=3",
                 "--set", f'tracking.uri="{uri}"'])
    assert code == 0
    summary = json.loads((tmp_path / "t.json").read_text())
    assert f"MLflow run: {summary['mlflow_run_id']}" in capsys.readouterr().out
    payload = torch.load(tmp_path / "t.pt", map_location="cpu", weights_only=True)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("digits_teacher")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == summary["mlflow_run_id"]
    assert run.info.status == "FINISHED"
    assert run.data.tags["distill.kind"] == "teacher train"
    assert run.data.params["teacher.arch"] == "cnn"
    losses = sorted(client.get_metric_history(run.info.run_id, "teacher/train_loss"), key=lambda m: m.step)
    assert [m.step for m in losses] == [1, 2, 3]
    assert all(np.isfinite(m.value) for m in losses)
    assert len(client.get_metric_history(run.info.run_id, "teacher/val_loss")) == 3
    assert run.data.metrics["teacher/test_accuracy"] == pytest.approx(payload["test_accuracy"], abs=1e-6)
    assert "t.pt" in {a.path for a in client.list_artifacts(run.info.run_id)}
