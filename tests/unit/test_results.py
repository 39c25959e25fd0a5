"""Results: ShellResult/MPIResult, check(), and unpack_result for every kind and state."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import traceback

import dill
import pytest

from mpiengine_sdk import errors
from mpiengine_sdk.errors import (
    BlockLost,
    ConfigError,
    InvalidTaskId,
    MPIEngineError,
    PayloadTooLarge,
    RateLimited,
    RemoteExecutionError,
    SerializationError,
    SpecError,
    TaskCancelled,
    TaskFailed,
    TaskTimeout,
    TaskTooLarge,
    error_record,
)
from mpiengine_sdk.results import MPIResult, ShellResult, unpack_result
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import (
    ResultMessage,
    TaskKind,
    decode_result,
    encode_result,
    error_result,
)

SHELL_KINDS = [TaskKind.SHELL, TaskKind.MPI]
PYTHON_KINDS = [TaskKind.PYTHON, TaskKind.MPI_PYTHON]


def shell_msg(**changes) -> ResultMessage:
    base = ResultMessage(
        task_id="t1",
        state=TaskState.COMPLETED,
        returncode=0,
        stdout="out\n",
        stderr="err\n",
        stdout_path="/sb/t1/stdout",
        stderr_path="/sb/t1/stderr",
        sandbox="/sb/t1",
        argv=("srun", "-N", "2", "./a.out", "x y"),
        nodes=("n1", "n2"),
        num_ranks=4,
        started=100.0,
        ended=102.5,
    )
    return dataclasses.replace(base, **changes)


def unpack(kind: TaskKind, msg: ResultMessage) -> concurrent.futures.Future[object]:
    """The way an Executor uses unpack_result, through the wire as a result really travels."""
    future: concurrent.futures.Future[object] = concurrent.futures.Future()
    try:
        future.set_result(unpack_result(kind, decode_result(encode_result(msg))))
    except BaseException as exc:
        future.set_exception(exc)
    return future


class TestShellResults:
    def test_completed_zero(self):
        result = unpack(TaskKind.SHELL, shell_msg()).result()
        assert type(result) is ShellResult
        assert result.ok
        assert result.check() is result
        assert result.duration == 2.5
        assert result.cmd == "srun -N 2 ./a.out 'x y'"
        assert result.argv == ("srun", "-N", "2", "./a.out", "x y")
        assert (result.stdout, result.stderr) == ("out\n", "err\n")
        assert (result.sandbox, result.stdout_path, result.stderr_path) == (
            "/sb/t1",
            "/sb/t1/stdout",
            "/sb/t1/stderr",
        )
        assert result.nodes == ("n1", "n2")
        assert result.num_ranks == 4
        assert (result.task_id, result.state) == ("t1", TaskState.COMPLETED)

    def test_nonzero_exit_is_a_result_and_check_raises(self):
        result = unpack(TaskKind.SHELL, shell_msg(returncode=3, stderr="boom\n")).result()
        assert isinstance(result, ShellResult)
        assert result.returncode == 3 and not result.ok
        with pytest.raises(TaskFailed) as info:
            result.check()
        err = info.value
        assert (err.task_id, err.returncode, err.stdout, err.stderr) == ("t1", 3, "out\n", "boom\n")
        assert "returncode 3" in str(err) and "boom" in str(err) and "/sb/t1/stderr" in str(err)

    def test_timeout_is_a_result_with_124_and_check_raises_timeout(self):
        msg = shell_msg(state=TaskState.TIMEOUT, returncode=124)
        result = unpack(TaskKind.SHELL, msg).result()
        assert isinstance(result, ShellResult)
        assert (result.returncode, result.state, result.ok) == (124, TaskState.TIMEOUT, False)
        with pytest.raises(TaskTimeout, match="longer walltime") as info:
            result.check()
        assert info.value.returncode == 124

    def test_timeout_state_decides_whatever_the_code(self):
        result = ShellResult(returncode=-9, state=TaskState.TIMEOUT, task_id="k")
        with pytest.raises(TaskTimeout):
            result.check()

    def test_timeout_without_returncode_reports_124(self):
        msg = shell_msg(state=TaskState.TIMEOUT, returncode=None)
        assert unpack(TaskKind.SHELL, msg).result().returncode == 124  # type: ignore[attr-defined]

    def test_program_that_exits_124_by_itself_is_a_failure_not_a_timeout(self):
        result = unpack(TaskKind.SHELL, shell_msg(returncode=124)).result()
        with pytest.raises(TaskFailed) as info:
            result.check()  # type: ignore[attr-defined]
        assert not isinstance(info.value, TaskTimeout)

    def test_completed_without_returncode_is_a_failure(self):
        with pytest.raises(TaskFailed, match="without a returncode"):
            unpack(TaskKind.SHELL, shell_msg(returncode=None)).result()

    def test_mpi_result_has_ranks_per_node(self):
        result = unpack(TaskKind.MPI, shell_msg()).result()
        assert type(result) is MPIResult
        assert result.ranks_per_node == 2
        assert isinstance(result, ShellResult)
        assert result.check() is result

    @pytest.mark.parametrize(("nodes", "ranks"), [((), 4), (("a", "b"), 3)])
    def test_mpi_ranks_per_node_unknown_is_zero(self, nodes, ranks):
        result = unpack(TaskKind.MPI, shell_msg(nodes=nodes, num_ranks=ranks)).result()
        assert result.ranks_per_node == 0  # type: ignore[attr-defined]

    def test_duration_unknown(self):
        assert ShellResult(returncode=0).duration is None
        assert ShellResult(returncode=0, started=1.0).duration is None

    def test_frozen(self):
        with pytest.raises(dataclasses.FrozenInstanceError):
            ShellResult(returncode=0).returncode = 1  # type: ignore[misc]


class Boom(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"boom {code}")
        self.code = code


def remote_failure(exc: BaseException, payload: bytes | None = None) -> ResultMessage:
    """A FAILED message as the endpoint builds it for a Python task that raised ``exc``."""
    try:
        raise exc
    except BaseException as raised:
        tb = "".join(traceback.format_exception(raised))
    return ResultMessage(
        task_id="p1",
        state=TaskState.FAILED,
        error_type=type(exc).__qualname__,
        error_message=str(exc),
        error_traceback=tb,
        error_payload=dill.dumps(exc) if payload is None else payload,
    )


class TestPythonResults:
    @pytest.mark.parametrize("kind", PYTHON_KINDS)
    def test_completed_value(self, kind):
        msg = ResultMessage(task_id="p", state=TaskState.COMPLETED, value=dill.dumps({"a": [1]}))
        assert unpack(kind, msg).result() == {"a": [1]}

    def test_return_all_list(self):
        msg = ResultMessage(task_id="p", state=TaskState.COMPLETED, value=dill.dumps([0, 1, 2]))
        assert unpack(TaskKind.MPI_PYTHON, msg).result() == [0, 1, 2]

    def test_none_value(self):
        msg = ResultMessage(task_id="p", state=TaskState.COMPLETED, value=dill.dumps(None))
        assert unpack(TaskKind.PYTHON, msg).result() is None

    def test_undeserialisable_value(self):
        msg = ResultMessage(task_id="p", state=TaskState.COMPLETED, value=b"not dill")
        with pytest.raises(SerializationError, match="task p") as info:
            unpack(TaskKind.PYTHON, msg).result()
        assert info.value.__cause__ is not None

    @pytest.mark.parametrize("kind", PYTHON_KINDS)
    def test_remote_exception_is_rebuilt_with_its_traceback(self, kind):
        future = unpack(kind, remote_failure(Boom(7)))
        with pytest.raises(Boom) as info:
            future.result()
        assert info.value.code == 7
        notes = "".join(getattr(info.value, "__notes__", []))
        assert "Remote traceback (task p1)" in notes and "remote_failure" in notes

    def test_builtin_remote_exception(self):
        with pytest.raises(ZeroDivisionError):
            unpack(TaskKind.PYTHON, remote_failure(ZeroDivisionError("division by zero"))).result()

    def test_remote_mpiengine_error_is_itself(self):
        # SpecError does not survive pickling (its __init__ takes three arguments), so this
        # goes through the rebuild-by-name path; the remote traceback is still attached.
        with pytest.raises(SpecError) as info:
            unpack(TaskKind.PYTHON, remote_failure(SpecError("num_nodes", 0, ">= 1"))).result()
        assert (info.value.field, info.value.value, info.value.allowed) == ("num_nodes", 0, ">= 1")
        assert "Remote traceback" in "".join(getattr(info.value, "__notes__", []))

    def test_unpicklable_remote_exception_falls_back(self):
        msg = remote_failure(Boom(1), payload=b"\x80garbage")
        with pytest.raises(RemoteExecutionError) as info:
            unpack(TaskKind.PYTHON, msg).result()
        err = info.value
        assert (err.type_name, err.task_id) == ("Boom", "p1")
        assert "boom 1" in str(err) and "remote_failure" in err.remote_traceback

    def test_payload_that_is_not_an_exception_falls_back(self):
        msg = remote_failure(Boom(1), payload=dill.dumps("a string"))
        with pytest.raises(RemoteExecutionError):
            unpack(TaskKind.PYTHON, msg).result()

    def test_remote_error_without_payload(self):
        msg = remote_failure(Boom(2), payload=b"")
        with pytest.raises(RemoteExecutionError, match="boom 2"):
            unpack(TaskKind.MPI_PYTHON, msg).result()

    def test_python_timeout_raises(self):
        msg = ResultMessage(task_id="p", state=TaskState.TIMEOUT, returncode=124, stderr="slow")
        with pytest.raises(TaskTimeout, match="walltime") as info:
            unpack(TaskKind.PYTHON, msg).result()
        assert (info.value.task_id, info.value.stderr) == ("p", "slow")


ALL_KINDS = list(TaskKind)


class TestEveryKind:
    @pytest.mark.parametrize("kind", ALL_KINDS)
    def test_cancelled(self, kind):
        msg = ResultMessage(task_id="c", state=TaskState.CANCELLED)
        with pytest.raises(TaskCancelled, match="task c was cancelled") as info:
            unpack(kind, msg).result()
        assert info.value.task_id == "c"

    @pytest.mark.parametrize("kind", ALL_KINDS)
    def test_lost(self, kind):
        msg = ResultMessage(
            task_id="l", state=TaskState.LOST, block_id="b3", job_id="4242", nodes=("n1", "n2")
        )
        with pytest.raises(BlockLost, match="block b3 \\(batch job 4242\\) was lost") as info:
            unpack(kind, msg).result()
        err = info.value
        assert (err.task_id, err.block_id, err.job_id, err.nodes) == (
            "l",
            "b3",
            "4242",
            ("n1", "n2"),
        )

    @pytest.mark.parametrize("kind", ALL_KINDS)
    def test_launch_failure(self, kind):
        msg = ResultMessage(
            task_id="f",
            state=TaskState.FAILED,
            error_type="FileNotFoundError",
            error_message="./a.out: no such file",
        )
        with pytest.raises(TaskFailed, match="no such file") as info:
            unpack(kind, msg).result()
        assert info.value.task_id == "f"

    @pytest.mark.parametrize("kind", ALL_KINDS)
    def test_failure_without_message(self, kind):
        with pytest.raises(TaskFailed, match="failed without a message"):
            unpack(kind, ResultMessage(task_id="f", state=TaskState.FAILED)).result()

    @pytest.mark.parametrize("state", [TaskState.PENDING, TaskState.QUEUED, TaskState.RUNNING])
    def test_non_terminal_state_is_a_caller_error(self, state):
        with pytest.raises(ValueError, match="not finished"):
            unpack_result(TaskKind.SHELL, ResultMessage(task_id="r", state=state))


# One instance of every error class, built the way the endpoint would build it.
SAMPLES: dict[str, MPIEngineError] = {
    "MPIEngineError": MPIEngineError("something broke"),
    "SpecError": SpecError("num_ranks", 5, "a multiple of num_nodes=2"),
    "TemplateError": errors.TemplateError("no value for placeholder(s) ['a']"),
    "ArgumentError": errors.ArgumentError("f(x) cannot be called with these arguments: ..."),
    "SerializationError": SerializationError("cannot serialise"),
    "SubmitError": errors.SubmitError("refused"),
    "TaskTooLarge": TaskTooLarge("5 nodes x 4 cores", "4 nodes x 64 cores"),
    "InvalidTaskId": InvalidTaskId("task id '../x' would escape the sandbox"),
    "ExecutorShutdown": errors.ExecutorShutdown("the executor is shut down"),
    "ConfigError": ConfigError("blocks.max", "must be >= 1", "an int >= 1"),
    "BackendError": errors.BackendError("endpoint unreachable"),
    "RelayError": errors.RelayError("relay said no", code="x"),
    "AuthenticationError": errors.AuthenticationError("no identity"),
    "AuthorizationError": errors.AuthorizationError("not yours"),
    "PayloadTooLarge": PayloadTooLarge(2_000_000, 1_000_000),
    "RateLimited": RateLimited(2.5),
    "TaskError": errors.TaskError("task error"),
    "TaskFailed": TaskFailed("launch failed"),
    "TaskTimeout": TaskTimeout("too slow"),
    "TaskHung": errors.TaskHung("no output for 2.0 s"),
    "TaskCancelled": TaskCancelled("cancelled at submit"),
    "BlockLost": BlockLost("block gone"),
    "NodeFailed": errors.NodeFailed("node n2 of block b1 (batch job 7) failed: down"),
    "DependencyFailed": errors.DependencyFailed("dependency t1 did not succeed (it was cancelled)"),
    "StagingError": errors.StagingError("stage_in of ftp://h/x to x failed: FileNotFoundError"),
    "RemoteExecutionError": RemoteExecutionError("ValueError", "bad", "Traceback..."),
}


def test_samples_cover_every_error_class():
    assert set(SAMPLES) == set(errors.ERROR_TYPES)
    assert set(errors.ERROR_TYPES) == {n for n in errors.__all__ if n[0].isupper()} - {
        "ERROR_TYPES"
    }


def failed(sample: MPIEngineError, **extra: object) -> ResultMessage:
    """A FAILED result standing for ``sample``, as the endpoint and the relay build it."""
    return error_result("e1", error_record(sample), **extra)


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_failed_with_an_mpiengine_error_type_rebuilds_that_class(kind, name):
    sample = SAMPLES[name]
    msg = failed(sample, nodes=("n1",), block_id="b1")
    with pytest.raises(MPIEngineError) as info:
        unpack(kind, msg).result()
    err = info.value
    assert type(err) is type(sample)
    assert str(err) == str(sample)


def test_rebuilt_errors_keep_their_data():
    def rebuilt(sample: MPIEngineError, type_name: str | None = None) -> BaseException:
        record = error_record(sample)
        if type_name:
            record = dataclasses.replace(record, type=type_name)
        future = unpack(TaskKind.SHELL, error_result("e", record))
        exc = future.exception()
        assert exc is not None
        return exc

    large = rebuilt(TaskTooLarge("5 nodes", "4 nodes"), "mpiengine_sdk.errors.TaskTooLarge")
    assert isinstance(large, TaskTooLarge)
    assert (large.requested, large.largest) == ("5 nodes", "4 nodes")
    assert "task e" in "".join(getattr(large, "__notes__", []))
    spec = rebuilt(SpecError("num_ranks", 5, "a multiple of num_nodes=2"))
    assert isinstance(spec, SpecError)
    assert (spec.field, spec.value, spec.allowed) == ("num_ranks", 5, "a multiple of num_nodes=2")
    assert str(spec) == "num_ranks=5 is invalid: a multiple of num_nodes=2"
    too_big = rebuilt(PayloadTooLarge(10, 5))
    assert isinstance(too_big, PayloadTooLarge) and (too_big.size, too_big.limit) == (10, 5)
    limited = rebuilt(RateLimited(1.5))
    assert isinstance(limited, RateLimited) and limited.retry_after == 1.5
    remote = rebuilt(RemoteExecutionError("ValueError", "bad", "Traceback (most recent...)\n"))
    assert isinstance(remote, RemoteExecutionError)
    assert (remote.type_name, remote.remote_traceback) == (
        "ValueError",
        "Traceback (most recent...)\n",
    )
    assert str(remote) == "ValueError: bad\nTraceback (most recent...)\n"


def test_node_failed_names_its_node_from_the_fields_not_the_message():
    msg = ResultMessage(
        task_id="n",
        state=TaskState.LOST,
        error_type="NodeFailed",
        error_message="it failed",
        error_fields={"node": "n2"},
        block_id="b1",
        job_id="7",
        nodes=("n1", "n2"),
        returncode=-15,
        stderr="killed",
    )
    with pytest.raises(errors.NodeFailed) as info:
        unpack(TaskKind.SHELL, msg).result()
    err = info.value
    assert (err.node, err.block_id, err.job_id, err.nodes) == ("n2", "b1", "7", ("n1", "n2"))
    assert (err.task_id, err.returncode, err.stderr) == ("n", -15, "killed")


@pytest.mark.parametrize(
    ("type_name", "message"),
    [
        ("TaskTooLarge", "a message TaskTooLarge's constructor never writes"),
        ("PayloadTooLarge", "too big"),
        ("os.TaskFailed", "not ours"),
        ("mpiengine_sdk.errors.Missing", "no such class"),
        ("__builtins__", "not a class"),
        ("annotations", "a module attribute that is not a class"),
    ],
)
def test_unrebuildable_error_types_fall_back_to_task_failed(type_name, message):
    msg = ResultMessage(
        task_id="e", state=TaskState.FAILED, error_type=type_name, error_message=message
    )
    with pytest.raises(TaskFailed, match=message) as info:
        unpack(TaskKind.SHELL, msg).result()
    assert type(info.value) is TaskFailed


def test_unpack_raises_rather_than_returns_exceptions():
    msg = ResultMessage(task_id="c", state=TaskState.CANCELLED)
    with pytest.raises(TaskCancelled):
        unpack_result(TaskKind.PYTHON, msg)
