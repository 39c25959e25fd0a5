"""The seam between the engine and a block, wherever the block's runner lives."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from mpiengine.binding import Binding
from mpiengine.launchers import LauncherSpec
from mpiengine.runner.process import Completion, LaunchSpec
from mpiengine.scheduler import BlockInfo

__all__ = ["BlockHandle", "CompletionSink"]

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
