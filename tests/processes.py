"""Waiting on the real processes a test starts: none is left running, whatever happens."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


def communicate_all(procs: Sequence[subprocess.Popen], timeout: float = 420) -> list[tuple[str, str]]:
    """Each process's (stdout, stderr), waiting for them in turn; if one hangs past ``timeout`` or the wait
    fails, every process still running is killed (and reaped) before the error goes on."""
    with reaped(procs):
        return [p.communicate(timeout=timeout) for p in procs]


@contextmanager
def reaped(procs: Sequence[subprocess.Popen]) -> Iterator[None]:
    """On leaving, kill and reap every process of ``procs`` (a list that may still grow) that still runs."""
    try:
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
