"""What ``distill.tune`` returns: importing it loads neither torch nor Optuna, so ``import distill`` (the
config, the API's types) stays light."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.config import Config

__all__ = ["TuneResult", "tuning_table"]


@dataclass
class TuneResult:
    """What a search leaves: where, the study, the best params and both test comparisons."""

    run_dir: Path
    study_name: str
    best_params: dict[str, Any]
    best_value: float
    untuned_value: float
    #: ``tuning.json``: the study, both test comparisons, the trials
    summary: dict[str, Any]
    #: the Optuna study (``optuna.Study``), loaded from its storage: every trial, this process's and others'
    study: Any = None

    @property
    def best_config(self) -> Config:
        """The experiment with the best trial's parameters (``best_config.toml``)."""
        from distill.config import load_config

        return load_config(self.run_dir / "best_config.toml")

    def table(self) -> str:
        """What the console shows after a search: best vs untuned, validation and test."""
        return tuning_table(self.summary)

    def to_json(self) -> str:
        """``tuning.json``, exactly as written in the run directory."""
        from distill.outputs.rundir import json_text

        return json_text(self.summary)


def tuning_table(summary: dict[str, Any]) -> str:
    """Best vs untuned: params, validation metric, test metrics of the student (and the verdict)."""
    from distill.metrics.classification import METRICS

    best, untuned = summary["best"], summary["untuned"]
    keys = list(summary["space"])
    width = max([len(k) for k in keys] + [24])
    lines = [f"{summary['metric']}: {summary['direction']}; study '{summary['study']}' ({summary['trials']['total']} trials:"
             f" {summary['trials']['complete']} complete, {summary['trials']['pruned']} pruned)", ""]
    if summary.get("untuned") is None:  # search only (--no-compare): the best so far, no test numbers
        lines += [f"{k:<{width}}{_fmt(best['params'].get(k)):>14}" for k in keys]
        lines.append(f"{summary['metric']:<{width}}{_fmt(best['validation']):>14}")
        lines += ["", f"best so far: trial {best['trial']}; no test comparison (--no-compare): compare the study "
                      "once all workers are done with --trials 0"]
        return "\n".join(lines)
    lines.append(f"{'':<{width}}{'tuned':>14}{'untuned':>14}")
    for k in keys:
        lines.append(f"{k:<{width}}{_fmt(best['params'].get(k)):>14}{_fmt(untuned['params'].get(k)):>14}")
    lines.append(f"{summary['metric']:<{width}}{_fmt(best['validation']):>14}{_fmt(untuned['validation']):>14}")
    for system in ("student", "baseline", "teacher"):
        for metric in METRICS:
            label = f"test {system} {metric}"
            lines.append(f"{label:<{width}}{_fmt(best['test'][system][metric]):>14}{_fmt(untuned['test'][system][metric]):>14}")
    if best["test"].get("verdict"):
        lines += ["", f"tuned:   {best['test']['verdict']}", f"untuned: {untuned['test']['verdict']}"]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return "n/a" if value is None else str(value)
