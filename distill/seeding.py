"""One place for randomness: seeding every generator, and resolving the device."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from distill.errors import ConfigError

__all__ = ["seed_everything", "resolve_device", "configure_threads", "threads_for_stacked_work", "available_cores",
           "SMALL_WORKLOAD"]

log = logging.getLogger("distill")
_said_cpu: list[bool] = []  # say the CPU fallback once per process, not once per episode


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU (said in the log); ``cuda`` without CUDA is an error."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if not _said_cpu:
            log.info("train.device = 'auto': no CUDA device found, using the CPU")
            _said_cpu.append(True)
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device is {spec!r} but CUDA is not available here; use 'auto' or 'cpu'")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"train.device is {spec!r} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    if spec == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("train.device is 'mps' but MPS is not available here; use 'auto' or 'cpu'")
    return torch.device(spec)


#: Below this many training-set elements (rows x features) a CPU fit runs on one thread.
SMALL_WORKLOAD = 5_000_000


def configure_threads(device: torch.device, threads: int, elements: int) -> int:
    """Set torch's CPU threads: ``threads`` when > 0; else 1 for small work on the CPU.

    Few-shot models are tiny: a step is microseconds of arithmetic, and intra-op threads only add
    synchronisation. Measured on the 2-core CI machine, the seed experiment's fit took the same
    time on 1 or 2 threads when the machine was idle, and 12x longer on 2 threads when another
    process was busy (3.3 s vs 0.28 s). Returns the thread count in use.
    """
    if device.type != "cpu":
        return torch.get_num_threads()
    wanted = threads if threads > 0 else (1 if elements < SMALL_WORKLOAD else torch.get_num_threads())
    if wanted != torch.get_num_threads():
        torch.set_num_threads(wanted)
        log.info("using %d CPU thread(s) for torch (train.threads = %d)", wanted, threads)
    if wanted == 1:
        _single_threaded_blas()
    return wanted


def _single_threaded_blas() -> None:
    """NumPy's BLAS on one thread too: its idle threads spin against torch's and made a 20 ms GP fit
    take 0.3-0.6 s (4 s after student training) on the 2-core machine."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def threads_for_stacked_work(device: torch.device, threads: int, elements: int) -> Iterator[None]:
    """Every core for a stacked fit whose work is large (``train.threads = 0`` only): many students
    at once are real arithmetic, not the launch overhead that one thread is best for."""
    before = torch.get_num_threads()
    wanted = available_cores() if device.type == "cpu" and threads == 0 and elements >= SMALL_WORKLOAD else before
    if wanted != before:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if wanted != before:
            torch.set_num_threads(before)
