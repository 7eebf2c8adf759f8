"""``objective.kl_weight = "auto"`` / ``objective.temperature = "auto"``: the distillation knobs chosen
per episode by cross-validation on that episode's labelled rows.

Why: with a handful of labels a teacher is often no better than what the labelled rows alone teach,
and a student pulled towards it ends worse than its baseline. Whether distilling helps is a
question about this teacher, these rows and this student, so it is answered on the labelled rows:

* the labelled rows are split into F stratified folds (``distill.metrics.calibration.labelled_folds``: the
  folds the teacher was cross-fitted on, so fold f's soft targets come from a teacher that never saw
  fold f's labels);
* for every fold f and every candidate ``(kl_weight, T)`` of the grid, one student is trained from
  the student's own initial weights and batches, with fold f's rows removed from the hard term (they
  stay in the transfer set, unlabelled) and fold f's teacher as soft targets, then scored on fold
  f's rows. Every fold x candidate is one member of a single stacked fit;
* the grid always holds ``kl_weight = 0``, the baseline itself, so "auto" can decline to distil.
  The rule (``choose``): the most accurate candidate on the held-out rows, but ``kl_weight = 0`` unless
  that candidate's gain over it exceeds ``objective.auto.margin`` (default 2) standard errors. With one
  labelled row in some class no fold can be held out: ``kl_weight = 0`` (and ``T = 1``), said so.

This is model selection on the labelled rows in the spirit of Oliver et al. 2018, "Realistic
Evaluation of Deep Semi-Supervised Learning Algorithms" (hyper-parameters chosen on the few labels
one really has, never on test rows), applied to the KD objective of Hinton et al. 2015, "Distilling
the Knowledge in a Neural Network". It differs from ``tune``, which searches on a labelled validation
split over many episodes and returns one setting for all of them.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from distill.config import AUTO

__all__ = [
    "Candidate",
    "Selection",
    "auto_knobs",
    "candidate_grid",
    "choose",
    "fold_training_rows",
    "heldout_scores",
    "paired_gain",
    "fallback",
    "summarise_selections",
    "selection_text",
]


@dataclass(frozen=True)
class Candidate:
    """One point of the grid."""

    kl_weight: float
    temperature: float


def candidate_grid(kl_weight: float | str, temperature: float | str, kl_weights: Sequence[float],
                   temperatures: Sequence[float]) -> list[Candidate]:
    """The ``(kl_weight, T)`` points "auto" chooses from: the grid of every "auto" knob, the fixed value
    of the other. At ``kl_weight = 0`` the temperature changes nothing, so it appears once (T = 1, or the
    fixed T)."""
    kls = [float(w) for w in kl_weights] if kl_weight == AUTO else [float(kl_weight)]
    ts = [float(t) for t in temperatures] if temperature == AUTO else [float(temperature)]
    grid: list[Candidate] = []
    for w in kls:
        points = [Candidate(0.0, 1.0 if temperature == AUTO else ts[0])] if w == 0 else [Candidate(w, t) for t in ts]
        grid.extend(p for p in points if p not in grid)
    return grid


@dataclass
class Selection:
    """What "auto" chose for one episode, and why."""

    kl_weight: float
    temperature: float
    #: ``cross-validation``, or why there was none
    reason: str
    folds: int = 0
    #: the best kl_weight > 0 candidate's held-out accuracy minus kl_weight 0's, and its standard error
    gain: float | None = None
    gain_se: float | None = None
    #: per candidate: kl_weight, temperature, accuracy, log_loss (pooled over the held-out rows)
    scores: list[dict[str, float]] = field(default_factory=list)
    #: the knobs that were "auto" and so were chosen here (the others were fixed by the config or a sweep)
    chose: list[str] = field(default_factory=lambda: ["kl_weight", "temperature"])

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def choose(scores: Sequence[dict[str, float]], correct: Sequence[np.ndarray] | None = None,
           margin: float = 2.0) -> tuple[int, float, float]:
    """Index of the chosen candidate, and the accuracy gain of the best ``kl_weight > 0`` candidate over
    ``kl_weight = 0`` with its standard error (NaN where not measured).

    Among the candidates with ``kl_weight > 0``, the best is the one with the highest pooled held-out
    accuracy (ties: the lower log-loss, then the smaller KL weight and temperature). It is chosen over
    ``kl_weight = 0`` only when its gain in accuracy exceeds ``margin`` standard errors of the paired
    per-row difference (``correct[i]``: 1 where candidate i got a held-out row right). This is the
    one-standard-error rule (Breiman et al. 1984; Hastie, Tibshirani and Friedman 2009, section 7.10),
    leaning to the simpler model, the baseline, with a wider margin because the best of several
    candidates on a few held-out rows wins by chance: 2 standard errors is about a one-sided 2.5% test,
    or Bonferroni over four distilled candidates at 10%. Measured on the results suite, a margin of 1
    distilled in about 40% of the episodes of datasets where the teacher adds nothing, and those
    episodes lost accuracy on average. A teacher of noise that merely softens the student (and lowers
    its log-loss) is declined.
    Without a ``kl_weight = 0`` candidate (a fixed KL weight), simply the best. Non-finite scores lose.
    """
    def key(i: int) -> tuple[float, ...]:
        s = scores[i]
        acc = s["accuracy"] if math.isfinite(s["accuracy"]) else -math.inf
        nll = s["log_loss"] if math.isfinite(s["log_loss"]) else math.inf
        return (-acc, nll, s["kl_weight"], s["temperature"])

    nan = math.nan
    zero = next((i for i, s in enumerate(scores) if s["kl_weight"] == 0), None)
    others = [i for i in range(len(scores)) if i != zero]
    if not others:
        return 0, nan, nan
    best = min(others, key=key)
    if zero is None:
        return best, nan, nan
    if correct is None:
        return (zero, nan, nan) if key(best)[0] >= key(zero)[0] else (best, nan, nan)
    gain, se = paired_gain(correct[best], correct[zero])
    return (best if gain > 0 and gain > margin * se else zero), gain, se


def paired_gain(candidate: np.ndarray, baseline: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the per-row difference in correctness (candidate minus baseline)."""
    d = np.asarray(candidate, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.inf
    return float(d.mean()), se


def fold_training_rows(train: Any, fold_logits: torch.Tensor, positions: np.ndarray) -> Any:
    """The student's training rows for fold f: the labelled rows at ``positions`` leave the hard term
    (they stay in the transfer set, unlabelled) and the soft targets are fold f's teacher's."""
    hard_targets, hard_labelled = train.hard_rows()
    held = torch.zeros_like(hard_labelled)
    held[torch.as_tensor(positions, dtype=torch.long, device=held.device)] = True
    return dataclasses.replace(train, teacher_logits=fold_logits, hard_targets=hard_targets,
                               hard_labelled=hard_labelled & ~held)


def heldout_scores(logits: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per held-out row: 1.0 where the student's prediction is right, and its log-loss (natural log);
    ``logits`` ``[n, 1]`` (one binary logit) or ``[n, C]``."""
    if logits.shape[-1] == 1:
        z = logits[:, 0].double()
        log_probs = torch.stack([torch.nn.functional.logsigmoid(-z), torch.nn.functional.logsigmoid(z)], dim=-1)
    else:
        log_probs = torch.log_softmax(logits.double(), dim=-1)
    y = y.long()
    correct = (log_probs.argmax(dim=-1) == y).double()
    nll = -log_probs.gather(1, y[:, None])[:, 0]
    both = torch.stack([correct, nll]).cpu().numpy()
    return both[0], both[1]


def fallback(kl_weight: float | str, temperature: float | str, reason: str) -> Selection:
    """No cross-validation possible: ``kl_weight = 0`` when it was "auto", and T = 1 when it was "auto"."""
    return Selection(kl_weight=0.0 if kl_weight == AUTO else float(kl_weight),
                     temperature=1.0 if temperature == AUTO else float(temperature), reason=reason,
                     chose=auto_knobs(kl_weight, temperature))


def auto_knobs(kl_weight: float | str, temperature: float | str) -> list[str]:
    """The names of the knobs that are "auto" (chosen per episode), in the order kl_weight, temperature."""
    return [name for name, value in (("kl_weight", kl_weight), ("temperature", temperature)) if value == AUTO]


def summarise_selections(selections: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Over a run's episodes: how often each setting was chosen, how often ``kl_weight = 0`` won and how
    often there was no cross-validation; None when no episode chose anything."""
    chosen = [s for s in selections if s is not None]
    if not chosen:
        return None
    counts = Counter((s["kl_weight"], s["temperature"]) for s in chosen)
    weighed = [s for s in chosen if "kl_weight" in s.get("chose", ("kl_weight",))]  # kl_weight was "auto"
    return {
        "episodes": len(chosen),
        "kl_weight_chosen": len(weighed),
        "kl_weight_zero": sum(1 for s in weighed if s["kl_weight"] == 0),
        "fallback": sum(1 for s in chosen if s["reason"] != "cross-validation"),
        "kl_weight_mean": float(np.mean([s["kl_weight"] for s in chosen])),
        "chosen": [{"kl_weight": w, "temperature": t, "episodes": n} for (w, t), n in sorted(counts.items())],
    }


def selection_text(summary: dict[str, Any]) -> str:
    """One line for the log and console: what "auto" chose over the episodes."""
    n = summary["episodes"]
    chosen = ", ".join(f"kl_weight {c['kl_weight']:g} T {c['temperature']:g} ({c['episodes']})"
                       for c in summary["chosen"])
    weighed = summary.get("kl_weight_chosen", n)
    if weighed:
        text = f"objective auto: kl_weight 0 (no distillation) chosen in {summary['kl_weight_zero']} of {weighed} episode(s)"
    else:  # a fixed (or swept) KL weight: only the temperature was chosen
        text = f"objective auto: the temperature chosen per episode ({n} episode(s); the KL weight was fixed)"
    if summary["fallback"]:
        text += f", {summary['fallback']} of them without cross-validation (a class with a single labelled row)"
    return f"{text}; chosen: {chosen}"
