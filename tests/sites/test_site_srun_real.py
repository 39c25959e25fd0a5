"""srun lines with every srun site's launcher options, run on the real CI cluster: each rank
reports its node, its Cpus_allowed_list and its GPU variables, and the map must be exactly the
placement (the same check the grammar checkers' maps pass for the launchers that cannot run
here). The CI nodes stand in for the site's nodes: the site's options are the variable."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mpiengine.binding import Binding
from mpiengine.placement import Placement
from mpiengine.sites import Node, available_sites, load_site
from mpiengine.taskprep import build_launch
from mpiengine_sdk import MPIFunction, ResourceSpec
from tests.integration.test_slurm_blocks import conf  # noqa: F401 (the cluster fixture)
from tests.sites.cases import check_map
from tests.sites.grammars import RankPlace

pytestmark = [pytest.mark.sites, pytest.mark.slurm]

#: Each distinct set of site options srun runs with, and the sites that use it.
OPTION_SETS: dict[tuple[str, ...], list[str]] = {}
for _name in available_sites():
    _site = load_site(_name)
    if _site.launcher_name == "srun":
        for _q in [None, *(q for q in _site.queues if not q.unsupported)]:
            OPTION_SETS.setdefault(_site.launcher(_q).site_options, []).append(_name)

# The CI cluster: node1-4 with 2 CPUs (partition debug), node5 with 4 CPUs of which the host
# has 2, and 4 GPUs in Slurm's GRES on fake devices (partition gpu).
CPU_CASE = ("debug", Placement("t", "b", ("node1", "node2"), 1, 1, 0, ((1,), (1,)), ()), 2)
GPU_CASE = ("gpu", Placement("t", "b", ("node5",), 2, 1, 1, ((0, 1),), ((1, 2),)), 4)


def _run(options: tuple[str, ...], case: tuple[str, Placement, int], out: Path) -> list[RankPlace]:
    partition, placement, cores = case
    site = load_site(OPTION_SETS[options][0])
    spec = ResourceSpec(
        num_nodes=placement.num_nodes,
        ranks_per_node=placement.ranks_per_node,
        gpus_per_rank=placement.gpus_per_rank,
    )
    report = (
        'echo "$SLURMD_NODENAME $SLURM_LOCALID $(grep Cpus_allowed_list /proc/self/status'
        ' | cut -f2) ${CUDA_VISIBLE_DEVICES-all}"'
        f" > {out}/rank.$SLURM_PROCID"
    )
    task = MPIFunction(["/bin/sh", "-c", report]).to_task("t", (), {}, spec)
    binding = Binding(gpu_vendor="nvidia" if placement.gpus_per_rank else None)
    launch = build_launch(
        task, spec, placement, mpi_launcher=site.launcher(), cores_per_node=cores,
        sandbox=out, base_env={}, binding=binding,
    )  # fmt: skip
    argv = ["salloc", f"--partition={partition}", f"--nodelist={','.join(placement.nodes)}",
            f"--nodes={placement.num_nodes}", "--exclusive", "--time=3", *launch.argv]  # fmt: skip
    env = {**os.environ, **{k: v for k, v in launch.env.items() if k not in os.environ}}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, (argv, result.stderr[-2000:])
    places = []
    for path in sorted(out.glob("rank.*")):
        node, local, cpus, gpus = path.read_text().split()
        rank = int(path.suffix[1:])
        cpu_set = frozenset(_ids(cpus))
        gpu_set = "all" if gpus == "all" else frozenset(_ids(gpus))
        places.append(
            RankPlace(rank, node, int(local), cpu_set, len(cpu_set), gpu_set, len(gpu_set))
        )
    return places


def _ids(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


@pytest.mark.parametrize("options", list(OPTION_SETS), ids=lambda o: " ".join(o) or "none")
@pytest.mark.parametrize("case", [CPU_CASE, GPU_CASE], ids=["2nodes_cpu", "gpu_node"])
def test_srun_site_options_keep_every_rank_on_its_placement(
    conf: Path,  # noqa: F811
    options: tuple[str, ...],
    case: tuple[str, Placement, int],
    tmp_path: Path,
) -> None:
    places = _run(options, case, tmp_path)
    _, placement, cores = case
    if placement.gpus_per_rank:
        # srun's --gpus-per-task: Slurm picks the device ids (the placement's count holds);
        # each rank must still see its own, as many as it asked.
        seen = [p.gpus for p in places]
        assert all(isinstance(g, frozenset) for g in seen), seen
        assert len(set().union(*seen)) == sum(len(g) for g in seen), f"ranks share GPUs {seen}"
        for p in places:
            p.gpus = None
    node = Node(cores=cores, gpus=4 if placement.gpus_per_rank else 0,
                gpu_vendor="nvidia" if placement.gpus_per_rank else None)  # fmt: skip
    check_map(places, placement, node)
