"""The scheduling policy: priority with aging, FIFO among equals, EASY backfill.

How ``schedule(now)`` decides, in order:

1. Tasks are ordered by the key ``(submit_time - priority * aging_interval, arrival)``: higher
   priority first, FIFO among equals, and a task that has waited ``aging_interval`` seconds
   counts as one priority level higher, so a stream of higher-priority tasks cannot starve
   it. The key never changes, so the queue is never re-sorted.
2. The first waiting task (the head) starts as soon as it fits in one block: on each of
   ``num_nodes`` nodes it needs ``ranks_per_node * cpus_per_rank`` free cores and
   ``ranks_per_node * gpus_per_rank`` free GPUs (wholly free nodes if ``exclusive``), and it
   must end within the block's walltime. Then the next task is the head, and so on.
3. When the head does not fit, it gets a reservation (see :meth:`BlockPool.earliest`): the
   earliest time and the nodes at which it will fit, from running tasks' estimated ends:
   start + estimate, where a task's estimate is the smaller of its predicted runtime
   (``TaskRequest.estimate``/``kind``, learned by the endpoint) and its walltime; the block's
   end for a task with neither; never, for such a task on an unlimited block.
4. Backfill: up to ``backfill_depth`` later tasks may start now, in order, if they fit and
   cannot delay the head by estimate: they end by the reservation time, or they avoid its
   nodes. A task of unknown runtime never ends "by" a reservation.
5. Predictions are beliefs, not limits (only the walltime kills): a task that outlives its
   estimate gets a longer one at once (see ``estimates``) and the head's reservation is
   computed again, so backfill never delays the head beyond its reservation as last
   computed. :attr:`Scheduler.next_wake` says when to call ``schedule`` for that.
6. No history yet (the cold start): when the head waits for a task whose runtime nobody knows
   (a *blind* reservation), its free reserved nodes would idle for an unknown time, which is
   how FIFO packs badly (1.9 x the area bound on 20 x (16-node, 1-node) alternating tasks).
   Tasks smaller than the head (fewer nodes, or as many with fewer cores each) may then
   borrow them. The bet is bounded: a borrower delays the head by at most its own runtime
   beyond the unknown end the head waits for anyway, and it is smaller than the head, so it
   cannot hold all the head needs; meanwhile every completion teaches the endpoint a runtime,
   so the blind phase is short.
7. Aging bound: backfill by beliefs (predictions, borrowing) may delay the head when they
   are wrong, so it lasts ``lend_interval`` seconds after the task became the head. Then
   only walltimes count: a later task may start only if the head's reservation rests on
   walltimes alone (the tasks it waits for are killed by then) and the task's own walltime
   ends it by then, or it avoids the reserved nodes; otherwise nothing starts before the
   head. So the head starts by its (sure) reservation, or within ``lend_interval`` plus the
   longest runtime among the tasks running when lending ended.
8. A task that no current block can hold (too large, or too long for what is left of every
   block) waits for a new block without blocking the others (no reservation then).

Liveness: by 7, the head starts in bounded time; every task becomes the head in finite time
(aging bounds how many can be put ahead of it). So ``backfill_depth`` bounds the work per call
without risking starvation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from heapq import heappop, heappush

from mpiengine.placement import Placement

from .admission import check_fits
from .estimates import Estimates
from .fit import find_fit, start
from .model import BlockInfo, BlockShape, Demand, Reservation, TaskRequest
from .pool import BlockPool
from .reservation import Res, reserve
from .taskqueue import Eff, Entry, ShapeClass, TaskQueue, covered

__all__ = ["Scheduler"]


class Scheduler:
    """Maps waiting tasks onto the free node/core/GPU slots of the blocks. Pure policy.

    No clock, no I/O, no threads: the caller passes ``now`` and tells it what happened
    (blocks added or gone, tasks submitted, cancelled or ended); :meth:`schedule` answers
    with the placements to launch.

    Args:
        aging_interval: seconds of waiting worth one priority level (> 0, finite).
        backfill_depth: how many task shapes after the head's one call may try to backfill
            (0 disables backfill; tasks of one shape are tried as one). It bounds the work per
            call; the head always progresses, so no task starves whatever the depth. The
            default, 32, is where the packing benchmark's makespan stops improving much
            (16: 1.102 x the area bound on average over 10 seeds, 32: 1.088, 64: 1.079) while
            the cost per placement at scale stays that of 16 (64 costs about 15% more).
        lend_interval: seconds after a task became the head during which later tasks may
            start before it (backfill, and borrowing its reserved nodes while it waits for a
            task of unknown runtime); then nothing starts before it (>= 0; 0 never
            backfills). Default: ``aging_interval``, the same budget of waiting that is worth
            one priority level.

    Raises:
        ValueError: an argument is out of range.
    """

    def __init__(
        self,
        *,
        aging_interval: float = 600.0,
        backfill_depth: int = 32,
        lend_interval: float | None = None,
    ) -> None:
        if not (0 < aging_interval < math.inf):
            raise ValueError(f"aging_interval={aging_interval!r}: must be finite and > 0")
        if backfill_depth < 0:
            raise ValueError(f"backfill_depth={backfill_depth!r}: must be >= 0")
        if lend_interval is None:
            lend_interval = aging_interval
        if not (0 <= lend_interval < math.inf):
            raise ValueError(f"lend_interval={lend_interval!r}: must be finite and >= 0")
        self._aging = float(aging_interval)
        self._depth = backfill_depth
        self._lend = float(lend_interval)
        self._pools: dict[str, BlockPool] = {}
        self._queue = TaskQueue()
        self._running: dict[str, BlockPool] = {}
        self._estimates = Estimates(self._running)
        self._seq = 0
        self._res: Res | None = None
        self._head_since: tuple[int, float] = (-1, 0.0)  # (seq, when it became the head)
        self._last_pool: tuple[int, BlockPool | None] = (-1, None)  # (seq, its last block)
        # Failure memos: a shape that failed at tick t fails again on every block not
        # released since t (under the same reservation, for backfill); kept per shape in
        # the queue's ShapeClass.
        self._tick = 0
        self._head_failed: tuple[int, int] = (-1, -1)
        self._res_mattered = False  # the last failed _place skipped reserved nodes
        self._last_pass = -1  # the tick of the last backfill pass
        # Submissions, cancellations and learned estimates: with the tick (releases) and the
        # reservation, what a backfill pass depends on. A call where none of them changed (a
        # wake-up for a task that outlived its estimate off the head's nodes) runs no pass: a
        # later now lets nothing more start, and shapes that a pass cut short by the depth
        # did not reach wait for the next event, as they would without wake-ups.
        self._version = 0
        self._passed: tuple[Res | None, int, int] = (None, -1, -1)

    # -- blocks ----------------------------------------------------------------------------

    def add_block(self, block: BlockInfo) -> None:
        """Make a block's nodes available.

        Raises:
            ValueError: a block with this id is already known.
        """
        if block.block_id in self._pools:
            raise ValueError(f"block {block.block_id!r} was already added")
        self._tick += 1
        self._pools[block.block_id] = BlockPool(block, self._tick)
        self._res = None  # the head may start earlier on the new block

    def remove_block(self, block_id: str) -> list[str]:
        """Forget a block (it ended or was lost).

        Returns:
            the ids of the tasks that were running on it, in start order; they no longer hold
            slots (resubmit them to retry).

        Raises:
            KeyError: no such block.
        """
        pool = self._pools.pop(block_id)
        for task_id, run in pool.tasks.items():
            del self._running[task_id]
            self._estimates.ended(run)
        if self._res is not None and self._res.pool is pool:
            self._res = None
        return list(pool.tasks)

    def exclude_node(self, block_id: str, node: str) -> list[str]:
        """Never place a task on ``node`` of ``block_id`` again (the node failed).

        Tasks running there keep their slots until :meth:`release` (kill them first: their
        other nodes must not be reused while their ranks still run); the slots on ``node``
        are then not offered again. A task needing more nodes than the block has left no
        longer fits it (``demand`` then asks for a new block). Repeating it changes nothing.

        Returns:
            the ids of the tasks running on ``node``, in start order (none the second time).

        Raises:
            KeyError: no such block.
            ValueError: ``node`` is not one of its nodes.
        """
        pool = self._pools[block_id]
        try:
            index = pool.info.nodes.index(node)
        except ValueError:
            raise ValueError(f"block {block_id!r} has no node {node!r}") from None
        hit = pool.exclude(index)
        # Less room only: failure memos stay true; a reservation on this block may not.
        if self._res is not None and self._res.pool is pool:
            self._res = None
        return hit

    def retire_block(self, block_id: str) -> None:
        """Place nothing more on a block (it is being replaced); running tasks go on.

        It shows in :meth:`idle_blocks` once they have ended.

        Raises:
            KeyError: no such block.
        """
        pool = self._pools[block_id]
        for index in range(pool.size):
            pool.exclude(index)
        if self._res is not None and self._res.pool is pool:
            self._res = None

    def idle_blocks(self) -> list[str]:
        """Ids of the blocks that run no task (candidates for release), oldest first."""
        return [block_id for block_id, pool in self._pools.items() if not pool.tasks]

    # -- tasks -----------------------------------------------------------------------------

    @staticmethod
    def check_fits(req: TaskRequest, shapes: Iterable[BlockShape]) -> None:
        """Refuse at submit a task that no block of ``shapes`` can ever hold.

        Raises:
            TaskTooLarge: see :func:`mpiengine.scheduler.check_fits`.
        """
        check_fits(req, shapes)

    def submit(self, req: TaskRequest) -> None:
        """Queue a task. Call :meth:`check_fits` first: a task no block holds waits forever.

        Raises:
            ValueError: a task with this id is already waiting or running.
        """
        task_id = req.task_id
        if task_id in self._queue or task_id in self._running:
            raise ValueError(f"task {task_id!r} is already waiting or running")
        self._seq += 1
        self._version += 1
        key = req.submit_time - req.priority * self._aging
        self._queue.add(key, self._seq, req)
        self._estimates.queued(req)

    def cancel(self, task_id: str) -> bool:
        """Remove a waiting task.

        Returns:
            True if it was waiting; False if it is running (kill it, then :meth:`release`)
            or unknown.
        """
        if task_id not in self._queue:
            return False
        self._estimates.dequeued(self._queue.remove(task_id))
        self._version += 1
        return True

    def release(self, task_id: str) -> bool:
        """A running task ended (or was killed): free its slots.

        Returns:
            True if it was running; False if unknown (for example already released by
            :meth:`remove_block`), so a repeated end notice is harmless.
        """
        pool = self._running.pop(task_id, None)
        if pool is None:
            return False
        self._tick += 1
        self._estimates.ended(pool.tasks[task_id])
        pool.give(task_id, self._tick)
        return True

    def set_estimate(self, kind: str, seconds: float) -> None:
        """Tasks of ``kind`` are now expected to run ``seconds`` (a prediction, not a limit).

        Waiting tasks of the kind take it; running tasks of the kind that started without an
        estimate take it from their start (so their end is no longer unknown). A kind with
        no such task is not remembered: its next task brings its estimate.

        Raises:
            ValueError: ``seconds`` is not finite and > 0.
        """
        if not (isinstance(seconds, int | float) and 0 < seconds < math.inf):
            raise ValueError(f"estimate {seconds!r} for {kind!r}: must be finite and > 0")
        self._version += 1
        if self._estimates.learn(kind, float(seconds)):
            self._res = None

    @property
    def next_wake(self) -> float | None:
        """When a running task outlives its estimate if it is still running then (call
        ``schedule`` at that time: its estimate is corrected and the head's reservation
        computed again); None when no running task has a predicted end."""
        return self._estimates.next_wake()

    # -- state -----------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """How many tasks wait."""
        return len(self._queue)

    @property
    def running(self) -> int:
        """How many tasks run."""
        return len(self._running)

    def is_waiting(self, task_id: str) -> bool:
        """Whether the task is queued."""
        return task_id in self._queue

    def is_running(self, task_id: str) -> bool:
        """Whether the task holds slots."""
        return task_id in self._running

    @property
    def reservation(self) -> Reservation | None:
        """The head task's current reservation, if :meth:`schedule` computed one."""
        res = self._res
        first = self._queue.first()
        if res is None or first is None or first[1] != res.seq:
            return None
        if res.pool is None:
            return Reservation(res.task_id, None, res.time, ())
        names = res.pool.info.nodes
        return Reservation(
            res.task_id,
            res.pool.info.block_id,
            res.time,
            tuple(names[i] for i in sorted(res.nodes)),
            res.blind,
        )

    def demand(self, now: float) -> Demand:
        """What the waiting tasks need beyond what is free (for scaling out).

        Args:
            now: the current time (whether the head fits what is left of each block).
        """
        free = sum(pool.free_nodes() for pool in self._pools.values())
        stuck = False
        first = self._queue.first()
        if first is not None:
            head = self._queue.request(first[2])
            stuck = not any(
                pool.need(head) is not None and pool.time_ok(now, head.walltime)
                for pool in self._pools.values()
            )
        wanted = self._queue.waiting_nodes
        return Demand(
            waiting_tasks=len(self._queue),
            waiting_nodes=wanted,
            free_nodes=free,
            extra_nodes=max(0, wanted - free),
            largest_task_nodes=self._queue.largest_nodes(),
            head_needs_new_block=stuck,
        )

    # -- the policy ------------------------------------------------------------------------

    def schedule(self, now: float) -> list[Placement]:
        """Start what may start now: the head tasks that fit, then backfill.

        Never raises for any state reached through the public methods. Bounded work: one fit
        check per started task and per shape tried (at most ``backfill_depth`` shapes), plus
        one reservation per new head (or per call while it is blind, or after a running task
        outlived its estimate). A shape that failed before is re-checked only on the blocks
        where tasks ended since (fewer free slots and a later ``now`` never help; a shorter
        estimate may).

        Args:
            now: the current time (the caller's clock, as used for walltimes and end times).

        Returns:
            the placements to launch, in decision order; those tasks are now running.
        """
        later = self._estimates.correct(now, self._res)
        if later is not None and self._res is not None:
            # A task on the head's nodes outlived its estimate: the reservation moves at once.
            # After a first, small correction (the noise of starting processes, mostly) to
            # the new end, with the same nodes (all free by then: a guarantee, if not always
            # the earliest); after a larger one, it is computed afresh.
            self._res = self._res.moved(later) if later < math.inf else None
        out: list[Placement] = []
        queue = self._queue
        pools = self._pools.values()
        while (first := queue.first()) is not None:
            for pool in pools:
                if pool.free_cores:
                    break
            else:  # every core is taken: nothing can start
                if self._res is None and self._depth:
                    self._reserve(first, now)  # but the head's reservation stays current
                return out
            # (seq, tick): the same submission failed at that tick
            since = self._head_failed[1] if self._head_failed[0] == first[1] else -1
            placed = self._place(first, now, None, since)
            if placed is None:
                self._head_failed = (first[1], self._tick)
                break
            out.append(placed)
        if first is None or not self._depth:
            return out
        res = self._reserve(first, now)
        passed = (res, self._tick, self._version)
        if passed[0] is self._passed[0] and passed[1:] == self._passed[1:]:
            return out  # nothing it depends on changed since the last pass
        self._backfill(first, now, res, out)
        self._passed = passed
        return out

    def _caps(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Per kind of request (shared, exclusive): the most free cores on one node and the
        most wholly free nodes in one block, over all blocks, and over the blocks released
        since the last backfill pass (the only ones where a shape that failed then may fit
        now). Starts a new pass."""
        last, self._last_pass = self._last_pass, self._tick
        cap_cores = cap_whole = new_cores = new_whole = 0
        for pool in self._pools.values():
            keys = pool.keys
            if not keys:
                continue
            cores = keys[-1][0]
            # A node with every core free has every GPU free: its key is the full one.
            whole = len(pool.buckets[pool.full_key]) if cores == pool.cpn else 0
            cap_cores = cores if cores > cap_cores else cap_cores
            cap_whole = whole if whole > cap_whole else cap_whole
            if pool.dirty > last:
                new_cores = cores if cores > new_cores else new_cores
                new_whole = whole if whole > new_whole else new_whole
        return (cap_cores, cap_whole), (new_cores, new_whole)

    def _estimate(self, cls: ShapeClass) -> float:
        """A waiting shape's estimate now (inf: unknown)."""
        if cls.kind is None:
            return cls.fixed
        return self._estimates.of(cls.kind, cls.shape[3])

    def _backfill(self, first: Entry, now: float, res: Res, out: list[Placement]) -> None:
        """Start later tasks that cannot delay the head (``res``), appending to ``out``."""
        if res.pool is not None and now >= res.lend_until and not res.sure:
            return  # it waited its lending interval, and its reservation is but a belief
        # Taken once per pass: placements only shrink the caps, so a stale value lets
        # through a task that then fails, never refuses one that fits.
        last = self._last_pass
        caps, new_caps = self._caps()
        # The head failed with no reservation to respect: whatever covers its shape fails too
        # whatever its estimate (covers is transitive, so the list need not be pruned).
        classes = self._queue.classes
        by_kind = self._estimates.by_kind
        n, c, g, walltime, exclusive, _ = classes[first[3]].shape
        failed: list[Eff] = [(n, c, g, walltime, exclusive, 0.0)]
        # The next class heads in order; a placed task's successor in its class joins them.
        todo = self._queue.class_heads(self._depth + 1)
        todo.reverse()
        todo.pop()  # the head
        later: list[Entry] = []  # successors, a heap
        for _ in range(self._depth):
            if later and (not todo or later[0] < todo[-1]):
                entry = heappop(later)
            elif todo:
                entry = todo.pop()
            else:
                break
            cls = classes[entry[3]]
            kind = cls.kind  # its estimate (self._estimate, inlined: hot)
            if kind is None:
                estimate = cls.fixed
            else:
                estimate = by_kind.get(kind, math.inf)
                if cls.shape[3] < estimate:
                    estimate = cls.shape[3]
            # Failures under another reservation, or with a longer estimate, say nothing.
            since_res = (
                cls.failed_at if cls.failed_res is res and estimate >= cls.failed_est else -1
            )
            since = cls.failed_free if cls.failed_free > since_res else since_res
            # Failed at or after the last pass: only new room can help.
            if cls.size > (new_caps if since >= last else caps)[cls.exclusive]:
                continue
            n, c, g, walltime, exclusive, _ = cls.shape
            eff = (n, c, g, walltime, exclusive, estimate)
            if covered(failed, eff):
                continue
            placed = self._place(entry, now, res, since, cls, estimate)
            if placed is None:
                # Whatever the reservation only if the blocks skipped failed so too.
                if not self._res_mattered and cls.failed_free >= since_res:
                    cls.failed_free = self._tick
                cls.failed_at, cls.failed_res, cls.failed_est = self._tick, res, estimate
                failed.append(eff)
                continue
            out.append(placed)
            if res.blind:  # it may have borrowed reserved nodes: reserve afresh next time
                res.tick = -1
            successor = cls.tasks.peek()  # the next of its class
            if successor is not None:
                heappush(later, successor)

    def _place(
        self,
        entry: Entry,
        now: float,
        res: Res | None,
        since: int,
        cls: ShapeClass | None = None,
        estimate: float | None = None,
    ) -> Placement | None:
        """Start a waiting task now if it fits (see :func:`find_fit`), else None."""
        queue = self._queue
        task_id = entry[2]
        req = queue.requests[task_id]
        if cls is None:
            cls = queue.classes[entry[3]]
        if estimate is None:
            estimate = self._estimate(cls)
        fit, self._res_mattered = find_fit(
            self._pools.values(), req, cls.shape, estimate, now, res, since
        )
        if fit is None:
            return None
        queue.remove(task_id)
        self._estimates.dequeued(req)
        self._seq += 1
        pool = fit[0]
        self._running[task_id] = pool
        placement, bound = start(req, fit, now, self._seq, estimate)
        self._estimates.started(pool, req, estimate, now, bound)
        return placement

    def _reserve(self, first: Entry, now: float) -> Res:
        """The head's reservation: cached while the head, the blocks and its time hold.

        A cached reservation stays valid as tasks end early (its nodes only get freer) and as
        tasks are backfilled (they respect it); only its time may then be later than a fresh
        one would be, which is still a guarantee. A blind one is computed again after any
        release (the task of unknown runtime it waits for may be gone), and after a task
        borrowed its nodes.
        """
        seq = first[1]
        if self._head_since[0] != seq:
            self._head_since = (seq, now)
        res = self._res
        if (
            res is None
            or res.seq != seq
            or res.time < now
            or (res.blind and res.tick != self._tick)
        ):
            head = self._queue.request(first[2])
            lend_until = self._head_since[1] + self._lend
            likely = self._last_pool if self._last_pool[0] == seq else None
            res = self._res = reserve(
                self._pools.values(), head, seq, now, lend_until, self._tick,
                None if likely is None else likely[1],
            )  # fmt: skip
            self._last_pool = (seq, res.pool)
        return res
