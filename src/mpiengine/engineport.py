"""The engine's two ports: what it needs of a block, and what a block source may ask of it.

The engine (``mpiengine.engine``) depends on :class:`BlockHandle` only, never on a block class;
the block sources (``mpiengine.blocks``: this host's LocalBlock, the batch BlockManager) depend
on :class:`EnginePort` only, never on the Engine. So neither imports the other, and either side
can be tested with a fake of the other (``tests/unit/test_engine_fake_blocks.py``,
``tests/unit/test_block_replacement.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from mpiengine.binding import Binding
from mpiengine.launchers import LauncherSpec
from mpiengine.runner.process import Completion, LaunchSpec
from mpiengine.scheduler import BlockInfo, Demand

__all__ = ["BlockHandle", "CompletionSink", "EnginePort"]

#: Called (from any thread) with ``(block_id, completion)`` once per launched task.
CompletionSink = Callable[[str, Completion], None]


class BlockHandle(Protocol):
    """A block the engine can start tasks on.

    The embedded endpoint's LocalBlock runs tasks in-process; a batch block forwards them to the
    block agent on its lead node. Either way every launched task produces exactly one
    Completion through the sink given at construction.
    """

    @property
    def info(self) -> BlockInfo:
        """The block's nodes, cores, GPUs and end time, as the scheduler sees them."""

    @property
    def launcher(self) -> LauncherSpec:
        """The launcher that starts MPI tasks on this block."""

    @property
    def binding(self) -> Binding:
        """How the block's nodes hand CPUs and GPUs to tasks (GPU vendor, tiles, real nodes)."""

    @property
    def job_id(self) -> str:
        """The batch system's job id ("" for local blocks)."""

    def launch(self, spec: LaunchSpec) -> None:
        """Start a task; its Completion arrives through the sink."""

    def kill(self, task_id: str) -> None:
        """Kill a running task's whole process tree (every rank)."""

    def close(self) -> None:
        """Kill what still runs and release the block."""


class EnginePort(Protocol):
    """What a block source may ask of the engine (the Engine implements it).

    The first group is thread-safe (each posts an event to the engine thread); the second reads
    the scheduler and may be called only on the engine thread, that is from the ``on_tick``
    hook the engine calls with this port.
    """

    # -- any thread ---------------------------------------------------------------------------
    def add_block(self, handle: BlockHandle) -> None:
        """Offer a new block's nodes to the scheduler."""

    def lose_block(self, block_id: str, reason: str) -> None:
        """A block vanished (or is released): retry its running tasks within budget, else
        report them LOST."""

    def retire_block(self, block_id: str) -> None:
        """Place nothing more on a block (it is being replaced); its running tasks go on."""

    def fail_node(self, block_id: str, node: str, reason: str) -> None:
        """A node of a block failed: place nothing more on it, kill the tasks running on it."""

    def report(self, block_id: str, completion: Completion) -> None:
        """A block's runner finished a task (a :data:`CompletionSink`)."""

    def note_error(self, message: str) -> None:
        """Record an error for the endpoint's status (e.g. a provider failure)."""

    def excluded_nodes(self) -> dict[str, dict[str, str]]:
        """Failed nodes by block: ``{block_id: {node: reason}}`` (a snapshot)."""

    # -- engine thread only (from on_tick) ----------------------------------------------------
    def demand(self, now: float) -> Demand:
        """What the waiting tasks need (the scale-out decision's input)."""

    def idle_blocks(self) -> list[str]:
        """Ids of the blocks that run no task (candidates for release), oldest first."""

    @property
    def waiting(self) -> int:
        """How many tasks wait for a placement."""
