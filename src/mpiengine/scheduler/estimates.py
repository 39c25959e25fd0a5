"""Runtime estimates: what the policy believes about how long tasks run, and its corrections.

A task's *estimate* is the smaller of its predicted runtime (learned by the endpoint from tasks
of the same kind; data to this module) and its walltime. Only the walltime is a limit: a
prediction is a belief, so a task may outlive it. Then the belief is corrected at once (the
rule of Tsafrir, Etsion and Feitelson, "Backfilling using system-generated predictions rather
than user runtime estimates", IEEE TPDS 2007: predictions steer backfill, never kill, and an
underprediction is raised as soon as it shows):

- The k-th correction of a task estimated at ``p`` seconds expects it to run
  ``p * (1 + (2**k - 1) / 10)`` seconds in all: 1.1 p, 1.3 p, 1.7 p, 2.5 p, 4.1 p, ... The
  first steps are small, because a prediction learned from the same command is usually right
  within the noise of starting a process; then they grow geometrically, so a prediction wrong
  by a factor f is corrected in about log2(10 f) steps. Never beyond the task's walltime (or
  its block's end), where it is killed.
- The scheduler asks :meth:`Estimates.correct` at every ``schedule(now)`` and offers
  :meth:`Estimates.next_wake` (the earliest predicted end) so that its driver calls it then:
  the head's reservation is recomputed the moment a task outlives its estimate.

Tasks of one *kind* share one estimate while they wait (:meth:`Estimates.learn` updates it).
A task started while its kind was unknown runs *blind* (its end is only its block's end, or
never); once its kind is learned, it takes the kind's estimate from its own start.
"""

from __future__ import annotations

import math
from heapq import heappop, heappush

from .model import TaskRequest
from .pool import BlockPool, Running
from .reservation import Res

__all__ = ["Estimates", "corrected"]

#: The first correction adds this fraction of the estimate; each next one doubles the step.
FIRST_STEP = 0.1


def corrected(estimate: float, elapsed: float, fixes: int) -> tuple[float, int]:
    """The runtime to expect of a task estimated at ``estimate`` that has run ``elapsed``
    seconds (at least its estimate) after ``fixes`` corrections: (runtime, corrections).

    The smallest k > ``fixes`` with ``estimate * (1 + FIRST_STEP * (2**k - 1)) > elapsed``.
    """
    k = fixes + 1
    while True:
        runtime = estimate * (1 + FIRST_STEP * (2**k - 1))
        if runtime > elapsed:
            return runtime, k
        k += 1


class Estimates:
    """The estimates of waiting kinds, and the predicted ends of running tasks.

    Args:
        running: the scheduler's map of running task id -> its block (read only: whether a
            task still runs, and where).
    """

    def __init__(self, running: dict[str, BlockPool]) -> None:
        self._running = running
        #: kind -> its estimate, for the kinds of waiting tasks (read by the policy).
        self.by_kind: dict[str, float] = {}
        self._waiting: dict[str, int] = {}  # kind -> tasks of it waiting
        self._blind: dict[str, dict[str, Running]] = {}  # kind -> running blind tasks
        # (predicted end, seq, task id): running tasks whose end is a prediction (before
        # their kill time). Stale entries (ended, corrected) are skipped when met.
        self._wakes: list[tuple[float, int, str]] = []

    # -- waiting tasks -----------------------------------------------------------------------

    def queued(self, req: TaskRequest) -> None:
        """A task joined the queue: its kind's estimate is the one it brings, if any."""
        kind = req.kind
        if kind is None:
            return
        self._waiting[kind] = self._waiting.get(kind, 0) + 1
        if req.estimate is not None:
            self.by_kind[kind] = req.estimate

    def dequeued(self, req: TaskRequest) -> None:
        """A task left the queue (started or cancelled)."""
        kind = req.kind
        if kind is None:
            return
        left = self._waiting[kind] - 1
        if left:
            self._waiting[kind] = left
        else:
            del self._waiting[kind]
            self.by_kind.pop(kind, None)

    def of(self, kind: str, walltime: float) -> float:
        """The estimate of a waiting task of ``kind`` now: the smaller of its walltime (inf:
        none) and the kind's estimate; inf when unknown."""
        estimate = self.by_kind.get(kind, math.inf)
        return estimate if estimate < walltime else walltime

    # -- running tasks -----------------------------------------------------------------------

    def started(
        self, pool: BlockPool, req: TaskRequest, estimate: float, now: float, bound: float
    ) -> None:
        """Record the estimate of a task just started in ``pool`` (its end is already set).

        Args:
            estimate: its estimate (inf: unknown).
            now: its start.
            bound: when it is killed at the latest (start + walltime, its block's end, or inf).
        """
        run = pool.tasks[req.task_id]
        run.start = now
        run.estimate = estimate
        run.bound = bound
        run.kind = req.kind
        if estimate == math.inf:
            if bound == math.inf or req.walltime is None:
                run.blind = True
                if req.kind is not None:
                    self._blind.setdefault(req.kind, {})[req.task_id] = run
        elif run.end < bound:
            heappush(self._wakes, (run.end, run.seq, req.task_id))

    def ended(self, run: Running) -> None:
        """A running task ended (or its block is gone)."""
        if run.blind and run.kind is not None:
            blind = self._blind.get(run.kind)
            if blind is not None:
                blind.pop(run.task_id, None)
                if not blind:
                    del self._blind[run.kind]

    def learn(self, kind: str, estimate: float) -> bool:
        """Tasks of ``kind`` are now expected to run ``estimate`` seconds (> 0, finite).

        Waiting tasks of the kind take it; running blind ones take it from their start.

        Returns:
            whether a running task's estimated end changed (reservations must be recomputed).
        """
        if kind in self._waiting:
            self.by_kind[kind] = estimate
        blind = self._blind.pop(kind, None)
        if not blind:
            return False
        for task_id, run in blind.items():
            pool = self._running[task_id]
            run.blind = False
            run.estimate = estimate
            end = min(run.bound, run.start + estimate)
            pool.reestimate(run, end)
            if end < run.bound:
                heappush(self._wakes, (end, run.seq, task_id))
        return True

    def correct(self, now: float, res: Res | None) -> float | None:
        """Correct every running task that has outlived its estimate by ``now``.

        Args:
            res: the head's reservation, if any.

        Returns:
            None if ``res`` still holds (any correction of a task off its nodes, or still
            ending by its time, leaves every reserved node free by then); else the latest
            new end among the corrected tasks on its nodes, or inf when one of them was
            corrected more than once (then it is computed afresh).
        """
        wakes = self._wakes
        stale: float | None = None
        while wakes and wakes[0][0] <= now:
            end, seq, task_id = heappop(wakes)
            run = self._live(end, seq, task_id)
            if run is None:
                continue
            runtime, run.fixes = corrected(run.estimate, now - run.start, run.fixes)
            new_end = min(run.bound, run.start + runtime)
            pool = self._running[task_id]
            pool.reestimate(run, new_end)
            if new_end < run.bound:
                heappush(wakes, (new_end, seq, task_id))
            if (
                res is not None
                and res.pool is pool
                and new_end > (res.time if stale is None else stale)
                and not res.nodes.isdisjoint(run.nodes)
            ):
                stale = new_end if run.fixes == 1 else math.inf
        return stale

    def next_wake(self) -> float | None:
        """The earliest predicted end of a running task (a task still running then has
        outlived its estimate), or None."""
        wakes = self._wakes
        while wakes:
            end, seq, task_id = wakes[0]
            if self._live(end, seq, task_id) is not None:
                return end
            heappop(wakes)
        return None

    def _live(self, end: float, seq: int, task_id: str) -> Running | None:
        """The running record a wake entry still describes, or None if it is stale."""
        pool = self._running.get(task_id)
        if pool is None:
            return None
        run = pool.tasks.get(task_id)
        if run is None or run.seq != seq or run.end != end:
            return None
        return run
