"""GPUs per task and per rank on the embedded endpoint (virtual nodes with ``gpus_per_node``).

No GPU is needed: what is checked is the vendor variable each task and each rank is given,
while the tasks run together (a barrier), so "distinct" means distinct at the same time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpiengine_sdk import Executor, MPIFunction, ResourceSpec, ShellFunction

pytestmark = [pytest.mark.mpi]

VARS = {
    "nvidia": "CUDA_VISIBLE_DEVICES",
    "amd": "ROCR_VISIBLE_DEVICES",
    "intel": "ZE_AFFINITY_MASK",
}


@pytest.fixture(params=sorted(VARS))
def gpu_executor(
    request: pytest.FixtureRequest, tmp_path: Path, mpi: str
) -> Iterator[tuple[Executor, str]]:
    vendor = request.param
    ex = Executor(
        nodes=2,
        cores_per_node=4,
        gpus_per_node=4,
        gpu_vendor=vendor,
        workdir=tmp_path / "ep",
        kill_grace=0.5,
    )
    try:
        yield ex, VARS[vendor]
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


def test_one_gpu_tasks_held_together_see_distinct_placed_gpus(
    gpu_executor: tuple[Executor, str], tmp_path: Path
) -> None:
    ex, var = gpu_executor
    folder = tmp_path / "barrier"
    folder.mkdir()
    script = (
        f'touch {folder}/"$MPIENGINE_TASK_ID"; '
        f"for _ in $(seq 600); do [ $(ls {folder} | wc -l) -ge 8 ] && break; sleep 0.1; done; "
        f'echo "${var}|$MPIENGINE_GPUS|$MPIENGINE_NODELIST"'
    )
    spec = ResourceSpec(num_nodes=1, gpus_per_rank=1, walltime=120)
    futures = [
        ex.submit(ShellFunction(["bash", "-c", script]), resource_spec=spec) for _ in range(8)
    ]
    seen = [f.result(120).stdout.strip().split("|") for f in futures]
    assert all(shown == placed for shown, placed, _ in seen), seen  # its own placed GPU
    by_node: dict[str, list[str]] = {}
    for shown, _, node in seen:
        by_node.setdefault(node, []).append(shown)
    assert sorted(by_node) == ["vnode0", "vnode1"]
    assert all(sorted(devs) == ["0", "1", "2", "3"] for devs in by_node.values()), by_node


def test_each_rank_of_an_mpi_task_sees_its_own_gpu(gpu_executor: tuple[Executor, str]) -> None:
    ex, var = gpu_executor
    spec = ResourceSpec(num_nodes=2, ranks_per_node=2, gpus_per_rank=2, walltime=120)
    script = f'echo "$PMI_RANK ${var}"'
    result = ex.submit(MPIFunction(["bash", "-c", script]), resource_spec=spec).result(120)
    assert result.returncode == 0, result.stderr
    ranks = dict(line.split() for line in result.stdout.splitlines())
    assert sorted(ranks) == ["0", "1", "2", "3"], result.stdout
    for node in (0, 1):  # the two ranks of a node split that node's four GPUs
        mine = [set(ranks[str(node * 2 + local)].split(",")) for local in (0, 1)]
        assert all(len(m) == 2 for m in mine) and not (mine[0] & mine[1]), result.stdout
        assert mine[0] | mine[1] == {"0", "1", "2", "3"}, result.stdout


def gpu_of_this_task(var: str) -> str:
    return os.environ.get(var, "<unset>")


def test_a_python_task_sees_its_gpus(gpu_executor: tuple[Executor, str]) -> None:
    ex, var = gpu_executor
    spec = ResourceSpec(gpus_per_rank=3)
    shown = ex.submit(gpu_of_this_task, var, resource_spec=spec).result(120)
    assert len(shown.split(",")) == 3 and len(set(shown.split(","))) == 3, shown
