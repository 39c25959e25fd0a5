"""Where a task fits now, and starting it there: the one-task step of the policy."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import fields
from itertools import filterfalse, islice

from mpiengine.placement import Placement

from .model import TaskRequest
from .pool import BlockPool, Need
from .reservation import Res
from .taskqueue import Shape

__all__ = ["Fit", "find_fit", "make_placement", "start"]

# (block, nodes, cores and GPUs per node)
Fit = tuple[BlockPool, list[int], Need]


def find_fit(
    pools: Iterable[BlockPool],
    req: TaskRequest,
    shape: Shape,
    estimate: float,
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
        estimate: its estimate now (the smaller of prediction and walltime; inf: unknown).
        now: the current time; the task must end within its block's walltime.
        res: the head's reservation, whose nodes the task may use only if it ends by the
            reservation time by estimate (or borrows them, see ``Res.excludes``); None for
            the head itself.
        since: skip blocks not released since this tick (the shape failed then).

    Returns:
        the fit or None, and whether reserved nodes were among those refused (if so, the
        failure holds for this reservation only).
    """
    n, c, g, _, exclusive, _ = shape
    if exclusive:
        return _find_whole(pools, shape, req.walltime, estimate, now, res, since)
    walltime = req.walltime
    need = (c, g)
    best: Fit | None = None
    best_whole = n + 1
    res_mattered = False
    for pool in pools:
        if pool.dirty <= since or n > pool.usable or c > pool.cpn or g > pool.gpn:
            continue
        keys = pool.keys
        # Quick refusals before collecting nodes: no node, or too few cores, free enough;
        # or, once a fit is found, no partly used node that could spare a whole one.
        if not keys or keys[-1][0] < c or pool.free_cores < c * n:
            continue
        first = bisect_left(keys, need)
        if first == len(keys) or (best is not None and keys[first] == pool.full_key):
            continue
        if not pool.time_ok(now, walltime):
            continue
        exclude = (
            res.nodes
            if res is not None and res.excludes(pool, now, estimate, shape[3], (n, c))
            else None
        )
        nodes, whole, skipped = pool.collect(n, need, exclude)
        if len(nodes) < n:
            res_mattered |= skipped
            continue
        if whole < best_whole:
            best, best_whole = (pool, nodes, need), whole
            if not whole:  # no other block can use fewer wholly free nodes
                break
    return best, res_mattered


def _find_whole(
    pools: Iterable[BlockPool],
    shape: Shape,
    walltime: float | None,
    estimate: float,
    now: float,
    res: Res | None,
    since: int,
) -> tuple[Fit | None, bool]:
    """:func:`find_fit` for an exclusive task: ``n`` wholly free nodes in the first block
    that has them (every fit uses ``n`` wholly free nodes, so the first one wins)."""
    n, c, g, wall, _, _ = shape
    res_mattered = False
    for pool in pools:
        if pool.dirty <= since or c > pool.cpn or g > pool.gpn:
            continue
        free = pool.buckets.get(pool.full_key)
        if free is None or len(free) < n or not pool.time_ok(now, walltime):
            continue
        if res is not None and res.excludes(pool, now, estimate, wall, (n, c)):
            # In bucket order, skipping the reserved nodes (which pile up free while the
            # head waits for the rest: at C speed).
            nodes = list(islice(filterfalse(res.nodes.__contains__, free), n))
            if len(nodes) < n:  # there are n free nodes: reserved ones were refused
                res_mattered = True
                continue
        else:
            nodes = list(islice(free, n))
        return (pool, nodes, pool.full_key), res_mattered
    return None, res_mattered


def start(
    req: TaskRequest, fit: Fit, now: float, seq: int, estimate: float
) -> tuple[Placement, float]:
    """Take the slots of ``fit`` for ``req`` and describe them as a :class:`Placement`.

    A task without walltime gets its block's remaining time (None on an unlimited block):
    that, and never its ``estimate``, is the limit it is killed at.

    Returns:
        the placement, and the task's kill time (``now`` + walltime; inf without one).
    """
    pool, nodes, need = fit
    end_time = pool.info.end_time
    walltime = req.walltime
    if walltime is not None:
        bound = now + walltime
    elif end_time is not None:
        walltime, bound = end_time - now, end_time
    else:
        bound = math.inf
    est_end = now + estimate
    if est_end > bound:
        est_end = bound
    nodes.sort()
    cores, gpus = pool.take(req.task_id, nodes, need, est_end, seq)
    names = pool.info.nodes
    placement = make_placement(
        req.task_id,
        pool.info.block_id,
        tuple(map(names.__getitem__, nodes)),
        req.ranks_per_node,
        req.cpus_per_rank,
        req.gpus_per_rank,
        cores,
        gpus,
        req.exclusive,
        walltime,
    )
    return placement, bound


_FIELDS = (
    "task_id",
    "block_id",
    "nodes",
    "ranks_per_node",
    "cpus_per_rank",
    "gpus_per_rank",
    "cores",
    "gpus",
    "exclusive",
    "walltime",
)
# Placement is a frozen dataclass with these fields and no __post_init__ or slots: set its
# fields on a bare instance the way its generated __init__ does (object.__setattr__, which
# keeps them inline, with no __dict__ to build), without the call through keyword arguments:
# two thirds of the cost, once per placement. Should Placement change, the check fails and
# its __init__ is used (tests/unit/test_scheduler.py notices).
FAST_PLACEMENT = (
    tuple(f.name for f in fields(Placement)) == _FIELDS
    and not hasattr(Placement, "__post_init__")
    and "__slots__" not in vars(Placement)
)


def make_placement(
    task_id: str,
    block_id: str,
    nodes: tuple[str, ...],
    ranks_per_node: int,
    cpus_per_rank: int,
    gpus_per_rank: int,
    cores: tuple[tuple[int, ...], ...],
    gpus: tuple[tuple[int, ...], ...],
    exclusive: bool,
    walltime: float | None,
) -> Placement:
    """``Placement(task_id, ..., walltime)``, equal to what its constructor returns, faster."""
    if not FAST_PLACEMENT:
        return Placement(
            task_id=task_id,
            block_id=block_id,
            nodes=nodes,
            ranks_per_node=ranks_per_node,
            cpus_per_rank=cpus_per_rank,
            gpus_per_rank=gpus_per_rank,
            cores=cores,
            gpus=gpus,
            exclusive=exclusive,
            walltime=walltime,
        )
    placement = object.__new__(Placement)
    put = object.__setattr__
    put(placement, "task_id", task_id)
    put(placement, "block_id", block_id)
    put(placement, "nodes", nodes)
    put(placement, "ranks_per_node", ranks_per_node)
    put(placement, "cpus_per_rank", cpus_per_rank)
    put(placement, "gpus_per_rank", gpus_per_rank)
    put(placement, "cores", cores)
    put(placement, "gpus", gpus)
    put(placement, "exclusive", exclusive)
    put(placement, "walltime", walltime)
    return placement
