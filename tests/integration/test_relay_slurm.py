"""End to end with Slurm blocks: SDK -> relay -> endpoint service (``backend: batch``) -> srun.

The endpoint service runs as its own process (``mpiengine endpoint start``) with the batch
engine: its one 4-node block comes from the real Slurm cluster (ci/slurm-docker) through
Parsl's SlurmProvider, and its agent starts each task as an srun step. Needs both RabbitMQ and
the cluster; under CI=true a missing one fails these tests.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpiengine_sdk import Executor, MPIFunction, MPIPythonFunction, ResourceSpec, ShellFunction
from tests.integration.test_relay_e2e import require_broker
from tests.integration.test_slurm_blocks import conf, config
from tests.support.relay_harness import EndpointProcess, Principal, RelayHarness

__all__ = ["conf"]  # the module-scoped cluster fixture, shared

pytestmark = [pytest.mark.relay, pytest.mark.slurm]

PY = sys.executable
MPI_HELLO = (
    "from mpi4py import MPI; import os, socket; c = MPI.COMM_WORLD; "
    "os.write(1, f'{c.rank} {c.size} {c.allreduce(c.rank)} {socket.gethostname()}\\n'.encode())"
)
NODES = {"node1", "node2", "node3", "node4"}


@pytest.fixture(scope="module")
def harness(conf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayHarness]:
    # After ``conf``: the harness copies os.environ (SLURM_CONF) into its child processes.
    require_broker()
    with RelayHarness(tmp_path_factory.mktemp("relay-slurm")) as h:
        yield h


@pytest.fixture(scope="module")
def owner(harness: RelayHarness) -> Principal:
    return harness.user("carol")


@pytest.fixture(scope="module")
def endpoint(harness: RelayHarness, owner: Principal) -> Iterator[EndpointProcess]:
    ep = harness.endpoint(
        "slurm-ep",
        owner,
        backend="batch",
        backend_options=config(),
        heartbeat_period=1.0,
        stop_grace=5.0,
    )
    ep.start()
    yield ep
    ep.stop()
    jobs = subprocess.run(
        ["squeue", "-h", "-o", "%j"], capture_output=True, text=True, timeout=10
    ).stdout.split()
    assert not [j for j in jobs if j.startswith("mpiengine.")], f"batch jobs left: {jobs}"


@pytest.fixture
def remote(endpoint: EndpointProcess, owner: Principal) -> Iterator[Executor]:
    ex = Executor(endpoint_id=endpoint.endpoint_id, config=owner.client_config)
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)


def _allreduce(comm, scale):  # type: ignore[no-untyped-def]
    import socket

    return comm.allreduce(comm.rank * scale), socket.gethostname()


def _square(x: int) -> int:
    return x * x


def test_shell_mpi_and_python_tasks_on_slurm_blocks(remote: Executor) -> None:
    shell = remote.submit(ShellFunction("hostname"))
    mpi = remote.submit(
        MPIFunction([PY, "-c", MPI_HELLO]),
        resource_spec=ResourceSpec(num_nodes=2, ranks_per_node=2),
    )
    every = remote.submit(
        MPIPythonFunction(_allreduce, return_all=True),
        10,
        resource_spec=ResourceSpec(num_nodes=2, ranks_per_node=2),
    )
    square = remote.submit(_square, 7)

    # The first result waits for the block: sbatch, job start, agent connect.
    host = shell.result(180)
    assert host.returncode == 0 and host.stdout.strip() in NODES

    result = mpi.result(120)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert sorted(int(r[0]) for r in rows) == [0, 1, 2, 3]
    assert {r[1] for r in rows} == {"4"} and {r[2] for r in rows} == {"6"}
    assert len({r[3] for r in rows}) == 2 and {r[3] for r in rows} <= NODES
    assert result.argv[0] == "srun"

    values = every.result(120)
    assert [v for v, _ in values] == [60] * 4
    assert len({h for _, h in values}) == 2
    assert square.result(60) == 49
