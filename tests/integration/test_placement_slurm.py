"""Every task runs on its placement, on the real Slurm cluster (ci/slurm-docker).

The CPU nodes (node1..node4, partition debug) declare 2 CPUs each, as many as the CI host has,
so the per-rank wrapper's pinning is real and a task's ``Cpus_allowed_list`` is checkable. The
GPU node (node5, partition gpu) has 4 fake GPUs in Slurm's GRES and 4 CPUs (its CPU binding is
not checked: the host has 2 cores). Tasks are *held at once* by a barrier in a shared folder
(every node is this host), so "distinct" means distinct while running together.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpiengine.slurm_endpoint import BatchEndpoint
from mpiengine_sdk import Executor, MPIFunction, ResourceSpec, ShellFunction
from tests.conftest import mpich_mpiexec
from tests.integration.test_slurm_blocks import conf, config  # noqa: F401 (the conf fixture)

pytestmark = [pytest.mark.slurm]

CPU_NODES = ("node1", "node2", "node3", "node4")
#: Seconds a barrier waits for its peers before the task gives up (and the test fails).
BARRIER = 90


def barrier_script(folder: Path, count: int, then: str) -> str:
    """Bash: arrive at the barrier in ``folder``, wait until ``count`` tasks did, run ``then``."""
    return (
        f'touch {folder}/"$MPIENGINE_TASK_ID"; '
        f"for _ in $(seq {BARRIER * 10}); do "
        f"[ $(ls {folder} | wc -l) -ge {count} ] && break; sleep 0.1; done; "
        f"[ $(ls {folder} | wc -l) -ge {count} ] || {{ echo barrier-timeout >&2; exit 3; }}; "
        f"{then}"
    )


def bash(script: str) -> ShellFunction:
    """A shell task running ``script`` as is (a list command: no template, no braces to escape)."""
    return ShellFunction(["/bin/bash", "-c", script])


def python_barrier(folder: str, count: int) -> dict[str, str]:
    """A Python task: wait at the barrier, then say where it runs and what it holds."""
    import os
    import pathlib
    import socket as sock
    import time as t

    here = pathlib.Path(folder)
    (here / os.environ["MPIENGINE_TASK_ID"]).touch()
    deadline = t.monotonic() + 90
    while len(list(here.iterdir())) < count:
        if t.monotonic() > deadline:
            raise TimeoutError("barrier")
        t.sleep(0.1)
    status = pathlib.Path("/proc/self/status").read_text()
    cpus = next(
        line.split()[1] for line in status.splitlines() if line.startswith("Cpus_allowed_list")
    )
    return {
        "host": sock.gethostname(),
        "cpus": cpus,
        "placed_cpus": os.environ.get("MPIENGINE_CPUS", ""),
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }


def cpu_list(text: str) -> set[int]:
    """``0-2,5`` -> {0, 1, 2, 5}."""
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


@pytest.fixture(scope="module")
def cpu_executor(conf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Executor]:  # noqa: F811
    ep = BatchEndpoint(config(), workdir=tmp_path_factory.mktemp("placement-ep"))
    ex = Executor(backend=ep)
    try:
        yield ex
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


def test_whole_node_shell_tasks_run_on_their_own_nodes(
    cpu_executor: Executor, tmp_path: Path
) -> None:
    script = barrier_script(tmp_path, 4, "hostname")
    spec = ResourceSpec(num_nodes=1, exclusive=True, walltime=120)
    futures = [cpu_executor.submit(bash(script), resource_spec=spec) for _ in range(4)]
    results = [f.result(180) for f in futures]
    for r in results:
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == r.nodes[0], (r.stdout, r.nodes)
    assert sorted(r.stdout.strip() for r in results) == list(CPU_NODES)


def test_python_tasks_run_on_their_own_nodes(cpu_executor: Executor, tmp_path: Path) -> None:
    spec = ResourceSpec(num_nodes=1, exclusive=True, walltime=120)
    futures = [
        cpu_executor.submit(python_barrier, str(tmp_path), 4, resource_spec=spec) for _ in range(4)
    ]
    seen = [f.result(180) for f in futures]
    for f, s in zip(futures, seen, strict=True):
        assert f.message is not None
        assert s["host"] == f.message.nodes[0], (s, f.message.nodes)
    assert sorted(s["host"] for s in seen) == list(CPU_NODES)


def test_half_node_tasks_hold_exactly_their_placed_cores(
    cpu_executor: Executor, tmp_path: Path
) -> None:
    # 8 tasks of 1 CPU on 4 nodes of 2 CPUs, all running at once: two per node, one core each.
    then = (
        'echo "$(hostname) $(grep Cpus_allowed_list /proc/self/status | cut -f2) $MPIENGINE_CPUS"'
    )
    script = barrier_script(tmp_path, 8, then)
    spec = ResourceSpec(num_nodes=1, cpus_per_rank=1, walltime=120)
    futures = [cpu_executor.submit(bash(script), resource_spec=spec) for _ in range(8)]
    results = [f.result(180) for f in futures]
    held: dict[str, list[set[int]]] = {}
    for r in results:
        assert r.returncode == 0, r.stderr
        host, allowed, placed = r.stdout.split()
        assert host == r.nodes[0], (r.stdout, r.nodes)
        assert cpu_list(allowed) == cpu_list(placed), r.stdout  # exactly its placed cores
        assert len(cpu_list(allowed)) == 1, r.stdout
        held.setdefault(host, []).append(cpu_list(allowed))
    assert max(Counter({h: len(c) for h, c in held.items()}).values()) <= 2, held
    for host, cores in held.items():
        assert len(set().union(*cores)) == len(cores), f"{host} shares a core: {cores}"


def test_a_two_node_shell_task_runs_on_its_own_lead_and_launches_across_its_nodes(
    cpu_executor: Executor, tmp_path: Path
) -> None:
    # Hold node1 first, so the 2-node task is placed away from the block's first node.
    hold = tmp_path / "hold"
    blocker = cpu_executor.submit(
        bash(f"touch {hold}.started; while [ ! -e {hold} ]; do sleep 0.1; done; hostname"),
        resource_spec=ResourceSpec(num_nodes=1, exclusive=True, walltime=120),
    )
    deadline = time.monotonic() + 120
    while not Path(f"{hold}.started").exists():
        assert time.monotonic() < deadline and not blocker.done(), "the blocker never started"
        time.sleep(0.1)
    try:
        task = cpu_executor.submit(
            bash('echo "lead $(hostname)"; $MPIENGINE_MPI_PREFIX hostname | sort'),
            resource_spec=ResourceSpec(num_nodes=2, ranks_per_node=1, walltime=120),
        )
        result = task.result(180)
    finally:
        hold.touch()
    blocked = blocker.result(120).stdout.strip()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert blocked not in result.nodes
    assert lines[:2] == ["lead", result.nodes[0]], result.stdout
    assert lines[2:] == sorted(result.nodes), result.stdout


# -- GPUs ---------------------------------------------------------------------------------------


def gpu_config(**extra: object) -> dict[str, object]:
    return config(
        partition="gpu",
        nodes_per_block=1,
        cores_per_node=4,
        gpus_per_node=4,
        **extra,
    )


def gpu_endpoint(tmp_path: Path, **extra: object) -> Executor:
    return Executor(backend=BatchEndpoint(gpu_config(**extra), workdir=tmp_path / "ep"))


def test_one_gpu_tasks_on_one_node_each_see_their_own_device(
    conf: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    ex = gpu_endpoint(tmp_path)
    try:
        spec = ResourceSpec(num_nodes=1, gpus_per_rank=1, walltime=120)
        shell = barrier_script(tmp_path / "b1", 4, 'echo "$CUDA_VISIBLE_DEVICES $MPIENGINE_GPUS"')
        (tmp_path / "b1").mkdir()
        futures = [ex.submit(bash(shell), resource_spec=spec) for _ in range(4)]
        results = [f.result(180) for f in futures]
        seen = [r.stdout.split() for r in results]
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
        assert all(cuda == placed for cuda, placed in seen), seen  # the placement's own GPU
        assert sorted(cuda for cuda, _ in seen) == ["0", "1", "2", "3"], seen

        # Python tasks get theirs from Slurm's GRES (srun --gpus-per-task): distinct too.
        (tmp_path / "b2").mkdir()
        pyf = [
            ex.submit(python_barrier, str(tmp_path / "b2"), 4, resource_spec=spec) for _ in range(4)
        ]
        cudas = sorted(f.result(180)["cuda"] for f in pyf)
        assert cudas == ["0", "1", "2", "3"], cudas
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


def rank_gpus(rank_var: str) -> MPIFunction:
    """Each rank prints its rank (from the launcher's own variable) and its GPU variables."""
    script = (
        f'echo "rank=${rank_var} cuda=$CUDA_VISIBLE_DEVICES '
        'rocr=$ROCR_VISIBLE_DEVICES ze=$ZE_AFFINITY_MASK"'
    )
    return MPIFunction(["bash", "-c", script])


def rank_devices(stdout: str) -> dict[str, dict[str, str]]:
    out = {}
    for line in stdout.splitlines():
        fields = dict(f.split("=", 1) for f in line.split())
        out[fields.pop("rank")] = fields
    return out


def test_each_mpi_rank_sees_one_distinct_gpu_under_srun(conf: Path, tmp_path: Path) -> None:  # noqa: F811
    ex = gpu_endpoint(tmp_path)
    try:
        spec = ResourceSpec(num_nodes=1, ranks_per_node=4, gpus_per_rank=1, walltime=120)
        result = ex.submit(rank_gpus("SLURM_PROCID"), resource_spec=spec).result(180)
        assert result.returncode == 0, result.stderr
        ranks = rank_devices(result.stdout)
        assert sorted(ranks) == ["0", "1", "2", "3"], result.stdout
        # Slurm sets every vendor's variable (no gres.conf flags): each rank one distinct device.
        for var in ("cuda", "rocr", "ze"):
            assert sorted(r[var] for r in ranks.values()) == ["0", "1", "2", "3"], result.stdout
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


@pytest.mark.parametrize(
    ("vendor", "tiles", "var", "expected"),
    [
        ("nvidia", 1, "cuda", ["0", "1", "2", "3"]),
        ("amd", 1, "rocr", ["0", "1", "2", "3"]),
        ("intel", 2, "ze", ["0.0", "0.1", "1.0", "1.1", "2.0", "2.1", "3.0", "3.1"]),
    ],
)
def test_each_mpi_rank_sees_its_gpus_under_mpiexec_through_the_wrapper(
    conf: Path,  # noqa: F811
    tmp_path: Path,
    vendor: str,
    tiles: int,
    var: str,
    expected: list[str],
) -> None:
    mpiexec = mpich_mpiexec()
    assert mpiexec is not None, "the PyPI mpich wheel's mpiexec is missing"
    ex = gpu_endpoint(
        tmp_path,
        launcher="mpich",
        launcher_executable=mpiexec,
        gpu_vendor=vendor,
        gpu_tiles=tiles,
    )
    try:
        # Exclusive: hydra binds each rank to one core of the node (core:1), which works on the
        # 2-core host; a core list of the GPU node's 4 declared CPUs could not be bound here.
        # 4 ranks, each one GPU slot: 4 GPUs, or with Intel's 2 tiles per GPU two tiles each.
        per_rank = len(expected) // 4
        spec = ResourceSpec(
            num_nodes=1, ranks_per_node=4, gpus_per_rank=per_rank, exclusive=True, walltime=120
        )
        # Under hydra inside the job every rank also inherits the proxy step's SLURM_PROCID=0.
        result = ex.submit(rank_gpus("PMI_RANK"), resource_spec=spec).result(180)
        assert result.returncode == 0, result.stderr
        devices = rank_devices(result.stdout)
        assert sorted(devices) == [str(r) for r in range(4)], result.stdout
        shown = sorted(d for r in devices.values() for d in r[var].split(","))
        assert shown == expected, result.stdout  # every slot once: no two ranks share one
        assert all(len(r[var].split(",")) == spec.gpus_per_rank for r in devices.values())
        others = {"cuda", "rocr", "ze"} - {var}
        assert all(not r[o] for r in devices.values() for o in others), result.stdout
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
