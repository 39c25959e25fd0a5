"""What both sides of ``bench_core.py`` share: the workloads, the timed drivers, the statistics.

A *side* is anything that turns "run ``true``" and "hold N nodes and sleep S seconds" into
``concurrent.futures.Future`` objects: the mpiengine Executor and Parsl's HighThroughputExecutor
in MPI mode both do. The drivers here run the same workload, timed the same way, on either, so
the figures differ only by the system under test.

Every wait is bounded: a future that has not resolved when the run stops making progress (no
future resolved for ``stall`` seconds) or when the overall deadline passes is counted as lost,
as is one that raised or whose command exited non-zero.
"""

from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "MODES",
    "NODES",
    "WORKLOADS",
    "PackingTask",
    "Side",
    "Waited",
    "kill_pids",
    "lower_bound",
    "packing_workload",
    "percentile",
    "run_dispatch",
    "run_latency",
    "run_packing",
    "wait_all",
    "walltime_for",
    "workload",
]

#: Virtual nodes on both sides.
NODES = 16
#: Node counts and sleep range of the packing workload.
PACK_NODE_CHOICES = (1, 2, 4, 8)
PACK_SLEEP = (0.2, 2.0)


class Side(Protocol):
    """One system under test."""

    name: str

    def submit_true(self) -> Future[Any]:
        """Run ``true`` on 1 node x 1 rank."""
        ...

    def submit_sleep(self, nodes: int, seconds: float, walltime: float | None) -> Future[Any]:
        """Hold ``nodes`` whole nodes and sleep ``seconds``, with ``walltime`` if the side
        takes one (None: none given)."""
        ...


@dataclass(frozen=True)
class PackingTask:
    """One task of the packing workload."""

    nodes: int
    seconds: float


def packing_workload(count: int, seed: int) -> list[PackingTask]:
    """``count`` tasks, nodes from {1, 2, 4, 8}, sleeps uniform in 0.2-2.0 s (rounded to ms)."""
    rng = random.Random(seed)
    return [
        PackingTask(rng.choice(PACK_NODE_CHOICES), round(rng.uniform(*PACK_SLEEP), 3))
        for _ in range(count)
    ]


def alternating_workload(pairs: int = 20, seconds: float = 1.0) -> list[PackingTask]:
    """``pairs`` x (one task on every node, then a one-node task), each ``seconds`` long: a
    head that needs the whole block behind every small task (FIFO alternates: 1.9 x)."""
    return [PackingTask(n, seconds) for _ in range(pairs) for n in (NODES, 1)]


def long_head_workload(count: int = 16, scale: float = 1.0) -> list[PackingTask]:
    """One half-block task of 6 s, then ``count`` whole-block tasks of 0.5 s, then ``count``
    one-node tasks of 1 s (times x ``scale``): the small tasks fit beside the long one, the
    wide ones do not (the best is 14 s: 1.17 x the area bound)."""
    return (
        [PackingTask(NODES // 2, 6.0 * scale)]
        + [PackingTask(NODES, 0.5 * scale)] * count
        + [PackingTask(1, 1.0 * scale)] * count
    )


#: The packing workloads: name -> what it is. ``workload(name, ...)`` builds one.
WORKLOADS = {
    "packing": "{count} tasks of 1/2/4/8 whole nodes, sleep 0.2-2.0 s (seed {seed})",
    "alternating": "{count} x (16-node 1 s, then 1-node 1 s), alternating",
    "long-head": "one 8-node 6 s, then {count} x 16-node 0.5 s, then {count} x 1-node 1 s",
}

#: How the tasks give walltimes: none; three times their sleep (a user's usual guess); their
#: sleep plus ``EXACT_MARGIN`` (what starting the process takes, so that no task is killed).
MODES = ("none", "3x", "exact")
EXACT_MARGIN = 0.1


def workload(name: str, count: int, seed: int, quick: bool = False) -> list[PackingTask]:
    """The workload ``name`` (see :data:`WORKLOADS`) of ``count`` tasks (pairs for
    alternating, wide and small tasks each for long-head); ``quick``: times x 0.2."""
    if name == "packing":
        tasks = packing_workload(count, seed)
    elif name == "alternating":
        tasks = alternating_workload(count)
    elif name == "long-head":
        tasks = long_head_workload(count)
    else:
        raise ValueError(f"unknown workload {name!r}; known: {sorted(WORKLOADS)}")
    if quick:
        tasks = [PackingTask(t.nodes, round(t.seconds * 0.2, 3)) for t in tasks]
    return tasks


def walltime_for(mode: str, seconds: float) -> float | None:
    """The walltime a task of ``seconds`` gives in ``mode`` (see :data:`MODES`)."""
    if mode == "none":
        return None
    if mode == "3x":
        return 3 * seconds
    if mode == "exact":
        return seconds + EXACT_MARGIN
    raise ValueError(f"unknown walltime mode {mode!r}; known: {list(MODES)}")


def lower_bound(tasks: Sequence[PackingTask], nodes: int = NODES) -> float:
    """No schedule beats max(area / nodes, longest task)."""
    area = sum(t.nodes * t.seconds for t in tasks)
    return max(area / nodes, max((t.seconds for t in tasks), default=0.0))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest-rank; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Waited:
    """How a batch of futures ended."""

    done_at: dict[int, float] = field(default_factory=dict)  # index -> perf_counter, OK ones
    raised: int = 0
    nonzero: int = 0
    unresolved: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> int:
        return len(self.done_at)

    @property
    def lost(self) -> int:
        return self.raised + self.nonzero + self.unresolved

    def last(self, default: float) -> float:
        return max(self.done_at.values(), default=default)


def wait_all(futures: Sequence[Future[Any]], *, stall: float, deadline: float) -> Waited:
    """Wait for every future, giving up after ``stall`` s without progress or ``deadline`` s.

    The resolution time of each future is taken in its done-callback, i.e. when the system
    under test hands the result over, not when this loop notices it. The waiting thread wakes
    about once a second, not once per result: ``concurrent.futures.wait`` in a loop costs
    O(pending) per call and would steal the GIL from an in-process system under test.
    """
    stamps: dict[int, float] = {}
    cond = threading.Condition()
    total = len(futures)

    def stamp(index: int) -> Callable[[Future[Any]], None]:
        def done(_: Future[Any]) -> None:
            now = time.perf_counter()
            with cond:
                stamps[index] = now
                if len(stamps) == total:
                    cond.notify_all()

        return done

    for index, future in enumerate(futures):
        future.add_done_callback(stamp(index))
    end = time.monotonic() + deadline
    seen, progress_at = -1, time.monotonic()
    with cond:
        while len(stamps) < total:
            now = time.monotonic()
            if len(stamps) != seen:
                seen, progress_at = len(stamps), now
            if now >= end or now - progress_at >= stall:
                break  # out of time, or no progress for `stall` seconds: the rest are lost
            cond.wait(timeout=min(1.0, end - now, progress_at + stall - now))
    return _classify(futures, stamps, cond)


def _classify(futures: Sequence[Future[Any]], stamps: dict[int, float], lock: Any) -> Waited:
    waited = Waited()
    with lock:
        stamps = dict(stamps)
    for index, future in enumerate(futures):
        if not future.done() or index not in stamps:
            waited.unresolved += 1
            continue
        if future.cancelled() or future.exception() is not None:
            waited.raised += 1
            exc = None if future.cancelled() else future.exception()
            waited.errors[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
            continue
        code = getattr(future.result(), "returncode", 0)
        if code:
            waited.nonzero += 1
            waited.errors[f"returncode {code}"] += 1
            continue
        waited.done_at[index] = stamps[index]
    return waited


def _warm(side: Side, count: int, deadline: float) -> Waited:
    return wait_all([side.submit_true() for _ in range(count)], stall=deadline, deadline=deadline)


def _errors(waited: Waited) -> list[str]:
    return [f"{n} x {text}" for text, n in waited.errors.most_common(3)]


def run_dispatch(
    side: Side, tasks: int, *, warmup: int, stall: float, repeat: int = 1
) -> dict[str, Any]:
    """``tasks`` trivial tasks submitted at once, ``repeat`` times: tasks/s from the first
    submit to the last result (the median run is reported; every run is kept)."""
    warm_start = time.perf_counter()
    warm = _warm(side, warmup, deadline=120.0)
    warmup_s = time.perf_counter() - warm_start
    runs = [_dispatch_once(side, tasks, stall) for _ in range(max(1, repeat))]
    median = sorted(runs, key=lambda run: run["tasks_per_s"])[len(runs) // 2]
    return median | {
        "runs_tasks_per_s": [run["tasks_per_s"] for run in runs],
        "lost": sum(run["lost"] for run in runs) + warm.lost,
        "errors": [e for run in runs for e in run["errors"]] + _errors(warm),
        "warmup_s": warmup_s,
    }


def _dispatch_once(side: Side, tasks: int, stall: float) -> dict[str, Any]:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    futures = [side.submit_true() for _ in range(tasks)]
    submitted = time.perf_counter() - start
    waited = wait_all(futures, stall=stall, deadline=stall + tasks * 0.05)
    elapsed = waited.last(start) - start
    return {
        "tasks": tasks,
        "seconds": elapsed,
        "submit_seconds": submitted,
        "tasks_per_s": waited.ok / elapsed if elapsed > 0 else 0.0,
        "lost": waited.lost,
        "load": load,
        "errors": _errors(waited),
    }


def run_latency(side: Side, rounds: int, *, warmup: int, timeout: float) -> dict[str, Any]:
    """``rounds`` sequential round trips (submit ``true``, wait for its result), in ms."""
    warm = _warm(side, warmup, deadline=120.0)
    samples: list[float] = []
    lost = 0
    errors: Counter[str] = Counter()
    for _ in range(rounds):
        start = time.perf_counter()
        future = side.submit_true()
        try:
            result = future.result(timeout=timeout)
        except Exception as exc:  # lost: count it, keep going
            lost += 1
            errors[type(exc).__name__] += 1
            continue
        if getattr(result, "returncode", 0):
            lost += 1
            errors[f"returncode {result.returncode}"] += 1
            continue
        samples.append((time.perf_counter() - start) * 1e3)
    return {
        "rounds": rounds,
        "p50_ms": percentile(samples, 50),
        "p95_ms": percentile(samples, 95),
        "min_ms": min(samples, default=math.nan),
        "max_ms": max(samples, default=math.nan),
        "lost": lost + warm.lost,
        "errors": [f"{n} x {text}" for text, n in errors.most_common(3)] + _errors(warm),
    }


def run_packing(
    side: Side,
    workload: Sequence[PackingTask],
    *,
    warmup: int,
    stall: float,
    deadline: float,
    mode: str = "none",
) -> dict[str, Any]:
    """Submit the whole workload at once, with walltimes as ``mode`` says; makespan against
    the area lower bound, and the largest task's wait: the longest time a task of the most
    nodes spent between its submit and its result beyond its own sleep (its queueing, plus
    the start and report of one process)."""
    warm = _warm(side, warmup, deadline=120.0)
    start = time.perf_counter()
    futures = []
    submitted = []
    for t in workload:
        submitted.append(time.perf_counter())
        futures.append(side.submit_sleep(t.nodes, t.seconds, walltime_for(mode, t.seconds)))
    waited = wait_all(futures, stall=stall, deadline=deadline)
    makespan = waited.last(start) - start
    bound = lower_bound(workload)
    area = sum(t.nodes * t.seconds for t in workload)
    done_area = sum(workload[i].nodes * workload[i].seconds for i in waited.done_at)
    widest = max((t.nodes for t in workload), default=0)
    waits = [
        done - submitted[i] - workload[i].seconds
        for i, done in waited.done_at.items()
        if workload[i].nodes == widest
    ]
    return {
        "tasks": len(workload),
        "area_node_s": area,
        "lower_bound_s": bound,
        "makespan_s": makespan,
        "ratio": makespan / bound if bound else math.nan,
        "utilisation": done_area / (NODES * makespan) if makespan > 0 else math.nan,
        "completed": waited.ok,
        "lost": waited.lost,
        "largest_wait_s": max(waits, default=math.nan),
        "raised": waited.raised,
        "unresolved": waited.unresolved,
        "warmup_lost": warm.lost,
        "errors": _errors(waited) + _errors(warm),
    }


def kill_pids(pids: Iterable[tuple[int, float]], grace: float = 2.0) -> list[int]:
    """SIGTERM then SIGKILL each (pid, create_time) still alive; returns the pids signalled.

    The create time guards against a recycled pid: a process is signalled only if it is the
    very one that was recorded.
    """
    import psutil

    alive: list[psutil.Process] = []
    for pid, created in pids:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 0.01 and proc.status() != "zombie":
                proc.send_signal(signal.SIGTERM)
                alive.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    _, still = psutil.wait_procs(alive, timeout=grace)
    for proc in still:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(still, timeout=grace)
    return [p.pid for p in alive]


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (Linux), so they can be found.

    Parsl's LocalProvider starts the worker pool in the background of a shell that exits at
    once; without this the pool re-parents to init and no descendant walk finds it.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def reap_children() -> int:
    """Collect exit statuses of any finished children (orphans re-parented to a subreaper)."""
    reaped = 0
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped += 1


def descendants(pid: int | None = None) -> set[tuple[int, float]]:
    """(pid, create_time) of every live descendant of ``pid`` (default: this process)."""
    import psutil

    try:
        children = psutil.Process(pid or os.getpid()).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    found: set[tuple[int, float]] = set()
    for child in children:
        try:
            found.add((child.pid, child.create_time()))
        except psutil.NoSuchProcess:
            continue
    return found
