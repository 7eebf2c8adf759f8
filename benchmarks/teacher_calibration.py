"""How the teacher's temperature is fitted: the shipped maximum-likelihood T against its alternatives.

With a few labelled rows, ``teacher.calibration = "temperature"`` fits T on the out-of-fold outputs of
a handful of rows (five on the main job), and the logged temperature jumps from episode to episode
between the bounds (0.05 and 20). This script asks whether that is a defect: per dataset and
labelled-set size, over episodes, it scores the calibrated Gaussian-process teacher on the test rows
(ECE, accuracy) with T fitted by

- ``mle``: the shipped rule, ``distill.metrics.calibration.fit_temperature`` (Guo et al. 2017);
- ``none``: no calibration (T = 1);
- ``map0.5`` / ``map1`` / ``map2``: a MAP estimate with a normal prior of that sd on log T, centred on 1
  (shrinks T towards 1 when the rows are few);
- ``lr``: the MLE only when a likelihood-ratio test rejects T = 1 at 5% (chi-squared, 1 df), else 1;
- ``flat1``: T = 1 when the out-of-fold NLL does not depend on T (every fold output uniform), else MLE.

The variants replace the fitting function inside ``distill.experiment.teacher_cv`` for the length of a
run; everything else is the public ``distill.run``. Students train one epoch: only the teacher counts.

    python benchmarks/teacher_calibration.py                        # scikit-learn's bundled datasets
    python benchmarks/teacher_calibration.py --external /tmp/external   # the CSVs of external_datasets.py
    # -> benchmarks/results/teacher_calibration[_external].{md,json}
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import distill  # noqa: E402  (after the path line, as in suite.py)
import distill.experiment.teacher_cv as teacher_cv  # noqa: E402
from distill.metrics import calibration  # noqa: E402

Fit = Callable[[np.ndarray, np.ndarray], float]
MLE: Fit = calibration.fit_temperature
#: chi-squared (1 df) 95% quantile: the likelihood-ratio test of T = 1
CHI2_95 = 3.841458820694124


def _nll_sum(log_probs: np.ndarray, y: np.ndarray, t: float) -> float:
    z, labels = calibration._check(calibration._clamped(log_probs), y)
    return calibration._nll(z, labels, t) * labels.size


def _map(sd: float) -> Fit:
    """argmin over log T in the bounds of sum NLL + (log T)^2 / (2 sd^2)."""
    from scipy.optimize import minimize_scalar

    def fit(log_probs: np.ndarray, y: np.ndarray) -> float:
        low, high = np.log(calibration.TEMPERATURE_BOUNDS)
        result = minimize_scalar(lambda u: _nll_sum(log_probs, y, float(np.exp(u))) + u * u / (2 * sd * sd),
                                 bounds=(low, high), method="bounded", options={"xatol": 1e-6})
        return float(np.exp(result.x))
    return fit


def _likelihood_ratio(log_probs: np.ndarray, y: np.ndarray) -> float:
    t = MLE(log_probs, y)
    statistic = 2 * (_nll_sum(log_probs, y, 1.0) - _nll_sum(log_probs, y, t))
    return t if statistic > CHI2_95 else 1.0


def _flat_is_one(log_probs: np.ndarray, y: np.ndarray) -> float:
    values = [_nll_sum(log_probs, y, t) for t in (*calibration.TEMPERATURE_BOUNDS, 1.0)]
    return 1.0 if max(values) - min(values) <= 1e-9 else MLE(log_probs, y)


VARIANTS: dict[str, Fit | None] = {"mle": MLE, "none": None, "map0.5": _map(0.5), "map1": _map(1.0),
                                   "map2": _map(2.0), "lr": _likelihood_ratio, "flat1": _flat_is_one}


def config(source: str, episodes: int, test_size: int, **few_shot: int) -> dict[str, Any]:
    """A GP-teacher run whose students barely train: the teacher's test scores are what is read."""
    return {
        "name": "teacher-calibration", "seed": 0,
        "data": {"source": source, "scale": "standard", "test_size": test_size},
        "few_shot": {**few_shot, "validation": 0, "transfer": "labelled"},
        "protocol": {"episodes": episodes, "controls": [], "references": []},
        "teacher": {"kind": "gaussian_process", "calibration": "temperature", "cache": False},
        "student": {"arch": "mlp", "hidden": [8]},
        "objective": {"kl_weight": 1.0, "temperature": 1.0},
        "train": {"epochs": 1},
        "tracking": {"enabled": False},
    }


def public_cases(episodes: int) -> dict[str, dict[str, Any]]:
    bc = "sklearn:breast_cancer"
    return {
        "breast_cancer, 5 labelled (the main job)": config(bc, episodes, 100, labelled=5),
        **{f"breast_cancer, k = {k}": config(bc, episodes, 100, per_class=k) for k in (2, 3, 5, 10)},
        **{f"{name}, k = {k}": config(f"sklearn:{name}", episodes, 50, per_class=k)
           for name in ("wine", "iris") for k in (3, 5)},
    }


def external_cases(folder: Path, episodes: int) -> dict[str, dict[str, Any]]:
    return {f"{csv.stem}, k = {k}": config(f"csv:{csv}", episodes, 50, per_class=k)
            for csv in sorted(folder.glob("*.csv")) for k in (3, 5)}


def measure(raw: dict[str, Any], fit: Fit | None) -> dict[str, Any]:
    """One run under one fitting rule: mean test ECE and accuracy of the teacher, the temperatures."""
    raw = json.loads(json.dumps(raw))
    if fit is None:
        raw["teacher"]["calibration"] = "none"
    saved = teacher_cv.fit_temperature
    teacher_cv.fit_temperature = fit or MLE
    try:
        with tempfile.TemporaryDirectory() as folder:
            distill.run(raw, track=False, output=Path(folder) / "run", progress=False)
            summary = json.loads((Path(folder) / "run" / "summary.json").read_text())
    finally:
        teacher_cv.fit_temperature = saved
    episodes = summary["episodes"]
    ece = np.array([e["teacher"]["ece"] for e in episodes])
    temps = np.array([t for e in episodes
                      for t in np.atleast_1d(e["teacher_diagnostics"]["calibration"]["temperature"])])
    low, high = calibration.TEMPERATURE_BOUNDS
    return {"ece": float(ece.mean()), "ece_se": float(ece.std(ddof=1) / np.sqrt(ece.size)),
            "accuracy": float(np.mean([e["teacher"]["accuracy"] for e in episodes])),
            "median_t": float(np.median(temps)),
            "at_bound": float(np.mean((temps <= low * 1.001) | (temps >= high * 0.999)))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--external", type=Path, help="a folder of CSVs (benchmarks/external_datasets.py)")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args(argv)
    cases = external_cases(args.external, args.episodes) if args.external else public_cases(args.episodes)
    names = args.variants.split(",")
    results: dict[str, dict[str, Any]] = {}
    for case, raw in cases.items():
        results[case] = {}
        for name in names:
            start = time.perf_counter()
            results[case][name] = measure(raw, VARIANTS[name])
            r = results[case][name]
            print(f"{case:45s} {name:7s} ECE {r['ece']:.3f} ± {r['ece_se']:.3f}  accuracy {r['accuracy']:.3f}  "
                  f"median T {r['median_t']:.3g}  at a bound {r['at_bound']:.2f}  "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    stem = "teacher_calibration" + ("_external" if args.external else "")
    out = ROOT / "benchmarks" / "results"
    (out / f"{stem}.json").write_text(json.dumps({"episodes": args.episodes, "results": results}, indent=1) + "\n")
    lines = [f"# Teacher temperature: test ECE of the calibrated GP teacher ({args.episodes} episodes)", "",
             "Mean test ECE (lower is better; the teacher's accuracy does not depend on T) per fitting rule; "
             "the best per row in bold. Regenerate: `python benchmarks/teacher_calibration.py"
             + (" --external DIR" if args.external else "") + "`.", "",
             "| case | accuracy | " + " | ".join(names) + " | median T (mle) | T at a bound (mle) |",
             "| --- | --- | " + " | ".join("---" for _ in names) + " | --- | --- |"]
    for case, row in results.items():
        best = min(row[n]["ece"] for n in names)
        cells = [(f"**{row[n]['ece']:.3f}**" if row[n]["ece"] <= best + 5e-4 else f"{row[n]['ece']:.3f}") for n in names]
        mle = row.get("mle", {})
        lines.append(f"| {case} | {row[names[0]]['accuracy']:.3f} | " + " | ".join(cells)
                     + f" | {mle.get('median_t', float('nan')):.3g} | {mle.get('at_bound', float('nan')):.0%} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
