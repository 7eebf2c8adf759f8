"""Peak memory of a large KD fit (issue 19, point 5): distill against a bare PyTorch loop, each in a fresh
process, read from ``wait4``'s ``ru_maxrss``.

Run by hand, not by the tests:

    python benchmarks/memory.py                                  # a table
    python benchmarks/memory.py --json benchmarks/results/memory.json

The task is ``benchmarks/peers.py``'s Hinton-KD digits fit at a large scale: its 1,297 training rows plus
jittered copies, 17,600 rows in all (the size of the large digits KD transfer set), CNN teacher logits
on every row, MLP 64-64-10 students, T = 4, 60 epochs, batches of 64. Cases:

* ``bare loop``: one student, tensors in memory, no metrics;
* ``distill, one student``: ``distill.fit`` with its defaults (accuracy, macro-F1, AUROC and ECE on every
  training row every epoch);
* ``distill, student + baseline stacked``: ``fit_many`` of the distilled student and a ``kl_weight = 0``
  baseline as one stacked model, as every run trains them;
* ``interpreter + torch``: the floor, a process that only imports what the others import.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS, EPOCHS = 17_600, 60

CHILD = r"""
import sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import torch
from peers import BATCH, KL_WEIGHT, LR, T, _data, _student, _teacher_logits, bare_loop, kd_loss
case = {case!r}
if case != "floor":
    x, y, _, _ = _data()
    teacher = _teacher_logits(x, y)
    g = torch.Generator().manual_seed(0)
    copies = -(-{rows} // x.shape[0])
    x = torch.cat([x] + [(x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1) for _ in range(copies - 1)])[:{rows}]
    y = y.repeat(copies)[:{rows}]
    teacher = teacher.repeat(copies, 1)[:{rows}]
    import peers
    peers.EPOCHS = {epochs}
    from distill.engine.loop import FitSettings, TrainingRows, fit, fit_many
    rows = TrainingRows(x=x, targets=y, labelled=torch.ones_like(y, dtype=torch.bool), teacher_logits=teacher)
    settings = FitSettings(epochs={epochs}, batch_size=BATCH, optimizer="adam", lr=LR, kl_weight=KL_WEIGHT,
                           temperature=T, monitor="train_loss", seed=0)
    start = time.perf_counter()
    if case == "bare":
        bare_loop(_student(), x, y, teacher)
    elif case == "one":
        fit(_student(), rows, settings, num_classes=10)
    else:
        import dataclasses
        base = dataclasses.replace(settings, kl_weight=0.0)
        fit_many([_student(), _student()], [rows, rows], [settings, base], num_classes=10)
    print(time.perf_counter() - start)
"""

CASES = {"interpreter + torch": "floor", "bare loop": "bare", "distill, one student": "one",
         "distill, student + baseline stacked": "stacked"}


def _peak(case: str, rows: int, epochs: int) -> tuple[int, float]:
    code = CHILD.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), case=case, rows=rows, epochs=epochs)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
    _, status, usage = os.wait4(child.pid, 0)
    out, err = child.communicate()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"case {case} failed:\n{err}")
    seconds = float(out.strip().splitlines()[-1]) if out.strip() else 0.0
    return usage.ru_maxrss * 1024, seconds  # ru_maxrss: KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {label: _peak(case, args.rows, args.epochs) for label, case in CASES.items()}
    bare = results["bare loop"][0]
    print(f"{args.rows} rows, {args.epochs} epochs: peak RSS of a fresh process per case")
    rows = []
    for label, (peak, seconds) in results.items():
        rows.append({"case": label, "peak_rss_mib": round(peak / 2**20, 1), "vs_bare_loop": round(peak / bare, 3),
                     "fit_s": round(seconds, 2)})
        print(f"{label:<38}{peak / 2**20:>9.1f} MiB{peak / bare:>7.2f}x  fit {seconds:.2f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"rows_in_fit": args.rows, "epochs": args.epochs, "cores": os.cpu_count(),
                                         "python": platform.python_version(), "cases": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
