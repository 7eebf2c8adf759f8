"""Episodes prepared ahead of the loop, their teachers sent to worker processes ahead of need.

``run_protocol`` takes its episodes (one per seed and sweep value) in order from ``EpisodesAhead``. Once
the run is known to need them, the next ``window`` episodes are drawn (``prepare_episode``) and their
teacher fits submitted to a ``TeacherPool``, so that they are fit while this process trains and scores the
students of earlier episodes. ``teach`` then collects each fit by its soft-target cache key; a fit that is
in the cache already, or whose teacher cannot run in a worker, is never sent.

How many workers (``teacher.workers``): a number (0: none, every fit here), or ``auto``: the first
episode's teacher is fit here and timed, and the fits left go to one worker per core when they would take
at least ``distill.experiment.teacher_pool.AUTO_MIN_S`` here. Results never depend on it.

An episode that cannot be drawn ahead (its split fails) raises its error when the loop reaches it, as
without look-ahead; fits not collected are cancelled when the loop ends, however it ends.
"""

from __future__ import annotations

import logging
from typing import Any

from distill.config import Config
from distill.experiment.cache import SoftTargetCache
from distill.experiment.prepare import Prepared, prepare_episode
from distill.experiment.teach import TeacherOutputs, TeacherRequest, fits_in_workers, teacher_fit, teacher_request
from distill.experiment.teacher_pool import TeacherFit, TeacherPool, auto_workers

__all__ = ["EpisodesAhead"]

log = logging.getLogger("distill")


class EpisodesAhead:
    """The protocol's episodes, episode-major and sweep value-minor, drawn and taught ahead of the loop."""

    def __init__(self, config: Config, first: list[Prepared], cache: SoftTargetCache[TeacherOutputs], *,
                 window: int, head: int = 0, score_test: bool = True) -> None:
        self.config, self.first, self.cache = config, first, cache
        self.order = [(e, i) for e in range(config.protocol.episodes) for i in range(len(first))]
        self.window = max(1, window)  # episodes (each with every sweep value) submitted ahead
        self.head = head  # items of the first stack: this process fits them as the workers start
        self.score_test = score_test
        self.pool: TeacherPool | None = None
        self._workers: int | None = None if config.teacher.workers == "auto" else int(config.teacher.workers)
        self._drawn: dict[int, tuple[Prepared, TeacherRequest] | BaseException] = {}
        self._submitted = 0  # items up to here were considered for the pool

    def __len__(self) -> int:
        return len(self.order)

    def _draw(self, j: int) -> tuple[Prepared, TeacherRequest] | BaseException:
        if j not in self._drawn:
            e, i = self.order[j]
            try:
                prepared = self.first[i] if e == 0 else prepare_episode(self.first[i], e)
                self._drawn[j] = (prepared, teacher_request(prepared, self.score_test))
            except Exception as exc:  # noqa: BLE001 - raised when the loop reaches this episode
                self._drawn[j] = exc
        return self._drawn[j]

    def take(self, j: int) -> tuple[Prepared, TeacherRequest]:
        """Item ``j`` (in ``order``): its episode drawn and its request; the next ones sent ahead to the pool."""
        if self._workers is not None and self._workers > 0 and self.pool is None:
            self._start(self._workers)
        if self.pool is not None:
            self._submit_until(min(len(self.order), j + 1 + self.window * len(self.first)))
        drawn = self._draw(j)
        self._drawn.pop(j)
        if isinstance(drawn, BaseException):
            raise drawn
        return drawn

    def taught(self, j: int, outputs: TeacherOutputs) -> None:
        """Item ``j`` was taught: with ``teacher.workers = "auto"``, the first fit's time decides the pool."""
        if self._workers is not None or j != 0:
            return
        fit_s = outputs.timings.get("teacher_fit_s", 0.0) + outputs.timings.get("soft_targets_s", 0.0)
        if outputs.diagnostics.get("cache") == "hit":
            fit_s = 0.0  # a cached run: the other episodes are most likely in the cache too
        remaining = (self.config.protocol.episodes - 1) * self._teachers_per_episode()
        self._workers = auto_workers(remaining, fit_s)
        if self._workers:
            self._start(self._workers)

    def _teachers_per_episode(self) -> int:
        return len({request.key for request in (self._peek(i) for i in range(len(self.first))) if request is not None})

    def _peek(self, i: int) -> TeacherRequest | None:
        prepared = self.first[i]
        try:
            return teacher_request(prepared, self.score_test)
        except Exception:  # noqa: BLE001 - only an estimate; the loop raises it in its turn
            return None

    def _start(self, workers: int) -> None:
        if not fits_in_workers(self.first[0]):
            if self.config.teacher.workers != "auto":
                log.warning("teacher.workers = %s is ignored: teacher '%s' is fit in this process (only scikit-learn's "
                            "built-in teachers run in worker processes)", workers, self.config.teacher.kind)
            self._workers = 0
            return
        log.debug("teacher fits: %d worker process(es), %d episode(s) ahead", workers, self.window)
        self.pool = TeacherPool(workers)

    def _submit_until(self, end: int) -> None:
        """Send items up to ``end`` to the pool, in order but for the first stack's (the first ``head`` items),
        which go farthest first: the workers, still starting, take the far ones while this process fits the near
        ones, which it takes back (``TeacherPool.result``)."""
        assert self.pool is not None
        fits: list[tuple[int, str, TeacherFit]] = []
        while self._submitted < end:
            j = self._submitted
            drawn = self._draw(j)
            self._submitted += 1
            if isinstance(drawn, BaseException):
                continue
            prepared, request = drawn
            if (request.key in self.pool or any(key == request.key for _, key, _ in fits)
                    or self.cache.recall(request.key) is not None or self.cache.stored(request.key)):
                continue
            fit = teacher_fit(prepared, request)
            if fit is not None:
                fits.append((j, request.key, fit))
        head = [f for f in fits if f[0] < self.head]
        for _, key, fit in list(reversed(head)) + [f for f in fits if f[0] >= self.head]:
            self.pool.submit(key, fit)

    def close(self) -> None:
        """Cancel the fits not collected (the loop ended early, or an error stopped it)."""
        if self.pool is not None:
            self.pool.close()
        self._drawn.clear()

    def __enter__(self) -> "EpisodesAhead":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
