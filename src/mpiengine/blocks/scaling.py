"""When to ask for blocks and when to give them back: pure functions of a snapshot.

The block manager calls these on every engine tick; they read no clock and do no I/O, so the
unit tests state the rules directly.

Scale out (:func:`blocks_to_add`), never above ``max_blocks`` counting blocks still pending:

1. keep at least ``min_blocks`` (connected or pending);
2. when tasks wait, ask for enough blocks to cover the nodes they need beyond the free ones,
   less the nodes of blocks already pending (``Demand.extra_nodes``);
3. when the first waiting task fits no current block (too large for what is free of their
   walltime) and nothing is pending, ask for one block.

Scale in (:func:`blocks_to_release`): a block that has run no task for ``max_idle_time``
seconds is released while no task waits (a waiting task may be about to start on it) and
more than ``min_blocks`` remain; a block idle within its last ``margin`` seconds is released at
once (nothing can start on it any more, and it frees the slot for a fresh block).

Replacement (:func:`needs_replacement`): a block of which fewer than half the nodes are usable
(the others failed) is retired: nothing new starts on it, one block is requested in its place,
and it is released once its running tasks end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mpiengine.scheduler import Demand

__all__ = ["backoff_delay", "blocks_to_add", "blocks_to_release", "needs_replacement"]


def blocks_to_add(
    demand: Demand,
    *,
    connected: int,
    pending: int,
    nodes_per_block: int,
    min_blocks: int,
    max_blocks: int,
) -> int:
    """How many blocks to request now (see the module docstring)."""
    total = connected + pending
    room = max_blocks - total
    if room <= 0:
        return 0
    want = max(0, min_blocks - total)
    if demand.waiting_tasks:
        extra = demand.extra_nodes - pending * nodes_per_block
        if extra > 0:
            want = max(want, math.ceil(extra / nodes_per_block))
        if demand.head_needs_new_block and pending == 0:
            want = max(want, 1)
    return min(want, room)


def blocks_to_release(
    now: float,
    idle_since: Mapping[str, float],
    end_times: Mapping[str, float | None],
    *,
    connected: int,
    waiting_tasks: int,
    min_blocks: int,
    max_idle_time: float,
    margin: float,
) -> list[str]:
    """Ids of idle blocks to release now, oldest idle first (see the module docstring).

    Args:
        now: the engine's clock.
        idle_since: for each idle connected block, since when it has run nothing.
        end_times: each block's end on the same clock (None: unlimited).
        connected: connected blocks, idle or not.
        waiting_tasks: tasks waiting for nodes.
        min_blocks: blocks to keep.
        max_idle_time: seconds of idleness before a release.
        margin: seconds at a block's end in which no task may start.
    """
    out: list[str] = []
    keep = connected
    for block_id, since in sorted(idle_since.items(), key=lambda kv: kv[1]):
        end = end_times.get(block_id)
        ending = end is not None and end - now <= margin
        if waiting_tasks and not ending:
            continue
        if now - since < max_idle_time and not ending:
            continue
        if keep <= min_blocks and not ending:
            continue
        out.append(block_id)
        keep -= 1
    return out


def needs_replacement(nodes: int, failed: int) -> bool:
    """Whether a block of ``nodes`` nodes, ``failed`` of them failed, is to be replaced: fewer
    than half its nodes are usable (one failed node of two leaves half: kept)."""
    return 2 * (nodes - failed) < nodes


def backoff_delay(failures: int, cap: float) -> float:
    """Seconds before the next try after ``failures`` failures in a row: 1, 2, 4 ... cap."""
    if failures <= 0:
        return 0.0
    return float(min(cap, 2.0 ** min(failures - 1, 30)))
