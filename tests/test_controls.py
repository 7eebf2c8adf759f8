"""Controls (protocol.controls) and references (protocol.references): what each system is, checked
against a hand-built fit, a float64 formula or scikit-learn, and where they land in summary.json."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from distill.cli import main
from distill.config import ConfigError, validate_config
from distill.engine.loop import TrainingRows, fit
from distill.experiment.episodes import (
    _control_job,
    control_rows,
    null_teacher_probabilities,
    reference_metrics,
    run_protocol,
)
from distill.experiment.prepare import fit_settings, prepare
from distill.experiment.students import StudentJob, build_student, train_students
from distill.experiment.teach import teach
from distill.losses.fused import MemberObjective
from distill.metrics.stats import verdict

BASE: dict[str, Any] = {
    "seed": 5,
    "data": {"source": "sklearn:iris", "test_size": 30},
    "few_shot": {"per_class": 2, "transfer": "pool"},
    "teacher": {"restarts": 0, "cache": False},
    "student": {"hidden": [6]},
    "train": {"epochs": 4, "device": "cpu", "batch_size": 16},
    "protocol": {"episodes": 1},
}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)


def config(**sections: Any) -> Any:
    out = copy.deepcopy(BASE)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return validate_config(out)


def weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# --------------------------------------------------------------------------- the null teacher


def test_null_teacher_probabilities_are_uniform_or_the_labelled_frequencies() -> None:
    assert np.array_equal(null_teacher_probabilities("uniform", np.array([0, 0, 1]), 4), np.full(4, 0.25))
    y = np.array([0, 1, 1, 2, 2, 2, 2])
    assert np.array_equal(null_teacher_probabilities("prior", y, 3), np.array([1, 2, 4]) / 7)
    # An absent class gets a tiny probability so that log p stays finite.
    p = null_teacher_probabilities("prior", np.array([0, 0, 2]), 3)
    assert p.sum() == pytest.approx(1.0, abs=1e-15) and 0 < p[1] < 1e-5 and p[0] == pytest.approx(2 / 3, abs=1e-5)


@pytest.mark.parametrize("kind", ["uniform", "prior"])
def test_null_teacher_soft_targets_on_every_transfer_row(kind: str) -> None:
    prepared = prepare(config(protocol={"null_teacher": kind}, few_shot={"per_class": None, "labelled": 7}))
    taught = teach(prepared)
    labelled_y = prepared.dataset.y[prepared.split.labelled]
    rows = control_rows("null_teacher", taught.train, null_teacher=kind, labelled_y=labelled_y)
    expected = (np.full(3, 1 / 3) if kind == "uniform"
                else np.bincount(labelled_y, minlength=3) / labelled_y.size)
    probs = torch.softmax(rows.teacher_logits.double(), dim=-1).numpy()
    assert probs.shape == (taught.train.x.shape[0], 3)
    np.testing.assert_allclose(probs, np.broadcast_to(expected, probs.shape), rtol=0, atol=1e-7)
    # The same rows, labels and mask as the student's: only the teacher differs.
    assert torch.equal(rows.x, taught.train.x) and torch.equal(rows.targets, taught.train.targets)
    assert rows.hard_targets is None


def test_null_teacher_with_kl_weight_zero_is_the_baseline_exactly() -> None:
    cfg = config(objective={"kl_weight": 0.0}, protocol={"controls": ["null_teacher"], "null_teacher": "prior"})
    for batched in (True, False):
        cfg_b = cfg.model_copy(update={"train": cfg.train.model_copy(update={"batched": batched})})
        _, (result,) = run_protocol(cfg_b)
        assert torch.equal(weights(result.controls["null_teacher"]), weights(result.baseline))
        assert result.metrics["null_teacher"] == result.metrics["baseline"]
        assert result.control_fits["null_teacher"].history == result.baseline_fit.history


# --------------------------------------------------------------------------- hard labels


def test_hard_labels_is_a_plain_fit_on_the_teachers_argmax() -> None:
    cfg = config(protocol={"controls": ["hard_labels"]})
    prepared = prepare(cfg)
    taught = teach(prepared)
    train = taught.train
    assert (~train.labelled).sum() > 50  # the pool: rows the teacher labels
    # By hand: true labels on labelled rows, the teacher's argmax elsewhere, every row in the hard term.
    logits = train.teacher_logits.numpy()
    by_hand = np.where(train.labelled.numpy(), train.targets.numpy(), logits.argmax(1))
    plain = TrainingRows(x=train.x, targets=torch.as_tensor(by_hand), labelled=torch.ones_like(train.labelled))
    model = build_student(prepared)
    fit(model, plain, fit_settings(cfg, kl_weight=0.0), num_classes=3)

    job = _control_job(prepared, taught, "hard_labels")
    assert job.kl_weight == 0.0
    assert torch.equal(job.rows.hard_targets, torch.as_tensor(by_hand))
    train_students([job], batched=False)
    assert torch.equal(weights(job.model), weights(model))


def test_teacher_probs_only_is_the_kl_term_alone_against_a_float64_reference() -> None:
    torch.manual_seed(0)
    n, k, w, t = 6, 3, 0.7, 2.0
    teacher = torch.randn(n, k, dtype=torch.float64)
    targets = torch.tensor([0, 2, 1, -1, -1, -1])
    labelled = targets >= 0
    train = TrainingRows(x=torch.zeros(n, 1), targets=targets, labelled=labelled, teacher_logits=teacher)
    rows = control_rows("teacher_probs_only", train)
    assert not rows.hard_labelled.any() and torch.equal(rows.labelled, labelled)
    objective = MemberObjective(rows.hard_targets.unsqueeze(0), rows.hard_labelled.unsqueeze(0),
                                teacher.unsqueeze(0), [w], [t], "forward", k, dtype=torch.float64)
    z = torch.randn(1, n, k, dtype=torch.float64, requires_grad=True)
    idx = torch.arange(n).unsqueeze(0)
    loss = objective(z, idx)
    loss.sum().backward()
    # Reference: w T^2 mean_rows sum_c p_c (log p_c - log q_c), p = softmax(teacher / T), q = softmax(z / T).
    zz = z.detach().clone().requires_grad_(True)
    p = torch.softmax(teacher / t, -1)
    reference = w * t**2 * (p * (torch.log(p) - torch.log_softmax(zz[0] / t, -1))).sum(-1).mean()
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-12)
    torch.testing.assert_close(z.grad, zz.grad, rtol=1e-12, atol=1e-14)
    # With the true labels in the hard term the loss is larger by the cross-entropy of the labelled rows.
    with_hard = MemberObjective(targets.unsqueeze(0), labelled.unsqueeze(0), teacher.unsqueeze(0), [w], [t],
                                "forward", k, dtype=torch.float64)(z.detach(), idx)
    ce = torch.nn.functional.cross_entropy(z.detach()[0, :3], targets[:3])
    assert (with_hard - loss).item() == pytest.approx(ce.item(), rel=1e-12)


def test_teacher_probs_only_trains_on_the_kl_term_with_the_students_weight() -> None:
    cfg = config(objective={"kl_weight": 0.5, "temperature": 1.0}, protocol={"controls": ["teacher_probs_only"]})
    prepared = prepare(cfg)
    taught = teach(prepared)
    job = _control_job(prepared, taught, "teacher_probs_only")
    assert job.kl_weight == 0.5 and "kl_weight" not in job.set_by_job  # the student's, as configured
    # The same fit by hand: a one-member objective with no hard row.
    kl_only = TrainingRows(x=taught.train.x, targets=taught.train.targets, labelled=taught.train.labelled,
                           teacher_logits=taught.train.teacher_logits, hard_targets=taught.train.targets,
                           hard_labelled=torch.zeros_like(taught.train.labelled))
    model = build_student(prepared)
    result = fit(model, kl_only, fit_settings(cfg), num_classes=3)
    train_students([job], batched=False)
    assert torch.equal(weights(job.model), weights(model))
    # Its loss is the KL term only: at the first epoch it differs from the student's.
    student = StudentJob.planned(prepared, taught, "student")
    train_students([student], batched=False)
    assert result.history[0]["train_loss"] != student.result.history[0]["train_loss"]
    assert _control_job(prepare(config(objective={"kl_weight": 0.0})), taught, "teacher_probs_only").kl_weight == 1.0


# --------------------------------------------------------------------------- stacked vs one at a time


def test_controls_stacked_and_one_at_a_time_agree() -> None:
    controls = ["null_teacher", "hard_labels", "teacher_probs_only"]
    results = {}
    for batched in (True, False):
        cfg = config(train={"batched": batched}, protocol={"controls": controls, "episodes": 2})
        _, results[batched] = run_protocol(cfg)
    for stacked, alone in zip(results[True], results[False], strict=True):
        for name in controls:
            torch.testing.assert_close(weights(stacked.controls[name]), weights(alone.controls[name]),
                                       rtol=1e-5, atol=1e-6)
            for metric, value in alone.metrics[name].items():
                assert stacked.metrics[name][metric] == pytest.approx(value, abs=1e-5, nan_ok=True)
        # Controls change nothing about the student and the baseline.
    _, (plain, _) = run_protocol(config(protocol={"episodes": 2}))
    assert plain.metrics["student"] == results[True][0].metrics["student"]
    assert plain.metrics["baseline"] == results[True][0].metrics["baseline"]


# --------------------------------------------------------------------------- the reference


def test_logistic_regression_reference_is_sklearns_fit_on_the_same_rows() -> None:
    cfg = config(protocol={"references": ["logistic_regression"], "episodes": 2})
    first, results = run_protocol(cfg)
    for result in results:
        prepared = prepare(cfg.model_copy(update={"seed": result.seed}), first[0].dataset)
        x = prepared.scaler.transform(prepared.dataset.x)
        s, y = prepared.split, prepared.dataset.y
        assert np.array_equal(s.test, result.split.test) and np.array_equal(s.labelled, result.split.labelled)
        model = LogisticRegression(C=1.0, max_iter=10_000).fit(x[s.labelled], y[s.labelled])
        probs = model.predict_proba(x[s.test])
        np.testing.assert_allclose(result.test_predictions["logistic_regression"], probs, rtol=0, atol=1e-12)
        got = result.metrics["logistic_regression"]
        assert got["accuracy"] == pytest.approx(accuracy_score(y[s.test], probs.argmax(1)), abs=1e-6)
        assert got["f1_macro"] == pytest.approx(f1_score(y[s.test], probs.argmax(1), average="macro"), abs=1e-6)
        assert got["auroc"] == pytest.approx(roc_auc_score(y[s.test], probs, multi_class="ovr"), abs=1e-6)


def test_reference_with_one_labelled_class_predicts_that_class() -> None:
    metrics, probs = reference_metrics("logistic_regression", np.zeros((2, 3)), np.array([1, 1]),
                                       np.zeros((4, 3)), np.array([1, 1, 0, 2]), 3)
    assert np.array_equal(probs, np.tile([0.0, 1.0, 0.0], (4, 1)))
    assert metrics["accuracy"] == pytest.approx(0.5, abs=1e-7)


# --------------------------------------------------------------------------- summary.json and the console


def test_summary_has_aggregate_and_paired_entries_for_controls_and_references(tmp_path: Path, capsys) -> None:
    experiment = tmp_path / "iris.toml"
    experiment.write_text(
        'name = "iris_controls"\nseed = 1\n[data]\nsource = "sklearn:iris"\ntest_size = 30\n[few_shot]\n'
        'per_class = 2\ntransfer = "pool"\n[teacher]\nrestarts = 0\ncache = false\n[student]\nhidden = [6]\n'
        '[train]\nepochs = 4\ndevice = "cpu"\n[protocol]\nepisodes = 4\n'
        'controls = ["null_teacher", "hard_labels", "teacher_probs_only"]\nreferences = ["logistic_regression"]\n'
    )
    out = tmp_path / "run"
    assert main(["run", str(experiment), "-o", str(out), "-q", "--no-track"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    episodes = summary["episodes"]
    others = ["null_teacher", "hard_labels", "teacher_probs_only", "logistic_regression"]
    for system in ["teacher", "student", "baseline", *others]:
        values = np.array([e[system]["accuracy"] for e in episodes])
        assert summary["aggregate"][system]["accuracy"]["mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert summary[system]["accuracy"] == summary["aggregate"][system]["accuracy"]["mean"]
        assert any(line.startswith(system + " ") for line in printed.splitlines())
    for other in ["baseline", "teacher", *others]:
        entry = summary["paired"][f"student_minus_{other}"]["accuracy"]
        d = np.array([e["student"]["accuracy"] - e[other]["accuracy"] for e in episodes])
        assert entry["mean"] == pytest.approx(d.mean(), abs=1e-12)
        assert entry["n"] == 4 and set(entry) == {"mean", "ci95", "p_value", "n"}
        if np.count_nonzero(d) >= 2 and not np.all(d == 0):
            assert entry["p_value"] == pytest.approx(scipy.stats.wilcoxon(d).pvalue, rel=1e-12)
        assert f"student − {other}: accuracy" in printed
    for e in episodes:
        assert set(e["fits"]) == {"student", "baseline", "null_teacher", "hard_labels", "teacher_probs_only"}
    import pandas as pd

    history = pd.read_csv(out / "history.csv")
    assert set(history.system) == {"student", "baseline", "null_teacher", "hard_labels", "teacher_probs_only"}
    assert summary["verdict"] in printed


def test_controls_follow_a_kl_weight_sweep(tmp_path: Path) -> None:
    cfg = validate_config({**copy.deepcopy(BASE), "objective": {"kl_weight": [0.0, 2.0]},
                           "protocol": {"controls": ["null_teacher"], "episodes": 1}})
    _, (zero, two) = run_protocol(cfg)
    assert zero.metrics["null_teacher"] == zero.metrics["baseline"]  # kl_weight 0: the null teacher is the baseline
    assert not torch.equal(weights(two.controls["null_teacher"]), weights(two.baseline))


# --------------------------------------------------------------------------- config and verdict


def test_controls_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="protocol.controls"):
        config(protocol={"controls": ["oracle"]})
    with pytest.raises(ConfigError, match="protocol.controls"):
        config(protocol={"controls": ["null_teacher", "null_teacher"]})
    with pytest.raises(ConfigError, match="protocol.references"):
        config(protocol={"references": ["svm"]})
    with pytest.raises(ConfigError, match="protocol.null_teacher"):
        config(protocol={"null_teacher": "zero"})
    assert config().protocol.controls == [] and config().protocol.references == []


def paired(mean: float, ci: list[float] | None, p: float | None) -> dict[str, Any]:
    return {"mean": mean, "ci95": ci, "p_value": p, "n": 10}


def test_verdict_tells_knowledge_from_regularisation() -> None:
    helped = paired(0.2, [0.1, 0.3], 0.002)
    knowledge = verdict(helped, "accuracy", 10, null=paired(0.1, [0.05, 0.15], 0.004))
    assert knowledge.startswith("Distillation helped at the 95% level, and beat the null teacher (knowledge transfer)")
    assert "student − null_teacher accuracy = +0.100 [+0.050, +0.150]" in knowledge
    for null in (paired(0.01, [-0.02, 0.04], 0.5), paired(0.05, [0.01, 0.09], 0.08), paired(-0.1, [-0.2, -0.05], 0.01)):
        text = verdict(helped, "accuracy", 10, null=null)
        assert "no more than a null teacher (regularisation, not knowledge)" in text, null
    nothing = verdict(paired(0.01, [-0.02, 0.04], 0.6), "accuracy", 10, null=paired(0.1, [0.05, 0.15], 0.004))
    assert nothing.startswith("No difference at the 95% level")
    hurt = verdict(paired(-0.2, [-0.3, -0.1], 0.002), "accuracy", 10, null=paired(0.0, [0.0, 0.0], 1.0))
    assert hurt.startswith("Distillation hurt at the 95% level")
    # ECE: lower is better, so beating the null teacher is an interval below 0.
    ece = verdict(paired(-0.1, [-0.2, -0.05], 0.01), "ece", 10, higher_is_better=False,
                  null=paired(-0.05, [-0.08, -0.02], 0.02))
    assert "beat the null teacher (knowledge transfer)" in ece
    assert verdict(helped, "accuracy", 10) == (
        "Distillation helped at the 95% level (student − baseline accuracy = +0.200 [+0.100, +0.300], "
        "Wilcoxon p = 0.002, 10 episodes).")
