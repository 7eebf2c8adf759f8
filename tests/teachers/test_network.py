"""The network teacher: a distill checkpoint or MLflow model as a teacher, read without unpickling."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from distill.cli import main
from distill.config import validate_config
from distill.errors import ConfigError
from distill.experiment.prepare import prepare
from distill.experiment.teach import teach
from distill.students.checkpoint import load_checkpoint, servable_from_checkpoint

SMALL_RUN = {
    "seed": 1,
    "data": {"source": "sklearn:iris", "test_size": 30, "scale": "standard"},
    "few_shot": {"per_class": 10},
    "student": {"hidden": [16], "activation": "tanh"},
    "train": {"epochs": 60, "device": "cpu"},
    "tracking": {"enabled": False},
}


@pytest.fixture(scope="module")
def iris_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A student trained by distill on iris: the teacher of the tests below."""
    out = tmp_path_factory.mktemp("teacher_run")
    toml = out / "exp.toml"
    toml.write_text(
        'name = "iris_teacher"\n[data]\nsource = "sklearn:iris"\ntest_size = 30\n[few_shot]\nper_class = 20\n'
        '[student]\nhidden = [16]\nactivation = "tanh"\n[train]\nepochs = 60\n'
    )
    assert main(["run", str(toml), "-o", str(out / "run"), "-q", "--no-track"]) == 0
    return out / "run" / "student.pt"


def test_network_teacher_gives_the_checkpoints_probabilities_on_raw_features(iris_checkpoint: Path) -> None:
    config = validate_config({**SMALL_RUN, "teacher": {"kind": "network", "checkpoint": str(iris_checkpoint),
                                                       "calibration": "none"}})
    prepared = prepare(config)
    taught = teach(prepared)
    # Reference: the checkpoint's own servable module on the raw test rows (it carries its own scaler,
    # which differs from this run's standard scaling).
    servable = servable_from_checkpoint(load_checkpoint(iris_checkpoint))
    raw_test = prepared.dataset.x[prepared.split.test]
    with torch.no_grad():
        expected = servable(torch.as_tensor(raw_test, dtype=torch.float32)).double().numpy()
    assert_allclose(np.exp(taught.test_logits), expected, rtol=1e-5, atol=1e-7)
    # The soft targets of the training rows are the same network on the same rows.
    raw_train = prepared.dataset.x[prepared.split.labelled]
    with torch.no_grad():
        soft = servable(torch.as_tensor(raw_train, dtype=torch.float32)).double().numpy()
    assert_allclose(np.exp(taught.train.teacher_logits.double().numpy()), soft, rtol=1e-5, atol=1e-7)
    assert taught.diagnostics["estimator"] == "network"
    assert taught.diagnostics["arch"] == "mlp"
    # Calibrated (the default): the same network, its log-probabilities divided by one temperature fitted
    # on its outputs on the labelled rows, then renormalised (a network is never refit per fold).
    calibrated = teach(prepare(validate_config({**SMALL_RUN, "teacher": {"kind": "network",
                                                                          "checkpoint": str(iris_checkpoint)}})))
    t = calibrated.diagnostics["calibration"]["temperature"]
    log_expected = np.log(np.clip(expected, 1e-12, 1.0)) / t
    log_expected -= np.log(np.exp(log_expected).sum(axis=1, keepdims=True))
    assert_allclose(calibrated.test_logits, log_expected, rtol=1e-5, atol=1e-6)
    assert calibrated.fold_logits is not None
    for fold in calibrated.fold_logits:  # every fold "teacher" is the one network
        assert torch.equal(fold, calibrated.train.teacher_logits)


def test_distilling_from_a_network_teacher_end_to_end(iris_checkpoint: Path, tmp_path: Path) -> None:
    toml = tmp_path / "exp.toml"
    toml.write_text(
        f'name = "from_network"\n[data]\nsource = "sklearn:iris"\ntest_size = 30\n[few_shot]\nper_class = 2\n'
        f'transfer = "pool"\n[teacher]\nkind = "network"\ncheckpoint = "{iris_checkpoint}"\n[train]\nepochs = 30\n'
    )
    assert main(["run", str(toml), "-o", str(tmp_path / "run"), "-q", "--no-track"]) == 0
    import json

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["teacher"]["accuracy"] > 0.8  # the trained network, not chance


@pytest.mark.parametrize(
    ("source", "message"),
    [("sklearn:wine", "takes inputs of shape (4,) but the data has (13,)"),
     ("sklearn:breast_cancer", "predicts 3 classes but the data has 2")],
)
def test_mismatched_network_is_an_error_before_training(iris_checkpoint: Path, source: str, message: str) -> None:
    config = validate_config(
        {**SMALL_RUN, "data": {"source": source}, "teacher": {"kind": "network", "checkpoint": str(iris_checkpoint)}}
    )
    with pytest.raises(ConfigError) as info:
        prepare(config)
    assert any(message in p for p in info.value.problems)


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/distill_pwned_by_teacher"),))


def test_a_pickle_that_runs_code_is_refused(tmp_path: Path, capsys) -> None:
    marker = Path("/tmp/distill_pwned_by_teacher")
    marker.unlink(missing_ok=True)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": "distill.student/1", "x": _Payload()}))
    toml = tmp_path / "exp.toml"
    toml.write_text(f'[data]\nsource = "sklearn:iris"\n[teacher]\nkind = "network"\ncheckpoint = "{evil}"\n')
    assert main(["check", str(toml)]) == 2
    err = capsys.readouterr().err
    assert "weights_only" in err and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize("teacher", [{"kind": "network"}, {"kind": "network", "checkpoint": "a.pt", "uri": "models:/x"}])
def test_network_teacher_needs_exactly_one_source(teacher: dict) -> None:
    with pytest.raises(ConfigError, match="exactly one of teacher.checkpoint"):
        validate_config({"teacher": teacher})


def test_check_describes_the_network_teacher(iris_checkpoint: Path, tmp_path: Path, capsys) -> None:
    """``check`` prints the network teacher's describe(): its source, architecture and input space (a
    distill checkpoint reads raw features; a plain state_dict the configured ones)."""
    toml = tmp_path / "exp.toml"
    toml.write_text(f'[data]\nsource = "sklearn:iris"\n[teacher]\nkind = "network"\ncheckpoint = "{iris_checkpoint}"\n'
                    'input = "scaled"\n')
    assert main(["check", str(toml), "--no-track"]) == 0
    assert (f"teacher     network: network checkpoint {iris_checkpoint} (mlp, raw inputs), calibration temperature\n"
            in capsys.readouterr().out)
    from distill import students

    weights = tmp_path / "weights.pt"
    torch.save(students.build("mlp", (4,), 3, hidden=[8]).state_dict(), weights)
    toml.write_text(f'[data]\nsource = "sklearn:iris"\n[teacher]\nkind = "network"\ncheckpoint = "{weights}"\n'
                    'arch = "mlp"\ninput = "scaled"\nparams = { hidden = [8] }\n')
    assert main(["check", str(toml), "--no-track"]) == 0
    assert f"teacher     network: network checkpoint {weights} (mlp, scaled inputs)" in capsys.readouterr().out
