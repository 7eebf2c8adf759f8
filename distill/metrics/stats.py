"""Summaries over episodes: mean, standard deviation, 95% intervals, paired differences.

The interval is a Student-t interval on the mean by default (``ci = "t"``), or a BCa
bootstrap (``ci = "bootstrap"``, scipy.stats.bootstrap). Paired differences use the same
interval on the per-episode differences and the Wilcoxon signed-rank test for a p-value.
NaN values (a metric undefined in some episode) are dropped; ``n`` says how many remain.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

__all__ = ["describe", "paired_difference", "verdict", "CI_METHODS"]

CI_METHODS = {
    "t": "Student-t 95% interval on the mean over episodes",
    "bootstrap": "BCa bootstrap 95% interval on the mean over episodes (9999 resamples, seed 0)",
}


def _clean(values: Sequence[float | None]) -> np.ndarray:
    array = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return array[np.isfinite(array)]


def _interval(x: np.ndarray, method: Literal["t", "bootstrap"]) -> list[float] | None:
    n = x.size
    if n < 2:
        return None
    mean = float(x.mean())
    if np.all(x == x[0]):
        return [mean, mean]
    if method == "bootstrap":
        from scipy.stats import bootstrap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = bootstrap((x,), np.mean, confidence_level=0.95, n_resamples=9999, method="BCa",
                            random_state=np.random.default_rng(0))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return [low, high]
    from scipy.stats import t

    half = float(t.ppf(0.975, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return [mean - half, mean + half]


def describe(values: Sequence[float | None], method: Literal["t", "bootstrap"] = "t") -> dict[str, Any]:
    """``{mean, std, ci95: [low, high], n}`` over episodes (std with ddof 1; None when n < 2)."""
    x = _clean(values)
    n = int(x.size)
    return {
        "mean": float(x.mean()) if n else None,
        "std": float(x.std(ddof=1)) if n >= 2 else None,
        "ci95": _interval(x, method),
        "n": n,
    }


def paired_difference(
    a: Sequence[float | None], b: Sequence[float | None], method: Literal["t", "bootstrap"] = "t"
) -> dict[str, Any]:
    """``a - b`` per episode: ``{mean, ci95, p_value, n}``; p from the two-sided Wilcoxon signed-rank test.

    Episodes where either value is undefined are dropped. ``p_value`` is None with fewer than
    two non-zero differences, 1.0 when every difference is zero.
    """
    from scipy.stats import wilcoxon

    pairs = np.array(
        [[np.nan if x is None else x, np.nan if y is None else y] for x, y in zip(a, b, strict=True)],
        dtype=np.float64,
    ).reshape(-1, 2)
    keep = np.isfinite(pairs).all(axis=1)
    d = pairs[keep, 0] - pairs[keep, 1]
    n = int(d.size)
    p_value: float | None
    if n and np.all(d == 0):
        p_value = 1.0
    elif np.count_nonzero(d) < 2:
        p_value = None
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p_value = float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    return {"mean": float(d.mean()) if n else None, "ci95": _interval(d, method), "p_value": p_value, "n": n}


def _significant(paired: dict[str, Any], higher_is_better: bool) -> tuple[bool, bool]:
    """(better, worse) at the 95% level: the interval on one side of 0 and Wilcoxon p < 0.05."""
    ci, p = paired.get("ci95"), paired.get("p_value")
    if paired.get("mean") is None or ci is None or p is None or p >= 0.05:
        return False, False
    low, high = ci
    return (low > 0, high < 0) if higher_is_better else (high < 0, low > 0)


def signed(value: float, digits: int = 3) -> str:
    """``value`` with its sign to ``digits`` decimals; a value that rounds to zero is ``+0.000``, never
    ``-0.000`` (a difference of float noise, -1e-9, is no negative difference)."""
    rounded = round(float(value), digits)
    return f"{(rounded if rounded != 0 else 0.0):+.{digits}f}"


def _detail(paired: dict[str, Any], name: str, metric: str) -> str:
    mean, ci, p = paired.get("mean"), paired.get("ci95"), paired.get("p_value")
    if mean is None:
        return f"{name} {metric} undefined"
    text = f"{name} {metric} = {signed(mean)}"
    if ci is not None:
        text += f" [{signed(ci[0])}, {signed(ci[1])}]"
    if p is not None:
        text += f", Wilcoxon p = {p:.3g}"
    return text


def verdict(paired: dict[str, Any], metric: str, episodes: int, higher_is_better: bool = True,
            null: dict[str, Any] | None = None) -> str:
    """One sentence: did distillation help at the 95% level on this metric, and was it knowledge?

    ``paired`` is student − baseline. With ``null`` (student − null teacher, ``protocol.controls``)
    a gain is called knowledge transfer only when the student also beats the null teacher at the
    95% level (interval above 0 and p < 0.05); otherwise a teacher that knows nothing explains it,
    and the sentence says regularisation, not knowledge.
    """
    mean, ci, p = paired.get("mean"), paired.get("ci95"), paired.get("p_value")
    if mean is None:
        return f"Distillation cannot be judged on {metric}: no episode has a defined value."
    if ci is None:
        return (
            f"With {episodes} episode(s) there is no 95% interval: student − baseline {metric} = {signed(mean)}, but one "
            "draw of the labelled rows cannot tell whether distillation helps; run with --episodes 10 or more "
            "(protocol.episodes)."
        )
    low, high = ci
    if p is None:
        return (
            f"No verdict at the 95% level: student − baseline {metric} = {signed(mean)} [{signed(low)}, {signed(high)}], "
            f"but fewer than two of the {episodes} episodes differ, too few for the Wilcoxon test."
        )
    detail = f"student − baseline {metric} = {signed(mean)} [{signed(low)}, {signed(high)}], Wilcoxon p = {p:.3g}, {episodes} episodes"
    better = low > 0 if higher_is_better else high < 0
    worse = high < 0 if higher_is_better else low > 0
    if better and p < 0.05:
        if null is None:
            return f"Distillation helped at the 95% level ({detail})."
        beat, _ = _significant(null, higher_is_better)
        versus = _detail(null, "student − null_teacher", metric)
        if beat:
            return (f"Distillation helped at the 95% level, and beat the null teacher (knowledge transfer) "
                    f"({detail}; {versus}).")
        return (f"Distillation helped at the 95% level, but no more than a null teacher (regularisation, not "
                f"knowledge) ({detail}; {versus}).")
    if worse and p < 0.05:
        return f"Distillation hurt at the 95% level ({detail})."
    return f"No difference at the 95% level: distillation neither clearly helped nor hurt ({detail})."
