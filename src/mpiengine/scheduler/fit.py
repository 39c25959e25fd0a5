"""Where a task fits now, and starting it there: the one-task step of the policy."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable

from mpiengine.placement import Placement

from .model import TaskRequest
from .pool import BlockPool, Need
from .reservation import Res
from .taskqueue import Shape

__all__ = ["Fit", "find_fit", "start"]

# (block, nodes, cores and GPUs per node)
Fit = tuple[BlockPool, list[int], Need]


def find_fit(
    pools: Iterable[BlockPool],
    req: TaskRequest,
    shape: Shape,
    now: float,
    res: Res | None,
    since: int,
) -> tuple[Fit | None, bool]:
    """The block and nodes where ``req`` can start now.

    Blocks are tried oldest first; a fit on partly used nodes only wins at once, otherwise
    the fit using the fewest wholly free nodes (whole nodes are kept for large tasks).

    Args:
        pools: the blocks.
        req: the task.
        shape: its shape (``shape_of(req)``, which is cheaper to read).
        now: the current time; the task must end within its block's walltime.
        res: the head's reservation, whose nodes the task may use only if it surely ends by
            the reservation time; None for the head itself.
        since: skip blocks not released since this tick (the shape failed then).

    Returns:
        the fit or None, and whether reserved nodes were among those refused (if so, the
        failure holds for this reservation only).
    """
    n, c, g, _, exclusive = shape
    walltime = req.walltime
    best: Fit | None = None
    best_whole = n + 1
    res_mattered = False
    for pool in pools:
        if pool.dirty <= since or n > pool.size or c > pool.cpn or g > pool.gpn:
            continue
        need = pool.full_key if exclusive else (c, g)
        keys = pool.keys
        # Quick refusals before collecting nodes: no node, or too few cores, free enough;
        # or, once a fit is found, no partly used node that could spare a whole one.
        if not keys or keys[-1][0] < need[0] or pool.free_cores < need[0] * n:
            continue
        if exclusive and pool.free_nodes() < n:
            continue
        first = bisect_left(keys, need)
        if first == len(keys) or (best is not None and keys[first] == pool.full_key):
            continue
        if not pool.time_ok(now, walltime):
            continue
        exclude = res.nodes if res is not None and res.excludes(pool, now, walltime) else None
        nodes, whole, skipped = pool.collect(n, need, exclude)
        if len(nodes) < n:
            res_mattered |= skipped
            continue
        if whole < best_whole:
            best, best_whole = (pool, nodes, need), whole
            if not whole or exclusive:  # no other block can use fewer wholly free nodes
                break
    return best, res_mattered


def start(req: TaskRequest, fit: Fit, now: float, seq: int) -> Placement:
    """Take the slots of ``fit`` for ``req`` and describe them as a :class:`Placement`.

    A task without walltime gets its block's remaining time (None on an unlimited block).
    """
    pool, nodes, need = fit
    end_time = pool.info.end_time
    walltime = req.walltime
    if walltime is not None:
        est_end = now + walltime
    elif end_time is not None:
        walltime, est_end = end_time - now, end_time
    else:
        est_end = math.inf
    nodes.sort()
    cores, gpus = pool.take(req.task_id, nodes, need, est_end, seq)
    names = pool.info.nodes
    return Placement(
        task_id=req.task_id,
        block_id=pool.info.block_id,
        nodes=tuple(map(names.__getitem__, nodes)),
        ranks_per_node=req.ranks_per_node,
        cpus_per_rank=req.cpus_per_rank,
        gpus_per_rank=req.gpus_per_rank,
        cores=cores,
        gpus=gpus,
        exclusive=req.exclusive,
        walltime=walltime,
    )
