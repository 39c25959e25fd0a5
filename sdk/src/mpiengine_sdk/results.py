"""What a finished task gives back, and how a ResultMessage becomes a future's outcome.

Shell and MPI tasks resolve to a :class:`ShellResult` / :class:`MPIResult` whatever their exit
code, as a batch system reports a job that exited 3 or hit its walltime (returncode 124):
``result.check()`` turns a non-zero exit into an exception when the caller wants one. Python tasks
resolve to their return value, or raise what the remote function raised.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import dill

from mpiengine_sdk.errors import (
    RemoteExecutionError,
    SerializationError,
    TaskCancelled,
    TaskError,
    TaskFailed,
    TaskHung,
    TaskTimeout,
    error_from_record,
)
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import TIMEOUT_RETURNCODE, ErrorRecord, ResultMessage, RunRecord, TaskKind

__all__ = ["MPIResult", "ShellResult", "unpack_result"]


@dataclass(frozen=True, kw_only=True)
class ShellResult(RunRecord):
    """The outcome of a shell command: its run (a RunRecord) and how it ended.

    Attributes:
        returncode: the exit code; 124 when the walltime expired and the task was killed, 125
            when it was killed as hung (no output for its ``progress_timeout``).
        num_ranks: the ranks launched (1 for a plain shell command).
        task_id: the task's id.
        state: COMPLETED, TIMEOUT when the walltime expired, or HUNG when the task wrote
            nothing for its ``progress_timeout`` and was killed.
        staging: the files staged in and out, each with its path, URL, bytes and seconds
            (``{"in": [...], "out": [...], "error": ""}``); empty when none were asked for.

    The run's other fields are :class:`~mpiengine_sdk.wire.RunRecord`'s: ``argv`` (the exact
    argv launched, launcher included for MPI tasks), ``stdout`` / ``stderr`` (the last
    ``snippet_lines`` lines), ``stdout_path`` / ``stderr_path`` / ``sandbox`` (on the
    endpoint's filesystem), ``nodes``, ``started`` / ``ended`` (epoch seconds, None if
    unknown), ``block_id`` and ``job_id``.
    """

    returncode: int
    num_ranks: int = 1
    task_id: str = ""
    state: TaskState = TaskState.COMPLETED
    staging: Mapping[str, Any] = field(default_factory=dict)

    @property
    def staged_bytes(self) -> int:
        """Bytes staged in and out."""
        files = [*self.staging.get("in", ()), *self.staging.get("out", ())]
        return sum(int(f.get("bytes", 0)) for f in files)

    @property
    def staging_seconds(self) -> float:
        """Seconds spent staging in and out."""
        files = [*self.staging.get("in", ()), *self.staging.get("out", ())]
        return sum(float(f.get("seconds", 0.0)) for f in files)

    @property
    def cmd(self) -> str:
        """The launched argv as one shell-quoted line, for display (Globus Compute's name)."""
        return shlex.join(self.argv)

    @property
    def duration(self) -> float | None:
        """Seconds from start to end, or None when either is unknown."""
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started

    @property
    def ok(self) -> bool:
        """True when the command ran to its end and exited 0."""
        return self.returncode == 0 and self.state is TaskState.COMPLETED

    def check(self) -> Self:
        """Return ``self`` when the command exited 0, else raise.

        Raises:
            TaskTimeout: the walltime expired (state TIMEOUT; returncode 124).
            TaskHung: no output for its ``progress_timeout``; killed (state HUNG; returncode 125).
            TaskFailed: any other non-zero exit, 124 or 125 included when the state is COMPLETED.
        """
        if self.returncode == 0:
            return self
        fields: dict[str, Any] = {
            "task_id": self.task_id,
            "returncode": self.returncode,
            "stdout": self.stdout,
            "stderr": self.stderr,
        }
        where = f"; full log: {self.stderr_path}" if self.stderr_path else ""
        # The state decides, not the code: a program may exit 124 on its own (that is a
        # failure), and a runner that reports TIMEOUT means the walltime, whatever the code.
        if self.state is TaskState.TIMEOUT:
            raise TaskTimeout(
                f"task {self.task_id} ({self.cmd}) reached its walltime and was killed "
                f"(returncode 124); resubmit with a longer walltime{where}",
                **fields,
            )
        if self.state is TaskState.HUNG:
            raise TaskHung(
                f"task {self.task_id} ({self.cmd}) wrote nothing to stdout or stderr for its "
                f"progress_timeout and was killed as hung (returncode {self.returncode}); see "
                f"where its output stopped below{where}",
                **fields,
            )
        raise TaskFailed(
            f"task {self.task_id} ({self.cmd}) exited with returncode {self.returncode}{where}",
            **fields,
        )


@dataclass(frozen=True, kw_only=True)
class MPIResult(ShellResult):
    """The outcome of an MPI command: a ShellResult plus the rank layout.

    Attributes:
        ranks_per_node: ranks on each node (0 when the nodes are unknown or uneven).
    """

    ranks_per_node: int = 0


def unpack_result(kind: TaskKind, msg: ResultMessage) -> object:
    """What a future should hold for a terminal ``msg``: returned, or raised.

    Callers do ``try: fut.set_result(unpack_result(k, m)) except BaseException as e:
    fut.set_exception(e)``.

    Returns:
        SHELL: a ShellResult; MPI: an MPIResult (any returncode, also after a timeout).
        PYTHON / MPI_PYTHON: the function's return value (MPI_PYTHON with ``return_all``: the
        list of every rank's).

    Raises:
        TaskCancelled: the task was cancelled.
        BlockLost: its block was lost and its retries are spent.
        NodeFailed: a node under it failed and its retries are spent.
        TaskTimeout: a Python task reached its walltime.
        TaskHung: a Python task wrote nothing for its ``progress_timeout`` and was killed.
        BaseException: the exception a Python task raised, with the remote traceback as a note
            (RemoteExecutionError when it cannot be rebuilt here).
        MPIEngineError: FAILED with an error naming an mpiengine error (TaskTooLarge,
            InvalidTaskId, ...), rebuilt from its fields; TaskFailed for any other failure.
        SerializationError: a Python return value cannot be deserialised here.
        ValueError: ``msg.state`` is not terminal.
    """
    state = msg.state
    if not state.terminal:
        raise ValueError(f"task {msg.task_id} is {state.value}, not finished; nothing to unpack")
    if state is TaskState.CANCELLED:
        raise TaskCancelled(
            msg.error_message or f"task {msg.task_id} was cancelled", task_id=msg.task_id
        )
    if state is TaskState.LOST:
        name = "NodeFailed" if msg.error_type == "NodeFailed" else "BlockLost"
        raise _error(
            ErrorRecord(name, msg.error_message or _lost_message(msg), msg.error_fields), msg
        )
    if state is TaskState.FAILED:
        raise _failure(kind, msg)
    if kind in (TaskKind.SHELL, TaskKind.MPI):
        return _shell_result(kind, msg)
    if state is TaskState.TIMEOUT:
        text = (
            msg.error_message
            or f"task {msg.task_id} reached its walltime and was killed; resubmit with a "
            "longer walltime"
        )
        raise _error(ErrorRecord(TaskTimeout.__name__, text), msg)
    if state is TaskState.HUNG:
        text = (
            msg.error_message
            or f"task {msg.task_id} wrote nothing for its progress_timeout and was killed"
        )
        raise _error(ErrorRecord(TaskHung.__name__, text), msg)
    return _load_value(msg)


def _shell_result(kind: TaskKind, msg: ResultMessage) -> ShellResult:
    run = msg.run_fields()
    if run["returncode"] is None and msg.state is TaskState.TIMEOUT:
        run["returncode"] = TIMEOUT_RETURNCODE
    if run["returncode"] is None:
        raise TaskFailed(f"task {msg.task_id} finished without a returncode", task_id=msg.task_id)
    outcome: dict[str, Any] = {
        "task_id": msg.task_id,
        "state": msg.state,
        "staging": dict(msg.staging),
    }
    if kind is TaskKind.MPI:
        nodes = len(msg.nodes)
        even = nodes and msg.num_ranks % nodes == 0
        return MPIResult(**run, **outcome, ranks_per_node=msg.num_ranks // nodes if even else 0)
    return ShellResult(**run, **outcome)


def _load_value(msg: ResultMessage) -> object:
    try:
        return dill.loads(msg.value)
    except Exception as exc:
        raise SerializationError(
            f"the result of task {msg.task_id} cannot be deserialised here: "
            f"{type(exc).__name__}: {exc}; install the packages (and versions) the function "
            "used, or return plain data"
        ) from exc


def _failure(kind: TaskKind, msg: ResultMessage) -> BaseException:
    """The exception a FAILED result stands for.

    In order: the Python exception itself (unpickled); the mpiengine error its structured error
    names, rebuilt (also the fallback for mpiengine errors raised inside a Python task);
    RemoteExecutionError for any other Python error; TaskFailed.
    """
    python = kind in (TaskKind.PYTHON, TaskKind.MPI_PYTHON)
    if python and msg.error_payload:
        remote = _load_exception(msg.error_payload)
        if remote is not None:
            return _with_remote_traceback(remote, msg)
    error = msg.error
    rebuilt = None
    if error is not None:
        text = error.message or error.type.rpartition(".")[2]
        rebuilt = error_from_record(ErrorRecord(error.type, text, error.fields), _context(msg))
    if rebuilt is not None:
        if not isinstance(rebuilt, TaskError) and msg.task_id:
            rebuilt.add_note(f"task {msg.task_id}")
        return _with_remote_traceback(rebuilt, msg)
    if python and (msg.error_payload or msg.error_traceback):
        return RemoteExecutionError(
            msg.error_type or "Exception",
            msg.error_message,
            msg.error_traceback,
            task_id=msg.task_id,
        )
    text = msg.error_message or f"task {msg.task_id} failed without a message"
    return _error(ErrorRecord(TaskFailed.__name__, text), msg)


def _error(record: ErrorRecord, msg: ResultMessage) -> BaseException:
    """The TaskError ``record`` names, with the task id, returncode, tails, block and nodes of
    ``msg`` where its constructor takes them."""
    rebuilt = error_from_record(record, _context(msg))
    return rebuilt if rebuilt is not None else TaskFailed(record.message, task_id=msg.task_id)


def _context(msg: ResultMessage) -> dict[str, Any]:
    """What a result tells an error's constructor beyond the error's own fields."""
    return {
        "task_id": msg.task_id,
        "returncode": msg.returncode,
        "stdout": msg.stdout,
        "stderr": msg.stderr,
        "block_id": msg.block_id,
        "job_id": msg.job_id,
        "nodes": msg.nodes,
    }


def _load_exception(payload: bytes) -> BaseException | None:
    # Unpickling runs the exception class's constructor with its args; a class whose __init__
    # takes other arguments (or is missing here) fails, and the caller falls back.
    try:
        exc = dill.loads(payload)
    except Exception:
        return None
    return exc if isinstance(exc, BaseException) else None


def _with_remote_traceback(exc: BaseException, msg: ResultMessage) -> BaseException:
    if msg.error_traceback and not isinstance(exc, RemoteExecutionError):
        exc.add_note(f"Remote traceback (task {msg.task_id}):\n{msg.error_traceback}")
    return exc


def _lost_message(msg: ResultMessage) -> str:
    job = f" (batch job {msg.job_id})" if msg.job_id else ""
    return (
        f"task {msg.task_id}: block {msg.block_id or '?'}{job} was lost and its retries are "
        "spent; resubmit, or raise the spec's retries"
    )
