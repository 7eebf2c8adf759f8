"""GPU timings (issue 19, point 7): fp32 eager against bf16 and torch.compile, with a device sync per
measurement. On a machine without CUDA it says so and exits 0.

Run by hand, not by the tests, where ``torch.cuda.is_available()``:

    python benchmarks/gpu.py                                      # 3 repeats a case, a table
    python benchmarks/gpu.py --repeats 5 --json benchmarks/results/gpu.json

Cases (each after one warm-up run, which also pays torch.compile's compilation):

* ``protocol``: the 50-episode protocol of ``breast_cancer_gp.toml``, students stacked (teacher fits on the
  CPU included, as a user waits for them);
* ``digits KD, pool``: ``digits_cnn_to_mlp.toml`` (CNN teacher trained here first, MLP student, the
  unlabelled pool as transfer set), 10 episodes;
* ``digits KD, augmented``: the same with ``few_shot.transfer = "augmented"`` (the large transfer set).

Each case runs with ``train.precision`` fp32 / bf16 and ``train.compile`` false / true; the table gives
the median wall time, the ratio to fp32 eager and the student's mean test accuracy (so that a faster
variant that learns less shows it).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {"fp32 eager": ("fp32", False), "bf16 eager": ("bf16", False), "fp32 compiled": ("fp32", True),
            "bf16 compiled": ("bf16", True)}


def _cases(teacher: Path) -> dict[str, tuple[Path, list[str]]]:
    digits = ROOT / "experiments" / "digits_cnn_to_mlp.toml"
    kd = [f'teacher.checkpoint="{teacher}"', "protocol.episodes=10"]
    return {
        "protocol, 50 episodes": (ROOT / "experiments" / "breast_cancer_gp.toml", ["protocol.episodes=50"]),
        "digits KD, pool": (digits, kd),
        "digits KD, augmented": (digits, [*kd, 'few_shot.transfer="augmented"']),
    }


def _timed(config: Any, repeats: int) -> tuple[list[float], float]:
    import numpy as np
    import torch

    from distill.experiment.episodes import run_protocol

    run_protocol(config)  # warm-up: kernels, allocator, compilation
    torch.cuda.synchronize()
    times, accuracy = [], float("nan")
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        _, results = run_protocol(config)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        accuracy = float(np.mean([r.metrics["student"]["accuracy"] for r in results]))
    return times, accuracy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(f"benchmarks/gpu.py: no CUDA device here (torch {torch.__version__}, CPU only); nothing to measure")
        return 0
    import distill
    from distill.config import load_config

    device = torch.cuda.get_device_name(0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        teacher = Path(folder) / "digits_cnn.pt"
        distill.train_teacher(load_config(ROOT / "experiments" / "digits_teacher.toml", ['train.device="cuda"']),
                              output=teacher, track=False, progress=False)
        for case, (experiment, overrides) in _cases(teacher).items():
            base = None
            for variant, (precision, compiled) in VARIANTS.items():
                config = load_config(experiment, [*overrides, 'train.device="cuda"', f'train.precision="{precision}"',
                                                  f"train.compile={'true' if compiled else 'false'}",
                                                  "tracking.enabled=false", "teacher.cache=false"])
                times, accuracy = _timed(config, args.repeats)
                median = statistics.median(times)
                base = base if base is not None else median
                rows.append({"case": case, "variant": variant, "median_s": round(median, 3),
                             "vs_fp32_eager": round(median / base, 3), "student_accuracy": round(accuracy, 4)})
                print(f"{case:<24}{variant:<16}{median:>9.3f} s {median / base:>7.2f}x  accuracy {accuracy:.4f}",
                      flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"device": device, "torch": torch.__version__,
                                         "python": platform.python_version(), "repeats": args.repeats,
                                         "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
