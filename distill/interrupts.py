"""SIGINT and SIGTERM as a request to stop after the current training step, not a traceback mid-write.

The first signal sets a flag the training loop reads between steps; the run then writes its
checkpoint and a partial ``summary.json`` and exits 130 (SIGINT) or 143 (SIGTERM). A second
SIGINT stops at once (Python's KeyboardInterrupt), for a loop that never reaches a step boundary.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["StopRequest", "Interrupted", "EXIT_CODES"]

log = logging.getLogger("distill")

#: The shell's convention: 128 + the signal number.
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class Interrupted(Exception):
    """The run stopped on a signal; ``where`` says at which point, ``exit_code`` what to return."""

    def __init__(self, signal_name: str, where: str) -> None:
        super().__init__(f"{signal_name}: stopped {where}")
        self.signal_name = signal_name
        self.where = where
        self.exit_code = EXIT_CODES.get(signal_name, 130)


class StopRequest:
    """Callable flag: True once SIGINT or SIGTERM arrived while ``installed``."""

    def __init__(self, then: str = "stopping after the current step and writing a checkpoint") -> None:
        self.signal_name: str | None = None
        self._then = then  # what the first signal's warning says happens next

    def __call__(self) -> bool:
        return self.signal_name is not None

    def check(self, where: str) -> None:
        """Raise ``Interrupted`` if a stop was requested (at a safe point between pieces of work)."""
        if self.signal_name is not None:
            raise Interrupted(self.signal_name, where)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if self.signal_name is not None and name == "SIGINT":
            raise KeyboardInterrupt
        self.signal_name = name
        log.warning("%s received: %s (Ctrl-C again to stop at once)", name, self._then)

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Route SIGINT and SIGTERM here for the duration (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            # A signal this stop took (and its work finished anyway, e.g. after a run's summary landed) is
            # the enclosing distill work's too: a tune's comparison run must not swallow the tune's Ctrl-C.
            outer = getattr(previous[signal.SIGTERM], "__self__", None)
            if isinstance(outer, StopRequest) and self.signal_name is not None and outer.signal_name is None:
                outer.signal_name = self.signal_name
