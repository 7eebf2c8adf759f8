"""Time distill's training loop against a hand-written PyTorch loop, and batched against sequential episodes.

Run by hand, not by the tests:

    python benchmarks/bare_loop.py                       # both GP experiments, 50 episodes (~8 min on 2 CPUs)
    python benchmarks/bare_loop.py --experiments experiments/digits_gp.toml --repeats 3 --episodes 20
    python benchmarks/bare_loop.py --episode-repeats 5 --protocol-repeats 3 --json /tmp/bare_loop.json

Everything runs in this one process on the CPU (``train.device = "cpu"``), with the teacher's
soft-target cache and MLflow tracking off, after ``prepare_protocol`` has set torch's threads. Each
timed thing runs once to warm up and then ``--repeats`` times (5: single fits), ``--episode-repeats``
times (3: the episodes' fits, a minute a run for digits) or ``--protocol-repeats`` times (1: the whole
protocol, minutes for digits); the table shows medians in ms, the JSON keeps every run and a digest
of the sources measured. Per experiment:

(a) bare loop: what a competent user would write by hand on the same rows (episode 0's ``teach``
    output, already in memory), from the same initial weights, with the engine's batches (a
    ``torch.Generator`` seeded with ``config.seed``), optimizer and loss (BCE / masked CE plus
    ``kl_weight * T^2 * KL(teacher || student)`` via ``F.kl_div``), the loss summed on the device and
    read once per epoch, no metrics; with the config's ``kl_weight`` and with ``kl_weight = 0``;
(b) ``distill.engine.loop.fit`` on the same rows: per-epoch metrics on (the default) and off, with the
    config's ``kl_weight`` and with 0 (soft targets precomputed in both), and the final training loss
    of bare loop and engine side by side as a sanity check;
(c) ``--episodes`` episodes' student + baseline fits (episodes prepared and taught once):
    ``train_students(batched=False)`` against ``batched=True`` on fresh jobs each run (warmed up on two
    episodes), and the largest difference between the two in any test metric and in the final training loss;
(d) the whole ``run_protocol`` (teacher fits included) with ``train.batched`` false and true
    (warmed up with one episode each, as benchmarks/protocol_episodes.py does).

First of all, (e) the peak RSS of a fresh child running ``python -m distill run
experiments/breast_cancer_gp.toml``, once with ``--no-track`` and once recording to a new MLflow
SQLite store; at the end, this process's own peak RSS and how much its current RSS grew during the
batched episode fits. The goals are printed as PASS / MISS.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill.config import Config, load_config
from distill.data.sources import Dataset
from distill.engine.loop import FitSettings, TrainingRows, fit, predict_logits
from distill.experiment.episodes import run_protocol
from distill.experiment.prepare import Prepared, episode_seed, fit_settings, prepare, prepare_protocol
from distill.experiment.students import StudentJob, build_student, train_students
from distill.experiment.teach import TeacherOutputs, teach
from distill.metrics.classification import METRICS, classification_metrics, probabilities

DEFAULT_EXPERIMENTS = ["experiments/breast_cancer_gp.toml", "experiments/digits_gp.toml"]
MEMORY_EXPERIMENT = "experiments/breast_cancer_gp.toml"
#: Every override the benchmark applies: CPU, no soft-target cache, no MLflow.
OVERRIDES = ['train.device="cpu"', "teacher.cache=false", "tracking.enabled=false"]
#: (a) to (c) compare single fits at one KL weight and temperature: the shipped "auto" (chosen per episode by
#: cross-validation) is pinned to numbers there; (d), the whole protocol, runs as shipped
PINNED = ["objective.kl_weight=1.0", "objective.temperature=1.0"]

# The goals printed next to the numbers.
FIT_VS_BARE = 1.15  # distill's single fit at most this many times the bare loop (config's kl_weight)
KD_VS_PLAIN = 1.10  # the engine with the config's kl_weight at most this many times kl_weight = 0
BATCHED_SPEEDUP = 8.0  # batched episodes at least this many times faster than sequential
METRIC_TOLERANCE = 1e-5  # largest test-metric difference between batched and sequential fits
RSS_LIMIT = 2**30  # peak RSS of `distill run` on the seed experiment (1 GiB)

T = TypeVar("T")
R = TypeVar("R")


# --------------------------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Seconds of every timed run (after one warm-up run) and their median."""

    runs_s: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)

    def as_json(self) -> dict[str, Any]:
        return {"median_ms": self.median_s * 1e3, "runs_ms": [t * 1e3 for t in self.runs_s]}


def timed(run: Callable[[T], R], setup: Callable[[], T], repeats: int,
          warmup: Callable[[], Any] | None = None) -> tuple[Timing, R]:
    """``run(setup())`` once to warm up (``warmup()`` instead when given), then ``repeats`` timed runs.

    ``setup`` (a fresh model, fresh jobs) is not timed. Returns the timing and the last run's result.
    """
    if warmup is not None:
        warmup()
    else:
        run(setup())
    times: list[float] = []
    result: Any = None
    for _ in range(repeats):
        arg = setup()
        started = time.perf_counter()
        result = run(arg)
        times.append(time.perf_counter() - started)
    return Timing(times), result


# ---------------------------------------------------------------------------------- (a) the bare loop


def make_optimizer(params: Any, s: FitSettings) -> torch.optim.Optimizer:
    """The torch.optim optimizer the config names, with its hyperparameters."""
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)


def check_bare_loop_covers(s: FitSettings) -> None:
    """The bare loop writes only plain BCE / CE + forward KL with a constant learning rate."""
    extras = {
        "scheduler": s.scheduler != "none", "grad_clip": s.grad_clip is not None, "l1/l2": s.l1 > 0 or s.l2 > 0,
        "metric_loss": s.metric_loss is not None and s.metric_weight > 0, "criterion": s.criterion is not None,
        "reverse KL": s.direction != "forward",
    }
    used = [name for name, on in extras.items() if on]
    if used:
        raise SystemExit(f"the bare loop does not implement {', '.join(used)}; pick another experiment")


def bare_loop(model: nn.Module, rows: TrainingRows, s: FitSettings, binary: bool) -> float:
    """Train ``model`` in place as a user would by hand; returns the last epoch's mean training loss."""
    x, labelled = rows.x, rows.labelled
    mask = labelled.to(torch.float32)
    y = torch.where(labelled, rows.targets, torch.zeros_like(rows.targets))
    y_hard = y.to(torch.float32) if binary else y
    use_kl = s.kl_weight > 0 and rows.teacher_logits is not None
    temperature = s.temperature
    coef = s.kl_weight * temperature**2
    teacher_log_p = F.log_softmax(rows.teacher_logits / temperature, dim=-1) if use_kl else None  # type: ignore[operator]
    n = x.shape[0]
    steps = max(1, math.ceil(n / s.batch_size))
    generator = torch.Generator().manual_seed(s.seed)
    opt = make_optimizer(model.parameters(), s)
    epoch_loss = float("nan")
    for _ in range(s.epochs):
        if s.replacement:
            batches = torch.randint(n, (steps, s.batch_size), generator=generator)
        else:
            batches = torch.randperm(n, generator=generator).split(s.batch_size)
        total = torch.zeros(())
        for idx in batches:
            z = model(x[idx])
            m = mask[idx]
            if binary:
                per_row = F.binary_cross_entropy_with_logits(z[:, 0], y_hard[idx], reduction="none")
            else:
                per_row = F.cross_entropy(z, y_hard[idx], reduction="none")
            loss = (per_row * m).sum() / m.sum().clamp(min=1.0)
            if use_kl:
                student = torch.cat([torch.zeros_like(z), z], dim=1) if binary else z
                log_q = F.log_softmax(student / temperature, dim=-1)
                kl = F.kl_div(log_q, teacher_log_p[idx], log_target=True, reduction="batchmean")  # type: ignore[index]
                loss = loss + coef * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        epoch_loss = float(total) / steps  # the one read per epoch
    return epoch_loss


# ---------------------------------------------------------------------------- (b) distill's single fit


def engine_fit(prepared: Prepared, taught: TeacherOutputs, settings: FitSettings, model: nn.Module) -> float:
    """``distill.engine.loop.fit`` on episode 0's rows; returns the last epoch's training loss."""
    result = fit(model, taught.train, settings, num_classes=prepared.dataset.num_classes,
                 validation=taught.validation)
    return result.history[-1]["train_loss"]


def single_fits(prepared: Prepared, taught: TeacherOutputs, repeats: int) -> dict[str, Any]:
    """(a) and (b): bare loop and engine, config's kl_weight and 0, engine with metrics on and off."""
    config = prepared.config
    binary = prepared.num_outputs == 1
    kl = float(config.objective.kl_weight)
    out: dict[str, Any] = {"kl_weight": kl}
    for label, weight in (("kd", kl), ("kl0", 0.0)):
        settings = fit_settings(config, kl_weight=weight)
        check_bare_loop_covers(settings)
        def fresh() -> nn.Module:
            return build_student(prepared)

        off_settings = dataclasses.replace(settings, epoch_metrics=False)
        bare, bare_loss = timed(lambda m, s=settings: bare_loop(m, taught.train, s, binary), fresh, repeats)
        on, on_loss = timed(lambda m, s=settings: engine_fit(prepared, taught, s, m), fresh, repeats)
        off, off_loss = timed(lambda m, s=off_settings: engine_fit(prepared, taught, s, m), fresh, repeats)
        out[label] = {
            "bare": bare.as_json(), "fit_metrics_on": on.as_json(), "fit_metrics_off": off.as_json(),
            "final_train_loss": {"bare": bare_loss, "fit_metrics_on": on_loss, "fit_metrics_off": off_loss},
        }
    for which in ("fit_metrics_on", "fit_metrics_off"):
        out[f"{which}_vs_bare"] = out["kd"][which]["median_ms"] / out["kd"]["bare"]["median_ms"]
        out[f"{which}_kd_vs_kl0"] = out["kd"][which]["median_ms"] / out["kl0"][which]["median_ms"]
        out[f"{which}_vs_bare_kl0"] = out["kl0"][which]["median_ms"] / out["kl0"]["bare"]["median_ms"]
    out["bare_kd_vs_kl0"] = out["kd"]["bare"]["median_ms"] / out["kl0"]["bare"]["median_ms"]
    return out


# ------------------------------------------------------------------------------- (c) episodes together


def teach_episodes(config: Config, dataset: Dataset, episodes: int) -> list[tuple[Prepared, TeacherOutputs]]:
    """Every episode's draw and soft targets, computed once."""
    taught = []
    for e in range(episodes):
        prepared = prepare(config.model_copy(update={"seed": episode_seed(config.seed, e)}), dataset)
        taught.append((prepared, teach(prepared)))
    return taught


def episode_jobs(episodes: list[tuple[Prepared, TeacherOutputs]]) -> list[StudentJob]:
    """Fresh, untrained jobs: each episode's distilled student and its kl_weight = 0 baseline."""
    jobs = []
    for prepared, taught in episodes:
        jobs.append(StudentJob.planned(prepared, taught, "student"))
        jobs.append(StudentJob.planned(prepared, taught, "baseline", kl_weight=0.0))
    return jobs


def trained(jobs: list[StudentJob], batched: bool) -> list[StudentJob]:
    train_students(jobs, batched=batched)
    return jobs


def final_losses(jobs: list[StudentJob]) -> np.ndarray:
    """Each fit's training loss in its last epoch."""
    return np.array([job.result.history[-1]["train_loss"] for job in jobs])  # type: ignore[union-attr]


def test_metrics(jobs: list[StudentJob]) -> np.ndarray:
    """``[jobs, metrics]``: each trained student scored on its episode's test rows."""
    rows = []
    for job in jobs:
        prepared, data, split = job.prepared, job.prepared.dataset, job.prepared.split
        x = torch.as_tensor(prepared.scaler.transform(data.x[split.test]), dtype=torch.float32, device=prepared.device)
        y = torch.as_tensor(data.y[split.test], dtype=torch.long, device=prepared.device)
        values = classification_metrics(probabilities(predict_logits(job.model, x)), y, data.num_classes)  # type: ignore[arg-type]
        rows.append([float(values[m]) for m in METRICS])
    return np.asarray(rows, dtype=np.float64)


def max_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b|, where two NaNs count as equal and one NaN as infinitely different."""
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.abs(a - b))
    return float(np.nan_to_num(diff, nan=math.inf).max())


def rss_bytes() -> int:
    """This process's current resident set size (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def episode_fits(config: Config, dataset: Dataset, episodes: int, repeats: int) -> dict[str, Any]:
    """(c): student + baseline of every episode, one at a time vs stacked."""
    started = time.perf_counter()
    taught = teach_episodes(config, dataset, episodes)
    teach_s = time.perf_counter() - started
    few = taught[:2]  # warm-up on two episodes: the same code paths, seconds instead of a minute
    sequential, seq_jobs = timed(lambda jobs: trained(jobs, False), lambda: episode_jobs(taught), repeats,
                                 warmup=lambda: trained(episode_jobs(few), False))
    rss_before = rss_bytes()
    batched, bat_jobs = timed(lambda jobs: trained(jobs, True), lambda: episode_jobs(taught), repeats,
                              warmup=lambda: trained(episode_jobs(few), True))
    rss_after = rss_bytes()
    return {
        "episodes": episodes,
        "fits": 2 * episodes,
        "prepare_and_teach_s": teach_s,
        "sequential": sequential.as_json(),
        "batched": batched.as_json(),
        "speedup": sequential.median_s / batched.median_s,
        "max_abs_test_metric_diff": max_abs_difference(test_metrics(seq_jobs), test_metrics(bat_jobs)),
        "max_abs_final_train_loss_diff": max_abs_difference(final_losses(seq_jobs), final_losses(bat_jobs)),
        "rss_before_batched_bytes": rss_before,
        "rss_after_batched_bytes": rss_after,
    }


# ------------------------------------------------------------------------------------ (d) the protocol


def protocol_times(path: str, episodes: int, repeats: int) -> dict[str, Any]:
    """(d): ``run_protocol`` with ``train.batched`` false and true, teacher fits included."""
    out: dict[str, Any] = {"episodes": episodes, "repeats": repeats}
    for flag in ("false", "true"):
        config = load_config(path, [*OVERRIDES, f"protocol.episodes={episodes}", f"train.batched={flag}"])
        one = config.model_copy(update={"protocol": config.protocol.model_copy(update={"episodes": 1})})
        timing, (_, results) = timed(run_protocol, lambda c=config: c, repeats, warmup=lambda c=one: run_protocol(c))
        assert len(results) == episodes
        out["batched" if flag == "true" else "sequential"] = timing.as_json()
    out["speedup"] = out["sequential"]["median_ms"] / out["batched"]["median_ms"]
    return out


# -------------------------------------------------------------------------------------- (e) memory


def child_peak_rss(experiment: str, tracked: bool) -> dict[str, Any]:
    """Peak RSS of one fresh ``distill run`` child (its own, from ``wait4``); tracked into a new SQLite store."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "distill", "run", str(ROOT / experiment), "--quiet",
                   "--output", str(Path(tmp) / "run"), "--set", "teacher.cache=false"]
        if not tracked:
            command.insert(4, "--no-track")
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}  # a first run: tables made too
        started = time.perf_counter()
        with open(Path(tmp) / "stderr.txt", "w+") as err:
            child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
            _, status, usage = os.wait4(child.pid, 0)
            seconds = time.perf_counter() - started
            child.returncode = os.waitstatus_to_exitcode(status)
            err.seek(0)
            if child.returncode != 0:
                raise SystemExit(f"{' '.join(command)} failed:\n{err.read()}")
    return {"command": " ".join(command[1:]).replace(tmp, "TMP"), "tracked": tracked,
            "peak_rss_bytes": usage.ru_maxrss * 1024, "wall_s": seconds}  # ru_maxrss: KiB on Linux


# ------------------------------------------------------------------------------------------ report


def source_digest() -> str:
    """SHA-256 of distill's and the students' sources: which code the numbers belong to."""
    digest = hashlib.sha256()
    for path in sorted([*ROOT.glob("distill/*.py"), *ROOT.glob("distill/students/*.py")]):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def print_experiment(name: str, r: dict[str, Any]) -> None:
    s, c, p = r["single"], r["episodes"], r.get("protocol")
    kl = s["kl_weight"]
    print(f"\n== {name}: {r['rows']} training rows, {r['epochs']} epochs x {r['steps']} steps, {r['optimizer']}, "
          f"kl_weight = {kl:g}")
    print(f"{'':44}{'kl ' + format(kl, 'g'):>12}{'kl 0':>12}{'KD / kl 0':>11}")
    for key, label in (("bare", "bare loop"), ("fit_metrics_on", "distill fit, epoch metrics on"),
                       ("fit_metrics_off", "distill fit, epoch metrics off")):
        kd, kl0 = s["kd"][key]["median_ms"], s["kl0"][key]["median_ms"]
        goal = "" if key == "bare" else f"   goal <= {KD_VS_PLAIN:.2f}x: {verdict(kd / kl0 <= KD_VS_PLAIN)}"
        print(f"  {label:42}{kd:9.1f} ms{kl0:9.1f} ms{kd / kl0:10.2f}x{goal}")
    for key, label in (("fit_metrics_on", "epoch metrics on"), ("fit_metrics_off", "epoch metrics off")):
        ratio = s[f"{key}_vs_bare"]
        print(f"  distill fit / bare loop, {label:18}{ratio:7.2f}x (kl 0: {s[f'{key}_vs_bare_kl0']:.2f}x)"
              f"   goal <= {FIT_VS_BARE:.2f}x: {verdict(ratio <= FIT_VS_BARE)}")
    for label in ("kd", "kl0"):
        losses = s[label]["final_train_loss"]
        print(f"  final train loss ({'kl ' + format(kl, 'g') if label == 'kd' else 'kl 0'}): bare {losses['bare']:.6f}, "
              f"distill {losses['fit_metrics_on']:.6f} (|diff| {abs(losses['bare'] - losses['fit_metrics_on']):.1e})")
    print(f"  {c['episodes']} episodes, {c['fits']} student + baseline fits (prepare + teach once: "
          f"{c['prepare_and_teach_s']:.1f} s)")
    speed_ok = c["speedup"] >= BATCHED_SPEEDUP
    print(f"    sequential {c['sequential']['median_ms']:10.1f} ms    batched {c['batched']['median_ms']:10.1f} ms    "
          f"speed-up {c['speedup']:.2f}x   goal >= {BATCHED_SPEEDUP:g}x: {verdict(speed_ok)}")
    metric_ok = c["max_abs_test_metric_diff"] <= METRIC_TOLERANCE
    print(f"    max |test metric diff| {c['max_abs_test_metric_diff']:.1e}   goal <= {METRIC_TOLERANCE:g}: "
          f"{verdict(metric_ok)};   max |final train_loss diff| {c['max_abs_final_train_loss_diff']:.1e}")
    grown = c["rss_after_batched_bytes"] - c["rss_before_batched_bytes"]
    print(f"    RSS before / after the batched fits: {mib(c['rss_before_batched_bytes'])} / "
          f"{mib(c['rss_after_batched_bytes'])} ({grown / 2**20:+.0f} MiB)")
    if p is not None:
        print(f"  run_protocol, {p['episodes']} episodes (median of {p['repeats']}): batched=false "
              f"{p['sequential']['median_ms'] / 1e3:.2f} s, batched=true {p['batched']['median_ms'] / 1e3:.2f} s, "
              f"speed-up {p['speedup']:.2f}x")


def run_experiment(path: str, args: argparse.Namespace) -> dict[str, Any]:
    """(a) to (d) for one experiment file."""
    config = load_config(path, [*OVERRIDES, *PINNED])
    first = prepare_protocol(config)
    prepared = first[0]
    taught = teach(prepared)
    settings = fit_settings(config)
    n = int(taught.train.x.shape[0])
    report: dict[str, Any] = {
        "experiment": path,
        "rows": n,
        "epochs": settings.epochs,
        "steps": max(1, math.ceil(n / settings.batch_size)),
        "optimizer": settings.optimizer,
        "torch_threads": torch.get_num_threads(),
    }
    report["single"] = single_fits(prepared, taught, args.repeats)
    report["episodes"] = episode_fits(config, prepared.dataset, args.episodes, args.episode_repeats)
    if args.protocol_repeats > 0:
        report["protocol"] = protocol_times(path, args.episodes, args.protocol_repeats)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", default=DEFAULT_EXPERIMENTS)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each single fit")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--episode-repeats", type=int, default=3, help="timed runs of the episodes' fits")
    parser.add_argument("--protocol-repeats", type=int, default=1, help="timed run_protocol runs (0: skip it)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/bare_loop.json")
    args = parser.parse_args()
    logging.getLogger("distill").setLevel(logging.ERROR)  # fifty episodes' teacher warnings, again and again

    started = time.perf_counter()
    load_before = os.getloadavg()  # other work on the machine skews every figure: recorded with them
    memory: dict[str, Any] = {"runs": [child_peak_rss(MEMORY_EXPERIMENT, tracked) for tracked in (False, True)]}
    for run in memory["runs"]:
        print(f"peak RSS of `{run['command']}`: {mib(run['peak_rss_bytes'])} ({run['wall_s']:.1f} s)   "
              f"goal < 1 GiB: {verdict(run['peak_rss_bytes'] < RSS_LIMIT)}")
    experiments = {}
    for path in args.experiments:
        experiments[Path(path).name] = run_experiment(path, args)
        print_experiment(Path(path).name, experiments[Path(path).name])
    memory["benchmark_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"\npeak RSS of this benchmark process: {mib(memory['benchmark_peak_rss_bytes'])}")
    machine = {**machine_info(), "loadavg_1_5_15_before": load_before, "loadavg_1_5_15_after": os.getloadavg()}
    wall = time.perf_counter() - started
    print(f"{machine['cpu_count']} CPUs, {machine['torch_threads']} torch thread(s), torch {machine['torch']}, "
          f"Python {machine['python']}, {machine['platform']}; benchmark wall time {wall:.0f} s; "
          f"load average {load_before[0]:.1f} before, {machine['loadavg_1_5_15_after'][0]:.1f} after")
    report = {
        "settings": {"repeats": args.repeats, "episodes": args.episodes, "episode_repeats": args.episode_repeats,
                     "protocol_repeats": args.protocol_repeats, "overrides": OVERRIDES, "pinned_for_single_fits": PINNED},
        "goals": {"fit_vs_bare_max": FIT_VS_BARE, "kd_vs_kl0_max": KD_VS_PLAIN, "batched_speedup_min": BATCHED_SPEEDUP,
                  "metric_tolerance": METRIC_TOLERANCE, "run_peak_rss_max_bytes": RSS_LIMIT},
        "machine": machine,
        "source_sha256": source_digest(),
        "memory": memory,
        "experiments": experiments,
        "wall_s": wall,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
