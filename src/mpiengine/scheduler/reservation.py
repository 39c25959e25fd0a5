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
        time: the latest start; ``math.inf`` when it waits for tasks that never end by
            estimate (no walltime, unlimited block).
        nodes: the reserved node numbers in ``pool``.
    """

    __slots__ = ("nodes", "pool", "seq", "task_id", "time")

    def __init__(
        self, task_id: str, seq: int, pool: BlockPool | None, time: float, nodes: frozenset[int]
    ) -> None:
        self.task_id = task_id
        self.seq = seq
        self.pool = pool
        self.time = time
        self.nodes = nodes

    def excludes(self, pool: BlockPool, now: float, walltime: float | None) -> bool:
        """Whether a task of ``walltime`` starting ``now`` in ``pool`` must avoid the nodes.

        Only a task known to end by the reservation time may use them; a task without
        walltime never is, nor is any task when the time is unknown (inf).
        """
        if pool is not self.pool:
            return False
        return walltime is None or self.time == math.inf or now + walltime > self.time


def reserve(pools: Iterable[BlockPool], head: TaskRequest, seq: int, now: float) -> Res:
    """The earliest start of ``head`` over all blocks (the first block on ties).

    Args:
        pools: the blocks, oldest first.
        head: the head task (which does not fit now).
        seq: its submission number.
        now: the current time.

    Returns:
        the reservation; with no pool when no block can hold it within its walltime.
    """
    best: tuple[float, BlockPool, list[int]] | None = None
    limit = math.inf
    for pool in pools:
        need = pool.need(head)
        if need is None or not pool.time_ok(now, head.walltime):
            continue
        found = pool.earliest(head.num_nodes, need, now, head.walltime, limit)
        if found is not None and (best is None or found[0] < best[0]):
            best = (found[0], pool, found[1])
            limit = found[0]
    if best is None:
        return Res(head.task_id, seq, None, math.inf, frozenset())
    return Res(head.task_id, seq, best[1], best[0], frozenset(best[2]))
