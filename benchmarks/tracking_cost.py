"""What MLflow tracking adds to a run (issue 20, point 6): a 50-episode run tracked to a local store against the
same run with ``--no-track``.

Run by hand, not by the tests (tests/test_tracking.py reads every episode's metrics back, never a time):

    python benchmarks/tracking_cost.py                    # 3 repeats, breast_cancer_gp, 50 episodes
    python benchmarks/tracking_cost.py --repeats 5 --json benchmarks/results/tracking_cost.json

Each repeat runs both variants in a fresh interpreter, in shuffled order (wall time of the whole command,
what a user waits for). The local SQLite store is created by a warm-up run first: a new store's tables
(MLflow's migrations, once per store) are reported apart, as ``first_use_s``.
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

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = str(ROOT / "experiments" / "breast_cancer_gp.toml")


def _run(folder: Path, name: str, episodes: int, tracked: bool) -> float:
    """Wall seconds of one ``distill run`` in ``folder`` (its ``mlflow.db`` the local store)."""
    argv = [sys.executable, "-m", "distill", "run", EXPERIMENT, "-q", "--episodes", str(episodes),
            "-o", str(folder / "runs" / name)]
    if not tracked:
        argv.append("--no-track")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(ROOT)
    started = time.perf_counter()
    subprocess.run(argv, cwd=folder, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        first_use = _run(folder, "warm-up", args.episodes, True)  # creates mlflow.db: its migrations, once
        times: dict[str, list[float]] = {"no_track": [], "tracked": []}
        rng = random.Random(0)
        for i in range(args.repeats):
            order = [False, True]
            rng.shuffle(order)
            for tracked in order:
                key = "tracked" if tracked else "no_track"
                times[key].append(_run(folder, f"{key}-{i}", args.episodes, tracked))
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "experiment": "breast_cancer_gp", "episodes": args.episodes, "repeats": args.repeats,
        "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "median_s": {k: round(v, 2) for k, v in medians.items()},
        "ratio_tracked_to_no_track": round(medians["tracked"] / medians["no_track"], 3),
        "first_use_s": round(first_use, 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    print(f"{args.episodes} episodes: --no-track {medians['no_track']:.2f} s, tracked {medians['tracked']:.2f} s "
          f"(median of {args.repeats}): {result['ratio_tracked_to_no_track']:.2f}x; a new store's first run "
          f"{first_use:.2f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
