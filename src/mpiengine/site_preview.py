"""What a named machine would run: sample tasks' launch lines and a block's batch header.

``mpiengine sites show`` prints these, and ``tests/golden/sites/`` pins them per machine:
for a site's queue, a few representative tasks (one rank; one whole node; two nodes with a
rank per GPU; a smaller task sharing a node), each with the exact argv, the environment its
binding sets and the files it writes (jsrun's resource file), and the ``#SBATCH``/``#PBS``
header of a block's job as Parsl's provider writes it.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mpiengine.binding import GPU_VARIABLES, WRAPPER
from mpiengine.config import BlockConfig
from mpiengine.placement import Placement
from mpiengine.runner.process import LaunchSpec
from mpiengine.sites import Queue, Site
from mpiengine.taskprep import build_launch
from mpiengine_sdk import MPIFunction, ResourceSpec, ShellFunction
from mpiengine_sdk.wire import TaskKind

__all__ = ["Sample", "batch_header", "sample_tasks", "shown"]

#: Node names of the samples (HPE Cray EX style xnames; any names do).
NODES = ("x1000c0s0b0n0", "x1000c0s0b1n0")
#: Where the samples' sandbox is, as printed.
SANDBOX = Path("/sandbox/task-1")
#: The launch environment's variables a preview shows: the binding's and the launcher's own.
_SHOWN = (*GPU_VARIABLES.values(), "MPIENGINE_CPUS", "MPIENGINE_GPUS")


@dataclass(frozen=True)
class Sample:
    """One representative task: its name, kind and placement (core and GPU slots)."""

    name: str
    kind: TaskKind
    placement: Placement

    def launch(self, site: Site, queue: Queue | None) -> LaunchSpec:
        """The exact launch of this task on ``site``'s nodes (of ``queue``)."""
        node = queue.node if queue is not None else site.node
        p = self.placement
        spec = ResourceSpec(
            num_nodes=p.num_nodes,
            ranks_per_node=p.ranks_per_node,
            cpus_per_rank=p.cpus_per_rank,
            gpus_per_rank=p.gpus_per_rank,
            exclusive=p.exclusive,
        )
        fn = ShellFunction("./app") if self.kind is TaskKind.SHELL else MPIFunction(["./app"])
        return build_launch(
            fn.to_task("task-1", (), {}, spec),
            spec,
            p,
            mpi_launcher=site.launcher(queue),
            cores_per_node=node.usable_cores,
            sandbox=SANDBOX,
            base_env={},
            python="python3",
            binding=node.binding,
        )


def sample_tasks(site: Site, queue: Queue | None) -> list[Sample]:
    """One rank; a whole node; two nodes x a rank per GPU (per 1/4 node without GPUs); two
    ranks sharing a node with another task (an MPI task, and the same shape as a shell task)."""
    node = queue.node if queue is not None else site.node
    cores, gpus = node.usable_cores, node.gpu_slots
    per_node = gpus or min(4, cores)
    gpr = 1 if gpus else 0
    share = max(1, cores // per_node)
    whole = tuple(range(cores))
    all_gpus = tuple(range(gpus))

    def place(n: int, rpn: int, cpr: int, g: int, c: tuple[int, ...], gs: tuple[int, ...],
              excl: bool = False) -> Placement:  # fmt: skip
        return Placement("task-1", "block-1", NODES[:n], rpn, cpr, g, (c,) * n,
                         (gs,) * n if g else (), excl)  # fmt: skip

    small = min(2, cores // 2) or 1
    start = min(4, cores - 2 * small)
    shared_gpr = 1 if gpus >= 3 else 0
    shared_cores = tuple(range(start, start + 2 * small))
    shared = place(1, 2, small, shared_gpr, shared_cores, (1, 2))
    return [
        Sample("1rank", TaskKind.MPI, place(1, 1, 1, gpr, (0,), (0,))),
        Sample("full_node", TaskKind.MPI, place(1, per_node, share, gpr, whole, all_gpus, True)),
        Sample(
            "2nodes_rank_per_gpu",
            TaskKind.MPI,
            place(2, per_node, share, gpr, whole[: per_node * share], all_gpus),
        ),  # noqa: E501
        Sample("shared_node", TaskKind.MPI, shared),
        Sample("shared_node_shell", TaskKind.SHELL, shared),
    ]


def shown(launch: LaunchSpec) -> dict[str, object]:
    """A launch as pinned and printed: argv (the wrapper's path as ``{WRAPPER}``), the
    binding's variables and the launcher's own environment, and the files it writes."""
    argv = ["{WRAPPER}" if a == WRAPPER else a for a in launch.argv]
    env = {
        k: v
        for k, v in sorted(launch.env.items())
        if k in _SHOWN or not k.startswith(("MPIENGINE_", "PARSL_"))
    }
    files = {k: v.decode() for k, v in sorted(launch.files.items()) if k.endswith("hostfile")}
    return {"argv": argv, "env": env, "files": files}


def batch_header(cfg: BlockConfig) -> list[str]:
    """The submit command (as a comment) and the directive lines of a block's job script, as
    Parsl's provider writes them for ``cfg`` (its own file paths shown as ``{BLOCK}``).

    Raises:
        ConfigError: parsl is not installed, or the config's provider has no batch script.
    """
    from mpiengine.blocks.provider import make_provider

    submitted: list[str] = []

    def answer(cmd: str, timeout: int | None) -> tuple[int, str, str]:
        if cmd.startswith(("sbatch", "qsub")):
            submitted.append(cmd)
        if cmd.startswith("sbatch"):
            return 0, "Submitted batch job 1\n", ""
        if cmd.startswith("qsub"):
            return 0, "1.server\n", ""
        return 0, "", ""

    with tempfile.TemporaryDirectory() as tmp:
        block = Path(tmp) / "block"
        provider = make_provider(cfg, runner=answer)
        provider.submit("mpiengine agent", block, "mpiengine.block")
        script = next(block.iterdir()).read_text(encoding="utf-8")  # the one script written
    lines = [line for line in script.splitlines() if line.startswith(("#SBATCH", "#PBS"))]
    lines.insert(0, f"# {submitted[0]}")  # qsub takes the queue and account on its command line
    paths = re.compile(re.escape(str(block)) + r"[^\s]*")
    names = re.compile(r"mpiengine\.block\.[0-9.]+")
    return [names.sub("mpiengine.block", paths.sub("{BLOCK}", line)) for line in lines]
