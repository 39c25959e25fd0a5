"""Rendering a named machine's task launches, and checking a rank map against its placement."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from mpiengine.placement import Placement
from mpiengine.runner.process import LaunchSpec
from mpiengine.sites import Node, Queue, Site, load_site
from mpiengine.taskprep import build_launch
from mpiengine_sdk import MPIFunction, ResourceSpec, ShellFunction
from mpiengine_sdk.wire import TaskKind
from tests.sites.grammars import NodeInfo, RankPlace

SANDBOX = Path("/sandbox/task-1")


def shapes() -> list[tuple[str, str | None]]:
    """(site, queue) for every distinct node type blocks can use on every shipped machine."""
    from mpiengine.sites import available_sites

    out: list[tuple[str, str | None]] = []
    for name in available_sites():
        site = load_site(name)
        seen: set[Node] = set()
        for queue in site.queues:
            if not queue.unsupported and queue.node not in seen:
                seen.add(queue.node)
                out.append((name, queue.name))
    return out


def site_node(site: Site, queue: Queue | None) -> Node:
    return queue.node if queue is not None else site.node


def render(
    site: Site, queue: Queue | None, placement: Placement, kind: TaskKind = TaskKind.MPI
) -> LaunchSpec:
    """The launch of a task of ``kind`` on ``placement`` (core slots) on this site's nodes."""
    node = site_node(site, queue)
    spec = ResourceSpec(
        num_nodes=placement.num_nodes,
        ranks_per_node=placement.ranks_per_node,
        cpus_per_rank=placement.cpus_per_rank,
        gpus_per_rank=placement.gpus_per_rank,
        exclusive=placement.exclusive,
    )
    if kind is TaskKind.SHELL:
        task = ShellFunction("./app").to_task("task-1", (), {}, spec)
    else:
        task = MPIFunction(["./app"]).to_task("task-1", (), {}, spec)
    return build_launch(
        task,
        spec,
        placement,
        mpi_launcher=site.launcher(queue),
        cores_per_node=node.usable_cores,
        sandbox=SANDBOX,
        base_env={},
        python="python3",
        binding=node.binding,
    )


def node_infos(node: Node, names: Sequence[str]) -> dict[str, NodeInfo]:
    return {n: NodeInfo(node.cpu_ids, node.gpu_slots, node.gpu_tiles) for n in names}


def files_of(launch: LaunchSpec) -> dict[str, str]:
    return {name: data.decode() for name, data in launch.files.items()}


def check_map(
    places: list[RankPlace], placement: Placement, node: Node, kind: TaskKind = TaskKind.MPI
) -> None:
    """Assert the placement guarantee on a rank map (raises AssertionError with the reason).

    The map has exactly the placed nodes and ranks per node; each rank holds its own CPUs,
    all of them placed on its node (an exclusive task: the node's usable CPUs), as many as it
    asked; each rank of a task with GPUs holds its own placed GPUs, as many as it asked. A
    launcher that picks CPUs or GPUs itself (srun, Flux) is held to the counts, within the node.
    """
    ids = node.cpu_ids
    if kind is TaskKind.SHELL:  # one process on the lead node holding the lead node's share
        rpn, nodes = 1, placement.nodes[:1]
        lead_cores = placement.cores[0] if placement.cores else tuple(range(len(ids)))
        want_cpus = len(lead_cores)
        want_gpus = placement.ranks_per_node * placement.gpus_per_rank
    else:
        rpn, nodes = placement.ranks_per_node, placement.nodes
        share = len(ids) // rpn if placement.exclusive else placement.cpus_per_rank
        want_cpus, want_gpus = share, placement.gpus_per_rank
    counts = Counter(p.node for p in places)
    assert set(counts) == set(nodes), f"nodes {sorted(counts)} != placed {sorted(nodes)}"
    assert all(c == rpn for c in counts.values()), f"ranks per node {counts} != {rpn}"
    for i, name in enumerate(nodes):
        mine = [p for p in places if p.node == name]
        assert sorted(p.local for p in mine) == list(range(rpn)), "local ranks"
        if placement.cores and not placement.exclusive:
            allowed = {ids[c] for c in placement.cores[i]}
        else:
            allowed = set(ids)
        used: set[int] = set()
        for p in mine:
            if p.cpus is None:  # the launcher picks: only an exclusive task may let it
                assert placement.exclusive or not placement.cores, f"rank {p.rank}: unpinned"
                assert p.ncpus == want_cpus, f"rank {p.rank}: {p.ncpus} CPUs, not {want_cpus}"
                continue
            assert p.cpus <= allowed, f"rank {p.rank} on CPUs {sorted(p.cpus - allowed)} not placed"
            assert len(p.cpus) == want_cpus, f"rank {p.rank}: {len(p.cpus)} CPUs != {want_cpus}"
            assert not p.cpus & used, f"rank {p.rank} shares CPUs {sorted(p.cpus & used)}"
            used |= p.cpus
        if want_gpus == 0:
            continue  # a task that asks no GPUs is not hidden from them (no variable is set)
        gpu_allowed = set(range(node.gpu_slots))
        if placement.gpus and not placement.exclusive:
            gpu_allowed = set(placement.gpus[i])
        taken: set[int] = set()
        for p in mine:
            assert p.gpus != "all", f"rank {p.rank} sees every GPU of the node"
            if p.gpus is None:  # the batch system picks which
                assert p.ngpus == want_gpus, f"rank {p.rank}: {p.ngpus} GPUs != {want_gpus}"
                continue
            assert isinstance(p.gpus, frozenset)
            assert p.gpus <= gpu_allowed, f"rank {p.rank} on GPUs {sorted(p.gpus - gpu_allowed)}"
            assert len(p.gpus) == want_gpus, f"rank {p.rank}: {len(p.gpus)} GPUs != {want_gpus}"
            assert not p.gpus & taken, f"rank {p.rank} shares GPUs {sorted(p.gpus & taken)}"
            taken |= p.gpus
