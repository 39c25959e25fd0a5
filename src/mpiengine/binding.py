"""Which CPUs and GPUs each rank of a placement may use, and how it is told.

A placement names, per node, the cores and GPU ids the scheduler reserved for a task. Every
rank must hold exactly its share: rank ``r`` on a node gets cores ``r*cpus_per_rank ...`` and
GPUs ``r*gpus_per_rank ...`` of that node's lists. Where the launcher can do this itself (MPICH,
PALS, aprun and Open MPI pin to a core list that is the same on every node; srun hands out GPUs
with ``--gpus-per-task``) it does, through its data file; the rest is done by a small POSIX sh
wrapper shipped with the project (``bind_rank.sh``) that each rank runs first: it reads its rank
from whichever launcher started it, pins itself with ``taskset`` and exports the vendor's
variable, then execs the rank's command.

GPU vendors and their variables: ``nvidia`` -> ``CUDA_VISIBLE_DEVICES``, ``amd`` ->
``ROCR_VISIBLE_DEVICES``, ``intel`` -> ``ZE_AFFINITY_MASK``. Intel GPUs may be split into tiles
(``gpu_tiles``): the scheduler then counts tiles, and slot ``s`` is shown as ``GPU.TILE``
(``s // tiles``.``s % tiles``), the Level Zero tile syntax.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mpiengine.placement import Placement
from mpiengine_sdk.errors import ConfigError

__all__ = [
    "GPU_VARIABLES",
    "GPU_VENDORS",
    "Binding",
    "WRAPPER",
    "gpu_mask",
    "rank_lists",
    "wrapper_argv",
]

#: The variable through which each vendor's runtime is told which devices a process may use.
GPU_VARIABLES = {
    "nvidia": "CUDA_VISIBLE_DEVICES",
    "amd": "ROCR_VISIBLE_DEVICES",
    "intel": "ZE_AFFINITY_MASK",
}
GPU_VENDORS = tuple(GPU_VARIABLES)

#: The per-rank wrapper, run as ``/bin/sh WRAPPER ...`` (no exec bit needed in a wheel).
WRAPPER = str(Path(__file__).with_name("bind_rank.sh"))


@dataclass(frozen=True)
class Binding:
    """How a block's nodes hand CPUs and GPUs to tasks.

    Attributes:
        gpu_vendor: ``nvidia``, ``amd``, ``intel``, or None for a block without GPUs.
        gpu_tiles: tiles per GPU (Intel only): the scheduler's GPU slots are tiles.
        real_nodes: the block's nodes are real machines: shell and Python tasks are started
            on their placement's lead node through the launcher, and ranks are pinned to their
            cores. False for the embedded endpoint's virtual nodes, which share this host:
            tasks start here directly and are not pinned (a virtual core is no real core).
        cpu_ids: the operating system's CPU numbers of the cores the scheduler hands out, in
            order (core slot ``i`` is CPU ``cpu_ids[i]``): a site whose nodes reserve cores for
            the system (Frontier's first core of each L3 region, Aurora's cores 0 and 52) or
            number SMT threads core by core (POWER9) lists its usable ones. Empty: slot ``i``
            is CPU ``i``.
    """

    gpu_vendor: str | None = None
    gpu_tiles: int = 1
    real_nodes: bool = True
    cpu_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.gpu_vendor is not None and self.gpu_vendor not in GPU_VARIABLES:
            raise ConfigError(
                "gpu_vendor", f"unknown vendor {self.gpu_vendor!r}", ", ".join(GPU_VENDORS)
            )
        tiles = self.gpu_tiles
        if isinstance(tiles, bool) or not isinstance(tiles, int) or tiles < 1:
            raise ConfigError("gpu_tiles", f"got {tiles!r}", "an integer >= 1")
        if tiles > 1 and self.gpu_vendor != "intel":
            raise ConfigError(
                "gpu_tiles",
                f"{tiles} tiles per GPU for vendor {self.gpu_vendor!r}",
                "1, or gpu_vendor: intel (Level Zero tiles, ZE_AFFINITY_MASK=GPU.TILE)",
            )

    def on_cpus(self, placement: Placement) -> Placement:
        """``placement`` with its core slots turned into the nodes' CPU numbers (``cpu_ids``).

        Raises:
            ConfigError: a core slot beyond ``cpu_ids`` (the block has fewer usable cores).
        """
        ids = self.cpu_ids
        if not ids or not placement.cores:
            return placement
        try:
            cores = tuple(tuple(ids[c] for c in node) for node in placement.cores)
        except IndexError:
            raise ConfigError(
                "cpu_ids", f"{len(ids)} CPU ids for core slots {placement.cores}", "one per core"
            ) from None
        return dataclasses.replace(placement, cores=cores)

    @property
    def gpu_variable(self) -> str | None:
        """The vendor's device variable, or None without a vendor."""
        return GPU_VARIABLES.get(self.gpu_vendor or "")


#: A block with no GPU vendor whose nodes are real (the default of batch blocks).
REAL_NODES = Binding()


def gpu_mask(slots: Sequence[int], tiles: int = 1) -> str:
    """The vendor variable's value for GPU slots: ``0,1``, or ``0.0,0.1`` with tiles."""
    if tiles <= 1:
        return ",".join(str(s) for s in slots)
    return ",".join(f"{s // tiles}.{s % tiles}" for s in slots)


def _split(ids: Sequence[int], per_rank: int, ranks: int) -> str:
    """``0,1:2,3``: ``per_rank`` ids for each of ``ranks`` local ranks."""
    return ":".join(
        ",".join(str(i) for i in ids[r * per_rank : (r + 1) * per_rank]) for r in range(ranks)
    )


def rank_lists(per_node: tuple[tuple[int, ...], ...], per_rank: int, ranks_per_node: int) -> str:
    """Each node's ids split among its local ranks, nodes joined by ``;``.

    A list that is the same on every node is given once (the wrapper applies it to every node),
    so a task on thousands of nodes does not carry thousands of copies in its argv.
    """
    groups = [_split(ids, per_rank, ranks_per_node) for ids in per_node]
    if all(group == groups[0] for group in groups):
        return groups[0]
    return ";".join(groups)


def wrapper_argv(
    placement: Placement,
    *,
    rank_env: tuple[str, str | None] | None,
    pin_cpus: bool,
    gpu_variable: str | None,
    gpu_tiles: int = 1,
) -> tuple[str, ...]:
    """The wrapper's argv (to go between the launcher's argv and the command), or ``()``.

    Args:
        placement: the task's nodes, ranks per node, and per-node cores and GPUs.
        rank_env: the launcher's variables for a rank's global and node-local rank (None: one
            process, rank 0).
        pin_cpus: pin each rank to its cores (needs the placement's core lists).
        gpu_variable: set this variable to each rank's GPUs (needs gpus_per_rank > 0 and the
            placement's GPU lists); None to leave GPUs alone.
        gpu_tiles: tiles per GPU for the tile syntax.
    """
    rpn = placement.ranks_per_node
    cpus = "-"
    if pin_cpus and len(placement.cores) == placement.num_nodes:
        cpus = rank_lists(placement.cores, placement.cpus_per_rank, rpn)
    gpus = "-"
    if (
        gpu_variable is not None
        and placement.gpus_per_rank > 0
        and len(placement.gpus) == placement.num_nodes
    ):
        gpus = rank_lists(placement.gpus, placement.gpus_per_rank, rpn)
    if cpus == "-" and gpus == "-":
        return ()
    variable = gpu_variable if gpus != "-" else "-"
    rank, local = rank_env if rank_env is not None else ("-", None)
    return (
        "/bin/sh",
        WRAPPER,
        rank,
        local or "-",
        str(rpn),
        cpus,
        gpus,
        variable or "-",
        str(gpu_tiles),
        "--",
    )
