"""progress_timeout: the spec field, the runner's hang check, the protocol, the result and error."""

from __future__ import annotations

import math
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dill
import pytest

from mpiengine.agent import Agent, AgentOptions
from mpiengine.agent.protocol import (
    ProtocolError,
    completion_from_dict,
    completion_to_dict,
    launch_from_dict,
    launch_to_dict,
)
from mpiengine.agent.steps import SrunSteps, step_name
from mpiengine.outcome import result_from_completion
from mpiengine.placement import Placement
from mpiengine.runner.launch import HUNG_RETURNCODE, TIMEOUT_RETURNCODE, LaunchSpec
from mpiengine.runner.process import TaskRunner
from mpiengine.runner.sandbox import create_sandbox
from mpiengine_sdk import ResourceSpec, SpecError, TaskHung, TaskTimeout
from mpiengine_sdk.errors import TaskError
from mpiengine_sdk.results import ShellResult, unpack_result
from mpiengine_sdk.states import TERMINAL_STATES, TaskState
from mpiengine_sdk.wire import ResultMessage, TaskKind, TaskMessage, decode_result, encode_result
from tests.support.records import completion
from tests.unit.test_agent import TOKEN, FakeEndpoint, welcome
from tests.unit.test_runner_process import ENV, Collector, assert_all_gone, read_pids

# ----- the spec field -----


@pytest.mark.parametrize("bad", [0, -1, -0.5, True, False, "2", [2], math.nan, math.inf])
def test_progress_timeout_must_be_seconds_above_zero(bad: object) -> None:
    with pytest.raises(SpecError) as info:
        ResourceSpec(progress_timeout=bad)  # type: ignore[arg-type]
    assert info.value.field == "progress_timeout"
    assert info.value.value is bad
    assert "progress_timeout=" in str(info.value) and "> 0" in str(info.value)
    with pytest.raises(SpecError, match="progress_timeout"):
        ResourceSpec.from_dict({"progress_timeout": bad})


def test_progress_timeout_defaults_to_none_and_travels_as_a_float() -> None:
    assert ResourceSpec().progress_timeout is None
    spec = ResourceSpec(progress_timeout=2)
    assert spec.progress_timeout == 2.0 and isinstance(spec.progress_timeout, float)
    data = spec.to_dict()
    assert data["progress_timeout"] == 2.0
    assert ResourceSpec.from_dict(data) == spec
    # merged(): an override sets it, a spec that does not give it keeps the default's.
    assert ResourceSpec(walltime=10).merged(spec).progress_timeout == 2.0
    assert spec.merged(ResourceSpec(walltime=10)).progress_timeout == 2.0
    assert spec.merged({"progress_timeout": None}).progress_timeout is None


def test_unknown_key_error_lists_progress_timeout() -> None:
    with pytest.raises(SpecError) as info:
        ResourceSpec.from_dict({"progress": 2})
    assert "progress_timeout=None" in info.value.allowed


# ----- the runner -----


@pytest.fixture
def collector() -> Collector:
    return Collector()


@pytest.fixture
def runner(collector: Collector) -> Iterator[TaskRunner]:
    r = TaskRunner(collector, kill_grace=0.5)
    try:
        yield r
    finally:
        r.close(kill=True)


@pytest.fixture
def spec(tmp_path: Path) -> Callable[..., LaunchSpec]:
    def make(task_id: str, script: str, **kw: Any) -> LaunchSpec:
        kw.setdefault("walltime", 60.0)
        return LaunchSpec(
            task_id=task_id,
            argv=("/bin/bash", "-c", script),
            env={**ENV, "MPIENGINE_TASK_ID": task_id},
            sandbox=create_sandbox(tmp_path / "tasks", task_id),
            **kw,
        )

    return make


@pytest.mark.parametrize("ignore_term", [False, True], ids=["sigterm", "needs-sigkill"])
def test_a_silent_task_is_killed_as_hung_with_its_tail(
    runner: TaskRunner, collector: Collector, spec: Callable[..., LaunchSpec], ignore_term: bool
) -> None:
    trap = "trap '' TERM; " if ignore_term else ""
    script = (
        f"{trap}echo started; echo warming >&2; sleep 100 & echo $! >> pids; echo $$ >> pids; wait"
    )
    task = spec("hung", script, progress_timeout=2.0)
    runner.start(task)
    procs = read_pids(task.sandbox / "pids", 2)
    done = collector.get(timeout=60)
    assert done.hung and not done.timed_out and not done.cancelled and done.error == ""
    assert done.returncode == HUNG_RETURNCODE == 125
    assert (done.stdout, done.stderr) == ("started\n", "warming\n")
    assert done.started is not None
    # Never before 2 s of silence; well before the 60 s walltime (checks every 0.5 s here, plus
    # the kill grace, plus a loaded machine's slack).
    assert 2.0 <= done.ended - done.started < 20
    assert_all_gone(procs)


@pytest.mark.parametrize(
    "script",
    [
        # stdout and stderr take turns: each stream alone is silent for 1 s at a time.
        "for i in $(seq 4); do echo out $i; sleep 0.5; echo err $i >&2; sleep 0.5; done",
        # stdout only for 2 s, then stderr only for 3 s: stdout alone is silent for 3 s at the
        # end, so this passes only if stderr's growth counts by itself.
        "for i in $(seq 4); do echo out $i; sleep 0.5; done; "
        "for i in $(seq 6); do echo err $i >&2; sleep 0.5; done",
    ],
    ids=["alternating", "stdout-then-stderr"],
)
def test_a_task_that_keeps_writing_is_not_killed(
    runner: TaskRunner, collector: Collector, spec: Callable[..., LaunchSpec], script: str
) -> None:
    runner.start(spec("chatty", script, progress_timeout=2.0))
    done = collector.get(timeout=60)
    assert (done.returncode, done.hung, done.timed_out, done.cancelled) == (0, False, False, False)
    assert done.started is not None and done.ended - done.started >= 4.0


def test_a_walltime_kill_is_still_a_timeout_not_a_hang(
    runner: TaskRunner, collector: Collector, spec: Callable[..., LaunchSpec]
) -> None:
    # Writes every 0.2 s, so it never goes quiet; the 1.5 s walltime ends it.
    task = spec(
        "wall", "while :; do echo tick; sleep 0.2; done", walltime=1.5, progress_timeout=2.0
    )
    runner.start(task)
    done = collector.get(timeout=60)
    assert done.timed_out and not done.hung and not done.cancelled
    assert done.returncode == TIMEOUT_RETURNCODE == 124


def test_a_hang_before_the_walltime_is_a_hang(
    runner: TaskRunner, collector: Collector, spec: Callable[..., LaunchSpec]
) -> None:
    runner.start(spec("quiet", "sleep 100", walltime=30.0, progress_timeout=1.0))
    done = collector.get(timeout=60)
    assert done.hung and not done.timed_out and done.returncode == 125
    assert (done.stdout, done.stderr) == ("", "")


def test_a_task_that_ends_by_itself_is_not_hung(
    runner: TaskRunner, collector: Collector, spec: Callable[..., LaunchSpec]
) -> None:
    # Silent, but done long before its progress_timeout; and no progress_timeout: no check.
    runner.start(spec("quick", "sleep 0.3; exit 3", progress_timeout=5.0))
    runner.start(spec("unwatched", "sleep 2.5"))
    results = {d.task_id: d for d in (collector.get(timeout=60), collector.get(timeout=60))}
    assert (results["quick"].returncode, results["quick"].hung) == (3, False)
    assert (results["unwatched"].returncode, results["unwatched"].hung) == (0, False)


def test_a_cancel_is_still_a_cancel(
    runner: TaskRunner, collector: Collector, spec: Callable[..., LaunchSpec]
) -> None:
    task = spec("cancel", "echo up; sleep 100", progress_timeout=30.0)
    runner.start(task)
    stdout = task.sandbox / "stdout"
    deadline = time.monotonic() + 30
    while not (stdout.exists() and stdout.read_text() == "up\n"):
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.02)
    assert runner.kill("cancel")
    done = collector.get(timeout=60)
    assert done.cancelled and not done.hung and not done.timed_out


# ----- the agent's link -----


def test_the_protocol_carries_progress_timeout_and_hung() -> None:
    launch = LaunchSpec("t", ("a",), {}, Path("/s"), 10.0, files={"f": b"x"}, progress_timeout=2.5)
    assert launch_from_dict(launch_to_dict(launch)) == launch
    plain = LaunchSpec("t", ("a",), {}, Path("/s"), None)
    assert launch_from_dict(launch_to_dict(plain)).progress_timeout is None
    done = completion(returncode=125, ended=4.0, hung=True)
    back = completion_from_dict(completion_to_dict(done))
    assert back == done and back.hung
    with pytest.raises(ProtocolError):
        completion_from_dict({k: v for k, v in completion_to_dict(done).items() if k != "hung"})
    with pytest.raises(ProtocolError):
        launch_from_dict({**launch_to_dict(launch), "progress_timeout": "soon"})


def test_the_agent_cancels_the_srun_steps_of_a_hung_task(tmp_path: Path) -> None:
    """As after a walltime kill: a hung task's steps are cancelled before it is reported."""
    calls: list[list[str]] = []

    def run(argv: list[str], timeout: float) -> tuple[int, str]:
        calls.append(argv)
        if argv[0] == "squeue" and not any(c[0] == "scancel" for c in calls):
            return 0, f"42.0 {step_name('hung')}\n"
        return 0, ""

    ep = FakeEndpoint()
    options = AgentOptions(
        connect=f"tcp://127.0.0.1:{ep.port}",
        block_id="blk-test",
        token=TOKEN,
        heartbeat_period=0.2,
        kill_grace=0.5,
    )
    env = {"PATH": os.environ["PATH"]}
    agent = Agent(options, env=env, nodes=("n1",), steps=SrunSteps("42", run=run))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        welcome(ep)
        launch = LaunchSpec(
            task_id="hung",
            argv=("/bin/bash", "-c", "echo started; sleep 100"),
            env={"MPIENGINE_TASK_ID": "hung"},
            sandbox=create_sandbox(tmp_path, "hung"),
            walltime=60.0,
            progress_timeout=1.0,
        )
        ep.send("launch", spec=launch_to_dict(launch))
        done = ep.recv("done", timeout=60)["c"]
        assert done["hung"] and done["returncode"] == 125 and done["stdout"] == "started\n"
        assert ["scancel", "42.0"] in calls
        ep.send("shutdown")
        ep.recv("bye")
        thread.join(10)
        assert not thread.is_alive()
    finally:
        ep.close()


# ----- the result and the error -----


def _task(kind: TaskKind) -> TaskMessage:
    return TaskMessage("t1", kind, {"progress_timeout": 2.0}, argv=("x",))


def _placement() -> Placement:
    return Placement(task_id="t1", block_id="b1", nodes=("n1",), ranks_per_node=1, walltime=60.0)


def _hung(kind: TaskKind) -> ResultMessage:
    done = completion(
        task_id="t1",
        returncode=125,
        stdout="started\n",
        stderr="warn\n",
        stdout_path="/s/stdout",
        stderr_path="/s/stderr",
        argv=("x",),
        ended=4.0,
        hung=True,
    )
    msg = result_from_completion(_task(kind), _placement(), done)
    return decode_result(encode_result(msg))  # as it travels to the SDK


def test_hung_is_a_terminal_state_of_its_own() -> None:
    assert TaskState("hung") is TaskState.HUNG and TaskState.HUNG in TERMINAL_STATES
    assert TaskState.HUNG is not TaskState.TIMEOUT


@pytest.mark.parametrize("kind", [TaskKind.SHELL, TaskKind.MPI])
def test_a_hung_shell_task_is_a_result_whose_check_raises_task_hung(kind: TaskKind) -> None:
    msg = _hung(kind)
    assert (msg.state, msg.error_type) == (TaskState.HUNG, "TaskHung")
    assert "2.0 s" in msg.error_message and "progress_timeout" in msg.error_message
    result = unpack_result(kind, msg)
    assert isinstance(result, ShellResult)
    assert (result.state, result.returncode, result.ok) == (TaskState.HUNG, 125, False)
    with pytest.raises(TaskHung) as info:
        result.check()
    err = info.value
    assert not isinstance(err, TaskTimeout) and isinstance(err, TaskError)
    assert (err.task_id, err.returncode, err.stdout, err.stderr) == (
        "t1",
        125,
        "started\n",
        "warn\n",
    )
    text = str(err)
    assert "progress_timeout" in text and "/s/stderr" in text
    assert "--- stdout (tail) ---\nstarted" in text and "--- stderr (tail) ---\nwarn" in text


@pytest.mark.parametrize("kind", [TaskKind.PYTHON, TaskKind.MPI_PYTHON])
def test_a_hung_python_task_raises_task_hung(kind: TaskKind) -> None:
    with pytest.raises(TaskHung) as info:
        unpack_result(kind, _hung(kind))
    err = info.value
    assert "no output on stdout or stderr for 2.0 s" in str(err)
    assert (err.returncode, err.stdout, err.stderr) == (125, "started\n", "warn\n")


def test_a_program_that_exits_125_by_itself_is_a_failure_not_a_hang() -> None:
    result = ShellResult(returncode=125, task_id="k")
    with pytest.raises(TaskError) as info:
        result.check()
    assert not isinstance(info.value, TaskHung)


@pytest.mark.parametrize("dumps,loads", [(pickle.dumps, pickle.loads), (dill.dumps, dill.loads)])
def test_task_hung_pickles_with_its_tails(dumps: Any, loads: Any) -> None:
    err = TaskHung("quiet", task_id="t", returncode=125, stdout="o\n", stderr="e\n")
    back = loads(dumps(err))
    assert type(back) is TaskHung and str(back) == str(err)
    assert (back.task_id, back.returncode, back.stdout, back.stderr) == ("t", 125, "o\n", "e\n")
