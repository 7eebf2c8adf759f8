"""Time a whole ``tune``: N trials x M episodes of one experiment, then the tuned and untuned test runs.

Run by hand, not by the tests:

    python benchmarks/tune_trials.py                     # breast_cancer_gp.toml, 30 trials x 10 episodes
    python benchmarks/tune_trials.py --trials 10 --episodes 5 --json out.json

The seed experiment has no validation rows, which tuning scores on, so 10 are drawn
(``few_shot.validation = 10``). The study lives in a fresh journal file in a temporary folder;
MLflow is off. Prints the wall time of the search and of the whole command (search + both test
runs), excluding interpreter start-up and imports, which are timed once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default=str(ROOT / "experiments/breast_cancer_gp.toml"))
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    started = time.perf_counter()
    import optuna
    import torch

    from distill.config import load_config
    from distill.experiment.tune import resolve_storage, run_tuning

    import_s = time.perf_counter() - started
    config = load_config(
        args.experiment,
        [f"protocol.episodes={args.episodes}", "few_shot.validation=10", 'train.device="cpu"'],
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = run_tuning(
            config, trials=args.trials, storage=str(Path(tmp) / "journal.log"), output=Path(tmp) / "run", track=False
        )
        total = time.perf_counter() - t0
        study = optuna.load_study(study_name=result.study_name, storage=resolve_storage(result.summary["storage"]))
        trials = study.trials
        search = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    report = {
        "experiment": Path(args.experiment).name,
        "trials": args.trials,
        "episodes": args.episodes,
        "search_s": round(search, 2),
        "total_s": round(total, 2),
        "complete": result.summary["trials"]["complete"],
        "pruned": result.summary["trials"]["pruned"],
        "best_value": result.best_value,
        "imports_s": round(import_s, 2),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "python": platform.python_version(),
    }
    print(
        f"{report['experiment']}: {args.trials} trials x {args.episodes} episodes: search {search:.1f} s "
        f"({report['complete']} complete, {report['pruned']} pruned), whole tune incl. tuned + untuned test runs "
        f"{total:.1f} s; imports {import_s:.1f} s once; {os.cpu_count()} CPUs"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
