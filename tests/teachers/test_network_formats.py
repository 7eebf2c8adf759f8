"""The network teacher's file formats: plain state_dict + teacher.arch, torch.export programs, TorchScript.

Every format must give exactly the network's own softmax, refuse a mismatched network before any
training with a message that says what does not fit, and feed raw or scaled features as configured.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from distill import students
from distill.cli import main
from distill.config import validate_config
from distill.data.sources import load_dataset
from distill.experiment.prepare import prepare
from distill.experiment.teach import teach
from distill.teachers.base import create_teacher

# TorchScript is deprecated in torch but still a format users have; its warnings are not this file's subject.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated:DeprecationWarning")

FORMATS = ("state_dict", "export", "torchscript")
ARCH = {"arch": "mlp", "params": {"hidden": [8]}}


def _train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, steps: int = 30, seed: int = 0) -> torch.nn.Module:
    """A few full-batch Adam steps with the hard loss (binary: BCE on one logit)."""
    torch.manual_seed(seed)
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        out = model(xt)
        if out.shape[-1] == 1:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out.reshape(-1), yt.float())
        else:
            loss = torch.nn.functional.cross_entropy(out, yt.long())
        loss.backward()
        optimizer.step()
    return model.eval()


def _save(model: torch.nn.Module, fmt: str, folder: Path, example: torch.Tensor, name: str = "t") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    if fmt == "state_dict":
        path = folder / f"{name}.pt"
        torch.save(model.state_dict(), path)
    elif fmt == "export":
        path = folder / f"{name}.pt2"
        torch.export.save(torch.export.export(model, (example,)), str(path))
    else:
        path = folder / f"{name}.ts"
        torch.jit.script(model).save(str(path))
    return path


def _direct(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """The reference: the network's own probabilities, computed here without the teacher."""
    with torch.no_grad():
        out = model.eval()(torch.as_tensor(x, dtype=torch.float32))
    if out.shape[-1] == 1:
        p = torch.sigmoid(out.reshape(-1)).double()
        return torch.stack([1.0 - p, p], dim=1).numpy()
    return torch.softmax(out, dim=-1).double().numpy()


def _teacher(path: Path, fmt: str, num_classes: int, in_shape: tuple[int, ...], **extra):
    kwargs = dict(ARCH) if fmt == "state_dict" else {}
    kwargs.update(extra)
    return create_teacher("network", num_classes=num_classes, in_shape=in_shape, checkpoint=str(path), **kwargs)


@pytest.fixture(scope="module")
def iris_net(tmp_path_factory: pytest.TempPathFactory):
    """A 4 -> 8 -> 3 MLP trained a few steps on iris' raw features, saved in all three formats."""
    iris = load_dataset("sklearn:iris")
    torch.manual_seed(0)
    model = _train(students.build("mlp", (4,), 3, hidden=[8]), iris.x, iris.y)
    folder = tmp_path_factory.mktemp("iris_net")
    example = torch.as_tensor(iris.x[:5], dtype=torch.float32)
    paths = {fmt: _save(model, fmt, folder, example) for fmt in FORMATS}
    return model, paths, iris


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_gives_the_networks_own_softmax(iris_net, fmt: str) -> None:
    model, paths, iris = iris_net
    teacher = _teacher(paths[fmt], fmt, 3, (4,))
    teacher.fit(iris.x, iris.y)
    proba = teacher.predict_proba(iris.x)  # 150 rows: more than (and not a multiple of) the export's batch of 5
    expected = _direct(model, iris.x)
    assert proba.dtype == np.float64 and proba.shape == (150, 3)
    assert_allclose(proba, expected, rtol=0, atol=1e-6)
    assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    logits = teacher.logits(iris.x)
    assert np.isfinite(logits).all()
    assert_allclose(np.exp(logits), expected, rtol=0, atol=1e-6)
    assert (proba.argmax(1) == iris.y).mean() > 0.6  # it learnt something: the comparison is not on noise
    diagnostics = teacher.diagnostics()
    assert diagnostics["estimator"] == "network" and diagnostics["in_shape"] == [4]
    assert diagnostics["format"] == {"state_dict": "state_dict", "export": "export", "torchscript": "torchscript"}[fmt]
    # A few rows, one row and no rows.
    assert_allclose(teacher.predict_proba(iris.x[:3]), expected[:3], rtol=0, atol=1e-6)
    assert_allclose(teacher.predict_proba(iris.x[7:8]), expected[7:8], rtol=0, atol=1e-6)
    assert teacher.predict_proba(iris.x[:0]).shape == (0, 3)


def test_an_export_with_a_dynamic_batch_dimension_works_too(iris_net, tmp_path: Path) -> None:
    model, _, iris = iris_net
    example = torch.as_tensor(iris.x[:5], dtype=torch.float32)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "dynamic.pt2"
    torch.export.save(program, str(path))
    teacher = _teacher(path, "export", 3, (4,)).fit(iris.x, iris.y)
    assert_allclose(teacher.predict_proba(iris.x), _direct(model, iris.x), rtol=0, atol=1e-6)


def test_a_network_class_by_import_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "formats_tiny_net.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class TinyNet(nn.Module):
                def __init__(self, in_features, num_outputs, width=5):
                    super().__init__()
                    self.a = nn.Linear(in_features, width)
                    self.b = nn.Linear(width, num_outputs)

                def forward(self, x):
                    return self.b(torch.tanh(self.a(x.flatten(1))))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    iris = load_dataset("sklearn:iris")
    torch.manual_seed(1)
    model = _train(students.build("formats_tiny_net:TinyNet", (4,), 3, width=6), iris.x, iris.y)
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    teacher = create_teacher(
        "network", num_classes=3, in_shape=(4,), checkpoint=str(tmp_path / "tiny.pt"),
        arch="formats_tiny_net:TinyNet", params={"width": 6},
    ).fit(iris.x, iris.y)
    assert_allclose(teacher.predict_proba(iris.x), _direct(model, iris.x), rtol=0, atol=1e-6)


def test_fingerprints_differ_between_files_and_follow_the_bytes(iris_net, tmp_path: Path) -> None:
    _, paths, iris = iris_net
    prints = {fmt: _teacher(paths[fmt], fmt, 3, (4,)).fingerprint() for fmt in FORMATS}
    assert len(set(prints.values())) == 3
    # The same bytes under another name: the same network.
    for fmt in FORMATS:
        copy = tmp_path / f"copy_{fmt}{paths[fmt].suffix}"
        shutil.copyfile(paths[fmt], copy)
        assert _teacher(copy, fmt, 3, (4,)).fingerprint() == prints[fmt]
    # Other weights written over the same file (same size): another fingerprint.
    torch.manual_seed(5)
    other = _train(students.build("mlp", (4,), 3, hidden=[8]), iris.x, iris.y, steps=5, seed=5)
    example = torch.as_tensor(iris.x[:5], dtype=torch.float32)
    for fmt in FORMATS:
        path = tmp_path / f"copy_{fmt}{paths[fmt].suffix}"
        _save(other, fmt, tmp_path, example, name=f"copy_{fmt}")
        assert _teacher(path, fmt, 3, (4,)).fingerprint() != prints[fmt]
    # Same file name, same size, other weights: only the bytes tell them apart.
    model, _, _ = iris_net
    same = tmp_path / "same.pt"
    torch.save(model.state_dict(), same)
    size, first = same.stat().st_size, _teacher(same, "state_dict", 3, (4,)).fingerprint()
    torch.save(other.state_dict(), same)
    assert same.stat().st_size == size
    assert _teacher(same, "state_dict", 3, (4,)).fingerprint() != first
    # How the inputs reach the network is part of its identity.
    assert _teacher(paths["torchscript"], "torchscript", 3, (4,), input="scaled").fingerprint() != prints["torchscript"]


def test_a_state_dict_needs_teacher_arch(iris_net) -> None:
    _, paths, iris = iris_net
    teacher = create_teacher("network", num_classes=3, in_shape=(4,), checkpoint=str(paths["state_dict"]))
    with pytest.raises(ValueError, match=r"teacher\.arch"):
        teacher.fit(iris.x, iris.y)


@pytest.mark.parametrize("content, message", [
    ({"x": [1, 2]}, "holds no state_dict of tensors"),
    ({}, "holds no state_dict of tensors"),
    ([torch.zeros(2)], "holds no state_dict of tensors"),
    ({"w": __import__("fractions").Fraction(1, 3)},
     "Unsupported global: GLOBAL fractions.Fraction was not an allowed global by default."),
])
def test_a_file_that_is_no_state_dict_says_what_it_holds(iris_net, tmp_path: Path, content: object,
                                                         message: str) -> None:
    """Not "a plain state_dict; name teacher.arch" for a file that holds none; and a refused class is named
    without torch's advice to reload it with weights_only=False or to allow-list the class."""
    _, _, iris = iris_net
    path = tmp_path / "other.pt"
    torch.save(content, path)
    teacher = create_teacher("network", num_classes=3, in_shape=(4,), checkpoint=str(path))
    with pytest.raises(ValueError) as info:
        teacher.fit(iris.x, iris.y)
    text = str(info.value)
    assert message in text and "\n" not in text and "teacher.arch" not in text, text
    assert "weights_only` set to `False`" not in text and "add_safe_globals" not in text, text


def test_a_state_dict_for_other_arch_kwargs_is_a_clear_error(iris_net) -> None:
    _, paths, iris = iris_net
    teacher = create_teacher(
        "network", num_classes=3, in_shape=(4,), checkpoint=str(paths["state_dict"]), arch="mlp", params={"hidden": [9]}
    )
    with pytest.raises(ValueError) as info:
        teacher.fit(iris.x, iris.y)
    message = str(info.value)
    assert "does not fit teacher.arch 'mlp'" in message and "[9]" in message
    assert "size mismatch" in message  # the detail, not just "Error(s) in loading state_dict"


def _check_toml(tmp_path: Path, source: str, path: Path, fmt: str) -> Path:
    arch = 'arch = "mlp"\nparams = { hidden = [8] }\n' if fmt == "state_dict" else ""
    toml = tmp_path / "exp.toml"
    toml.write_text(f'[data]\nsource = "{source}"\n[teacher]\nkind = "network"\ncheckpoint = "{path}"\n{arch}')
    return toml


@pytest.mark.parametrize("fmt", ["export", "torchscript"])
def test_a_three_class_network_on_binary_data_is_exit_2(fmt: str, tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    model = students.build("mlp", (30,), 3, hidden=[8])  # takes breast_cancer's 30 features, but 3 classes
    path = _save(model, fmt, tmp_path / "net", torch.zeros(4, 30))
    assert main(["check", str(_check_toml(tmp_path, "sklearn:breast_cancer", path, fmt))]) == 2
    err = capsys.readouterr().err
    assert "predicts 3 classes but the data has 2" in err
    assert "Traceback" not in err


def test_a_three_class_state_dict_on_binary_data_is_exit_2(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    path = _save(students.build("mlp", (30,), 3, hidden=[8]), "state_dict", tmp_path / "net", torch.zeros(4, 30))
    assert main(["check", str(_check_toml(tmp_path, "sklearn:breast_cancer", path, "state_dict"))]) == 2
    err = capsys.readouterr().err
    # The output layer's width (3) is read from the state_dict before building: both counts named.
    assert "the teacher network predicts 3 classes but the data has 2" in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_four_input_network_on_wine_is_exit_2_naming_the_shapes(iris_net, fmt: str, tmp_path: Path, capsys) -> None:
    _, paths, _ = iris_net
    assert main(["check", str(_check_toml(tmp_path, "sklearn:wine", paths[fmt], fmt))]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    expected = {
        "export": "takes inputs of shape (4,) but the data has (13,)",
        "torchscript": "cannot take inputs of shape (13,): RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x13 and 4x8)",
        "state_dict": "torch.Size([8, 4]) from checkpoint, the shape in current model is torch.Size([8, 13])",
    }[fmt]
    assert expected in err


def _iris_config(path: Path, fmt: str, input: str, scale: str = "standard"):
    # calibration "none": these tests compare the network's own outputs (calibration: tests/test_teacher_cv.py)
    teacher = {"kind": "network", "checkpoint": str(path), "input": input, "calibration": "none"}
    if fmt == "state_dict":
        teacher.update(ARCH)
    return validate_config({
        "seed": 2,
        "data": {"source": "sklearn:iris", "test_size": 30, "scale": scale},
        "few_shot": {"per_class": 5, "transfer": "pool"},
        "teacher": teacher,
        "train": {"epochs": 1, "device": "cpu"},
        "tracking": {"enabled": False},
    })


@pytest.mark.parametrize("fmt", FORMATS)
def test_teacher_input_scaled_feeds_the_runs_scaled_features(iris_net, fmt: str) -> None:
    model, paths, _ = iris_net
    prepared = prepare(_iris_config(paths[fmt], fmt, "scaled"))
    taught = teach(prepared)
    x_test = prepared.dataset.x[prepared.split.test]
    scaled = prepared.scaler.transform(x_test)
    with torch.no_grad():
        log_softmax = torch.log_softmax(model(torch.as_tensor(scaled, dtype=torch.float32)).double(), dim=-1).numpy()
    assert taught.test_logits.shape == (30, 3)
    assert_allclose(taught.test_logits, log_softmax, rtol=0, atol=1e-5)
    assert_allclose(np.exp(taught.test_logits), _direct(model, scaled), rtol=0, atol=1e-6)
    # Not what the network gives on the raw rows: the two settings really differ.
    assert np.abs(np.exp(taught.test_logits) - _direct(model, x_test)).max() > 1e-2
    # The transfer rows (labelled first, then the pool) are scaled too.
    rows = np.concatenate([prepared.split.labelled, prepared.split.pool])
    soft = np.exp(taught.train.teacher_logits.double().numpy())
    assert_allclose(soft, _direct(model, prepared.scaler.transform(prepared.dataset.x[rows])), rtol=0, atol=1e-6)


@pytest.mark.parametrize("fmt", FORMATS)
def test_teacher_input_raw_feeds_the_raw_rows(iris_net, fmt: str) -> None:
    model, paths, _ = iris_net
    prepared = prepare(_iris_config(paths[fmt], fmt, "raw"))
    taught = teach(prepared)
    x_test = prepared.dataset.x[prepared.split.test]
    with torch.no_grad():
        log_softmax = torch.log_softmax(model(torch.as_tensor(x_test, dtype=torch.float32)).double(), dim=-1).numpy()
    assert_allclose(taught.test_logits, log_softmax, rtol=0, atol=1e-5)
    assert_allclose(np.exp(taught.test_logits), _direct(model, x_test), rtol=0, atol=1e-6)
    assert (taught.test_logits.argmax(1) == prepared.dataset.y[prepared.split.test]).mean() > 0.6


@pytest.fixture(scope="module")
def cancer():
    data = load_dataset("sklearn:breast_cancer")
    x = (data.x - data.x.mean(0)) / data.x.std(0)  # standardised, so the sigmoid is not saturated everywhere
    return data, x


@pytest.mark.parametrize("outputs", [1, 2])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_binary_network_with_one_or_two_logits(cancer, outputs: int, fmt: str, tmp_path: Path) -> None:
    data, x = cancer
    torch.manual_seed(outputs)
    model = _train(students.build("mlp", (30,), 2, num_outputs=outputs, hidden=[8]), x, data.y, steps=20)
    path = _save(model, fmt, tmp_path, torch.as_tensor(x[:5], dtype=torch.float32))
    teacher = _teacher(path, fmt, 2, (30,)).fit(x, data.y)
    proba = teacher.predict_proba(x)
    with torch.no_grad():
        out = model(torch.as_tensor(x, dtype=torch.float32))
    assert out.shape == (len(x), outputs)
    if outputs == 1:
        sigma = torch.sigmoid(out.reshape(-1)).double().numpy()
        expected = np.stack([1.0 - sigma, sigma], axis=1)
    else:
        expected = torch.softmax(out, dim=-1).double().numpy()
    assert proba.shape == (len(x), 2)
    assert_allclose(proba, expected, rtol=0, atol=1e-6)
    assert_allclose(proba.sum(1), 1.0, atol=1e-6)
    assert np.isfinite(teacher.logits(x)).all()
    assert (proba.argmax(1) == data.y).mean() > 0.8


@pytest.mark.parametrize("outputs", [1, 2])
def test_a_binary_network_teaches_a_run(cancer, outputs: int, tmp_path: Path) -> None:
    data, x = cancer
    torch.manual_seed(outputs)
    model = _train(students.build("mlp", (30,), 2, num_outputs=outputs, hidden=[8]), x, data.y, steps=20)
    path = _save(model, "torchscript", tmp_path, torch.zeros(2, 30))
    config = validate_config({
        "data": {"source": "sklearn:breast_cancer", "test_size": 100, "scale": "standard"},
        "few_shot": {"per_class": 5},
        "teacher": {"kind": "network", "checkpoint": str(path), "input": "scaled", "calibration": "none"},
        "train": {"epochs": 1, "device": "cpu"},
        "tracking": {"enabled": False},
    })
    prepared = prepare(config)
    taught = teach(prepared)
    scaled = prepared.scaler.transform(prepared.dataset.x[prepared.split.test])
    assert taught.test_logits.shape == (100, 2)
    assert_allclose(np.exp(taught.test_logits), _direct(model, scaled), rtol=0, atol=1e-6)
