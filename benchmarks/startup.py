"""How long each command takes to answer, and what it imports on the way (issue 19, point 1).

Run by hand, not by the tests (tests/test_startup.py asserts the imports, never a time):

    python benchmarks/startup.py                         # 7 repeats, a table
    python benchmarks/startup.py --repeats 11 --json benchmarks/results/startup.json

Each command runs in a fresh interpreter, ``repeats`` times in shuffled interleaved rounds; the table
shows the median wall time and the heavy packages the command imported (read from ``sys.modules`` in a
separate run, so the report itself costs nothing in the timed runs). ``import torch`` alone is measured
beside them as the floor of any command that trains.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchmetrics", "mlflow", "optuna", "matplotlib", "pandas", "scipy", "sklearn")
BC = str(ROOT / "experiments" / "breast_cancer_gp.toml")
SEED_POST = str(ROOT / "experiments" / "seed_post.toml")

#: label -> the arguments of ``python -m distill`` (None: ``python -c "import torch"``)
COMMANDS: dict[str, list[str] | None] = {
    "--help": ["--help"],
    "list": ["list"],
    "check: negative kl_weight": ["check", BC, "--set", "objective.kl_weight=-1", "--no-track"],
    "check: unknown key": ["check", BC, "--set", "objective.kl_wieght=1", "--no-track"],
    "check: negative kl_weight, explicit kernel": ["check", SEED_POST, "--set", "objective.kl_weight=-1",
                                                   "--no-track"],
    "check: a valid config": ["check", BC, "--no-track"],
    "import torch": None,
}

_REPORT = """
import json, sys
from distill.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))
"""


def _argv(args: list[str] | None) -> list[str]:
    return [sys.executable, "-c", "import torch"] if args is None else [sys.executable, "-m", "distill", *args]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def _time(args: list[str] | None) -> float:
    start = time.perf_counter()
    subprocess.run(_argv(args), cwd=ROOT, env=_env(), capture_output=True, check=False)
    return time.perf_counter() - start


def _heavy(args: list[str] | None) -> list[str]:
    if args is None:
        return ["torch"]
    done = subprocess.run([sys.executable, "-c", _REPORT, *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, check=False)
    return [m for m in json.loads(done.stdout.strip().splitlines()[-1]) if m in HEAVY]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    times: dict[str, list[float]] = {label: [] for label in COMMANDS}
    rng = random.Random(0)
    for label in COMMANDS:  # one warm-up each: the file cache, not the interpreter, is what it warms
        _time(COMMANDS[label])
    for _ in range(args.repeats):
        order = list(COMMANDS)
        rng.shuffle(order)
        for label in order:
            times[label].append(_time(COMMANDS[label]))
    rows = [{"command": label, "median_s": round(statistics.median(times[label]), 3),
             "min_s": round(min(times[label]), 3), "heavy_imports": _heavy(COMMANDS[label])} for label in COMMANDS]
    print(f"{'command':<46}{'median s':>10}{'min s':>8}  heavy imports")
    for row in rows:
        print(f"{row['command']:<46}{row['median_s']:>10.3f}{row['min_s']:>8.3f}  {', '.join(row['heavy_imports']) or '-'}")
    if args.json is not None:
        args.json.write_text(json.dumps({"cores": os.cpu_count(), "python": platform.python_version(),
                                         "repeats": args.repeats, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
