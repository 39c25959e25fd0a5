"""The whole path on the embedded endpoint: SDK -> engine -> scheduler -> launcher -> runner.

Real processes, real MPI (the PyPI mpich wheel), sandboxes under tmp_path.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from mpiengine_sdk import (
    Executor,
    InvalidTaskId,
    MPIFunction,
    MPIPythonFunction,
    MPIResult,
    ResourceSpec,
    SerializationError,
    ShellFunction,
    ShellResult,
    SpecError,
    TaskFailed,
    TaskTimeout,
    TaskTooLarge,
)

PY = sys.executable
# One write(2) per rank: hydra forwards each rank's output in the chunks the rank wrote.
MPI_HELLO = (
    "from mpi4py import MPI; import os; c = MPI.COMM_WORLD; "
    "os.write(1, f'rank {c.rank} size {c.size} sum {c.allreduce(c.rank)}\\n'.encode())"
)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_argv_is_passed_verbatim_without_a_shell(executor: Executor) -> None:
    result = executor.submit(ShellFunction(["echo", "hi; rm -rf / $(id)"])).result(30)
    assert isinstance(result, ShellResult)
    assert result.returncode == 0
    assert result.stdout == "hi; rm -rf / $(id)\n"
    assert Path(result.stdout_path).read_text() == result.stdout
    assert result.argv == ("echo", "hi; rm -rf / $(id)")
    assert len(result.nodes) == 1 and result.nodes[0].startswith("vnode")


def test_template_values_are_quoted(executor: Executor, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("x")
    fn = ShellFunction("echo {msg}")
    result = executor.submit(fn, msg=f"a; rm {victim}").result(30)
    assert result.stdout == f"a; rm {victim}\n"
    assert victim.exists()


def test_nonzero_exit_does_not_raise_but_check_does(executor: Executor) -> None:
    result = executor.submit(ShellFunction("echo oops >&2; exit 3")).result(30)
    assert result.returncode == 3
    assert result.stderr == "oops\n"
    with pytest.raises(TaskFailed) as info:
        result.check()
    assert info.value.returncode == 3 and "oops" in str(info.value)


def test_walltime_kills_the_whole_tree(executor: Executor, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    script = f"sleep 60 & echo $! >> {pidfile}; sleep 60 & echo $! >> {pidfile}; wait"
    started = time.monotonic()
    result = executor.submit(ShellFunction(script, walltime=1)).result(30)
    assert time.monotonic() - started < 10
    assert result.returncode == 124
    with pytest.raises(TaskTimeout):
        result.check()
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


def test_task_environment_is_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPIENGINE_LEAK", "from-the-parent")
    with Executor(nodes=2, workdir=tmp_path / "ep") as ex:
        fn = ShellFunction(
            "echo $MPIENGINE_TASK_ID $MPIENGINE_NUM_RANKS $MPIENGINE_NODELIST "
            "${{MPIENGINE_LEAK:-clean}}; export MPIENGINE_SECRET=1"
        )
        spec = ResourceSpec(num_nodes=2)
        first = ex.submit(fn, resource_spec=spec, task_id="first").result(30)
        second = ex.submit(
            ShellFunction("echo ${{MPIENGINE_SECRET:-none}} $MPIENGINE_TASK_ID"), task_id="second"
        ).result(30)
    assert first.stdout.split() == ["first", "2", "vnode0,vnode1", "clean"]
    assert second.stdout.split() == ["none", "second"]
    assert Path(first.sandbox).name == "first"  # the first attempt runs in the task directory


@pytest.mark.mpi
def test_mpi_function_across_virtual_nodes(mpi: str, executor: Executor) -> None:
    spec = ResourceSpec(num_nodes=2, ranks_per_node=2)
    result = executor.submit(MPIFunction([PY, "-c", MPI_HELLO]), resource_spec=spec).result(60)
    assert isinstance(result, MPIResult)
    assert result.returncode == 0, result.stderr
    lines = sorted(line for line in result.stdout.splitlines() if line)
    assert lines == [f"rank {r} size 4 sum 6" for r in range(4)]
    assert result.nodes == ("vnode0", "vnode1") or len(set(result.nodes)) == 2
    assert "-n" in result.argv and "4" in result.argv
    assert not any("." in a and a.replace(".", "").isdigit() for a in result.argv)


def _allreduce(comm, scale):  # type: ignore[no-untyped-def]
    return comm.allreduce(comm.rank * scale)


def _rank_and_size(comm):  # type: ignore[no-untyped-def]
    return (comm.rank, comm.size)


@pytest.mark.mpi
def test_mpi_python_function(mpi: str, executor: Executor) -> None:
    spec = ResourceSpec(num_nodes=2, ranks_per_node=2)
    assert executor.submit(MPIPythonFunction(_allreduce), 10, resource_spec=spec).result(60) == 60
    every = executor.submit(
        MPIPythonFunction(_rank_and_size, return_all=True), resource_spec=spec
    ).result(60)
    assert every == [(0, 4), (1, 4), (2, 4), (3, 4)]


def _boom(x: int) -> int:
    raise ValueError(f"bad value {x}")


def test_python_functions_return_and_raise(executor: Executor) -> None:
    assert executor.submit(pow, 2, 10).result(30) == 1024
    assert executor.submit(sorted, [3, 1, 2], reverse=True).result(30) == [3, 2, 1]
    with pytest.raises(ValueError, match="bad value 7"):
        executor.submit(_boom, 7).result(30)


def test_bad_input_is_refused_at_submit_and_the_endpoint_keeps_running(
    executor: Executor,
) -> None:
    with pytest.raises(TaskTooLarge, match="5 nodes"):
        executor.submit(ShellFunction(["true"]), resource_spec={"num_nodes": 5})
    with pytest.raises(InvalidTaskId):
        executor.submit(ShellFunction(["true"]), task_id="../escape")
    with pytest.raises(SpecError):
        executor.submit(ShellFunction(["true"]), resource_spec={"num_nodes": 2, "num_ranks": 3})
    with pytest.raises(SpecError, match="valid keys"):
        executor.submit(ShellFunction(["true"]), resource_spec={"nodes": 2})
    generator = (x for x in range(3))  # dill cannot serialise a live generator
    with pytest.raises(SerializationError):
        executor.submit(list, generator)
    assert executor.submit(ShellFunction(["true"])).result(30).returncode == 0


def test_cancel_queued_and_running(executor: Executor, tmp_path: Path) -> None:
    whole = ResourceSpec(num_nodes=4, exclusive=True)
    pidfile = tmp_path / "pid"
    running = executor.submit(
        ShellFunction(f"echo $$ > {pidfile}; exec sleep 60"), resource_spec=whole
    )
    queued = executor.submit(ShellFunction(["true"]), resource_spec=whole)
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert queued.cancel() and queued.cancelled()
    pid = int(pidfile.read_text())
    assert _alive(pid)
    assert running.cancel() and running.cancelled()
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pid)
    # the nodes came back: a whole-block task runs now
    assert executor.submit(ShellFunction(["true"]), resource_spec=whole).result(30).returncode == 0


def test_whole_node_tasks_run_side_by_side(executor: Executor) -> None:
    spec = ResourceSpec(num_nodes=1, exclusive=True, walltime=30)
    futures = [
        executor.submit(ShellFunction(["sleep", "0.5"]), resource_spec=spec) for _ in range(4)
    ]
    results = [f.result(30) for f in concurrent.futures.as_completed(futures, timeout=30)]
    assert len({r.nodes[0] for r in results}) == 4
    latest_start = max(r.started for r in results if r.started)
    earliest_end = min(r.ended for r in results if r.ended)
    assert latest_start < earliest_end  # all four overlapped


def test_shutdown_cancels_what_has_not_started(tmp_path: Path) -> None:
    ex = Executor(nodes=1, workdir=tmp_path / "ep", kill_grace=0.2)
    spec = ResourceSpec(exclusive=True)
    first = ex.submit(ShellFunction(["sleep", "0.5"]), resource_spec=spec)
    rest = [ex.submit(ShellFunction(["true"]), resource_spec=spec) for _ in range(3)]
    deadline = time.monotonic() + 10
    while not first.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    ex.shutdown(wait=True, cancel_futures=True)
    assert first.result(5).returncode == 0
    assert all(f.cancelled() for f in rest)
    assert os.listdir(tmp_path / "ep" / "tasks")  # sandboxes are kept for the user
