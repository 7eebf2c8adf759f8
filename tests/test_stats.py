"""``distill.metrics.stats`` against scipy / numpy on fixed, hand-written numbers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.stats

from distill.metrics.stats import CI_METHODS, describe, paired_difference, signed, verdict

X = [0.71, 0.64, 0.80, 0.77, 0.69, 0.73, 0.66, 0.82]
A = [0.81, 0.74, 0.90, 0.79, 0.70, 0.88, 0.77, 0.93, 0.68, 0.85]
B = [0.70, 0.72, 0.84, 0.80, 0.61, 0.79, 0.71, 0.81, 0.69, 0.74]


def t_interval(values) -> list[float]:
    x = np.asarray(values, dtype=np.float64)
    low, high = scipy.stats.t.interval(0.95, x.size - 1, loc=x.mean(), scale=scipy.stats.sem(x))
    return [float(low), float(high)]


def close(a, b, tol: float = 1e-12) -> bool:
    return all(math.isclose(x, y, rel_tol=tol, abs_tol=tol) for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------- describe


def test_describe_matches_numpy_and_scipy() -> None:
    d = describe(X)
    x = np.array(X)
    assert d["n"] == len(X)
    assert d["mean"] == pytest.approx(x.mean(), abs=1e-12)
    assert d["std"] == pytest.approx(x.std(ddof=1), abs=1e-12)
    assert close(d["ci95"], t_interval(X))
    assert d["ci95"][0] < d["mean"] < d["ci95"][1]
    assert set(CI_METHODS) == {"t", "bootstrap"}


def test_describe_drops_nan_and_none() -> None:
    d = describe([0.5, None, 0.7, float("nan"), 0.6, 0.9])
    kept = [0.5, 0.7, 0.6, 0.9]
    assert d["n"] == 4
    assert d["mean"] == pytest.approx(np.mean(kept), abs=1e-12)
    assert d["std"] == pytest.approx(np.std(kept, ddof=1), abs=1e-12)
    assert close(d["ci95"], t_interval(kept))


def test_describe_single_and_empty() -> None:
    one = describe([0.42, None])
    assert one == {"mean": pytest.approx(0.42), "std": None, "ci95": None, "n": 1}
    empty = describe([None, float("nan")])
    assert empty == {"mean": None, "std": None, "ci95": None, "n": 0}
    assert describe([]) == {"mean": None, "std": None, "ci95": None, "n": 0}


@pytest.mark.parametrize("method", ["t", "bootstrap"])
def test_describe_all_equal_values_give_a_point_interval(method: str) -> None:
    d = describe([0.8, 0.8, 0.8, 0.8], method=method)
    assert d["mean"] == pytest.approx(0.8)
    assert d["std"] == 0.0
    assert d["ci95"] == [d["mean"], d["mean"]]
    assert d["n"] == 4


def test_bootstrap_interval_is_close_to_the_t_interval_and_deterministic() -> None:
    sample = np.random.default_rng(20240601).normal(0.7, 0.05, size=40).tolist()
    boot = describe(sample, method="bootstrap")
    again = describe(sample, method="bootstrap")
    assert boot == again
    t = t_interval(sample)
    width = t[1] - t[0]
    low, high = boot["ci95"]
    assert low < boot["mean"] < high
    assert abs(low - t[0]) < 0.2 * width
    assert abs(high - t[1]) < 0.2 * width
    # mean, std and n do not depend on the interval method
    plain = describe(sample)
    assert (boot["mean"], boot["std"], boot["n"]) == (plain["mean"], plain["std"], plain["n"])


# --------------------------------------------------------------------------- paired_difference


def test_paired_difference_matches_scipy() -> None:
    p = paired_difference(A, B)
    d = np.array(A) - np.array(B)
    assert p["n"] == len(A)
    assert p["mean"] == pytest.approx(d.mean(), abs=1e-12)
    assert close(p["ci95"], t_interval(d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = scipy.stats.wilcoxon(d).pvalue
    assert p["p_value"] == pytest.approx(float(expected), rel=1e-12, abs=1e-15)
    assert 0.0 < p["p_value"] < 1.0


def test_paired_difference_hand_computed_exact_p() -> None:
    # All 6 differences positive and distinct: the exact two-sided p is 2 / 2**6.
    a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    b = [0.9, 1.8, 2.7, 3.6, 4.5, 5.4]
    p = paired_difference(a, b)
    assert p["p_value"] == pytest.approx(2 / 2**6, rel=1e-12)
    assert p["mean"] == pytest.approx(0.35, abs=1e-12)


def test_paired_difference_drops_pairs_with_a_missing_side() -> None:
    a = [0.9, None, 0.7, 0.8, float("nan"), 0.6]
    b = [0.8, 0.5, None, 0.5, 0.4, 0.65]
    p = paired_difference(a, b)
    kept = np.array([0.9 - 0.8, 0.8 - 0.5, 0.6 - 0.65])
    assert p["n"] == 3
    assert p["mean"] == pytest.approx(kept.mean(), abs=1e-12)
    assert close(p["ci95"], t_interval(kept))


def test_paired_difference_all_zero_differences() -> None:
    p = paired_difference([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert p["p_value"] == 1.0
    assert p["mean"] == 0.0
    assert p["ci95"] == [0.0, 0.0]
    assert p["n"] == 3


@pytest.mark.parametrize(
    "a, b, n",
    [
        ([0.5, 0.6, 0.9], [0.5, 0.6, 0.7], 3),  # one non-zero difference among three
        ([0.9], [0.7], 1),  # a single episode
        ([0.9, 0.4], [0.7, None], 1),  # a single complete pair
    ],
)
def test_paired_difference_too_few_nonzero_differences_gives_no_p(a, b, n) -> None:
    p = paired_difference(a, b)
    assert p["p_value"] is None
    assert p["n"] == n
    if n == 1:
        assert p["ci95"] is None
        assert p["mean"] == pytest.approx(0.2)


def test_paired_difference_no_pairs() -> None:
    p = paired_difference([None, 0.5], [0.4, None])
    assert p == {"mean": None, "ci95": None, "p_value": None, "n": 0}


def test_paired_difference_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError):
        paired_difference([0.1, 0.2, 0.3], [0.1, 0.2])


# --------------------------------------------------------------------------- verdict


def paired(mean, ci, p, n=10) -> dict:
    return {"mean": mean, "ci95": ci, "p_value": p, "n": n}


def test_verdict_helped() -> None:
    text = verdict(paired(0.05, [0.02, 0.08], 0.004), "accuracy", 10)
    assert text.startswith("Distillation helped at the 95% level")
    assert "+0.050 [+0.020, +0.080]" in text
    assert "p = 0.004" in text and "10 episodes" in text and "accuracy" in text


def test_verdict_hurt() -> None:
    text = verdict(paired(-0.05, [-0.08, -0.02], 0.01), "f1_macro", 12)
    assert text.startswith("Distillation hurt at the 95% level")
    assert "f1_macro" in text and "12 episodes" in text


@pytest.mark.parametrize(
    "mean, ci, p",
    [
        (0.01, [-0.02, 0.04], 0.40),  # interval straddles zero
        (0.03, [0.01, 0.05], 0.06),  # interval above zero but Wilcoxon not significant
        (-0.03, [-0.05, -0.01], 0.20),  # below zero, not significant
        (0.01, [-0.02, 0.04], 0.01),  # significant p but the interval straddles zero
    ],
)
def test_verdict_no_difference(mean, ci, p) -> None:
    text = verdict(paired(mean, ci, p), "accuracy", 10)
    assert text.startswith("No difference at the 95% level")


def test_verdict_without_an_interval() -> None:
    text = verdict(paired(0.1, None, None, n=1), "accuracy", 1)
    assert "no 95% interval" in text
    assert "+0.100" in text and "protocol.episodes" in text
    assert "one draw of the labelled rows cannot tell" in text and "--episodes 10" in text


def test_verdict_without_a_p_value() -> None:
    text = verdict(paired(0.0667, [-0.02, 0.15], None, n=5), "accuracy", 5)
    assert text.startswith("No verdict at the 95% level")
    assert "Wilcoxon" in text and "5 episodes" in text


def test_verdict_without_any_defined_value() -> None:
    text = verdict(paired(None, None, None, n=0), "auroc", 4)
    assert "cannot be judged on auroc" in text


def test_verdict_lower_is_better() -> None:
    # ECE: a negative student - baseline difference means distillation helped.
    helped = verdict(paired(-0.04, [-0.06, -0.02], 0.002), "ece", 10, higher_is_better=False)
    assert helped.startswith("Distillation helped")
    hurt = verdict(paired(0.04, [0.02, 0.06], 0.002), "ece", 10, higher_is_better=False)
    assert hurt.startswith("Distillation hurt")
    neutral = verdict(paired(-0.01, [-0.03, 0.01], 0.3), "ece", 10, higher_is_better=False)
    assert neutral.startswith("No difference")


def test_verdict_on_real_paired_numbers() -> None:
    # A and B: student ahead in 8 of 10 episodes.
    p = paired_difference(A, B)
    assert p["ci95"][0] > 0 and p["p_value"] < 0.05
    assert verdict(p, "accuracy", len(A)).startswith("Distillation helped")
    # Swapped, the same numbers say distillation hurt.
    assert verdict(paired_difference(B, A), "accuracy", len(A)).startswith("Distillation hurt")


@pytest.mark.parametrize("value, text", [
    (-1e-9, "+0.000"), (-0.0, "+0.000"), (0.0, "+0.000"), (1e-9, "+0.000"), (-0.0004, "+0.000"),
    (-0.0006, "-0.001"), (0.0751, "+0.075"), (-0.152, "-0.152"), (1.0, "+1.000"),
])
def test_a_difference_that_rounds_to_zero_has_no_minus_sign(value: float, text: str) -> None:
    """The console's paired intervals: float noise of -1e-9 (two equal models scored by differently vectorised
    code) reads "+0.000", not "-0.000"; everything else is Python's own rounding with its sign."""
    assert signed(value) == text
    assert float(signed(value)) == pytest.approx(round(value, 3), abs=1e-12)
