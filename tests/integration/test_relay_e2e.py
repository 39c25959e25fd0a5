"""End to end through the real broker: SDK -> relay -> endpoint service -> results.

A throwaway vhost, principals, relay and endpoint processes per module (RelayHarness); the
endpoint runs the embedded engine (4 virtual nodes x 4 cores), so shell, MPI and Python tasks
run for real.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpiengine.cli.endpoint import endpoint as endpoint_cli
from mpiengine_sdk import (
    Executor,
    MPIFunction,
    MPIPythonFunction,
    MPIResult,
    ShellFunction,
    ShellResult,
    TaskState,
)
from mpiengine_sdk.relayclient import RelayBackend
from tests.conftest import require
from tests.support.relay_harness import EndpointProcess, Principal, RelayHarness, wait_for

pytestmark = pytest.mark.relay

MPI_HELLO = (
    "from mpi4py import MPI; import os; c = MPI.COMM_WORLD; "
    "os.write(1, f'rank {c.rank} size {c.size} sum {c.allreduce(c.rank)}\\n'.encode())"
)


def broker_available() -> bool:
    """A broker answers on 127.0.0.1:5672 and rabbitmqctl is here."""
    if shutil.which("rabbitmqctl") is None:
        return False
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError:
        return False
    return True


def require_broker() -> None:
    require(broker_available(), "RabbitMQ on 127.0.0.1:5672", "start it with: bash ci/rabbitmq.sh")


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayHarness]:
    require_broker()
    root = tmp_path_factory.mktemp("relay")
    with RelayHarness(root, relay_options={"heartbeat_threshold": 3}) as h:
        yield h


@pytest.fixture(scope="module")
def alice(harness: RelayHarness) -> Principal:
    return harness.user("alice")


@pytest.fixture(scope="module")
def endpoint(harness: RelayHarness, alice: Principal) -> Iterator[EndpointProcess]:
    ep = harness.endpoint(
        "ep",
        alice,
        backend_options={"nodes": 4, "cores_per_node": 4, "kill_grace": 0.5},
        heartbeat_period=1.0,
        stop_grace=5.0,
    )
    ep.start()
    yield ep
    ep.stop()


@pytest.fixture
def remote(endpoint: EndpointProcess, alice: Principal) -> Iterator[Executor]:
    ex = Executor(endpoint_id=endpoint.endpoint_id, config=alice.client_config)
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)


def test_shell_mpi_and_python_tasks(remote: Executor, mpi: str) -> None:
    shell = remote.submit(ShellFunction(["echo", "hi; $(id)"])).result(30)
    assert isinstance(shell, ShellResult)
    assert (shell.returncode, shell.stdout) == (0, "hi; $(id)\n")
    assert Path(shell.stdout_path).read_text() == "hi; $(id)\n"

    spec = {"num_nodes": 2, "ranks_per_node": 2}
    mpi_result = remote.submit(
        MPIFunction([sys.executable, "-c", MPI_HELLO]), resource_spec=spec
    ).result(60)
    assert isinstance(mpi_result, MPIResult)
    assert mpi_result.returncode == 0, mpi_result.stderr
    assert sorted(mpi_result.stdout.splitlines()) == [f"rank {r} size 4 sum 6" for r in range(4)]
    assert len(mpi_result.nodes) == 2 and mpi_result.ranks_per_node == 2

    assert remote.submit(pow, 2, 10).result(60) == 1024
    ranks = remote.submit(
        MPIPythonFunction(_rank_times, return_all=True), 10, resource_spec={"num_ranks": 2}
    ).result(60)
    assert ranks == [0, 10]


def _rank_times(comm, factor):  # type: ignore[no-untyped-def]
    return comm.rank * factor


def test_errors_come_back_typed(remote: Executor) -> None:
    with pytest.raises(ZeroDivisionError):
        remote.submit(_divide, 1, 0).result(60)
    result = remote.submit(ShellFunction(["sh", "-c", "echo oops >&2; exit 3"])).result(30)
    assert result.returncode == 3 and result.stderr == "oops\n"


def _divide(a: int, b: int) -> float:
    return a / b


def test_same_results_as_the_embedded_default(remote: Executor, tmp_path: Path) -> None:
    fn = ShellFunction("printf '%s-%s' {a} {b}")
    with Executor(nodes=2, cores_per_node=2, workdir=tmp_path) as local:
        here = local.submit(fn, a="x y", b=3).result(30)
    there = remote.submit(fn, a="x y", b=3).result(30)
    assert type(here) is type(there)
    assert (here.stdout, here.returncode, here.argv) == (there.stdout, there.returncode, there.argv)


def test_running_then_cancelled(remote: Executor) -> None:
    future = remote.submit(ShellFunction(["sleep", "60"]))
    wait_for(future.running, 30, "task running")
    assert future.cancel()
    assert future.cancelled()
    # The endpoint killed it: the next tasks still get the slots.
    assert remote.submit(ShellFunction(["true"])).result(30).returncode == 0


def test_fire_and_forget_then_attach_from_another_process(
    endpoint: EndpointProcess, alice: Principal, tmp_path: Path
) -> None:
    script = tmp_path / "submit.py"
    script.write_text(
        "import sys\n"
        "from mpiengine_sdk import Executor, ShellFunction\n"
        f"ex = Executor(endpoint_id={endpoint.endpoint_id!r},"
        f" config={str(alice.client_config)!r})\n"
        "ids = [ex.submit(ShellFunction(['sh', '-c', f'sleep 1; echo {i}'])).task_id"
        " for i in range(5)]\n"
        "ex.shutdown(wait=False)\n"
        "print(' '.join(ids))\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    ids = out.stdout.split()
    assert len(ids) == 5
    with Executor(endpoint_id=endpoint.endpoint_id, config=alice.client_config) as ex:
        listed = {f.task_id for f in ex.attach()}
        assert set(ids) <= listed
        futures = ex.attach(ids)
        results = [f.result(60) for f in futures]
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(5)]
        # Fetched results stay fetchable for the retention time (one result per id).
        again = ex.attach(ids[:1])[0].result(30)
        assert again.stdout == "0\n"


def test_a_resubmitted_task_id_runs_once(remote: Executor, endpoint: EndpointProcess) -> None:
    fn = ShellFunction(["sh", "-c", "echo $$"])
    first = remote.submit(fn, task_id="fixed-id-1").result(30)
    with Executor(endpoint_id=endpoint.endpoint_id, config=endpoint.owner.client_config) as ex:
        second = ex.submit(fn, task_id="fixed-id-1").result(30)
    assert second.stdout == first.stdout  # the stored result, not a second run


def test_endpoint_status_and_offline(harness: RelayHarness, alice: Principal) -> None:
    ep = harness.endpoint("ep-hb", alice, backend="null", heartbeat_period=0.5).start()
    backend = RelayBackend(ep.endpoint_id, config=alice.client_config)
    with Executor(backend=backend) as ex:
        status = backend.status()
        assert status["online"] and status["status"]["state"] == "running"
        assert ex.submit(ShellFunction(["true"])).result(30).returncode == 0
        ep.stop()
        wait_for(lambda: not backend.status()["online"], 30, "endpoint offline")


def test_endpoint_cli_status_and_list(
    harness: RelayHarness, endpoint: EndpointProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MPIENGINE_HOME", str(harness.home))
    runner = CliRunner()
    shown = runner.invoke(endpoint_cli, ["status", "ep"])
    assert shown.exit_code == 0, shown.output
    assert f"running, pid {endpoint.pid}" in shown.output and "nodes 4" in shown.output
    listed = runner.invoke(endpoint_cli, ["list"])
    assert f"ep  {endpoint.endpoint_id}  running" in listed.output


def test_many_tasks_stream_back(remote: Executor) -> None:
    futures = [remote.submit(ShellFunction(["echo", str(i)])) for i in range(300)]
    done, pending = concurrent.futures.wait(futures, timeout=120)
    assert not pending
    assert [f.result().stdout for f in futures] == [f"{i}\n" for i in range(300)]
    assert all(f.message is not None and f.message.state is TaskState.COMPLETED for f in futures)


def test_results_carry_timings(remote: Executor) -> None:
    start = time.time()
    result = remote.submit(ShellFunction(["true"])).result(30)
    assert result.started is not None and start - 1 <= result.started <= time.time()


def test_detached_start_and_stop_through_the_cli(
    harness: RelayHarness, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    ep = harness.endpoint("ep-cli", alice, backend="null")
    for key, value in harness.env.items():
        if key.startswith("MPIENGINE_"):
            monkeypatch.setenv(key, value)
    runner = CliRunner()
    try:
        started = runner.invoke(endpoint_cli, ["start", "ep-cli", "--detach"])
        assert started.exit_code == 0, started.output
        pid = int(ep.paths.pid.read_text())
        assert f"running (pid {pid})" in started.output
        with Executor(endpoint_id=ep.endpoint_id, config=alice.client_config) as ex:
            assert ex.submit(ShellFunction(["true"])).result(30).returncode == 0
        again = runner.invoke(endpoint_cli, ["start", "ep-cli", "--detach"])
        assert again.exit_code != 0 and "already running" in again.output
        stopped = runner.invoke(endpoint_cli, ["stop", "ep-cli"])
        assert stopped.exit_code == 0 and "stopped" in stopped.output
        assert not Path(f"/proc/{pid}").exists()
    finally:
        if ep.paths.pid.exists():  # never leave it behind
            os.kill(int(ep.paths.pid.read_text()), signal.SIGKILL)
