"""``objective.kl_weight = "auto"`` / ``objective.temperature = "auto"`` (distill.experiment.kd_selection): the grid,
the rule, the held-out scores against scikit-learn, the stacked cross-validation against a loop of
plain fits, and the choice itself on a teacher of noise and on a teacher that knows the labels."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, log_loss

from distill.cli import main
from distill.config import ConfigError, validate_config
from distill.data.sources import Dataset
from distill.engine.loop import TrainingRows, fit, predict_logits
from distill.experiment.episodes import run_protocol
from distill.experiment.kd_selection import (
    Candidate,
    candidate_grid,
    choose,
    fold_training_rows,
    heldout_scores,
    selection_text,
    summarise_selections,
)
from distill.experiment.prepare import prepare
from distill.experiment.students import StudentJob, _choose_auto, build_student
from distill.experiment.teach import teach

BASE: dict[str, Any] = {
    "seed": 3,
    "data": {"source": "sklearn:iris", "test_size": 30, "scale": "standard"},
    "few_shot": {"per_class": 3, "transfer": "pool"},
    "teacher": {"restarts": 0, "cache": False},
    "student": {"hidden": [8]},
    "objective": {"kl_weight": "auto", "temperature": "auto",
                  "auto": {"kl_weights": [0, 1], "temperatures": [1, 3]}},
    "train": {"epochs": 6, "device": "cpu", "batch_size": 16},
    "protocol": {"episodes": 1},
    "tracking": {"enabled": False},
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


# --------------------------------------------------------------------------- the grid, the rule, the scores


def test_grid_has_kl_weight_zero_once_and_the_fixed_knob_elsewhere() -> None:
    assert candidate_grid("auto", "auto", [0.0, 1.0, 3.0], [1.0, 2.0]) == [
        Candidate(0.0, 1.0), Candidate(1.0, 1.0), Candidate(1.0, 2.0), Candidate(3.0, 1.0), Candidate(3.0, 2.0)]
    assert candidate_grid("auto", 4.0, [0.0, 0.5], [1.0, 2.0]) == [Candidate(0.0, 4.0), Candidate(0.5, 4.0)]
    assert candidate_grid(2.0, "auto", [0.0, 0.5], [1.0, 2.0]) == [Candidate(2.0, 1.0), Candidate(2.0, 2.0)]


def test_config_grids_always_hold_zero_and_refuse_bad_values() -> None:
    assert config(objective={"auto": {"kl_weights": [3, 1]}}).objective.auto.kl_weights == [0.0, 1.0, 3.0]
    for bad, key in [({"kl_weight": "often"}, "objective.kl_weight"), ({"temperature": -1}, "objective.temperature"),
                     ({"auto": {"temperatures": [0]}}, "objective.auto.temperatures"),
                     ({"auto": {"kl_weights": []}}, "objective.auto.kl_weights")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
            config(objective={**BASE["objective"], **bad})
        assert len(str(info.value).splitlines()) == 1


def score(kl: float, t: float, acc: float, nll: float) -> dict[str, float]:
    return {"kl_weight": kl, "temperature": t, "accuracy": acc, "log_loss": nll}


def test_rule_prefers_no_distillation_unless_it_raises_held_out_accuracy() -> None:
    # kl_weight 0 as accurate as the best: it wins though a softer student has a lower log-loss.
    assert choose([score(0, 1, 0.8, 0.9), score(1, 1, 0.8, 0.3), score(3, 2, 0.7, 0.2)])[0] == 0
    # Without per-row results: the more accurate wins; among the best, the lower log-loss, then smaller knobs.
    assert choose([score(0, 1, 0.7, 0.5), score(1, 1, 0.8, 0.4), score(3, 1, 0.8, 0.3)])[0] == 2
    assert choose([score(0, 1, 0.7, 0.5), score(3, 1, 0.8, 0.3), score(1, 2, 0.8, 0.3), score(1, 1, 0.8, 0.3)])[0] == 3
    # Non-finite scores lose.
    assert choose([score(0, 1, 0.5, float("nan")), score(1, 1, float("nan"), 0.1)])[0] == 0
    # A fixed kl_weight (no 0 in the grid): the best temperature.
    assert choose([score(2, 1, 0.6, 0.5), score(2, 4, 0.7, 0.6)])[0] == 1


def test_standard_error_margin_against_a_hand_computed_case() -> None:
    zero = np.array([1, 0, 1, 0, 1, 1, 0, 1], dtype=float)
    one_row = np.array([1, 1, 1, 0, 1, 1, 0, 1], dtype=float)   # d = one +1 in 8: mean 1/8, se 1/8
    two_rows = np.array([1, 1, 1, 1, 1, 1, 0, 1], dtype=float)  # d = two +1 in 8: mean 1/4, se 0.164
    scores = [score(0, 1, zero.mean(), 0.5), score(1, 1, one_row.mean(), 0.5)]
    index, gain, se = choose(scores, [zero, one_row], margin=1.0)
    d = one_row - zero
    assert (index, gain) == (0, 0.125) and se == pytest.approx(np.std(d, ddof=1) / np.sqrt(8)) and se == pytest.approx(0.125)
    scores[1] = score(1, 1, two_rows.mean(), 0.5)
    se_two = np.sqrt(0.25 * 0.75 * 8 / 7 / 8)
    assert choose(scores, [zero, two_rows], margin=1.0) == (1, 0.25, pytest.approx(se_two))
    # The default margin, 2 standard errors: a gain of 0.25 +- 0.164 is not enough; 0.375 +- 0.183 is.
    assert choose(scores, [zero, two_rows])[0] == 0
    four_rows = np.array([1, 1, 1, 1, 1, 1, 1, 1], dtype=float)
    scores[1] = score(1, 1, 1.0, 0.5)
    index, gain, se = choose(scores, [zero, four_rows])
    assert index == 1 and gain == 0.375 and gain > 2 * se
    assert choose(scores, [zero, four_rows], margin=0.0)[0] == 1


@pytest.mark.parametrize("outputs", [1, 3])
def test_held_out_scores_match_scikit_learn(outputs: int) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(40, outputs, generator=gen) * 3
    classes = max(outputs, 2)
    y = torch.randint(0, classes, (40,), generator=gen)
    z = logits.double().numpy()
    if outputs == 1:
        p1 = 1 / (1 + np.exp(-z[:, 0]))
        probs = np.stack([1 - p1, p1], axis=1)
    else:
        probs = np.exp(z - z.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
    correct, nll = heldout_scores(logits, y)
    assert correct.shape == nll.shape == (40,)
    assert correct.mean() == pytest.approx(accuracy_score(y.numpy(), probs.argmax(1)))
    assert nll.mean() == pytest.approx(log_loss(y.numpy(), probs, labels=list(range(classes))), rel=1e-9)


def test_fold_rows_drop_the_held_out_labels_from_the_hard_term_only() -> None:
    x = torch.arange(12.0).reshape(6, 2)
    labelled = torch.tensor([True, True, True, True, False, False])
    train = TrainingRows(x=x, targets=torch.tensor([0, 1, 0, 1, -1, -1]), labelled=labelled,
                         teacher_logits=torch.zeros(6, 2))
    fold = torch.full((6, 2), -0.5)
    rows = fold_training_rows(train, fold, np.array([1, 2]))
    assert rows.hard_labelled.tolist() == [True, False, False, True, False, False]
    assert rows.labelled.tolist() == labelled.tolist()  # train_* metrics still see every labelled row
    assert torch.equal(rows.teacher_logits, fold) and torch.equal(rows.x, x)


def test_summary_counts_zero_fallbacks_and_settings() -> None:
    picks = [{"kl_weight": 0.0, "temperature": 1.0, "reason": "cross-validation"},
             {"kl_weight": 1.0, "temperature": 2.0, "reason": "cross-validation"},
             {"kl_weight": 0.0, "temperature": 1.0, "reason": "no cross-validation: ..."}, None]
    summary = summarise_selections(picks)
    assert summary == {"episodes": 3, "kl_weight_chosen": 3, "kl_weight_zero": 2, "fallback": 1,
                       "kl_weight_mean": pytest.approx(1 / 3),
                       "chosen": [{"kl_weight": 0.0, "temperature": 1.0, "episodes": 2},
                                  {"kl_weight": 1.0, "temperature": 2.0, "episodes": 1}]}
    assert "2 of 3" in selection_text(summary) and "1 of them without cross-validation" in selection_text(summary)
    assert summarise_selections([None]) is None


def test_a_fixed_kl_weight_is_not_counted_as_chosen() -> None:
    """A swept or fixed KL weight with ``temperature = "auto"``: the line says only T was chosen, and no
    ``kl_weight = 0`` episode is counted as "auto declined to distil"."""
    picks = [{"kl_weight": w, "temperature": t, "reason": "cross-validation", "chose": ["temperature"]}
             for w, t in ((0.0, 1.0), (0.1, 1.0), (10.0, 4.0))]
    summary = summarise_selections(picks)
    assert summary is not None and (summary["kl_weight_chosen"], summary["kl_weight_zero"]) == (0, 0)
    text = selection_text(summary)
    assert text.startswith("objective auto: the temperature chosen per episode (3 episode(s); the KL weight was "
                           "fixed); chosen: kl_weight 0 T 1 (1), kl_weight 0.1 T 1 (1), kl_weight 10 T 4 (1)"), text
    mixed = summarise_selections([*picks, {"kl_weight": 0.0, "temperature": 3.0, "reason": "cross-validation",
                                           "chose": ["kl_weight", "temperature"]}])
    assert mixed is not None and (mixed["kl_weight_chosen"], mixed["kl_weight_zero"]) == (1, 1)
    assert "chosen in 1 of 1 episode(s)" in selection_text(mixed)


def test_a_kl_weight_sweep_with_auto_temperature_records_what_was_chosen(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    raw = copy.deepcopy(BASE)
    raw["objective"] = {**raw["objective"], "kl_weight": [0.5, 2.0]}
    (tmp_path / "e.toml").write_text(_toml(raw))
    assert main(["run", str(tmp_path / "e.toml"), "-o", str(tmp_path / "run"), "--no-track"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [row["kd_selection"]["chose"] for row in summary["episodes"]] == [["temperature"]] * 2
    assert [row["kd_selection"]["kl_weight"] for row in summary["episodes"]] == [0.5, 2.0]
    assert summary["kd_selection"]["kl_weight_chosen"] == 0 and summary["kd_selection"]["kl_weight_zero"] == 0
    printed = capsys.readouterr()
    assert "the temperature chosen per episode (2 episode(s); the KL weight was fixed)" in printed.out + printed.err
    assert "kl_weight 0 (no distillation)" not in printed.out + printed.err


# --------------------------------------------------------------------------- the stacked CV against a loop


def with_folds(taught: Any, folds: list[np.ndarray], logits: np.ndarray | None = None) -> Any:
    """The teacher's outputs with the given folds; fold f's soft targets: the teacher's, shifted per fold
    (so that a member reading the wrong fold's targets would show)."""
    base = taught.train.teacher_logits if logits is None else torch.as_tensor(logits, dtype=torch.float32)
    fold_logits = torch.stack([torch.log_softmax(base + 0.3 * f * torch.arange(base.shape[1]), dim=1)
                               for f in range(len(folds))])
    train = dataclasses.replace(taught.train, teacher_logits=torch.log_softmax(base, dim=1))
    return dataclasses.replace(taught, train=train, folds=folds, fold_logits=fold_logits)


def test_stacked_selection_equals_a_loop_of_plain_fits() -> None:
    cfg = config()
    prepared = prepare(cfg)
    folds = [np.array([0, 4, 8]), np.array([1, 5, 6]), np.array([2, 3, 7])]
    taught = with_folds(teach(prepared, score_test=False), folds)
    job = StudentJob.planned(prepared, taught, "student")
    _choose_auto([job], batched=True, checkpoints=None, stop=None, key="t")
    assert job.selection is not None and job.selection["reason"] == "cross-validation"
    stacked = {(s["kl_weight"], s["temperature"]): s for s in job.selection["scores"]}
    assert set(stacked) == {(0.0, 1.0), (1.0, 1.0), (1.0, 3.0)}

    # The reference: one plain fit per fold and candidate, the held-out rows scored by scikit-learn.
    y = taught.train.targets.numpy()
    rows_right = {}
    for (kl, t), got in stacked.items():
        probs, truth = [], []
        for f, held in enumerate(folds):
            hard = taught.train.labelled.clone()
            hard[torch.as_tensor(held)] = False
            rows = TrainingRows(x=taught.train.x, targets=taught.train.targets, labelled=taught.train.labelled,
                                teacher_logits=taught.fold_logits[f], hard_targets=taught.train.targets,
                                hard_labelled=hard)
            model = build_student(prepared)
            settings = StudentJob.planned(prepared, taught, "reference", kl_weight=kl, temperature=t).fit_settings(False)
            fit(model, rows, settings, num_classes=3)
            out = predict_logits(model, taught.train.x[torch.as_tensor(held)]).double()
            probs.append(torch.softmax(out, dim=1).numpy())
            truth.append(y[held])
        p, yy = np.concatenate(probs), np.concatenate(truth)
        assert got["accuracy"] == pytest.approx(accuracy_score(yy, p.argmax(1)), abs=1e-9)
        assert got["log_loss"] == pytest.approx(log_loss(yy, p, labels=[0, 1, 2]), rel=1e-4)
        rows_right[(kl, t)] = (p.argmax(1) == yy).astype(float)
    # The rule, by hand: the most accurate distilled candidate (ties: lower log-loss), taken only when its
    # paired per-row gain over kl_weight 0 exceeds two standard errors.
    distilled = sorted((k for k in stacked if k[0] > 0),
                       key=lambda k: (-stacked[k]["accuracy"], stacked[k]["log_loss"], k))
    d = rows_right[distilled[0]] - rows_right[(0.0, 1.0)]
    gain, se = d.mean(), d.std(ddof=1) / np.sqrt(d.size)
    assert job.selection["gain"] == pytest.approx(gain) and job.selection["gain_se"] == pytest.approx(se)
    expected = distilled[0] if gain > 0 and gain > 2 * se else (0.0, 1.0)  # objective.auto.margin = 2
    assert (job.selection["kl_weight"], job.selection["temperature"]) == expected

    # One at a time gives the same choice and scores.
    alone = StudentJob.planned(prepared, taught, "student")
    _choose_auto([alone], batched=False, checkpoints=None, stop=None, key="t")
    assert alone.selection["kl_weight"] == job.selection["kl_weight"]
    for a, b in zip(alone.selection["scores"], job.selection["scores"], strict=True):
        assert a["accuracy"] == b["accuracy"] and a["log_loss"] == pytest.approx(b["log_loss"], rel=1e-5)


def test_without_folds_auto_falls_back_to_no_distillation_and_says_so() -> None:
    prepared = prepare(config(few_shot={"per_class": 1}))
    taught = teach(prepared, score_test=False)
    taught = dataclasses.replace(taught, folds=None, fold_logits=None)
    jobs = [StudentJob.planned(prepared, taught, "student"),
            StudentJob.planned(prepared, taught, "teacher_probs_only")]
    _choose_auto(jobs, batched=True, checkpoints=None, stop=None, key="t")
    assert (jobs[0].kl_weight, jobs[0].temperature) == (0.0, 1.0)
    assert jobs[0].selection["reason"].startswith("no cross-validation")
    assert jobs[1].kl_weight == 1.0  # the KL term alone still needs a weight


# --------------------------------------------------------------------------- the choice itself


def checkerboard(seed: int, rows: int = 600) -> Dataset:
    """y = [x0 * x1 > 0] in 6 dimensions: a handful of labels cannot teach it, a teacher that knows it can."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 6))
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
    return Dataset("checkerboard", x, y, ["a", "b"], [f"x{i}" for i in range(6)])


def choice_with_teacher(kind: str, seed: int) -> dict[str, Any]:
    data = checkerboard(seed)
    cfg = config(seed=seed, few_shot={"per_class": 4, "transfer": "pool"}, data={"source": "sklearn:iris",
                 "test_size": 100, "scale": "standard"}, student={"hidden": [32], "activation": "relu"},
                 objective={"kl_weight": "auto", "temperature": 1.0, "auto": {"kl_weights": [0, 1, 3]}},
                 train={"epochs": 60, "device": "cpu", "batch_size": 64, "lr": 0.01})
    prepared = prepare(cfg, data)
    taught = teach(prepared, score_test=False)
    split = prepared.split
    order = np.concatenate([split.labelled, split.pool])
    if kind == "oracle":  # the true label function, a little soft
        truth = data.y[order]
        probs = np.where(truth[:, None] == np.arange(2), 0.95, 0.05)
    else:  # pure noise: random probabilities per row
        probs = np.random.default_rng(100 + seed).dirichlet([1.0, 1.0], size=order.size)
    labelled_y = data.y[split.labelled]
    folds = [np.flatnonzero(np.arange(labelled_y.size) % 4 == f) for f in range(4)]
    folds = [np.sort(np.concatenate([np.flatnonzero(labelled_y == c)[f::4] for c in (0, 1)])) for f in range(4)]
    taught = with_folds(taught, folds, np.log(probs))
    job = StudentJob.planned(prepared, taught, "student")
    _choose_auto([job], batched=True, checkpoints=None, stop=None, key="t")
    assert job.selection is not None
    return job.selection


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auto_declines_a_teacher_of_noise_and_takes_one_that_knows_the_labels(seed: int) -> None:
    noise = choice_with_teacher("noise", seed)
    assert noise["kl_weight"] == 0.0, noise["scores"]
    oracle = choice_with_teacher("oracle", seed)
    assert oracle["kl_weight"] > 0, oracle["scores"]
    zero = next(s for s in oracle["scores"] if s["kl_weight"] == 0)
    assert max(s["accuracy"] for s in oracle["scores"]) > zero["accuracy"]


# --------------------------------------------------------------------------- end to end


def _two_episode_toml(folder: Path) -> Path:
    """BASE over two episodes with a null-teacher control, a checkpoint at every epoch end (which
    changes no number: the stop-and-resume test below compares against a run of this file)."""
    raw = copy.deepcopy(BASE)
    raw["protocol"] = {"episodes": 2, "controls": ["null_teacher"]}
    raw["train"] = {**raw["train"], "checkpoint_interval": 0}
    (folder / "e.toml").write_text(_toml(raw))
    return folder / "e.toml"


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of ``_two_episode_toml``, read by the two tests below."""
    folder = tmp_path_factory.mktemp("whole")
    assert main(["run", str(_two_episode_toml(folder)), "-o", str(folder / "run"), "--no-track"]) == 0
    return folder / "run"


def test_summary_log_and_plan_say_what_auto_chose(whole_run: Path) -> None:
    summary = json.loads((whole_run / "summary.json").read_text())
    picks = [row["kd_selection"] for row in summary["episodes"]]
    assert summary["kd_selection"] == summarise_selections(picks)
    for row in summary["episodes"]:
        pick = row["kd_selection"]
        assert pick["reason"] == "cross-validation" and pick["folds"] == 3 and len(pick["scores"]) == 3
        assert pick["chose"] == ["kl_weight", "temperature"]
        # The chosen setting is what the student trained with: its fit equals the baseline's at 0.
        if pick["kl_weight"] == 0:
            assert row["student"] == row["baseline"]
    log = (whole_run / "log.txt").read_text()
    assert "objective auto: kl_weight 0 (no distillation) chosen in" in log
    assert "per episode by cross-validation on its labelled rows" in log


def _toml(raw: dict[str, Any]) -> str:
    from distill.config import to_toml

    return to_toml(raw)


def test_a_run_with_auto_is_deterministic() -> None:
    cfg = config(protocol={"episodes": 2})
    _, first = run_protocol(cfg)
    _, again = run_protocol(cfg)
    assert [r.kd_selection for r in first] == [r.kd_selection for r in again]
    assert [r.metrics for r in first] == [r.metrics for r in again]


def test_poisoned_test_rows_change_nothing_auto_chooses() -> None:
    """The same prepared split, with the test rows' features and labels replaced by noise: the teacher's
    fold outputs, every cross-validation score and the choice are the same; only the test metrics move."""
    prepared = prepare(config(few_shot={"per_class": 4, "transfer": "pool"}))
    data, test = prepared.dataset, prepared.split.test
    rng = np.random.default_rng(11)
    x, y = data.x.copy(), data.y.copy()
    x[test] = rng.uniform(-50, 50, size=x[test].shape)
    y[test] = rng.integers(0, data.num_classes, size=test.size)
    poisoned = dataclasses.replace(prepared, dataset=dataclasses.replace(data, x=x, y=y))
    picks = []
    for p in (prepared, poisoned):
        job = StudentJob.planned(p, teach(p), "student")
        _choose_auto([job], batched=True, checkpoints=None, stop=None, key="t")
        picks.append(job.selection)
    assert picks[0]["reason"] == "cross-validation"
    assert picks[0] == picks[1]


@pytest.mark.parametrize("raw, key", [
    ({"objective": {"auto": {"kl_weights": list(range(33))}}}, "objective.auto.kl_weights"),
    ({"objective": {"auto": {"temperatures": [1.0 + i for i in range(33)]}}}, "objective.auto.temperatures"),
    ({"teacher": {"kind": "auto", "candidates": ["logistic_regression"] * 33}}, "teacher.candidates"),
])
def test_grids_and_candidates_are_bounded(raw: dict[str, Any], key: str) -> None:
    """Every grid point is a student per fold and episode, every candidate a fit per fold: both are capped."""
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and key in message and "at most 32" in message and "got 33" in message
    section, _, field = key.partition(".")
    at_limit = copy.deepcopy(raw)
    node = at_limit[section] if section == "teacher" else at_limit["objective"]["auto"]
    name = field if section == "teacher" else field.split(".")[-1]
    node[name] = node[name][:32]
    validate_config(at_limit)  # 32 is allowed


@pytest.mark.slow
def test_a_run_stopped_after_its_cross_validation_fit_resumes_to_the_same_numbers(tmp_path: Path,
                                                                                   whole_run: Path) -> None:
    """SIGTERM as the cross-validation fit is recorded: the resumed run loads that fit, chooses the same
    settings from it and ends with the numbers of a run that was never stopped."""
    import os
    import signal

    import distill.outputs.checkpoints

    _two_episode_toml(tmp_path)
    real = distill.outputs.checkpoints.Checkpoints.finish
    keys: list[str] = []

    def finish_then_signal(self: Any, key: str, *args: Any, **kwargs: Any) -> None:
        real(self, key, *args, **kwargs)
        keys.append(key)
        if len(keys) == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distill.outputs.checkpoints.Checkpoints, "finish", finish_then_signal)
        assert main(["run", str(tmp_path / "e.toml"), "-o", str(tmp_path / "stopped"), "--no-track", "-q"]) == 143
    assert keys == ["c0cvg0"]  # the cross-validation members are one stacked fit, recorded first
    assert main(["run", "--resume", str(tmp_path / "stopped"), "--no-track", "-q"]) == 0
    resumed, whole = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "stopped", whole_run))
    assert resumed["kd_selection"] == whole["kd_selection"]
    for a, b in zip(resumed["episodes"], whole["episodes"], strict=True):
        assert a["kd_selection"] == b["kd_selection"]
        for system in ("student", "baseline", "null_teacher"):
            assert a[system] == b[system]


def test_train_students_chooses_auto_first_and_controls_never_choose_alone() -> None:
    """A job with the defaults ("auto") has its knobs chosen before it fits, to the same student whether the
    cross-validation members are stacked or not; a kl_weight-0 config's teacher_probs_only control trains
    at 1 and T = 1 without a choice of its own."""
    from distill.experiment.episodes import _control_job
    from distill.experiment.students import train_students

    prepared = prepare(config())
    taught = teach(prepared, score_test=False)
    stacked = StudentJob.planned(prepared, taught, "student")
    train_students([stacked], batched=True)
    job = StudentJob.planned(prepared, taught, "student")
    train_students([job], batched=False)
    assert stacked.kl_weight != "auto" and stacked.temperature != "auto" and stacked.selection is not None
    assert torch.equal(torch.cat([p.reshape(-1) for p in stacked.model.parameters()]),
                       torch.cat([p.reshape(-1) for p in job.model.parameters()]))
    zero = prepare(config(objective={"kl_weight": 0, "temperature": "auto"}))
    control = _control_job(zero, teach(zero, score_test=False), "teacher_probs_only")
    assert (control.kl_weight, control.temperature) == (1.0, 1.0)
    assert control.set_by_job == {"kl_weight", "temperature"}  # its own, not the config's 0 and "auto"
