"""Drive a :class:`Scheduler` with a virtual clock: what cannot run here (10,000 nodes, 100,000
tasks) is exercised by a discrete-event simulation of the real policy.

Tasks arrive at their ``submit_time`` and, once placed, end after their actual runtime (cut at
the placement's walltime, as the block agent would kill them). All ends and arrivals at one
instant are applied before ``schedule`` is called for it; ``schedule`` is also called at the
scheduler's :attr:`~Scheduler.next_wake`, when a running task outlives its estimate.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mpiengine.placement import Placement

from .model import TaskRequest
from .policy import Scheduler

__all__ = ["SimResult", "SimTask", "simulate"]


@dataclass(frozen=True)
class SimTask:
    """A task to simulate: its request and how long it really runs (finite, > 0)."""

    request: TaskRequest
    runtime: float


@dataclass
class SimResult:
    """What happened.

    Attributes:
        placements: (start time, placement) in decision order.
        ends: task id -> end time.
        reservations: task id -> the earliest finite reservation time seen while it was head.
        last_reservations: task id -> its reservation time as computed by the last
            ``schedule`` call before it started (``math.inf`` if unknown then).
        unstarted: ids of tasks still waiting when nothing else could happen.
        makespan: the last end time (0 if nothing ran).
        busy_seconds: seconds the timer counted inside ``schedule`` and ``release``.
        calls: ``schedule`` calls made.
    """

    placements: list[tuple[float, Placement]] = field(default_factory=list)
    ends: dict[str, float] = field(default_factory=dict)
    reservations: dict[str, float] = field(default_factory=dict)
    last_reservations: dict[str, float] = field(default_factory=dict)
    unstarted: list[str] = field(default_factory=list)
    makespan: float = 0.0
    busy_seconds: float = 0.0
    calls: int = 0


def simulate(
    scheduler: Scheduler,
    tasks: Sequence[SimTask],
    *,
    timer: Callable[[], float] | None = None,
    on_schedule: Callable[[float, list[Placement]], None] | None = None,
    track_reservations: bool = True,
    on_end: Callable[[str, float], None] | None = None,
) -> SimResult:
    """Run ``tasks`` through ``scheduler`` (whose blocks are already added) to completion.

    Args:
        scheduler: the scheduler under test.
        tasks: the tasks; each arrives at ``request.submit_time``.
        timer: a clock (e.g. ``time.perf_counter``) to time the scheduler's calls with.
        on_schedule: called after each ``schedule`` call with the time and its placements,
            when the scheduler's state is exactly the one those placements produced.
        track_reservations: record the reservations in the result (costs time at scale).
        on_end: called with (task id, runtime) after each task ends and is released, before
            the next ``schedule`` call: where a caller learns runtimes (and tells the
            scheduler its new estimates).

    Returns:
        the trace.
    """
    arrivals = sorted(tasks, key=lambda t: t.request.submit_time)
    runtime = {t.request.task_id: t.runtime for t in tasks}
    ends: list[tuple[float, int, str]] = []
    result = SimResult()
    clock = timer or (lambda: 0.0)
    next_arrival = 0
    seq = 0
    began: dict[str, float] = {}
    while next_arrival < len(arrivals) or ends:
        wake = scheduler.next_wake if ends else None
        now = min(
            arrivals[next_arrival].request.submit_time
            if next_arrival < len(arrivals)
            else math.inf,
            ends[0][0] if ends else math.inf,
            math.inf if wake is None else wake,
        )
        started = clock()
        done = []
        while ends and ends[0][0] <= now:
            _, _, task_id = heapq.heappop(ends)
            scheduler.release(task_id)
            result.ends[task_id] = now
            done.append(task_id)
        result.busy_seconds += clock() - started
        if on_end is not None:
            for task_id in done:
                on_end(task_id, now - began[task_id])
        while next_arrival < len(arrivals) and arrivals[next_arrival].request.submit_time <= now:
            scheduler.submit(arrivals[next_arrival].request)
            next_arrival += 1
        started = clock()
        placed = scheduler.schedule(now)
        result.busy_seconds += clock() - started
        result.calls += 1
        for placement in placed:
            limit = math.inf if placement.walltime is None else placement.walltime
            seq += 1
            heapq.heappush(
                ends, (now + min(runtime[placement.task_id], limit), seq, placement.task_id)
            )
            began[placement.task_id] = now
            result.placements.append((now, placement))
        res = scheduler.reservation if track_reservations else None
        if res is not None:
            result.last_reservations[res.task_id] = res.time
            if res.time < math.inf:
                old = result.reservations.get(res.task_id, math.inf)
                result.reservations[res.task_id] = min(old, res.time)
        if on_schedule is not None:
            on_schedule(now, placed)
        result.makespan = max(result.makespan, now)
    started_ids = {p.task_id for _, p in result.placements}
    result.unstarted = [t.request.task_id for t in tasks if t.request.task_id not in started_ids]
    return result
