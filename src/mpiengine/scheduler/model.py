"""The scheduler's values: block shapes and blocks, task requests, reservations and demand.

All are frozen dataclasses that check themselves and raise :class:`SpecError` naming the field.
Times are plain floats in seconds on whatever clock the caller uses (the scheduler never reads
one); ``None`` means "no limit".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mpiengine_sdk.errors import SpecError

__all__ = ["BlockInfo", "BlockShape", "Demand", "Reservation", "TaskRequest"]


def _at_least(field: str, value: int, low: int) -> None:
    # bool is an int subclass; True nodes is a caller bug, not 1 node.
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SpecError(field, value, f"an integer >= {low}")


def _duration(field: str, value: float | None) -> None:
    if value is not None and not (isinstance(value, int | float) and 0 < value < math.inf):
        raise SpecError(field, value, "None (no limit) or a finite number of seconds > 0")


def _instant(field: str, value: float | None, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int | float) or not math.isfinite(value):
        allowed = "None (no limit) or a finite time" if optional else "a finite time"
        raise SpecError(field, value, allowed)


@dataclass(frozen=True)
class BlockShape:
    """The shape of the blocks an endpoint can obtain (from its config), used by ``check_fits``.

    Attributes:
        num_nodes: nodes per block.
        cores_per_node: cores on each node.
        gpus_per_node: GPUs on each node.
        walltime: the block's walltime in seconds; None for no limit.
    """

    num_nodes: int
    cores_per_node: int
    gpus_per_node: int = 0
    walltime: float | None = None

    def __post_init__(self) -> None:
        _at_least("num_nodes", self.num_nodes, 1)
        _at_least("cores_per_node", self.cores_per_node, 1)
        _at_least("gpus_per_node", self.gpus_per_node, 0)
        _duration("walltime", self.walltime)


@dataclass(frozen=True)
class BlockInfo:
    """A live block: its nodes (distinct names, lead node first) and when it ends.

    Attributes:
        block_id: the endpoint's id for the block.
        nodes: the node names; duplicates are refused (a PBS nodefile lists a node once per
            core: de-duplicate it before building a BlockInfo).
        cores_per_node: cores on each node.
        gpus_per_node: GPUs on each node.
        end_time: when the batch job ends (the caller's clock); None for no limit.
    """

    block_id: str
    nodes: tuple[str, ...]
    cores_per_node: int
    gpus_per_node: int = 0
    end_time: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.block_id, str) or not self.block_id:
            raise SpecError("block_id", self.block_id, "a non-empty string")
        if not isinstance(self.nodes, tuple) or not self.nodes:
            raise SpecError("nodes", self.nodes, "a non-empty tuple of node names")
        if len(set(self.nodes)) != len(self.nodes):
            raise SpecError("nodes", self.nodes, "distinct node names (de-duplicate the nodefile)")
        _at_least("cores_per_node", self.cores_per_node, 1)
        _at_least("gpus_per_node", self.gpus_per_node, 0)
        _instant("end_time", self.end_time, optional=True)


@dataclass(frozen=True)
class TaskRequest:
    """What one task needs: ``num_nodes`` nodes of one block, and on each node
    ``ranks_per_node * cpus_per_rank`` cores and ``ranks_per_node * gpus_per_rank`` GPUs.

    Attributes:
        task_id: unique among waiting and running tasks.
        num_nodes: nodes the task spans (all in one block).
        ranks_per_node: ranks on each node.
        cpus_per_rank: cores per rank.
        gpus_per_rank: GPUs per rank.
        exclusive: hold the nodes whole; no other task shares them.
        walltime: the most seconds the task runs; None for "until its block ends". Backfill
            trusts it, so a task must be killed when it expires. The only limit: nothing
            else here ever ends a task.
        priority: higher runs first; one level is worth ``aging_interval`` seconds of waiting.
        submit_time: when the task was submitted (the caller's clock): the FIFO and aging key.
        estimate: a predicted runtime in seconds (from the history of tasks like it), or
            None. A hint for backfill and reservations only, never a limit: the scheduler uses
            the smaller of it and ``walltime``, and corrects it when the task outlives it.
        kind: what makes tasks alike for prediction (e.g. the command and the shape), or
            None. Tasks of one kind share one estimate, which
            :meth:`Scheduler.set_estimate` updates while they wait; ``estimate`` seeds it.
    """

    task_id: str
    num_nodes: int
    ranks_per_node: int
    cpus_per_rank: int = 1
    gpus_per_rank: int = 0
    exclusive: bool = False
    walltime: float | None = None
    priority: int = 0
    submit_time: float = 0.0
    estimate: float | None = None
    kind: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.task_id, str) or not self.task_id:
            raise SpecError("task_id", self.task_id, "a non-empty string")
        _at_least("num_nodes", self.num_nodes, 1)
        _at_least("ranks_per_node", self.ranks_per_node, 1)
        _at_least("cpus_per_rank", self.cpus_per_rank, 1)
        _at_least("gpus_per_rank", self.gpus_per_rank, 0)
        if not isinstance(self.exclusive, bool):
            raise SpecError("exclusive", self.exclusive, "True or False")
        _duration("walltime", self.walltime)
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise SpecError("priority", self.priority, "an integer")
        _instant("submit_time", self.submit_time, optional=False)
        _duration("estimate", self.estimate)
        if self.kind is not None and (not isinstance(self.kind, str) or not self.kind):
            raise SpecError("kind", self.kind, "None or a non-empty string")

    @property
    def cores_per_node(self) -> int:
        """Cores the task uses on each of its nodes."""
        return self.ranks_per_node * self.cpus_per_rank

    @property
    def gpus_per_node(self) -> int:
        """GPUs the task uses on each of its nodes."""
        return self.ranks_per_node * self.gpus_per_rank

    def describe(self) -> str:
        """The request as ``"N nodes x C cores x G gpus"`` (plus the walltime, if any)."""
        text = f"{self.num_nodes} nodes x {self.cores_per_node} cores x {self.gpus_per_node} gpus"
        if self.exclusive:
            text += " (exclusive)"
        if self.walltime is not None:
            text += f" for {self.walltime:g} s"
        return text


@dataclass(frozen=True)
class Reservation:
    """Where and when the head task (the first waiting task) is guaranteed to start.

    Backfilled tasks may use the reserved nodes only if they end by ``time`` by estimate, so
    the head starts no later than ``time`` if tasks end within their estimates; a task that
    outlives its estimate makes the scheduler compute the reservation again at once. While
    it is ``blind`` (it waits for a task of unknown runtime), smaller tasks may borrow the
    nodes for a while (see ``mpiengine.scheduler.policy``).

    Attributes:
        task_id: the head task.
        block_id: the block it will run on; None when no current block can ever hold it
            (then nothing is reserved and it waits for a new block).
        time: the latest start by the running tasks' estimates; ``math.inf`` when tasks of
            unknown runtime must end first.
        nodes: the reserved nodes.
        blind: the head waits for a running task whose runtime nobody knows (no walltime,
            no estimate): the time is unknown (``math.inf``), and meanwhile the head cannot
            use its free reserved nodes.
    """

    task_id: str
    block_id: str | None
    time: float
    nodes: tuple[str, ...]
    blind: bool = False


@dataclass(frozen=True)
class Demand:
    """What the waiting tasks need, for a block manager deciding to scale out.

    Attributes:
        waiting_tasks: tasks waiting.
        waiting_nodes: the sum of their ``num_nodes`` (a sub-node task counts its nodes whole,
            so this is an upper bound).
        free_nodes: nodes wholly free now, over all blocks.
        extra_nodes: ``max(0, waiting_nodes - free_nodes)``: nodes a new block could use.
        largest_task_nodes: the most nodes one waiting task needs (a new block needs as many);
            0 when nothing waits.
        head_needs_new_block: the first waiting task fits no current block (too large, or too
            long for what is left of their walltimes); it waits for a new block.
    """

    waiting_tasks: int
    waiting_nodes: int
    free_nodes: int
    extra_nodes: int
    largest_task_nodes: int
    head_needs_new_block: bool
