"""The head task's reservation: when and where it is guaranteed to start (EASY backfill)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from .model import TaskRequest
from .pool import BlockPool

__all__ = ["Res", "reserve"]


class Res:
    """A reservation as the scheduler uses it (node numbers, not names).

    Attributes:
        task_id: the head task.
        seq: its submission number (a resubmitted task id is another task).
        pool: its block; None when no current block can ever hold it (nothing reserved).
        time: the latest start under the running tasks' estimates; ``math.inf`` when it
            waits for tasks that never end by estimate (no walltime, no estimate, unlimited
            block).
        nodes: the reserved node numbers in ``pool``.
        sure: the time rests on walltimes alone (kill times), not on predictions.
        blind: the time waits for a task whose runtime nobody knows (it is inf).
        lend_until: until then, beliefs may steer backfill (predictions; while blind,
            smaller tasks borrow the reserved nodes); after it, only walltimes do.
        size: the head's (nodes, cores per node): what "smaller" compares with.
        tick: the scheduler tick it was computed at (a blind one is recomputed after any
            release: the tasks it waits for may be gone).
    """

    __slots__ = (
        "blind",
        "lend_until",
        "nodes",
        "pool",
        "seq",
        "size",
        "sure",
        "task_id",
        "tick",
        "time",
    )

    def __init__(
        self,
        task_id: str,
        seq: int,
        pool: BlockPool | None,
        time: float,
        nodes: frozenset[int],
        sure: bool = True,
        blind: bool = False,
        lend_until: float = -math.inf,
        size: tuple[int, int] = (0, 0),
        tick: int = 0,
    ) -> None:
        self.task_id = task_id
        self.seq = seq
        self.pool = pool
        self.time = time
        self.nodes = nodes
        self.sure = sure
        self.blind = blind
        self.lend_until = lend_until
        self.size = size
        self.tick = tick

    def moved(self, time: float) -> Res:
        """The same reservation at a later ``time`` (its nodes are all free by then): a new
        object, so that failures remembered under this one are not taken for it."""
        return Res(
            self.task_id, self.seq, self.pool, time, self.nodes, False, self.blind,
            self.lend_until, self.size, self.tick,
        )  # fmt: skip

    def excludes(
        self,
        pool: BlockPool,
        now: float,
        estimate: float,
        walltime: float,
        size: tuple[int, int],
    ) -> bool:
        """Whether a task starting ``now`` in ``pool`` must avoid the reserved nodes.

        Until ``lend_until``, a task may use them if it ends by the reservation time by
        estimate (its ``estimate``: the smaller of its prediction and walltime; inf:
        unknown, which never does; nor does any when the time is inf), or if it is smaller
        than the head (``size``: nodes, then cores per node) while the reservation is blind:
        the head cannot use those nodes before a moment nobody knows. After it, only if its
        ``walltime`` (inf: none) ends it by then.
        """
        if pool is not self.pool:
            return False
        if now >= self.lend_until:
            return not (self.time != math.inf and now + walltime <= self.time)
        if self.time != math.inf and now + estimate <= self.time:
            return False
        return not (self.blind and size < self.size)


def reserve(
    pools: Iterable[BlockPool],
    head: TaskRequest,
    seq: int,
    now: float,
    lend_until: float = -math.inf,
    tick: int = 0,
    likely: BlockPool | None = None,
) -> Res:
    """The earliest start of ``head`` over all blocks (the first block on ties).

    Args:
        pools: the blocks, oldest first.
        head: the head task (which does not fit now).
        seq: its submission number.
        now: the current time.
        lend_until: until when a blind reservation lends its nodes to smaller tasks.
        tick: the scheduler's tick now.
        likely: a block to try first (the head's last one): the sooner a good time is
            found, the sooner the walks in the other blocks stop.

    Returns:
        the reservation; with no pool when no block can hold it within its walltime.
    """
    order = list(pools)
    rank = {id(pool): k for k, pool in enumerate(order)}
    if likely is not None and id(likely) in rank:
        order.remove(likely)
        order.insert(0, likely)
    best: tuple[float, BlockPool, list[int], bool, bool] | None = None
    limit = math.inf
    for pool in order:
        need = pool.need(head)
        if need is None or not pool.time_ok(now, head.walltime):
            continue
        found = pool.earliest(head.num_nodes, need, now, head.walltime, limit)
        if found is None:
            continue
        # Ties go to the older block, whatever the order tried.
        if best is None or (found[0], rank[id(pool)]) < (best[0], rank[id(best[1])]):
            best = (found[0], pool, found[1], found[2], found[3])
            limit = found[0]
    size = (head.num_nodes, head.cores_per_node)
    if best is None:
        return Res(head.task_id, seq, None, math.inf, frozenset(), size=size, tick=tick)
    time, pool, nodes, sure, blind = best
    return Res(head.task_id, seq, pool, time, frozenset(nodes), sure, blind, lend_until, size, tick)
