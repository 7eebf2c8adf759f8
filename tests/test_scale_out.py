"""Beyond one machine (issue 18): tuning studies on a real PostgreSQL server with several workers.

The cluster is the throwaway one ``scripts/dev-services`` starts (``.ci/run`` does; without it these
tests are skipped with one line, and CI fails instead). Each test gets a fresh database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.test_tuning import FIXED_KL, ROOT, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _workers(toml: Path, folder: Path, storage: str, study: str, count: int, trials: int) -> list[subprocess.Popen]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return [
        subprocess.Popen(
            [sys.executable, "-m", "distill", "tune", str(toml), "--trials", str(trials), "--study", study,
             "--storage", storage, "-o", f"out{i}", "--no-track", "-q"],
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(count)
    ]


def _wait(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[str, str]]:
    results = []
    try:
        for p in procs:
            results.append(p.communicate(timeout=timeout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


def test_workers_on_postgresql_share_one_study(tmp_path: Path, postgres_database: str) -> None:
    """Two ``distill tune`` processes on one PostgreSQL study: exactly the requested trials, numbered
    0..n-1 once each, all finished, and each worker's best is the best Optuna reads back."""
    toml = write_config(tmp_path, protocol={"episodes": 1}, objective=FIXED_KL)
    procs = _workers(toml, tmp_path, postgres_database, "shared", count=2, trials=3)
    for p, (_, err) in zip(procs, _wait(procs), strict=True):
        assert p.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=postgres_database)
    trials = study.trials
    assert sorted(t.number for t in trials) == list(range(6))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if study.direction.name == "MAXIMIZE" else min(
        complete, key=lambda t: t.value)
    assert study.best_trial.number == best.number
    for i in range(2):
        summary = json.loads((tmp_path / f"out{i}" / "tuning.json").read_text())
        assert summary["study"] == "shared"
        assert 3 <= summary["trials"]["total"] <= 6
