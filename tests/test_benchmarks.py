"""Benchmark scripts that must run anywhere: ``benchmarks/gpu.py`` on a machine without CUDA says so in one
line and exits 0 (CUDA is hidden here, so the test means the same on a GPU machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_benchmark_says_there_is_no_cuda_and_exits_0() -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py")], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1, done.stdout
    assert "no CUDA device here" in done.stdout and "nothing to measure" in done.stdout
