"""Time the whole protocol: N episodes (teacher + distilled student + baseline each) of one experiment.

Run by hand, not by the tests:

    python benchmarks/protocol_episodes.py                      # breast_cancer_gp.toml, 50 episodes, 3 repeats
    python benchmarks/protocol_episodes.py --episodes 20 --repeats 5 --json out.json

Prints the median wall time of the protocol (data loading, every teacher fit and soft-target pass,
every student and baseline fit, the scoring), excluding interpreter start-up and imports, which
are timed separately once. Writes the figures as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default=str(ROOT / "experiments/breast_cancer_gp.toml"))
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    started = time.perf_counter()
    import torch

    from distill.config import load_config
    from distill.experiment.episodes import run_protocol

    import_s = time.perf_counter() - started
    config = load_config(args.experiment, [f"protocol.episodes={args.episodes}", 'train.device="cpu"'])
    run_protocol(config.model_copy(update={"protocol": config.protocol.model_copy(update={"episodes": 1})}))  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        _, results = run_protocol(config)
        times.append(time.perf_counter() - t0)
    assert len(results) == args.episodes
    median = statistics.median(times)
    report = {
        "experiment": Path(args.experiment).name,
        "episodes": args.episodes,
        "repeats": args.repeats,
        "protocol_s_median": round(median, 3),
        "protocol_s_all": [round(t, 3) for t in times],
        "per_episode_s": round(median / args.episodes, 4),
        "imports_s": round(import_s, 3),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    print(f"{report['experiment']}: {args.episodes} episodes in {median:.2f} s (median of {args.repeats}; "
          f"{report['per_episode_s'] * 1000:.0f} ms per episode; imports {import_s:.2f} s once) on {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
