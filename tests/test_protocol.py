"""The episode protocol: reproducible draws, shared initial weights, sweeps, augmented transfer,
and the aggregation that ends up in summary.json."""

from __future__ import annotations

import copy
import json
import warnings
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from distill.cli import main
from distill.config import ConfigError, validate_config
from distill.data.augment import augment_rows
from distill.experiment.episodes import run_protocol
from distill.experiment.prepare import episode_seed, prepare, prepare_protocol
from distill.experiment.teach import teach

SYSTEMS = ("teacher", "student", "baseline")

BASE: dict[str, Any] = {
    "seed": 3,
    "data": {"source": "sklearn:iris", "test_size": 30},
    "few_shot": {"per_class": 2},
    "teacher": {"restarts": 0},
    "student": {"hidden": [8]},
    "train": {"epochs": 5, "device": "cpu"},
    "protocol": {"episodes": 4},
}

IRIS_TOML = """\
name = "iris_small"
seed = 0

[data]
source = "sklearn:iris"
test_size = 30

[few_shot]
per_class = 2

[teacher]
restarts = 0

[student]
hidden = [8]

[train]
epochs = 5
device = "cpu"
"""


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These fits are on a handful of rows: with several BLAS/OpenMP threads on a busy 2-core
    machine, thread wake-ups cost more than the arithmetic (10-30x slower). Restored afterwards."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def small(**sections: Any) -> Any:
    """The small iris config, with sections merged in: ``small(protocol={"episodes": 2})``."""
    return validate_config(merge(BASE, sections))


def split_of(result) -> dict[str, np.ndarray]:
    s = result.split
    return {"test": s.test, "labelled": s.labelled, "validation": s.validation, "pool": s.pool}


# --------------------------------------------------------------------------- episodes


def test_episodes_are_reproducible_distinct_and_repeatable_alone() -> None:
    cfg = small()
    first, results = run_protocol(cfg)
    _, again = run_protocol(cfg)
    assert len(first) == 1
    assert len(results) == len(again) == 4

    for r, s in zip(results, again, strict=True):
        assert r.metrics == s.metrics
        for name, idx in split_of(r).items():
            assert np.array_equal(idx, split_of(s)[name]), name

    assert [r.episode for r in results] == [0, 1, 2, 3]
    assert [r.seed for r in results] == [cfg.seed + e for e in range(4)]
    assert [r.seed for r in results] == [episode_seed(cfg.seed, e) for e in range(4)]
    assert all(r.value is None for r in results)
    # Every episode draws its own labelled rows.
    for r, s in combinations(results, 2):
        assert not np.array_equal(r.split.labelled, s.split.labelled)

    # Episode e is the plain one-episode run with seed + e.
    for e in (0, 2):
        alone_cfg = small(seed=cfg.seed + e, protocol={"episodes": 1})
        _, (alone,) = run_protocol(alone_cfg)
        assert alone.metrics == results[e].metrics
        assert alone.seed == results[e].seed
        for name, idx in split_of(alone).items():
            assert np.array_equal(idx, split_of(results[e])[name]), name


def test_split_rows_are_disjoint_in_every_episode() -> None:
    cfg = small(few_shot={"validation": 1}, protocol={"episodes": 3})
    first, results = run_protocol(cfg)
    n = first[0].dataset.x.shape[0]
    y = first[0].dataset.y
    for r in results:
        parts = split_of(r)
        for (a, ia), (b, ib) in combinations(parts.items(), 2):
            assert np.intersect1d(ia, ib).size == 0, f"{a} and {b} overlap in episode {r.episode}"
        # Together they are every row, each once.
        assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(n))
        assert parts["test"].size == 30
        assert parts["labelled"].size == 6 and parts["validation"].size == 3
        assert np.bincount(y[parts["labelled"]], minlength=3).tolist() == [2, 2, 2]
        assert np.bincount(y[parts["validation"]], minlength=3).tolist() == [1, 1, 1]
        assert r.split_sizes == {
            "test": 30, "labelled": 6, "validation": 3, "pool": n - 39, "augmented": 0, "transfer": 6,
        }
    # The test split is redrawn per episode seed, too.
    tests = [r.split.test for r in results]
    assert any(not np.array_equal(a, b) for a, b in combinations(tests, 2))


def test_student_and_baseline_start_from_the_same_weights() -> None:
    # With kl_weight = 0 the distilled student is the baseline, bit for bit, in every episode.
    _, results = run_protocol(small(objective={"kl_weight": 0}, protocol={"episodes": 3}))
    for r in results:
        assert r.metrics["student"] == r.metrics["baseline"]
        sa, sb = r.student.state_dict(), r.baseline.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert [h["train_loss"] for h in r.student_fit.history] == [h["train_loss"] for h in r.baseline_fit.history]


# --------------------------------------------------------------------------- sweeps


def test_kl_weight_sweep_reuses_teacher_and_baseline() -> None:
    values = [0, 0.5, 2]
    cfg = small(objective={"kl_weight": values}, protocol={"episodes": 3})
    assert cfg.sweep == ("objective.kl_weight", (0, 0.5, 2))
    first, results = run_protocol(cfg)
    assert len(first) == 3
    assert len(results) == 9
    assert [(r.episode, r.value) for r in results] == [(e, v) for e in range(3) for v in values]
    assert [r.seed for r in results] == [cfg.seed + e for e in range(3) for _ in values]
    for e in range(3):
        point = results[3 * e : 3 * e + 3]
        assert all(r.metrics["teacher"] == point[0].metrics["teacher"] for r in point)
        assert all(r.metrics["baseline"] == point[0].metrics["baseline"] for r in point)
        assert all(r.teacher_diagnostics == point[0].teacher_diagnostics for r in point)
        assert all(np.array_equal(r.split.labelled, point[0].split.labelled) for r in point)
        zero = next(r for r in point if r.value == 0)
        assert zero.metrics["student"] == zero.metrics["baseline"]
    # Different episodes draw different labelled rows.
    assert not np.array_equal(results[0].split.labelled, results[3].split.labelled)


def test_per_class_sweep_changes_the_labelled_size() -> None:
    cfg = small(few_shot={"per_class": [1, 3]}, protocol={"episodes": 1})
    first = prepare_protocol(cfg)
    assert [p.split.labelled.size for p in first] == [3, 9]
    _, results = run_protocol(cfg, first)
    assert [(r.value, r.split_sizes["labelled"]) for r in results] == [(1, 3), (3, 9)]
    y = first[0].dataset.y
    assert np.bincount(y[results[1].split.labelled]).tolist() == [3, 3, 3]


def test_sweeping_two_keys_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(merge(BASE, {"objective": {"kl_weight": [0, 1]}, "few_shot": {"per_class": [1, 2]}}))
    text = "\n".join(info.value.problems)
    assert "one key at a time" in text
    assert "objective.kl_weight" in text and "few_shot.per_class" in text


def test_every_swept_value_is_validated() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(merge(BASE, {"objective": {"kl_weight": [0, 0.5, -1]}}))
    assert any("objective.kl_weight" in p and "-1" in p for p in info.value.problems)
    with pytest.raises(ConfigError):
        validate_config(merge(BASE, {"objective": {"kl_weight": [-2, 1]}}))  # the first value too


# --------------------------------------------------------------------------- augmented transfer


def _rows(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _contains_row(rows: np.ndarray, point: np.ndarray) -> bool:
    return bool((rows == point).all(axis=1).any())


def _augmented(**augment: Any):
    cfg = small(few_shot={"transfer": "augmented", "augment": {"count": 50, **augment}}, protocol={"episodes": 1})
    prepared = prepare(cfg)
    taught = teach(prepared)
    data, split = prepared.dataset, prepared.split
    x = prepared.scaler.transform(data.x).astype(np.float32)  # the rows the student sees, as float32
    return prepared, taught, x[split.labelled], x[split.test]


def test_augmented_transfer_set_layout() -> None:
    prepared, taught, labelled, test = _augmented(jitter=0, mixup=0)
    n_lab = prepared.split.labelled.size
    train = taught.train
    assert taught.augmented == 50
    assert train.x.shape == (n_lab + 50, 4)
    assert train.teacher_logits.shape == (n_lab + 50, 3)
    xs = _rows(train.x)
    # Labelled rows first, in split order, with their labels.
    assert np.array_equal(xs[:n_lab], labelled)
    assert _rows(train.targets)[:n_lab].tolist() == prepared.dataset.y[prepared.split.labelled].tolist()
    assert _rows(train.labelled)[:n_lab].all()
    # Then the generated points: no hard label, not labelled.
    assert (_rows(train.targets)[n_lab:] == -1).all()
    assert not _rows(train.labelled)[n_lab:].any()
    # No jitter, no mixup: each generated point is a copy of a labelled row, and none is a test row.
    assert not any(_contains_row(test, row) for row in labelled)  # no duplicate rows across the draw
    for point in xs[n_lab:]:
        assert _contains_row(labelled, point)
        assert not _contains_row(test, point)


def test_augmented_mixup_points_lie_between_two_labelled_rows() -> None:
    prepared, taught, labelled, test = _augmented(mixup=1)
    n_lab = labelled.shape[0]
    generated = _rows(taught.train.x)[n_lab:].astype(np.float64)
    lab = labelled.astype(np.float64)
    assert generated.shape == (50, 4)
    for point in generated:
        found = False
        for i in range(n_lab):
            for j in range(n_lab):
                if i == j:
                    continue
                diff = lab[i] - lab[j]
                c = int(np.argmax(np.abs(diff)))  # solve for lambda on the best-conditioned coordinate
                lam = (point[c] - lab[j, c]) / diff[c]
                if -1e-5 <= lam <= 1 + 1e-5 and np.allclose(lam * lab[i] + (1 - lam) * lab[j], point, atol=1e-5):
                    found = True
                    break
            if found:
                break
        assert found, f"{point} is not on a segment between two labelled rows"
        assert not _contains_row(test, point.astype(np.float32))
    # Not merely copies of labelled rows.
    assert sum(_contains_row(labelled, p.astype(np.float32)) for p in generated) < 5


def test_augmented_jitter_points_stay_near_labelled_rows() -> None:
    _, taught, labelled, test = _augmented(jitter=0.05, mixup=0)
    generated = _rows(taught.train.x)[labelled.shape[0] :]
    nearest = np.abs(generated[:, None, :] - labelled[None, :, :]).max(axis=2).min(axis=1)
    assert (nearest > 0).all() and (nearest < 0.05 * 6).all()
    assert not any(_contains_row(test, p) for p in generated)


def test_augment_rows_is_reproducible() -> None:
    x = np.array([[0.0, 0.0], [1.0, 0.5], [0.2, 1.0], [0.7, 0.3]])
    kwargs = dict(jitter=0.1, mixup=0.4, mixup_alpha=0.5)
    a = augment_rows(x, 25, rng=np.random.default_rng(7), **kwargs)
    b = augment_rows(x, 25, rng=np.random.default_rng(7), **kwargs)
    c = augment_rows(x, 25, rng=np.random.default_rng(8), **kwargs)
    assert a.shape == (25, 2) and a.dtype == np.float64
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # And teach() draws the same generated points for the same seed.
    t1 = _rows(_augmented()[1].train.x)
    t2 = _rows(_augmented()[1].train.x)
    assert np.array_equal(t1, t2)


# --------------------------------------------------------------------------- summary.json via the CLI


def _wilcoxon_rule(d: np.ndarray) -> float | None:
    if np.all(d == 0):
        return 1.0
    if np.count_nonzero(d) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(scipy.stats.wilcoxon(d).pvalue)


def _check_interval(entry: dict[str, Any], values: np.ndarray) -> None:
    if np.all(values == values[0]):
        assert entry["ci95"] == [pytest.approx(values.mean(), abs=1e-12)] * 2
    else:
        low, high = scipy.stats.t.interval(0.95, values.size - 1, loc=values.mean(), scale=scipy.stats.sem(values))
        assert entry["ci95"] == [pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12)]


def test_cli_protocol_summary_matches_numpy_and_scipy(tmp_path: Path, capsys) -> None:
    experiment = tmp_path / "iris_small.toml"
    experiment.write_text(IRIS_TOML)
    out = tmp_path / "run"
    assert main(["run", str(experiment), "-o", str(out), "-q", "--no-track", "--episodes", "5", "--set", "train.epochs=8"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    episodes = summary["episodes"]
    assert len(episodes) == 5
    assert [e["episode"] for e in episodes] == list(range(5))
    assert [e["seed"] for e in episodes] == list(range(5))
    assert all("value" not in e for e in episodes)
    assert "sweep" not in summary

    for system in SYSTEMS:
        for metric in ("accuracy", "f1_macro", "ece"):
            values = np.array([e[system][metric] for e in episodes])
            entry = summary["aggregate"][system][metric]
            assert entry["n"] == 5
            assert entry["mean"] == pytest.approx(np.mean(values), abs=1e-12)
            assert entry["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
            _check_interval(entry, values)
            assert summary[system][metric] == entry["mean"]

    for other in ("baseline", "teacher"):
        for metric in ("accuracy", "f1_macro", "ece"):
            d = np.array([e["student"][metric] - e[other][metric] for e in episodes])
            entry = summary["paired"][f"student_minus_{other}"][metric]
            assert entry["n"] == 5
            assert entry["mean"] == pytest.approx(d.mean(), abs=1e-12)
            _check_interval(entry, d)
            expected = _wilcoxon_rule(d)
            if expected is None:
                assert entry["p_value"] is None
            else:
                assert entry["p_value"] == pytest.approx(expected, rel=1e-12)

    assert summary["verdict"]
    assert summary["verdict"] in printed
    assert summary["protocol"]["episodes"] == 5
    assert (out / "episodes.png").is_file()
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns[:4]) == ["episode", "seed", "system", "epoch"]
    assert sorted(history.episode.unique()) == list(range(5))


def test_cli_sweep_writes_points_plot_and_history(tmp_path: Path, capsys) -> None:
    experiment = tmp_path / "iris_small.toml"
    experiment.write_text(IRIS_TOML)
    out = tmp_path / "sweep"
    args = ["run", str(experiment), "-o", str(out), "-q", "--no-track", "--episodes", "2", "--set", "objective.kl_weight=[0, 1, 4]"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "sweep_objective_kl_weight.png").is_file()
    assert not (out / "episodes.png").exists()
    for system in SYSTEMS:
        assert system not in summary
    sweep = summary["sweep"]
    assert sweep["key"] == "objective.kl_weight"
    assert sweep["values"] == [0, 1, 4]
    assert [p["value"] for p in sweep["points"]] == [0, 1, 4]
    episodes = summary["episodes"]
    assert len(episodes) == 3 * 2
    assert [(e["episode"], e["value"]) for e in episodes] == [(e, v) for e in range(2) for v in (0, 1, 4)]
    for point in sweep["points"]:
        rows = [e for e in episodes if e["value"] == point["value"]]
        values = np.array([r["student"]["accuracy"] for r in rows])
        assert point["aggregate"]["student"]["accuracy"]["mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert point["student"]["accuracy"] == point["aggregate"]["student"]["accuracy"]["mean"]
        assert set(point) >= {"value", "teacher", "student", "baseline", "aggregate", "paired", "verdict"}
        assert f"objective.kl_weight = {point['value']}: {point['verdict']}" in printed
    zero = sweep["points"][0]
    assert zero["student"] == zero["baseline"]
    assert zero["paired"]["student_minus_baseline"]["accuracy"]["p_value"] == 1.0
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns[:4]) == ["episode", "seed", "value", "system"]
    assert set(history.value.unique()) == {0, 1, 4}
    assert set(history.system.unique()) == {"student", "baseline"}


def test_systems_that_predict_one_class_everywhere_are_named_with_their_episodes() -> None:
    from types import SimpleNamespace

    from distill.experiment.run import one_class_systems, one_class_warning

    constant = np.tile([0.3, 0.7], (5, 1))  # class 1 for every row
    varied = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9], [0.5, 0.5]])
    results = [
        SimpleNamespace(episode=0, test_predictions={"teacher": constant, "student": varied, "baseline": constant,
                                                     "null_teacher": constant, "logistic_regression": constant}),
        SimpleNamespace(episode=1, test_predictions={"teacher": varied, "student": varied, "baseline": constant,
                                                     "null_teacher": varied, "logistic_regression": varied}),
        SimpleNamespace(episode=2, test_predictions={"student": constant[:1], "baseline": varied}),  # one row: moot
    ]
    found = one_class_systems(results)  # type: ignore[arg-type]
    assert found == {"baseline": [0, 1], "null_teacher": [0]}  # never the teacher or a reference
    summary = {"protocol": {"episodes": 3}, "one_class": found}
    assert one_class_warning(summary) == ("warning: the baseline in 2 of 3 episode(s) predicted one class for every "
                                          "test row: its accuracy is that class's share of the test rows, not learning")
    assert one_class_warning({"protocol": {"episodes": 3}, "one_class": {"null_teacher": [0]}}) is None
    assert one_class_warning({"protocol": {"episodes": 3}}) is None
