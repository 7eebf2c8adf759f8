"""Trials per minute of ``distill tune --workers N`` on the breast-cancer tuning experiment, with the study
in PostgreSQL and in a journal file.

Run by hand, not by the tests:

    python benchmarks/scale_out.py                                   # 1, 2, 4 workers x {postgresql, journal}
    python benchmarks/scale_out.py --trials 8 --json benchmarks/results/scale_out.json

PostgreSQL is the throwaway cluster of ``scripts/dev-services`` (started and stopped here unless
DISTILL_TEST_POSTGRES_URL names one); each measurement gets a fresh database or journal file. The rate is
the study's finished trials over the span from the first trial's start to the last one's end, read back
from the storage (so interpreter start-up and the one closing test comparison do not count); the
wall time of the whole command is reported beside it. MLflow is off (``--no-track``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "breast_cancer_gp_tune.toml"


def _services() -> tuple[str, str | None]:
    """A PostgreSQL server URL, and the dev-services folder to stop afterwards (None: not ours)."""
    if os.environ.get("DISTILL_TEST_POSTGRES_URL"):
        return os.environ["DISTILL_TEST_POSTGRES_URL"], None
    out = subprocess.run([str(ROOT / "scripts" / "dev-services"), "start"], capture_output=True, text=True, check=True)
    values = dict(line.removeprefix("export ").split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    return values["DISTILL_TEST_POSTGRES_URL"], values["DISTILL_DEV_SERVICES_DIR"]


def _fresh_database(server: str) -> str:
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.rsplit("/", 1)[0] + "/" + name


def _measure(storage: str, workers: int, trials: int, episodes: int | None, folder: Path) -> dict[str, float]:
    import optuna

    command = [sys.executable, "-m", "distill", "tune", str(EXPERIMENT), "--workers", str(workers), "--trials",
               str(trials), "--study", "bench", "--storage", storage, "-o", str(folder / "out"), "--no-track", "-q"]
    if episodes is not None:
        command += ["--episodes", str(episodes)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    if "://" in storage:
        study = optuna.load_study(study_name="bench", storage=storage)
    else:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        study = optuna.load_study(study_name="bench", storage=JournalStorage(JournalFileBackend(storage)))
    finished = [t for t in study.trials if t.datetime_complete is not None and t.state.is_finished()]
    first = min(t.datetime_start for t in finished if t.datetime_start is not None)
    last = max(t.datetime_complete for t in finished if t.datetime_complete is not None)
    span = (last - first).total_seconds()
    return {"trials": len(finished), "search_s": round(span, 2), "wall_s": round(wall, 2),
            "trials_per_minute": round(60.0 * len(finished) / span, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="trials per measurement (split between the workers)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--episodes", type=int, help="override protocol.episodes (default: the experiment's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    server, services = _services()
    rows = []
    try:
        for workers in args.workers:
            for kind in ("postgresql", "journal"):
                with tempfile.TemporaryDirectory() as tmp:
                    folder = Path(tmp)
                    storage = _fresh_database(server) if kind == "postgresql" else str(folder / "journal.log")
                    row = {"storage": kind, "workers": workers,
                           **_measure(storage, workers, args.trials, args.episodes, folder)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        if services is not None:
            subprocess.run([str(ROOT / "scripts" / "dev-services"), "stop", services], check=False)
    print("\n| storage | workers | trials | search (s) | trials / minute | whole command (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['storage']} | {row['workers']} | {row['trials']} | {row['search_s']} | "
              f"{row['trials_per_minute']} | {row['wall_s']} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"experiment": EXPERIMENT.name, "cores": os.cpu_count(),
                                         "python": platform.python_version(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
