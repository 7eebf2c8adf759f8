"""Hard-loss choices, class weights, regularisers and metric losses wired through config and engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.cli import main
from distill.config import validate_config
from distill.errors import ConfigError
from distill.experiment.prepare import build_criterion, prepare
from distill.losses.objective import HardCriterion, metric_loss

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("hard", ["focal", "sce"])
def test_run_with_a_chosen_hard_loss_records_it(hard: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # One episode on a fixed KL term: with a hard loss other than plain BCE/CE every cross-validation
    # student of "auto" trains alone (18 fits an episode), and what is recorded does not depend on either.
    assert main(["run", str(ROOT / "experiments/breast_cancer_gp.toml"), "-o", str(out), "-q", "--no-track",
                 "--set", f'objective.hard="{hard}"', "--set", "train.epochs=5", "--episodes", "1",
                 "--set", "objective.kl_weight=1.0", "--set", "objective.temperature=1.0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["objective"]["hard"] == hard
    assert 0 <= summary["student"]["accuracy"] <= 1
    ckpt = torch.load(out / "student.pt", weights_only=True)
    # focal keeps one logit for a binary problem; sce is a CE-type loss: one output per class.
    assert ckpt["num_outputs"] == (1 if hard == "focal" else 2)


def _config(**objective):
    return validate_config({
        "data": {"source": "sklearn:iris", "test_size": 30},
        "few_shot": {"labelled": 12},
        "objective": objective,
        "train": {"device": "cpu"},
        "tracking": {"enabled": False},
    })


def test_balanced_class_weights_follow_sklearn_and_torchs_weighted_mean() -> None:
    config = _config(hard="ce", class_weight="balanced")
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    criterion = build_criterion(config.objective, "ce", 3, y, torch.device("cpu"))
    from sklearn.utils.class_weight import compute_class_weight

    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    np.testing.assert_allclose(criterion.mean_weight.numpy(), expected, rtol=1e-6)
    torch.manual_seed(0)
    logits = torch.randn(12, 3, dtype=torch.float64)
    targets = torch.as_tensor(y)
    got = criterion(logits, targets, torch.ones(12, dtype=torch.bool))
    ref = F.cross_entropy(logits, targets, weight=torch.as_tensor(expected, dtype=torch.float64))
    assert float(got) == pytest.approx(float(ref), rel=1e-6)
    # Unlabelled rows (mask False, target -1) change nothing.
    padded = torch.cat([logits, torch.randn(4, 3, dtype=torch.float64)])
    mask = torch.cat([torch.ones(12, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)])
    got2 = criterion(padded, torch.cat([targets, torch.full((4,), -1)]), mask)
    assert float(got2) == pytest.approx(float(ref), rel=1e-6)


def test_balanced_pos_weight_is_negatives_over_positives() -> None:
    config = validate_config({"objective": {"hard": "bce", "pos_weight": "balanced"}, "tracking": {"enabled": False}})
    y = np.array([0, 0, 0, 1])
    criterion = build_criterion(config.objective, "bce", 2, y, torch.device("cpu"))
    logits = torch.tensor([0.3, -1.2, 2.0, 0.7], dtype=torch.float64)
    got = criterion(logits[:, None], torch.as_tensor(y), None)
    ref = F.binary_cross_entropy_with_logits(logits, torch.as_tensor(y, dtype=torch.float64),
                                             pos_weight=torch.tensor(3.0, dtype=torch.float64))
    assert float(got) == pytest.approx(float(ref), rel=1e-6)


def test_plain_bce_and_ce_keep_the_fast_path() -> None:
    assert build_criterion(_config().objective, "ce", 3, np.array([0, 1, 2]), torch.device("cpu")) is None


@pytest.mark.parametrize(
    ("objective", "message"),
    [
        ({"hard": "ce", "class_weight": [1.0, 2.0]}, "objective.class_weight needs one weight per class (3), got 2"),
        ({"hard": "ce", "pos_weight": 2.0}, "objective.pos_weight applies to a one-logit binary student"),
        ({"hard": "focal", "hard_params": {"gama": 2}}, "gama"),
        ({"metric_loss": "triplet"}, None),
    ],
)
def test_objective_options_are_checked_against_the_data(objective: dict, message: str | None) -> None:
    config = _config(**objective)
    if message is None:
        prepare(config)  # the MLP exposes embed(x): a metric loss is allowed
        return
    with pytest.raises(ConfigError) as info:
        prepare(config)
    assert any(message in p for p in info.value.problems)


def test_metric_loss_needs_a_student_with_embed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "plainnet.py").write_text(
        "import torch\n"
        "class Plain(torch.nn.Module):\n"
        "    def __init__(self, in_features, num_outputs):\n"
        "        super().__init__(); self.l = torch.nn.Linear(in_features, num_outputs)\n"
        "    def forward(self, x):\n"
        "        return self.l(x)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = validate_config({
        "data": {"source": "sklearn:iris", "test_size": 30}, "few_shot": {"labelled": 12},
        "student": {"arch": "plainnet:Plain"}, "objective": {"metric_loss": "triplet"},
        "tracking": {"enabled": False},
    })
    with pytest.raises(ConfigError, match="needs a student with embed"):
        prepare(config)


def _triplet_reference(e: np.ndarray, y: np.ndarray, m: np.ndarray, margin: float) -> float:
    """Batch-hard triplet loss in float64 NumPy (Hermans et al. 2017), over labelled anchors."""
    losses = []
    for a in np.flatnonzero(m):
        pos = [j for j in np.flatnonzero(m) if j != a and y[j] == y[a]]
        neg = [j for j in np.flatnonzero(m) if y[j] != y[a]]
        if not pos or not neg:
            continue
        def dist(j: int, a: int = a) -> float:  # torch's pairwise_distance eps
            return float(np.sqrt(np.sum((e[a] - e[j] + 1e-6) ** 2)))
        d_ap = max(np.linalg.norm(e[a] - e[j]) for j in pos)
        j_p = max(pos, key=lambda j: np.linalg.norm(e[a] - e[j]))
        j_n = min(neg, key=lambda j: np.linalg.norm(e[a] - e[j]))
        assert d_ap == np.linalg.norm(e[a] - e[j_p])
        losses.append(max(0.0, dist(j_p) - dist(j_n) + margin))
    return float(np.mean(losses)) if losses else 0.0


def _ranking_reference(e: np.ndarray, y: np.ndarray, m: np.ndarray, margin: float) -> float:
    losses = []
    rows = np.flatnonzero(m)
    for a in rows:
        for p in rows:
            for n in rows:
                if p != a and y[p] == y[a] and y[n] != y[a]:
                    d_ap, d_an = np.linalg.norm(e[a] - e[p]), np.linalg.norm(e[a] - e[n])
                    losses.append(max(0.0, -(d_an - d_ap) + margin))
    return float(np.mean(losses)) if losses else 0.0


@pytest.mark.parametrize("kind", ["triplet", "margin_ranking"])
def test_metric_losses_match_float64_references(kind: str) -> None:
    rng = np.random.default_rng(3)
    e = rng.normal(size=(9, 4))
    y = np.array([0, 0, 1, 1, 1, 2, 2, 0, 2])
    m = np.array([1, 1, 1, 1, 0, 1, 1, 1, 0], dtype=bool)
    got = metric_loss(torch.as_tensor(e), torch.as_tensor(y), torch.as_tensor(m), kind=kind, margin=0.7)
    ref = (_triplet_reference if kind == "triplet" else _ranking_reference)(e, y, m, 0.7)
    assert float(got) == pytest.approx(ref, rel=1e-5, abs=1e-8)
    # No valid triple: 0, not NaN.
    single = metric_loss(torch.as_tensor(e), torch.zeros(9, dtype=torch.long), torch.as_tensor(m), kind=kind)
    assert float(single) == 0.0


def test_run_with_metric_loss_and_penalties(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "experiments/digits_gp.toml"), "-o", str(out), "-q", "--no-track",
                 "--set", 'objective.metric_loss="triplet"', "--set", "objective.metric_weight=0.5",
                 "--set", "objective.l2=1e-4", "--set", "objective.l1=1e-5", "--set", "train.epochs=3",
                 # a fixed KL term: with a metric loss every cross-validation student of "auto" trains alone;
                 # one episode: the loss is wired the same in each of the shipped ten
                 "--set", "objective.kl_weight=1.0", "--set", "objective.temperature=1.0", "--episodes", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["objective"]["metric_loss"] == "triplet"
    assert np.isfinite(summary["student"]["accuracy"])


def test_hard_criterion_with_no_labelled_row_is_zero() -> None:
    from distill.losses.hard import create_loss

    criterion = HardCriterion(create_loss("focal", 3, reduction="none"))
    logits = torch.randn(4, 3, requires_grad=True)
    value = criterion(logits, torch.full((4,), -1), torch.zeros(4, dtype=torch.bool))
    value.backward()
    assert float(value.detach()) == 0.0 and torch.isfinite(logits.grad).all()


def test_all_zero_class_weights_are_refused() -> None:
    """Zero weight for every class would switch the hard term off without a word."""
    from distill.config import validate_config

    with pytest.raises(ConfigError) as info:
        validate_config({"objective": {"class_weight": [0, 0.0, 0]}})
    assert info.value.problems == [
        "objective.class_weight: must be 'balanced' or a list of weights >= 0, one per class, at least one > 0 "
        "(all zero would switch the hard term off), got [0, 0.0, 0]"]
    assert validate_config({"objective": {"class_weight": [0, 1, 0]}}).objective.class_weight == [0, 1, 0]
