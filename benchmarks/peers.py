"""distill against a bare PyTorch loop and PyTorch Lightning on one Hinton-KD task (issue 19, point 6).

Run by hand, not by the tests:

    python benchmarks/peers.py                                   # 7 rounds, a table
    python benchmarks/peers.py --rounds 9 --json benchmarks/results/peers.json

The task: scikit-learn's digits (8x8 images, 10 classes), 1,297 training rows and 500 test rows; a small
CNN teacher trained once on the training rows (plain PyTorch, the same for every system); an MLP student
64 -> 64 -> 10 (ReLU) trained on the same rows with ``CE + kl_weight * T^2 * KL`` (Hinton et al., 2015),
T = 4, kl_weight = 1, Adam lr 3e-3, batches of 64, 30 epochs, the same initial weights. Each system fits
the student from the same start in every round; the order of the systems is shuffled per round (rounds
interleave them) and the table shows each system's median fit time, its ratio to the bare loop, and the
student's test accuracy.

- ``bare loop``: tensors in memory, ``torch.randperm`` batches, ``torch.optim.Adam``, the loss written out
  with ``F.cross_entropy`` and ``F.kl_div``; no metrics.
- ``distill``: ``distill.fit`` (the engine every command uses), ``epoch_metrics=False`` (no per-epoch
  metrics, as the peers compute none; distill's default scores four metrics every epoch).
- ``lightning``: a ``LightningModule`` with the same loss, a ``DataLoader`` over a ``TensorDataset``
  (shuffled, batch 64), ``Trainer(accelerator="cpu")`` with logging, checkpoints, progress bar and model
  summary off. Measured when ``pytorch_lightning`` (or ``lightning``) is importable: ``pip install -e
  '.[bench]'``; otherwise the row says "not installed".
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

T, KL_WEIGHT, LR, BATCH, EPOCHS, TEACHER_EPOCHS = 4.0, 1.0, 3e-3, 64, 30, 40


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=500, stratify=y, random_state=0)
    as_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return as_x(x_train), torch.tensor(y_train), as_x(x_test), torch.tensor(y_test)


def _teacher_logits(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A small CNN trained once on the training rows; its logits on them (the soft targets' source)."""
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3),
                        nn.ReLU(), nn.Flatten(), nn.Linear(32 * 6 * 6, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(cnn.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(0)
    for _ in range(TEACHER_EPOCHS):
        for idx in torch.randperm(x.shape[0], generator=generator).split(BATCH):
            optimizer.zero_grad()
            F.cross_entropy(cnn(x[idx]), y[idx]).backward()
            optimizer.step()
    with torch.no_grad():
        return cnn.eval()(x)


def _student() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``CE(y, s) + kl_weight * T^2 * KL(softmax(t / T) || softmax(s / T))`` (Hinton et al., 2015)."""
    kl = F.kl_div(F.log_softmax(student / T, dim=1), F.log_softmax(teacher / T, dim=1), log_target=True,
                  reduction="batchmean")
    return F.cross_entropy(student, y) + KL_WEIGHT * T * T * kl


def bare_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor) -> nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(0)
    for _ in range(EPOCHS):
        for idx in torch.randperm(x.shape[0], generator=generator).split(BATCH):
            optimizer.zero_grad()
            kd_loss(model(x[idx]), teacher[idx], y[idx]).backward()
            optimizer.step()
    return model


def with_distill(model: nn.Module, x: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor) -> nn.Module:
    from distill.engine.loop import FitSettings, TrainingRows, fit

    rows = TrainingRows(x=x, targets=y, labelled=torch.ones_like(y, dtype=torch.bool), teacher_logits=teacher)
    settings = FitSettings(epochs=EPOCHS, batch_size=BATCH, optimizer="adam", lr=LR, kl_weight=KL_WEIGHT,
                           temperature=T, epoch_metrics=False, monitor="train_loss", seed=0)
    fit(model, rows, settings, num_classes=10)
    return model


def _lightning() -> Any | None:
    for name in ("pytorch_lightning", "lightning.pytorch"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def with_lightning(pl: Any) -> Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], nn.Module]:
    from torch.utils.data import DataLoader, TensorDataset

    class KD(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            xb, yb, tb = batch
            return kd_loss(self.model(xb), tb, yb)

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.model.parameters(), lr=LR)

    def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor) -> nn.Module:
        loader = DataLoader(TensorDataset(x, y, teacher), batch_size=BATCH, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
        trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(KD(model), loader)
        return model

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    x, y, x_test, y_test = _data()
    teacher = _teacher_logits(x, y)
    start = _student()
    systems: dict[str, Callable[..., nn.Module]] = {"bare loop": bare_loop, "distill": with_distill}
    pl = _lightning()
    if pl is not None:
        systems["lightning"] = with_lightning(pl)
    times: dict[str, list[float]] = {name: [] for name in systems}
    accuracy: dict[str, list[float]] = {name: [] for name in systems}
    rng = random.Random(0)
    for run in systems.values():  # warm-up: first-call costs out of the timings
        run(copy.deepcopy(start), x, y, teacher)
    for _ in range(args.rounds):
        order = list(systems)
        rng.shuffle(order)
        for name in order:
            model = copy.deepcopy(start)
            began = time.perf_counter()
            systems[name](model, x, y, teacher)
            times[name].append(time.perf_counter() - began)
            with torch.no_grad():
                accuracy[name].append(float((model.eval()(x_test).argmax(1) == y_test).float().mean()))
    base = statistics.median(times["bare loop"])
    with torch.no_grad():
        teacher_accuracy = float((teacher.argmax(1) == y).float().mean())
    rows = []
    print(f"Hinton KD on digits: CNN teacher (train accuracy {teacher_accuracy:.3f}), MLP 64-64-10 student, T = {T:g}, "
          f"{EPOCHS} epochs, batch {BATCH}; medians of {args.rounds} interleaved rounds, {torch.get_num_threads()} "
          f"torch thread(s)")
    print(f"{'system':<12}{'fit (s)':>10}{'vs bare':>10}{'test accuracy':>16}")
    for name in ("bare loop", "distill", "lightning"):
        if name not in systems:
            print(f"{name:<12}{'not installed (pip install -e .[bench])':>36}")
            continue
        median = statistics.median(times[name])
        row = {"system": name, "fit_s": round(median, 3), "vs_bare": round(median / base, 3),
               "test_accuracy": round(statistics.median(accuracy[name]), 4)}
        rows.append(row)
        print(f"{name:<12}{median:>10.3f}{median / base:>10.2f}{row['test_accuracy']:>16.4f}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "task": {"dataset": "sklearn digits", "train_rows": int(x.shape[0]), "test_rows": int(x_test.shape[0]),
                     "temperature": T, "kl_weight": KL_WEIGHT, "epochs": EPOCHS, "batch_size": BATCH, "lr": LR},
            "rounds": args.rounds, "threads": torch.get_num_threads(), "cores": os.cpu_count(),
            "torch": torch.__version__, "lightning": getattr(pl, "__version__", None) if pl is not None else None,
            "python": platform.python_version(), "numpy": np.__version__, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
