"""Blocks from the real Slurm cluster (ci/slurm-docker): the whole path, SDK to srun steps.

One endpoint per module holds one 4-node block (nodes node1..node4, 2 CPUs each) obtained
through Parsl's SlurmProvider; its agent runs in the batch job and starts every task as an srun
step. Under CI=true a missing cluster fails these tests (``require``).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpiengine.blocks.blockstate import BlockRecord
from mpiengine.slurm_endpoint import BatchEndpoint
from mpiengine_sdk import (
    BlockLost,
    Executor,
    MPIFunction,
    MPIPythonFunction,
    ResourceSpec,
    ShellFunction,
    TaskTooLarge,
)
from tests.conftest import REPO, require

pytestmark = [pytest.mark.slurm]

PY = sys.executable
MPI_HELLO = (
    "from mpi4py import MPI; import os, socket; c = MPI.COMM_WORLD; "
    "os.write(1, f'{c.rank} {c.size} {c.allreduce(c.rank)} {socket.gethostname()}\\n'.encode())"
)


def slurm_conf() -> Path | None:
    """SLURM_CONF from the environment, else from the env.sh that start.sh writes."""
    if os.environ.get("SLURM_CONF"):
        return Path(os.environ["SLURM_CONF"])
    env_sh = Path(os.environ.get("MPIENGINE_SLURM_DIR", REPO / ".state" / "slurm")) / "env.sh"
    if not env_sh.is_file():
        return None
    for line in env_sh.read_text().splitlines():
        if line.startswith("export SLURM_CONF="):
            return Path(shlex.split(line.removeprefix("export SLURM_CONF="))[0])
    return None


def cluster_up(conf: Path | None) -> bool:
    if conf is None or not conf.is_file():
        return False
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %T"],
            env={**os.environ, "SLURM_CONF": str(conf)},
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return len({line.split()[0] for line in out.splitlines() if line.strip()}) >= 4


@pytest.fixture(scope="module")
def conf() -> Iterator[Path]:
    path = slurm_conf()
    require(
        cluster_up(path),
        "the Slurm cluster (4 nodes)",
        "start it with: bash ci/slurm-docker/start.sh",
    )
    assert path is not None
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(path)  # sbatch/squeue, and through them the jobs, find it
    yield path
    if old is None:
        del os.environ["SLURM_CONF"]
    else:
        os.environ["SLURM_CONF"] = old


def config(**extra: object) -> dict[str, object]:
    return {
        "provider": "slurm",
        "partition": "debug",
        "nodes_per_block": 4,
        "cores_per_node": 2,
        "max_blocks": 1,
        "walltime": "00:10:00",
        "poll_interval": 1,
        "heartbeat_period": 0.5,
        "heartbeat_threshold": 5,
        "agent_grace": 10,
        "kill_grace": 1,
        "max_idle_time": 600,
        "cmd_timeout": 20,
        # As a user's worker_init would: the jobs import what the submitter's functions need.
        "worker_init": f"export PYTHONPATH={shlex.quote(str(REPO))}",
    } | extra


@pytest.fixture(scope="module")
def endpoint(conf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchEndpoint]:
    ep = BatchEndpoint(config(), workdir=tmp_path_factory.mktemp("slurm-endpoint"))
    yield ep


@pytest.fixture(scope="module")
def executor(endpoint: BatchEndpoint) -> Iterator[Executor]:
    ex = Executor(backend=endpoint)
    try:
        yield ex
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
        assert no_jobs_left(endpoint), "the endpoint left a batch job behind"


def no_jobs_left(ep: BatchEndpoint, wait: float = 15.0) -> bool:
    """Whether squeue lists no job of this endpoint's blocks (waiting for scancel to settle)."""
    blocks = {p.name for p in (ep.workdir / "blocks").glob("*")}
    deadline = time.monotonic() + wait
    while True:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%j"], capture_output=True, text=True, timeout=10
        ).stdout
        # Parsl names a job <job_name>.<timestamp>; the job name is mpiengine.<block id>.
        if not any(name.split(".")[1:2] and name.split(".")[1] in blocks for name in out.split()):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def marked_processes(task_id: str) -> list[tuple[int, str]]:
    """(pid, node) of every process on this host (all four nodes) carrying the task's marker."""
    needle = f"\0MPIENGINE_TASK_ID={task_id}\0".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = b"\0" + Path(f"/proc/{entry}/environ").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if needle in env and stat.rsplit(")", 1)[1].split()[0] != "Z":
            node = next(
                (v.split(b"=", 1)[1].decode() for v in env.split(b"\0")
                 if v.startswith(b"SLURMD_NODENAME=")),
                "?",
            )  # fmt: skip
            found.append((int(entry), node))
    return found


def ranks_running(task_id: str, program: str) -> set[str]:
    """The nodes on which a process of the task runs ``program`` (its ranks, not srun)."""
    nodes = set()
    for pid, node in marked_processes(task_id):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == program:
                nodes.add(node)
        except OSError:
            continue
    return nodes


def slurm_view() -> str:
    """squeue and sinfo as Slurm sees them now (for a failure message)."""
    out = []
    for argv in (["squeue", "-o", "%i %j %T %R"], ["sinfo", "-N", "-o", "%N %T %E"]):
        try:
            out.append(subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout)
        except (OSError, subprocess.SubprocessError) as exc:
            out.append(f"{argv[0]}: {exc}")
    return "\n".join(out)


def wait_for_replacement(ep: BatchEndpoint, old_job: str, within: float) -> BlockRecord:
    """The endpoint's connected block from a job other than ``old_job``."""
    deadline = time.monotonic() + within
    while True:
        blocks = [b for b in ep.blocks() if b.job_id != old_job and b.state.attached]
        if blocks:
            return blocks[0]
        late = time.monotonic() > deadline
        assert not late, f"no replacement block in {within:.0f} s\n{slurm_view()}"
        time.sleep(0.2)


def test_mpi_program_across_two_nodes_with_srun(executor: Executor) -> None:
    spec = ResourceSpec(num_nodes=2, ranks_per_node=2)
    result = executor.submit(MPIFunction([PY, "-c", MPI_HELLO]), resource_spec=spec).result(120)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert sorted(int(r[0]) for r in rows) == [0, 1, 2, 3]
    assert {r[1] for r in rows} == {"4"} and {r[2] for r in rows} == {"6"}
    hosts = {r[3] for r in rows}
    assert len(hosts) == 2 and hosts == set(result.nodes)
    assert result.argv[0] == "srun" and "--nodes=2" in result.argv


def _allreduce(comm, scale):  # type: ignore[no-untyped-def]
    import socket

    return comm.allreduce(comm.rank * scale), socket.gethostname()


def test_the_same_mpi_python_function_across_two_slurm_nodes(executor: Executor) -> None:
    spec = ResourceSpec(num_nodes=2, ranks_per_node=2)
    every = executor.submit(
        MPIPythonFunction(_allreduce, return_all=True), 10, resource_spec=spec
    ).result(120)
    assert [value for value, _ in every] == [60] * 4
    assert len({host for _, host in every}) == 2


def test_concurrent_tasks_share_one_block_on_disjoint_nodes(executor: Executor) -> None:
    script = "hostname; sleep 3"
    futures = [
        executor.submit(
            MPIFunction(["/bin/bash", "-c", script]),
            resource_spec=ResourceSpec(num_nodes=n, ranks_per_node=1, exclusive=True),
        )
        for n in (1, 2, 1)
    ]
    results = [f.result(120) for f in futures]
    hosts = [set(r.stdout.split()) for r in results]
    assert [len(h) for h in hosts] == [1, 2, 1]
    assert not (hosts[0] & hosts[1] or hosts[0] & hosts[2] or hosts[1] & hosts[2])
    start = max(r.started or 0 for r in results)
    end = min(r.ended or 0 for r in results)
    assert start < end, "the three tasks did not run at the same time"


def test_walltime_kills_a_two_node_srun_task_everywhere(executor: Executor) -> None:
    spec = ResourceSpec(num_nodes=2, ranks_per_node=2, walltime=3)
    future = executor.submit(MPIFunction(["sleep", "300"]), resource_spec=spec)
    result = future.result(120)
    assert result.returncode == 124
    assert marked_processes(future.task_id) == []
    steps = subprocess.run(
        ["squeue", "-h", "--steps", "-o", "%i %j"], capture_output=True, text=True, timeout=10
    ).stdout
    assert f"mpiengine.{future.task_id}" not in steps
    # The nodes are free again: a whole-node task gets them at once.
    again = ResourceSpec(num_nodes=4, ranks_per_node=1, exclusive=True)
    assert executor.submit(MPIFunction(["true"]), resource_spec=again).result(60).returncode == 0


def test_a_task_larger_than_a_block_is_refused_at_submit(executor: Executor) -> None:
    with pytest.raises(TaskTooLarge, match="5 nodes"):
        executor.submit(ShellFunction("true"), resource_spec=ResourceSpec(num_nodes=5))


def test_scancel_of_the_block_mid_run(
    endpoint: BatchEndpoint, executor: Executor, tmp_path
) -> None:
    marker = tmp_path / "first-attempt"
    # With a retry left, the task runs again on the replacement block (fast the second time).
    retried = executor.submit(
        ShellFunction(f"if [ -e {marker} ]; then echo second; else touch {marker}; sleep 300; fi"),
        resource_spec=ResourceSpec(num_nodes=1, retries=1),
    )
    doomed = executor.submit(
        MPIFunction(["sleep", "300"]), resource_spec=ResourceSpec(num_nodes=2, ranks_per_node=1)
    )
    # Mid-run: the shell task has touched its marker and both MPI ranks run `sleep` (on their
    # two nodes), so no step is still starting when the job goes: Slurm 22.05 keeps the nodes
    # of a job cancelled while its steps start busy for 2-3 minutes.
    deadline = time.monotonic() + 60
    while not (marker.exists() and len(ranks_running(doomed.task_id, "sleep")) == 2):
        assert time.monotonic() < deadline, f"tasks did not start\n{slurm_view()}"
        time.sleep(0.1)
    old = endpoint.blocks()
    assert len(old) == 1 and old[0].job_id
    subprocess.run(["scancel", old[0].job_id], check=True, timeout=20)

    with pytest.raises(BlockLost) as info:
        doomed.result(60)
    err = info.value
    assert err.block_id == old[0].block_id and err.job_id == old[0].job_id
    assert set(err.nodes) == set(old[0].nodes)
    # The replacement job starts once Slurm has released the cancelled job's nodes; on a
    # loaded host slurmctld can keep them COMPLETING for minutes (it resends the kill on its
    # purge cycle), so wait for that event, not a fixed time, and show Slurm's view if it
    # never comes.
    replacement = wait_for_replacement(endpoint, old[0].job_id, within=420)
    second = retried.result(120)
    assert second.stdout.strip() == "second"
    assert second.block_id == replacement.block_id
    new = endpoint.blocks()
    assert len(new) == 1 and new[0].job_id != old[0].job_id
    assert executor.submit(ShellFunction("echo later")).result(60).stdout == "later\n"
    assert marked_processes(doomed.task_id) == []


def test_a_refused_sbatch_is_reported_and_queued_tasks_survive(conf: Path, tmp_path: Path) -> None:
    ep = BatchEndpoint(config(partition="nosuchpartition", max_backoff=2), workdir=tmp_path)
    ex = Executor(backend=ep)
    try:
        future = ex.submit(ShellFunction("true"))
        deadline = time.monotonic() + 30
        while "nosuchpartition" not in ep.status().last_error:
            assert time.monotonic() < deadline, ep.status()
            time.sleep(0.2)
        status = ep.status()
        assert "provider submit failed" in status.last_error and status.waiting == 1
        assert not future.done()
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
    assert future.cancelled() or future.done()


def test_a_step_that_cannot_start_yet_waits_instead_of_failing(executor: Executor) -> None:
    # Two whole-node steps on the same node (the task's own launcher prefix, which asks for
    # every CPU): the second waits for the first, as after a kill whose step is still ending.
    script = (
        "$MPIENGINE_MPI_PREFIX sleep 2 & sleep 0.5; s=$(date +%s%N); $MPIENGINE_MPI_PREFIX true; "
        'echo "rc=$? waited_ms=$(( ($(date +%s%N) - s) / 1000000 ))"; wait'
    )
    spec = ResourceSpec(num_nodes=1, ranks_per_node=1, exclusive=True)
    result = executor.submit(ShellFunction(["/bin/bash", "-c", script]), resource_spec=spec)
    out = result.result(120)
    rc, waited = (field.split("=")[1] for field in out.stdout.split())
    assert rc == "0" and int(waited) >= 1000, out.stdout + out.stderr
    assert "step creation temporarily disabled" in out.stderr
