"""The main job's whole process against the work it reports (issue 19, point 2).

Run by hand, not by the tests:

    python benchmarks/main_job.py                                   # breast_cancer_gp.toml, 3 repeats
    python benchmarks/main_job.py --repeats 5 --json benchmarks/results/main_job.json

Each repeat runs ``python -m distill run EXPERIMENT`` in a fresh temporary folder, tracked to a fresh local
MLflow store (the default ``sqlite:///mlflow.db`` there) and with ``--no-track``, in interleaved rounds.
It reports the process's wall time, the run's own ``timings.total_s`` (from the start of the run to its
summary: config, data, teachers, students, scoring, opening the MLflow run and per-episode tracking),
their ratio, and where the rest goes, from the timestamps of ``log.txt``: start-up and imports before
the run, the plots after the summary, and after "done" (the last MLflow calls, the interpreter's exit).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _stamp(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _one(experiment: Path, tracked: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["PYTHONPATH"] = str(ROOT)
        command = [sys.executable, "-m", "distill", "run", str(experiment), "-o", "out", "-q"]
        command += [] if tracked else ["--no-track"]
        start = time.time()
        subprocess.run(command, cwd=folder, env=env, check=True, capture_output=True)
        end = time.time()
        out = Path(folder) / "out"
        summary = json.loads((out / "summary.json").read_text())
        lines = [line for line in (out / "log.txt").read_text().splitlines() if line[:4].isdigit()]
        first = _stamp(lines[0])  # "run run directory ...": prepared, the run directory claimed
        opened = next((_stamp(line) for line in lines if " MLflow run " in line), first)
        done = next(_stamp(line) for line in lines if " done in " in line)
        summarised = next(_stamp(line) for line in lines if "summary.json written" in line)
        total = float(summary["timings"]["total_s"])  # from the run's start to its summary
        return {
            "wall_s": end - start,
            "total_s": total,
            "ratio": (end - start) / total,
            "opening_mlflow_s": opened - first,  # inside total_s
            "before_the_run_s": (summarised - total) - start,  # interpreter start-up and imports
            "plots_s": done - summarised,
            "after_done_s": end - done,  # the last MLflow calls, printing, the interpreter's exit
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=Path, default=ROOT / "experiments" / "breast_cancer_gp.toml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    _one(args.experiment, tracked=False)  # warm the file cache
    runs: dict[str, list[dict[str, float]]] = {"tracked": [], "untracked": []}
    for _ in range(args.repeats):
        for label in ("tracked", "untracked"):
            runs[label].append(_one(args.experiment, tracked=label == "tracked"))
    report = {"experiment": args.experiment.name, "repeats": args.repeats, "cores": os.cpu_count(),
              "python": platform.python_version(), "cases": {}}
    for label, rows in runs.items():
        medians = {key: round(statistics.median(r[key] for r in rows), 3) for key in rows[0]}
        report["cases"][label] = medians
        print(f"{label:>9}: process {medians['wall_s']:.2f} s, run's work (total_s) {medians['total_s']:.2f} s "
              f"(opening MLflow {medians['opening_mlflow_s']:.2f} s of it), ratio {medians['ratio']:.2f}; outside "
              f"the run: start-up and imports {medians['before_the_run_s']:.2f} s, plots {medians['plots_s']:.2f} s, "
              f"after 'done' {medians['after_done_s']:.2f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
