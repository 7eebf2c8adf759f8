"""Issue #13 point 5: no input gives a wrong answer silently.

- stacked and one-at-a-time fits agree on every outcome, at extreme temperatures too, and the
  baseline (``kl_weight = 0``) never depends on KL-term arithmetic;
- labels: distinct label values are never merged into one class, and unusable label columns are
  named in words a user understands;
- features: values finite in float64 but not in float32 (the student's dtype), raw or once scaled,
  are an error naming the column and the row, in ``run`` and in ``predict``;
- sweeps: only keys that the protocol varies per value may be swept.
"""

from __future__ import annotations

import copy
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.cli import main
from distill.config import Config, _leaf_keys, expand_sweep, sweepable_keys, validate_config
from distill.data.sources import canonical_label, label_classes, load_dataset
from distill.data.split import split_dataset
from distill.engine.loop import EvaluationRows, FitSettings, TrainingRows, fit, fit_many
from distill.errors import ConfigError, DataError, UserError
from distill.experiment.episodes import run_protocol
from distill.experiment.prepare import teacher_candidates
from distill.losses.fused import MemberObjective
from distill.losses.objective import distillation_loss
from distill.students import build

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.filterwarnings("ignore:No (positive|negative) samples in targets:UserWarning")


# --------------------------------------------------------------------------- stacked vs one at a time


def _rows(k: int, n: int = 24, labelled: int = 8) -> tuple[TrainingRows, EvaluationRows]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % k
    x = torch.randn(n, 3, generator=g) + y[:, None].float()
    mask = torch.zeros(n, dtype=torch.bool)
    mask[:labelled] = True
    teacher = torch.randn(n, k, generator=g) * 2 + 3 * torch.nn.functional.one_hot(y, k)
    train = TrainingRows(x=x, targets=torch.where(mask, y, torch.full_like(y, -1)), labelled=mask,
                         teacher_logits=teacher)
    return train, EvaluationRows(torch.randn(12, 3, generator=g), torch.arange(12) % k)


def _student(k: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build("mlp", (3,), k, num_outputs=1 if k == 2 else k, hidden=[6], activation="tanh")


def _fits(k: int, temperature: float, weights: list[float], direction: str, stacked: bool):
    settings = [FitSettings(epochs=4, batch_size=4, lr=0.01, kl_weight=w, temperature=temperature,
                            direction=direction, seed=0) for w in weights]
    data = [_rows(k) for _ in weights]
    models = [_student(k) for _ in weights]
    if stacked:
        results = fit_many(models, [t for t, _ in data], settings, num_classes=k, validations=[v for _, v in data])
    else:
        results = [fit(m, t, s, num_classes=k, validation=v) for m, (t, v), s in zip(models, data, settings,
                                                                                        strict=True)]
    return results, models


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("temperature", [1e-6, 1e-3, 1e3, 1e-38, 1e30])
def test_stacked_and_one_at_a_time_agree_on_every_outcome(k: int, direction: str, temperature: float) -> None:
    weights = [0.0, 0.1, 1.0]
    # At T = 1e3 the KL is O(1 / T^2) computed from float32 log-probabilities and multiplied by T^2:
    # the two paths' last-bit differences in the forward show up at the 1e-3 level, no more.
    rel = 1e-2 if temperature > 1 else 1e-4
    together, stacked_models = _fits(k, temperature, weights, direction, stacked=True)
    alone, single_models = _fits(k, temperature, weights, direction, stacked=False)
    for w, a, b, ma, mb in zip(weights, together, alone, stacked_models, single_models, strict=True):
        assert (a.status, a.diverged_at, a.stopped_epoch) == (b.status, b.diverged_at, b.stopped_epoch), w
        for ra, rb in zip(a.history, b.history, strict=True):
            for key in ra:
                assert ra[key] == pytest.approx(rb[key], rel=rel, abs=1e-5, nan_ok=True), (w, key)
        for pa, pb in zip(ma.parameters(), mb.parameters(), strict=True):
            torch.testing.assert_close(pa, pb, atol=1e-4, rtol=rel, equal_nan=True)
    # The baseline member always completes: its loss has no KL term at all.
    assert together[0].status == "completed"


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_the_stacked_baseline_is_bit_for_bit_the_same_at_every_temperature(k: int, direction: str) -> None:
    reference = None
    for temperature in (1.0, 1e-6, 1e-3, 1e3, 1e-38, 1e-45, 1e30):
        results, models = _fits(k, temperature, [0.0, 0.5], direction, stacked=True)
        weights = [p.detach().clone() for p in models[0].parameters()]
        losses = [h["train_loss"] for h in results[0].history]
        if reference is None:
            reference = (weights, losses)
            continue
        assert losses == reference[1], temperature
        for a, b in zip(weights, reference[0], strict=True):
            assert torch.equal(a, b), temperature


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_a_member_without_kl_weight_gets_exactly_the_hard_loss_and_its_gradient(k: int, direction: str) -> None:
    """A member with w = 0 in a stack equals the same member alone (no teacher at all), at T = 1e-40."""
    g = torch.Generator().manual_seed(1)
    n, classes = 6, max(k, 2)
    targets = torch.randint(0, classes, (2, n), generator=g)
    labelled = torch.ones(2, n, dtype=torch.bool)
    teacher = torch.randn(2, n, classes, generator=g) * 5
    z = (torch.randn(2, n, k, generator=g) * 3).requires_grad_()
    idx = torch.arange(n).expand(2, n)
    stacked = MemberObjective(targets, labelled, teacher, [0.0, 1.0], [1e-40, 1e-40], direction, k)
    stacked(z, idx).sum().backward()
    alone_z = z.detach()[:1].clone().requires_grad_()
    alone = MemberObjective(targets[:1], labelled[:1], None, [0.0], [1e-40], direction, k)
    loss = alone(alone_z, idx[:1])
    loss.sum().backward()
    assert torch.equal(stacked(z.detach(), idx)[0], loss.detach()[0])
    assert torch.equal(z.grad[0], alone_z.grad[0])


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("temperature", [1e-38, 1e-45, 1e30])
def test_the_reference_objective_selects_the_hard_term_for_a_zero_weight_tensor(direction: str,
                                                                                temperature: float) -> None:
    teacher = torch.tensor([[0.0, 30.0, 0.0], [5.0, 0.0, -5.0]])
    targets = torch.tensor([1, 0])
    grads = []
    for weight in (0.0, torch.tensor(0.0)):
        student = torch.tensor([[3.0, 0.0, -3.0], [1.0, 2.0, 0.5]], requires_grad=True)
        loss = distillation_loss(student, teacher, targets, kl_weight=weight, temperature=temperature,
                                 direction=direction)
        loss.backward()
        grads.append((loss.detach(), student.grad))
    (hard, hard_grad), (selected, selected_grad) = grads
    assert torch.isfinite(hard) and torch.equal(selected, hard)
    assert torch.isfinite(hard_grad).all() and torch.equal(selected_grad, hard_grad)


# --------------------------------------------------------------------------- sweeps


SWEEP_BASE: dict[str, Any] = {
    "seed": 1,
    "data": {"source": "sklearn:iris", "test_size": 30},
    "teacher": {"restarts": 0, "cache": False},
    "student": {"hidden": [8]},
    # A fixed KL term, so that every sweep reaches the student ("auto" may choose kl_weight 0 for both
    # values; tests/test_kd_selection.py covers the choice, objective.auto.margin below a sweep of it).
    "objective": {"kl_weight": 1.0, "temperature": 1.0},
    "train": {"epochs": 3, "device": "cpu"},
    "tracking": {"enabled": False},
}
_VAL = {"few_shot": {"validation": 2}, "train": {"epochs": 40, "lr": 0.3}}
_NET = {"teacher": {"kind": "network", "checkpoint": "{net_a}", "arch": "mlp", "params": {"hidden": [4]}}}
_SKLEARN = "sklearn.linear_model:LogisticRegression"

#: Every sweepable key: the config it takes effect in, and two values that must give different runs.
SWEEPS: dict[str, tuple[dict[str, Any], Any, Any]] = {
    "seed": ({}, 0, 1),
    "data.scale": ({}, "minmax", "standard"),
    "data.test_size": ({}, 30, 45),
    "few_shot.labelled": ({}, 6, 9),
    "few_shot.per_class": ({}, 2, 3),
    "few_shot.validation": ({}, 0, 2),
    "few_shot.transfer": ({}, "labelled", "pool"),
    "few_shot.augment.count": ({"few_shot": {"transfer": "augmented"}}, 5, 10),
    "few_shot.augment.jitter": ({"few_shot": {"transfer": "augmented"}}, 0.05, 0.5),
    "few_shot.augment.mixup": ({"few_shot": {"transfer": "augmented"}}, 0.0, 1.0),
    "few_shot.augment.mixup_alpha": ({"few_shot": {"transfer": "augmented"}}, 0.5, 4.0),
    "teacher.kind": ({"teacher": {"estimator": _SKLEARN}}, "gaussian_process", "sklearn"),
    "teacher.kernel": ({}, "auto", "1.0 * RBF(0.2)"),
    "teacher.calibration": ({}, "temperature", "none"),
    "teacher.restarts": ({"teacher": {"kernel": "1.0 * RBF(1.0) + WhiteKernel(0.5)"}}, 0, 3),
    "teacher.estimator": ({"teacher": {"kind": "sklearn"}}, _SKLEARN, "sklearn.naive_bayes:GaussianNB"),
    "teacher.checkpoint": (_NET, "{net_a}", "{net_b}"),
    "teacher.uri": ({"teacher": {"kind": "network", "arch": "mlp"}}, "models:/a/1", "models:/b/1"),
    "teacher.arch": (_NET, "mlp", "sweep_student:Linear"),
    "teacher.input": (_NET, "raw", "scaled"),
    "student.arch": ({}, "mlp", "sweep_student:Linear"),
    "student.init": ({}, "torch", "he_normal"),
    "student.init.scheme": ({}, "glorot_uniform", "he_normal"),
    "student.init.mean": ({"student": {"init": {"scheme": "normal"}}}, 0.0, 0.5),
    "student.init.std": ({"student": {"init": {"scheme": "truncated_normal"}}}, 0.5, "1/sqrt(fan_in)"),
    "student.init.bias": ({}, "scheme", "zeros"),
    "student.init.bias_std": ({"student": {"init": {"bias": "normal"}}}, 1.0, 0.5),
    "student.init.first": ({}, "torch", "he_normal"),
    "objective.hard": ({}, "auto", "focal"),
    "objective.pos_weight": ({"data": {"source": "sklearn:breast_cancer", "test_size": 100}}, 1.0, 5.0),
    "objective.kl_weight": ({}, 0.0, 1.0),
    "objective.temperature": ({}, 1.0, 4.0),
    "objective.direction": ({}, "forward", "reverse"),
    "objective.auto.margin": ({"objective": {"kl_weight": "auto", "auto": {"kl_weights": [0, 3]}},
                               "few_shot": {"per_class": 6}, "train": {"epochs": 30}}, 0.0, 100.0),
    "objective.l1": ({}, 0.0, 0.05),
    "objective.l2": ({}, 0.0, 0.05),
    "objective.metric_loss": ({}, "triplet", "margin_ranking"),
    "objective.metric_weight": ({"objective": {"metric_loss": "triplet"}}, 0.1, 1.0),
    "objective.metric_margin": ({"objective": {"metric_loss": "triplet"}}, 0.5, 3.0),
    "train.optimizer": ({}, "sgd", "adam"),
    "train.lr": ({}, 0.01, 0.05),
    "train.momentum": ({"train": {"optimizer": "sgd"}}, 0.0, 0.9),
    "train.weight_decay": ({}, 0.0, 0.5),
    "train.epochs": ({}, 2, 3),
    "train.batch_size": ({}, 4, 8),
    "train.replacement": ({}, False, True),
    "train.scheduler": ({}, "none", "cosine"),
    "train.step_size": ({"train": {"scheduler": "step"}}, 1, 2),
    "train.gamma": ({"train": {"scheduler": "step", "step_size": 1}}, 0.1, 0.5),
    "train.grad_clip": ({}, 0.001, 100.0),
    "train.restore_best": (_VAL, True, False),
    "train.precision": ({}, "fp32", "bf16"),
    "train.early_stopping.monitor": ({**_VAL, "train": {"epochs": 40, "lr": 0.3, "early_stopping": {"patience": 1}}},
                                     "val_loss", "train_loss"),
    "train.early_stopping.mode": ({**_VAL, "train": {"epochs": 40, "lr": 0.3, "early_stopping": {
        "patience": 1, "monitor": "val_accuracy"}}}, "auto", "min"),
    "train.early_stopping.patience": (_VAL, 0, 1),
    "train.early_stopping.min_delta": ({**_VAL, "train": {"epochs": 40, "lr": 0.3, "early_stopping": {"patience": 1}}},
                                       0.0, 10.0),
}
#: Keys whose values need a resource a unit test cannot have (an MLflow model) or whose effect is
#: the network teacher's own; for them the test checks that each value reaches its own teacher.
TEACHER_ONLY = {"teacher.uri", "teacher.arch"}


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _sweep_raw(key: str, values: list[Any], context: dict[str, Any], files: dict[str, str]) -> dict[str, Any]:
    raw = _merge(SWEEP_BASE, context)
    node = raw
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = list(values)
    return _map_leaves(raw, lambda v: v.format(**files) if isinstance(v, str) else v)


def _map_leaves(tree: Any, fn: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _map_leaves(v, fn) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_map_leaves(v, fn) for v in tree]
    return fn(tree)


@pytest.fixture
def sweep_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    (tmp_path / "sweep_student.py").write_text(
        "from torch import nn\n\n\n"
        "class Linear(nn.Module):\n"
        "    def __init__(self, in_features, num_outputs, **kwargs):\n"
        "        super().__init__()\n"
        "        self.linear = nn.Linear(in_features, num_outputs)\n\n"
        "    def forward(self, x):\n"
        "        return self.linear(x)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    files = {}
    for name, seed in (("net_a", 0), ("net_b", 1)):
        torch.manual_seed(seed)
        path = tmp_path / f"{name}.pt"
        torch.save(build("mlp", (4,), 3, hidden=[4]).state_dict(), path)
        files[name] = str(path)
    return files


def _what_ran(result: Any) -> tuple:
    """Everything an episode's numbers come from: rows drawn, teacher, student and baseline outputs, fits."""
    split = result.split
    return (
        tuple(a.tobytes() for a in (split.test, split.labelled, split.validation, split.pool)),
        tuple(result.test_predictions[s].tobytes() for s in ("teacher", "student", "baseline")),
        tuple(tuple(h.get("train_loss") for h in fit.history) for fit in (result.student_fit, result.baseline_fit)),
        tuple(fit.stopped_epoch for fit in (result.student_fit, result.baseline_fit)),
    )


def test_the_sweep_table_covers_every_sweepable_key() -> None:
    assert sorted(SWEEPS) == sorted(sweepable_keys())


@pytest.mark.parametrize("key", sorted(set(_leaf_keys(Config)) - set(sweepable_keys())))
def test_a_key_read_once_per_run_cannot_be_swept(key: str) -> None:
    """Every scalar key outside ``sweepable_keys()`` is refused, naming it and the keys that may be swept."""
    raw = _merge(SWEEP_BASE, {})
    node = raw
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = ["a", "b"]
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    (line,) = info.value.problems
    assert line.startswith(f"{key} cannot be swept") and "objective.kl_weight" in line


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(SWEEPS))
def test_sweeping_a_sweepable_key_changes_what_runs_per_value(key: str, sweep_files: dict[str, str]) -> None:
    context, a, b = SWEEPS[key]
    config = validate_config(_sweep_raw(key, [a, b], context, sweep_files))
    assert config.sweep is not None and config.sweep[0] == key
    if key in TEACHER_ONLY:
        kwargs = [teacher_candidates(variant, _iris_like())[0].settings for _, variant in expand_sweep(config)]
        field = {"teacher.uri": "uri", "teacher.arch": "arch"}[key]
        assert [k[field] for k in kwargs] == [a, b]
        return
    _, results = run_protocol(config)
    assert [r.value for r in results] == list(config.sweep[1])
    assert _what_ran(results[0]) != _what_ran(results[1]), f"sweeping {key} over {a!r}, {b!r} ran the same thing"


def _iris_like() -> Any:
    return load_dataset("sklearn:iris")


@pytest.mark.parametrize(("key", "context", "condition"), [
    ("few_shot.augment.count", {}, 'few_shot.transfer = "augmented"'),
    ("objective.temperature", {"objective": {"kl_weight": 0}}, "objective.kl_weight > 0"),
    ("objective.direction", {"objective": {"kl_weight": 0}}, "objective.kl_weight > 0"),
    ("teacher.kernel", {"teacher": {"kind": "sklearn", "estimator": _SKLEARN}}, 'teacher.kind = "gaussian_process"'),
    ("teacher.estimator", {}, 'teacher.kind = "sklearn"'),
    ("teacher.input", {}, 'teacher.kind = "network"'),
    ("objective.metric_margin", {}, "objective.metric_loss is set"),
    ("train.momentum", {"train": {"optimizer": "adam"}}, 'train.optimizer = "sgd"'),
    ("train.gamma", {}, 'train.scheduler = "step"'),
    ("train.restore_best", {}, "train.early_stopping.monitor is logged"),  # val_loss without validation rows
    ("train.early_stopping.patience", {}, "train.early_stopping.monitor is logged"),
    ("train.early_stopping.min_delta", {**_VAL, "train": {"restore_best": False}},
     "patience > 0 or train.restore_best"),
    ("train.early_stopping.monitor", {**_VAL, "train": {"restore_best": False}}, "patience > 0 or train.restore_best"),
])
def test_a_key_that_changes_nothing_in_this_config_cannot_be_swept(key: str, context: dict, condition: str,
                                                                   sweep_files: dict[str, str]) -> None:
    values = {k: (a, b) for k, (_, a, b) in SWEEPS.items()}[key]
    with pytest.raises(ConfigError) as info:
        validate_config(_sweep_raw(key, list(values), context, sweep_files))
    (line,) = info.value.problems
    assert line.startswith(f"{key} cannot be swept here") and condition in line


@pytest.mark.parametrize("key", ["data.source", "data.label", "train.threads", "teacher.cache"])
@pytest.mark.parametrize("command", ["run", "check"])
def test_a_sweep_over_a_key_read_once_is_exit_2_in_run_and_check(key: str, command: str, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    values = {"data.source": '["sklearn:iris", "sklearn:wine"]', "data.label": '["label", "y"]',
              "train.threads": "[1, 2]", "teacher.cache": "[true, false]"}[key]
    out = tmp_path / "out"
    argv = [command, str(ROOT / "experiments" / "breast_cancer_gp.toml"), "--set", f"{key}={values}"]
    if command == "run":
        argv += ["-o", str(out), "-q", "--no-track"]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: {key} cannot be swept"), err
    assert not out.exists()
    assert not any(tmp_path.iterdir())


def test_teacher_train_refuses_a_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "teacher.pt"
    code = main(["teacher", "train", str(ROOT / "experiments" / "breast_cancer_gp.toml"), "-o", str(out), "--no-track",
                 "--set", 'teacher.kind="network"', "--set", f'teacher.checkpoint="{out}"',
                 "--set", 'teacher.arch="mlp"',
                 "--set", "train.lr=[0.01, 0.1]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "train.lr one value, not a sweep" in err[0], err
    assert not out.exists()


# --------------------------------------------------------------------------- labels


def _numeral(draw: Any) -> str:
    """A decimal numeral for a number drawn near others: integers past int64, floats, trailing zeros, exponents."""
    base = draw(st.sampled_from([0, 1, 7, 10**20, 2**63, 2**64, -(2**63) - 1, 123456789012345678901234567890]))
    offset = draw(st.integers(-2, 2))
    value = Fraction(base + offset) / draw(st.sampled_from([1, 2, 10, 10**8, 10**30]))
    form = draw(st.sampled_from(["plain", "zeros", "exp"]))
    if value.denominator == 1:
        text = str(value.numerator)
        return {"plain": text, "zeros": text + ".000", "exp": f"{text}e0"}[form]
    digits = 40
    scaled = value * 10**digits
    if scaled.denominator != 1:
        return str(float(value))  # a float's shortest repr is exact as a decimal
    text = f"{int(scaled)}e-{digits}"
    return text if form != "zeros" else f"{int(scaled) * 1000}e-{digits + 3}"


numerals = st.composite(lambda draw: _numeral(draw))()


@settings(max_examples=300, deadline=None)
@given(st.lists(numerals, min_size=1, max_size=12))
def test_numeric_labels_are_classes_by_exact_value(texts: list[str]) -> None:
    """Two numerals are one class exactly when they are one number (Fraction is the reference), in numeric order."""
    y, classes = label_classes(np.array(texts), "labels")
    exact = [Fraction(t) for t in texts]
    for i in range(len(texts)):
        for j in range(len(texts)):
            assert (y[i] == y[j]) == (exact[i] == exact[j]), (texts[i], texts[j])
    assert [Fraction(c) for c in classes] == sorted(set(exact))
    assert all(Fraction(classes[c]) == v for c, v in zip(y, exact, strict=True))
    # canonical_label spells each numeral as label_classes names its class (how a given teacher's classes_ match)
    assert [canonical_label(t) for t in texts] == [classes[c] for c in y]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(numerals, st.text(min_size=1, max_size=5)), min_size=1, max_size=12))
def test_labels_that_are_not_all_numbers_are_classes_by_exact_text(texts: list[str]) -> None:
    texts = [t for t in texts if "\x00" not in t]
    if not texts:
        return
    try:
        y, classes = label_classes(np.array(texts), "labels")
    except DataError as exc:  # "inf" or "nan" among numbers
        assert "finite number" in str(exc)
        return
    as_numbers = all(_is_decimal(t) for t in texts)
    for i in range(len(texts)):
        for j in range(len(texts)):
            same = Fraction(texts[i].strip()) == Fraction(texts[j].strip()) if as_numbers else texts[i] == texts[j]
            assert (y[i] == y[j]) == same, (texts[i], texts[j])


def _is_decimal(text: str) -> bool:
    try:
        Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        return False
    return "_" not in text and "/" not in text


def _labelled_csv(tmp_path: Path, labels: list[Any], rows: int = 30, extra: str = "") -> Path:
    rng = np.random.default_rng(0)
    codes = [i % len(labels) for i in range(rows)]
    frame = pd.DataFrame({"a": rng.normal(size=rows) + np.array(codes) * 3, "b": rng.normal(size=rows),
                          "label": [labels[c] for c in codes]})
    data = tmp_path / "data.csv"
    frame.to_csv(data, index=False)
    toml = tmp_path / "exp.toml"
    toml.write_text(f'name = "labels"\n[data]\nsource = "csv:{data}"\ntest_size = 6\n[few_shot]\nper_class = 2\n'
                    f"[teacher]\nrestarts = 0\ncache = false\n[train]\nepochs = 2\n{extra}")
    return toml


@pytest.mark.parametrize("labels", [
    ["100000000000000000000", "100000000000000000001"],  # one float64, two integers
    ["0.5", "0.50000001"],
    ["9223372036854775807", "9223372036854775808"],  # int64's last value and one past it
    ["1e400", "-1e400"],  # no float64 at all
], ids=["1e20-and-1e20+1", "0.5-and-0.50000001", "int64-edge", "past-float64"])
def test_distinct_numeric_labels_stay_distinct_classes_end_to_end(labels: list[str], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    toml = _labelled_csv(tmp_path, labels)
    out = tmp_path / "out"
    assert main(["run", str(toml), "-o", str(out), "-q", "--no-track"]) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert len(summary["data"]["classes"]) == 2
    assert sorted(Fraction(c) for c in summary["data"]["classes"]) == sorted(Fraction(t) for t in labels)


def test_an_id_or_continuous_label_is_named_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = _labelled_csv(tmp_path, [f"{i * 1.37:.2f}" for i in range(30)])
    out = tmp_path / "out"
    assert main(["run", str(toml), "-o", str(out), "-q", "--no-track"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.label 'label' has 30 distinct values in 30 rows" in err[0], err
    assert "continuous target or an id" in err[0]
    assert not out.exists()


def test_a_single_class_label_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = _labelled_csv(tmp_path, ["7"])
    assert main(["check", str(toml)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.label 'label' has a single class (7) in all 30 rows" in err[0], err


def test_an_infinite_label_among_numbers_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = _labelled_csv(tmp_path, ["1", "inf"])
    assert main(["check", str(toml)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label column 'label' holds 'inf'" in err[0], err


def test_npz_float_labels_past_int64_stay_distinct(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(20, 2))
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=np.array([1e20, 2e20, 3e20, 4e20] * 5))  # cast to int64, all four were one value
    data = load_dataset(f"npz:{path}")
    assert data.num_classes == 4 and [float(c) for c in data.classes] == [1e20, 2e20, 3e20, 4e20]
    np.savez(path, x=x, y=np.array([2**64 - 1, 0] * 10, dtype=np.uint64), classes=np.array(["a", "b"]))
    with pytest.raises(DataError, match="label 18446744073709551615 in 'y' has no name"):
        load_dataset(f"npz:{path}")


def test_idx_float_labels_beyond_exact_integers_are_refused(tmp_path: Path) -> None:
    import struct

    images = struct.pack(">BBBBIII", 0, 0, 0x08, 3, 4, 2, 2) + bytes(16)
    labels = struct.pack(">BBBBI", 0, 0, 0x0E, 1, 4) + np.array([0, 1, 1e20, 1e20 + 2**20], dtype=">f8").tobytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(images)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(labels)
    with pytest.raises(DataError, match="non-integer labels"):
        load_dataset(f"idx:{tmp_path}")


# --------------------------------------------------------------------------- float32 range


def _feature_csv(tmp_path: Path, value: float, row: int, column: str = "b") -> Path:
    toml = _labelled_csv(tmp_path, ["x", "y", "z"])
    data = tmp_path / "data.csv"
    frame = pd.read_csv(data)
    frame[column] = frame[column].astype(float)
    frame.loc[row, column] = value
    frame.to_csv(data, index=False, float_format="%.17g")
    return toml


@pytest.mark.parametrize("value", [1e39, -3.5e38, 1e308, -1e308])
@pytest.mark.parametrize("command", ["run", "check"])
def test_a_feature_beyond_float32_is_named_with_its_row_and_column(value: float, command: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    toml = _feature_csv(tmp_path, value, 4)
    out = tmp_path / "out"
    argv = [command, str(toml)] + (["-o", str(out), "-q", "--no-track"] if command == "run" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "beyond float32's range" in err[0] and "row 4, column 'b'" in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("scale", ["minmax", "standard"])
def test_a_row_that_scaling_sends_beyond_float32_is_named(scale: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Scaling is fit on the labelled rows: a column nearly constant there sends another row to inf."""
    toml = _labelled_csv(tmp_path, ["x", "y", "z"])
    toml.write_text(toml.read_text().replace("test_size = 6\n", f'test_size = 6\nscale = "{scale}"\n'))
    data = tmp_path / "data.csv"
    frame = pd.read_csv(data)
    dataset = load_dataset(f"csv:{data}")
    labelled = split_dataset(dataset, test_size=6, labelled=None, per_class=2, validation=0, seed=0).labelled
    other = next(r for r in range(len(frame)) if r not in set(labelled.tolist()))
    frame["b"] = [1e-150 * (1 + r % 2) for r in range(len(frame))]  # labelled span and spread ~1e-150
    frame.loc[other, "b"] = 1e10
    frame.to_csv(data, index=False, float_format="%.17g")
    out = tmp_path / "out"
    assert main(["run", str(toml), "-o", str(out), "-q", "--no-track"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"data.scale = '{scale}'" in err[0] and f"row {other}, column 'b'" in err[0], err
    assert not out.exists()


@pytest.fixture(scope="module")
def trained_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("student") / "run"
    code = main(["run", str(ROOT / "experiments" / "breast_cancer_gp.toml"), "-o", str(out), "-q", "--no-track",
                 "--set", "train.epochs=2", "--set", "teacher.cache=false"])
    assert code == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", ["raw beyond float32", "scaled beyond float32"])
def test_predict_names_a_value_beyond_float32(case: str, trained_student: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from sklearn.datasets import load_breast_cancer

    from distill.students.checkpoint import load_checkpoint

    bunch = load_breast_cancer()
    frame = pd.DataFrame(bunch.data[:5], columns=bunch.feature_names)
    scaler = load_checkpoint(trained_student / "student.pt")["scaler"]
    if case == "raw beyond float32":
        column, value = str(bunch.feature_names[3]), 1e39
    else:  # within float32, but (x - shift) / scale with a scale below 1 is not
        col = int(np.argmin(scaler["scale"]))
        column, value = str(bunch.feature_names[col]), 3e38
        assert scaler["scale"][col] < 0.9
    frame.loc[2, column] = value
    rows = tmp_path / "rows.csv"
    frame.to_csv(rows, index=False, float_format="%.17g")
    pred = tmp_path / "pred.csv"
    assert main(["predict", str(trained_student), str(rows), "-o", str(pred)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "beyond float32's range" in err[0] and f"row 2, column '{column}'" in err[0], err
    assert not pred.exists()


@pytest.mark.parametrize("key", ["data.label", "data.source", "train.threads", "train.batched", "teacher.cache_dir"])
def test_tune_cannot_search_a_key_read_once_per_run(key: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["tune", str(ROOT / "experiments" / "breast_cancer_gp.toml"), "-o", str(out), "--no-track",
                 "--set", "few_shot.validation=2", "--set", f'tune.space={{"{key}" = {{ choices = ["a", "b"] }} }}'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"tune.space cannot search '{key}'" in err[0], err
    assert not out.exists()


def test_npz_byte_labels_that_are_not_utf8_are_refused_not_merged(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(20, 2)), y=np.array([b"\xff", b"\xfe"] * 10))
    with pytest.raises(DataError, match="label array 'y' holds bytes that are not UTF-8"):
        load_dataset(f"npz:{path}")


def test_a_runs_baseline_is_the_same_at_every_temperature_and_equals_the_zero_weight_student() -> None:
    """End to end through the protocol (stacked): T only reaches the KL term, which the baseline does not have."""
    runs = {}
    for temperature in (1.0, 1e-38, 1e30):
        raw = _merge(SWEEP_BASE, {"objective": {"kl_weight": [0.0, 0.5], "temperature": temperature},
                                  "protocol": {"episodes": 2}, "train": {"epochs": 5, "batched": True}})
        _, results = run_protocol(validate_config(raw))
        runs[temperature] = results
        for r in results:
            assert r.baseline_fit.status == "completed"
            if r.value == 0.0:
                assert r.student_fit.history == r.baseline_fit.history
                assert np.array_equal(r.test_predictions["student"], r.test_predictions["baseline"])
    for results in runs.values():
        for a, b in zip(results, runs[1.0], strict=True):
            assert a.baseline_fit.history == b.baseline_fit.history
            assert np.array_equal(a.test_predictions["baseline"], b.test_predictions["baseline"])


@pytest.mark.parametrize(("key", "values"), [("objective.kl_weight", [1, 1.0]), ("train.lr", [1, 1.0]),
                                             ("objective.temperature", [2, 2.0, 3])])
def test_sweep_values_that_are_one_value_once_validated_are_refused(key: str, values: list[Any]) -> None:
    raw = _merge(SWEEP_BASE, {})
    section, last = key.split(".")
    raw.setdefault(section, {})[last] = values
    with pytest.raises(ConfigError, match=f"{key}: sweep values must be distinct"):
        validate_config(raw)


def test_augmented_points_beyond_float32_are_an_error_naming_the_augment_settings() -> None:
    raw = _merge(SWEEP_BASE, {"few_shot": {"transfer": "augmented", "augment": {"jitter": 1e39}}})
    with pytest.raises(UserError, match=r"few_shot.augment.jitter = 1e\+39 moves generated rows beyond the float32"):
        run_protocol(validate_config(raw))


def test_patience_can_be_swept_without_restore_best() -> None:
    raw = _merge(SWEEP_BASE, {**_VAL, "train": {"restore_best": False, "early_stopping": {"patience": [0, 1]}}})
    assert validate_config(raw).sweep == ("train.early_stopping.patience", (0, 1))


@pytest.mark.parametrize("temperature", [1e-6, 1e-3, 1e3])
def test_a_stacked_run_and_a_one_at_a_time_run_report_the_same_outcomes(temperature: float) -> None:
    """Through the protocol: train.batched true and false agree on every fit's status and every metric."""
    runs = {}
    for batched in (True, False):
        raw = _merge(SWEEP_BASE, {"objective": {"kl_weight": [0.0, 0.1, 1.0], "temperature": temperature},
                                  "protocol": {"episodes": 2}, "train": {"epochs": 4, "batched": batched}})
        runs[batched] = run_protocol(validate_config(raw))[1]
    for a, b in zip(runs[True], runs[False], strict=True):
        assert (a.episode, a.value) == (b.episode, b.value)
        assert (a.student_fit.status, a.baseline_fit.status) == (b.student_fit.status, b.baseline_fit.status)
        for system in ("teacher", "student", "baseline"):
            for key, value in a.metrics[system].items():
                assert value == pytest.approx(b.metrics[system][key], rel=1e-3, abs=1e-4), (a.value, system, key)


@pytest.mark.slow
def test_predict_refuses_rows_whose_output_is_not_a_number(trained_student: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A student whose output is NaN (here: infinite output weights) names the row instead of predicting."""
    from sklearn.datasets import load_breast_cancer

    payload = torch.load(trained_student / "student.pt", weights_only=True)
    last = [k for k in payload["state_dict"] if k.endswith("weight")][-1]
    weight = payload["state_dict"][last]
    weight[..., 0], weight[..., 1] = float("inf"), float("-inf")  # inf * h - inf * h' = NaN
    broken = tmp_path / "student.pt"
    torch.save(payload, broken)
    bunch = load_breast_cancer()
    rows = tmp_path / "rows.csv"
    pd.DataFrame(bunch.data[:3], columns=bunch.feature_names).to_csv(rows, index=False)
    pred = tmp_path / "pred.csv"
    assert main(["predict", str(broken), str(rows), "-o", str(pred)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the student's output for row 0 is not a number" in err[0], err
    assert not pred.exists()


@pytest.mark.parametrize("override", ['student.activation=["relu", "tanh"]', 'student.activation=1',
                                      'student.arch="cnn"\nstudent.padding=["same"]'])
def test_a_list_for_a_student_argument_is_named_not_a_type_error(override: str, capsys) -> None:
    """A student's own arguments take one value: a list is a one-line error naming the key."""
    from distill.cli import main

    argv = ["check", str(Path(__file__).resolve().parents[2] / "experiments" / "digits_gp.toml")]
    for item in override.split("\n"):
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "unhashable" not in err and "Traceback" not in err, err
    assert ("student.activation" in errors[0] or "student.padding" in errors[0]), errors[0]
