"""Teacher fits in worker processes against every fit in the run's own process (issue 19, point 4).

Run by hand, not by the tests:

    python benchmarks/teacher_workers.py                                # both cases, 3 rounds
    python benchmarks/teacher_workers.py --rounds 5 --json benchmarks/results/teacher_workers.json
    python benchmarks/teacher_workers.py --case seed_post --workers 0 2

Each case is ``python -m distill run EXPERIMENT --episodes N --no-track --no-plots`` with the soft-target cache
off, run as a fresh process in a fresh folder once per ``teacher.workers`` value, in shuffled interleaved
rounds. It reports the medians of the run's own ``timings.total_s`` (from the start of the run to its summary)
and of the process's wall time, each as a ratio to ``teacher.workers = 0`` (every teacher fit in the run's
process, as before workers existed), and checks that every worker count gave the very same summary numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: name -> (experiment file, episodes)
CASES = {
    "seed_post": ("experiments/seed_post.toml", 200),
    "breast_cancer_gp": ("experiments/breast_cancer_gp.toml", 200),
    "digits_gp": ("experiments/digits_gp.toml", 50),
}


def _untimed(value: Any) -> Any:
    """``value`` without the seconds it took (keys ``*_s``, ``seconds``, ``timings``): what must not differ."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if not (k.endswith("_s") or k in ("seconds", "timings"))}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _one(experiment: str, episodes: int, workers: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["PYTHONPATH"] = str(ROOT)
        value = f'"{workers}"' if workers == "auto" else workers
        command = [sys.executable, "-m", "distill", "run", str(ROOT / experiment), "-o", "out", "-q", "--no-track",
                   "--no-plots", "--episodes", str(episodes), "--set", f"teacher.workers={value}",
                   "--set", "teacher.cache=false"]
        start = time.perf_counter()
        subprocess.run(command, cwd=folder, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - start
        summary = json.loads((Path(folder) / "out" / "summary.json").read_text())
    numbers = [summary["metrics"], summary.get("sweep"), _untimed(summary["episodes"])]
    return {"wall_s": wall, "total_s": float(summary["timings"]["total_s"]),
            "numbers": json.dumps(numbers, sort_keys=True, default=str)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs="+", default=["seed_post", "digits_gp"], choices=sorted(CASES))
    parser.add_argument("--workers", nargs="+", default=["0", "1", "2", "auto"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in range(args.rounds):
        order = [(case, w) for case in args.case for w in args.workers]
        rng.shuffle(order)
        for case, workers in order:
            experiment, episodes = CASES[case]
            runs.setdefault((case, workers), []).append(_one(experiment, episodes, workers))
            last = runs[(case, workers)][-1]
            print(f"round {r + 1}: {case} workers={workers}: total {last['total_s']:.2f} s, wall {last['wall_s']:.2f} s",
                  flush=True)
    report: dict[str, Any] = {"rounds": args.rounds, "cpus": os.cpu_count(), "python": platform.python_version(),
                              "cases": {}}
    for case in args.case:
        experiment, episodes = CASES[case]
        base = statistics.median(run["total_s"] for run in runs[(case, "0")]) if (case, "0") in runs else None
        base_wall = statistics.median(run["wall_s"] for run in runs[(case, "0")]) if (case, "0") in runs else None
        rows = {}
        for workers in args.workers:
            total = statistics.median(run["total_s"] for run in runs[(case, workers)])
            wall = statistics.median(run["wall_s"] for run in runs[(case, workers)])
            rows[workers] = {"total_s": round(total, 2), "wall_s": round(wall, 2),
                             "total_ratio": round(total / base, 3) if base else None,
                             "wall_ratio": round(wall / base_wall, 3) if base_wall else None,
                             "all_total_s": [round(run["total_s"], 2) for run in runs[(case, workers)]]}
        same = len({run["numbers"] for w in args.workers for run in runs[(case, w)]}) == 1
        report["cases"][case] = {"experiment": experiment, "episodes": episodes, "workers": rows,
                                 "same_numbers": same}
        print(f"\n{case} ({experiment}, {episodes} episodes), medians of {args.rounds} rounds; "
              f"same numbers for every worker count: {same}")
        for workers, row in rows.items():
            print(f"  teacher.workers = {workers:>4}: total {row['total_s']:6.2f} s ({row['total_ratio']}x)  "
                  f"wall {row['wall_s']:6.2f} s ({row['wall_ratio']}x)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
