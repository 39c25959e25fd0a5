"""progress_timeout end to end: a task that goes silent is killed and reported hung.

On the embedded endpoint (every test here but the ``slurm`` ones) and on a real Slurm block,
where the agent runs the task (an srun step for MPI tasks) and must leave no step behind.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from mpiengine.slurm_endpoint import BatchEndpoint
from mpiengine_sdk import (
    Executor,
    MPIFunction,
    ResourceSpec,
    ShellFunction,
    ShellResult,
    TaskHung,
    TaskState,
)
from tests.integration.test_slurm_blocks import (  # noqa: F401 (conf: the cluster fixture)
    conf,
    config,
    marked_processes,
    no_jobs_left,
)

HANGS = "echo started; sleep 60"
TICKS = "for i in 1 2 3 4 5; do echo tick $i; sleep 1; done"


def wait_until_gone(task_id: str, timeout: float = 10.0) -> list[tuple[int, str]]:
    """The task's marked processes still alive after ``timeout`` s (none, when all is well)."""
    deadline = time.monotonic() + timeout
    while (left := marked_processes(task_id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def assert_hung(result: object) -> ShellResult:
    """The result of HANGS with progress_timeout=2: killed as hung, not at 60 s."""
    assert isinstance(result, ShellResult)
    assert (result.state, result.returncode, result.ok) == (TaskState.HUNG, 125, False)
    assert result.started is not None and result.ended is not None
    # Ended because of the hang: not before 2 s of silence, long before sleep 60 would end.
    assert 2.0 <= result.ended - result.started < 40
    with pytest.raises(TaskHung) as info:
        result.check()
    assert "started" in info.value.stdout and "started" in str(info.value)
    assert info.value.returncode == 125
    return result


def test_a_silent_shell_task_is_killed_as_hung(executor: Executor) -> None:
    spec = ResourceSpec(progress_timeout=2)
    started = time.monotonic()
    future = executor.submit(ShellFunction(HANGS), resource_spec=spec)
    assert_hung(future.result(60))
    assert time.monotonic() - started < 40
    assert wait_until_gone(future.task_id) == []


def test_a_task_that_prints_every_second_is_not_killed(executor: Executor) -> None:
    result = executor.submit(ShellFunction(TICKS), resource_spec={"progress_timeout": 2}).result(60)
    assert (result.state, result.returncode) == (TaskState.COMPLETED, 0)
    assert result.stdout.splitlines() == [f"tick {i}" for i in range(1, 6)]
    assert result.started is not None and result.ended is not None
    assert result.ended - result.started >= 4.0


def _silent_after_hello() -> None:
    import time

    print("started", flush=True)
    time.sleep(60)


def test_a_silent_python_task_raises_task_hung(executor: Executor) -> None:
    started = time.monotonic()
    future = executor.submit(_silent_after_hello, resource_spec=ResourceSpec(progress_timeout=2))
    with pytest.raises(TaskHung, match="no output on stdout or stderr for 2.0 s") as info:
        future.result(60)
    assert time.monotonic() - started < 40
    assert info.value.stdout == "started\n" and info.value.returncode == 125


# ----- a real Slurm block -----


@pytest.fixture(scope="module")
def slurm_executor(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Executor]:
    request.getfixturevalue("conf")  # the running cluster, or skip (fail under CI)
    # A 2-node block: enough for a 2-node srun step, and lighter on the shared cluster.
    endpoint = BatchEndpoint(
        config(nodes_per_block=2), workdir=tmp_path_factory.mktemp("hang-endpoint")
    )
    ex = Executor(backend=endpoint)
    try:
        yield ex
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
        assert no_jobs_left(endpoint), "the endpoint left a batch job behind"


def steps_of(task_id: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "--steps", "-o", "%i %j"], capture_output=True, text=True, timeout=10
    ).stdout
    return [line for line in out.splitlines() if line.split()[1:] == [f"mpiengine.{task_id}"]]


@pytest.mark.slurm
@pytest.mark.parametrize(
    "fn,spec",
    [
        (ShellFunction(HANGS), ResourceSpec(progress_timeout=2)),
        # An srun step over two nodes: every rank prints, then all go quiet.
        (
            MPIFunction(["/bin/bash", "-c", HANGS]),
            ResourceSpec(num_nodes=2, ranks_per_node=1, progress_timeout=2),
        ),
    ],
    ids=["shell", "srun-step-2-nodes"],
)
def test_a_silent_task_on_a_slurm_block_is_hung_and_leaves_nothing(
    slurm_executor: Executor, fn: ShellFunction | MPIFunction, spec: ResourceSpec
) -> None:
    future = slurm_executor.submit(fn, resource_spec=spec)
    # Watch its srun step appear, so that "no step left" below is not true by default.
    # Generous: the first task also waits for the block's batch job to start.
    deadline = time.monotonic() + 180
    seen = False
    while not future.done() and time.monotonic() < deadline:
        seen = seen or bool(steps_of(future.task_id))
        time.sleep(0.1)
    result = assert_hung(future.result(10))
    assert len(result.nodes) == spec.num_nodes
    if isinstance(fn, MPIFunction):
        assert result.stdout.splitlines() == ["started", "started"]  # both ranks
        assert result.argv[0] == "srun"
    if result.argv[0] == "srun":
        assert seen, "the task's srun step was never listed while it ran"
    assert wait_until_gone(future.task_id) == []
    # The agent cancels a hung task's leftover steps before it reports it.
    assert steps_of(future.task_id) == []
