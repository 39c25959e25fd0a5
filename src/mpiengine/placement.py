"""Where a task runs: the scheduler's output, the launcher's and the runner's input."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Placement"]


@dataclass(frozen=True)
class Placement:
    """A task's share of one block: some nodes, and on each node some cores and GPUs.

    Attributes:
        task_id: the task placed.
        block_id: the block the nodes belong to (a task never spans blocks).
        nodes: node names, lead node first.
        ranks_per_node: ranks started on each node.
        cpus_per_rank: cores given to each rank.
        gpus_per_rank: GPUs given to each rank.
        cores: per node (same order as ``nodes``), the core ids reserved on it.
        gpus: per node, the GPU ids reserved on it.
        exclusive: the task holds its nodes whole (no other task shares them).
        walltime: seconds the task may run (its own walltime, else the block's remaining time);
            None for no limit.
    """

    task_id: str
    block_id: str
    nodes: tuple[str, ...]
    ranks_per_node: int
    cpus_per_rank: int = 1
    gpus_per_rank: int = 0
    cores: tuple[tuple[int, ...], ...] = ()
    gpus: tuple[tuple[int, ...], ...] = ()
    exclusive: bool = False
    walltime: float | None = None

    @property
    def num_nodes(self) -> int:
        """How many nodes the task spans."""
        return len(self.nodes)

    @property
    def num_ranks(self) -> int:
        """Total ranks: nodes x ranks per node."""
        return len(self.nodes) * self.ranks_per_node
