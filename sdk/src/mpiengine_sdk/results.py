"""What a finished task gives back, and how a ResultMessage becomes a future's outcome.

Shell and MPI tasks resolve to a :class:`ShellResult` / :class:`MPIResult` whatever their exit
code, as a batch system reports a job that exited 3 or hit its walltime (returncode 124):
``result.check()`` turns a non-zero exit into an exception when the caller wants one. Python tasks
resolve to their return value, or raise what the remote function raised.
"""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import dill

from mpiengine_sdk import errors
from mpiengine_sdk.errors import (
    BlockLost,
    ConfigError,
    MPIEngineError,
    NodeFailed,
    PayloadTooLarge,
    RateLimited,
    RemoteExecutionError,
    SerializationError,
    SpecError,
    TaskCancelled,
    TaskError,
    TaskFailed,
    TaskHung,
    TaskTimeout,
    TaskTooLarge,
)
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import ResultMessage, TaskKind

__all__ = ["MPIResult", "ShellResult", "unpack_result"]

#: The returncode of a task killed at its walltime, as GNU timeout reports it.
TIMEOUT_RETURNCODE = 124


@dataclass(frozen=True, kw_only=True)
class ShellResult:
    """The outcome of a shell command.

    Attributes:
        argv: the exact argv that was launched (launcher included, for MPI tasks).
        returncode: the exit code; 124 when the walltime expired and the task was killed, 125
            when it was killed as hung (no output for its ``progress_timeout``).
        stdout: the last ``snippet_lines`` lines of stdout.
        stderr: the same for stderr.
        stdout_path: the full stdout file, in the sandbox on the endpoint's filesystem.
        stderr_path: the full stderr file.
        sandbox: the task's working directory on the endpoint's filesystem.
        nodes: the nodes it ran on.
        num_ranks: the ranks launched (1 for a plain shell command).
        started: wall-clock start, epoch seconds (None if unknown).
        ended: wall-clock end, epoch seconds (None if unknown).
        task_id: the task's id.
        state: COMPLETED, TIMEOUT when the walltime expired, or HUNG when the task wrote
            nothing for its ``progress_timeout`` and was killed.
        staging: the files staged in and out, each with its path, URL, bytes and seconds
            (``{"in": [...], "out": [...], "error": ""}``); empty when none were asked for.
    """

    argv: tuple[str, ...] = ()
    returncode: int
    stdout: str = ""
    stderr: str = ""
    stdout_path: str = ""
    stderr_path: str = ""
    sandbox: str = ""
    nodes: tuple[str, ...] = ()
    num_ranks: int = 1
    started: float | None = None
    ended: float | None = None
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
        MPIEngineError: FAILED with ``error_type`` naming an mpiengine error (TaskTooLarge,
            InvalidTaskId, ...), rebuilt; TaskFailed for any other failure.
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
        if msg.error_type == "NodeFailed":
            raise _node_failed(msg.error_message or _lost_message(msg), msg)
        raise BlockLost(
            msg.error_message or _lost_message(msg),
            task_id=msg.task_id,
            block_id=msg.block_id,
            job_id=msg.job_id,
            nodes=msg.nodes,
        )
    if state is TaskState.FAILED:
        raise _failure(kind, msg)
    if kind in (TaskKind.SHELL, TaskKind.MPI):
        return _shell_result(kind, msg)
    if state is TaskState.TIMEOUT:
        raise TaskTimeout(
            msg.error_message
            or f"task {msg.task_id} reached its walltime and was killed; resubmit with a "
            "longer walltime",
            task_id=msg.task_id,
            returncode=msg.returncode,
            stdout=msg.stdout,
            stderr=msg.stderr,
        )
    if state is TaskState.HUNG:
        raise TaskHung(
            msg.error_message
            or f"task {msg.task_id} wrote nothing for its progress_timeout and was killed",
            task_id=msg.task_id,
            returncode=msg.returncode,
            stdout=msg.stdout,
            stderr=msg.stderr,
        )
    return _load_value(msg)


def _shell_result(kind: TaskKind, msg: ResultMessage) -> ShellResult:
    returncode = msg.returncode
    if returncode is None and msg.state is TaskState.TIMEOUT:
        returncode = TIMEOUT_RETURNCODE
    if returncode is None:
        raise TaskFailed(f"task {msg.task_id} finished without a returncode", task_id=msg.task_id)
    fields: dict[str, Any] = {
        "argv": msg.argv,
        "returncode": returncode,
        "stdout": msg.stdout,
        "stderr": msg.stderr,
        "stdout_path": msg.stdout_path,
        "stderr_path": msg.stderr_path,
        "sandbox": msg.sandbox,
        "nodes": msg.nodes,
        "num_ranks": msg.num_ranks,
        "started": msg.started,
        "ended": msg.ended,
        "task_id": msg.task_id,
        "state": msg.state,
        "staging": dict(msg.staging),
    }
    if kind is TaskKind.MPI:
        nodes = len(msg.nodes)
        even = nodes and msg.num_ranks % nodes == 0
        return MPIResult(**fields, ranks_per_node=msg.num_ranks // nodes if even else 0)
    return ShellResult(**fields)


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

    In order: the Python exception itself (unpickled); an mpiengine error rebuilt from its name
    (also the fallback for mpiengine errors raised inside a Python task, which do not all
    survive pickling); RemoteExecutionError for any other Python error; TaskFailed.
    """
    python = kind in (TaskKind.PYTHON, TaskKind.MPI_PYTHON)
    if python and msg.error_payload:
        remote = _load_exception(msg.error_payload)
        if remote is not None:
            return _with_remote_traceback(remote, msg)
    rebuilt = _rebuild_error(msg)
    if rebuilt is not None:
        return _with_remote_traceback(rebuilt, msg)
    if python and (msg.error_payload or msg.error_traceback):
        return RemoteExecutionError(
            msg.error_type or "Exception",
            msg.error_message,
            msg.error_traceback,
            task_id=msg.task_id,
        )
    return TaskFailed(
        msg.error_message or f"task {msg.task_id} failed without a message",
        task_id=msg.task_id,
        returncode=msg.returncode,
        stdout=msg.stdout,
        stderr=msg.stderr,
    )


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


def _engine_error_class(type_name: str) -> type[MPIEngineError] | None:
    """The class of ``mpiengine_sdk.errors`` that ``type_name`` names (bare or qualified)."""
    module, _, name = type_name.rpartition(".")
    if module not in ("", "mpiengine_sdk.errors") or name not in errors.__all__:
        return None
    cls = getattr(errors, name)
    return cls if isinstance(cls, type) and issubclass(cls, MPIEngineError) else None


def _lost_message(msg: ResultMessage) -> str:
    job = f" (batch job {msg.job_id})" if msg.job_id else ""
    return (
        f"task {msg.task_id}: block {msg.block_id or '?'}{job} was lost and its retries are "
        "spent; resubmit, or raise the spec's retries"
    )


def _node_failed(text: str, msg: ResultMessage) -> NodeFailed:
    """NodeFailed from a result: the block, job and tails from its fields; the failed node
    from the endpoint's message (``... node NAME of block ...``), which is the only place the
    wire carries it."""
    found = re.search(r"\bnode (\S+) of block ", text)
    return NodeFailed(
        text,
        task_id=msg.task_id,
        node=found[1] if found else "",
        block_id=msg.block_id,
        job_id=msg.job_id,
        nodes=msg.nodes,
        returncode=msg.returncode,
        stdout=msg.stdout,
        stderr=msg.stderr,
    )


def _rebuild_error(msg: ResultMessage) -> MPIEngineError | None:
    """An instance of the mpiengine error class ``msg.error_type`` names, or None.

    The endpoint sends only the class name and the message, so classes whose constructor takes
    data (TaskTooLarge, SpecError, ...) get it back by parsing the message their constructor
    wrote; when that fails the caller falls back to TaskFailed.
    """
    cls = _engine_error_class(msg.error_type)
    if cls is None:
        return None
    text = msg.error_message or cls.__name__
    try:
        exc = _construct(cls, text, msg)
    except (TypeError, ValueError):
        return None
    if exc is None:
        return None
    if not isinstance(exc, TaskError) and msg.task_id:
        exc.add_note(f"task {msg.task_id}")
    return exc


def _construct(cls: type[MPIEngineError], text: str, msg: ResultMessage) -> MPIEngineError | None:
    for base, pattern, build in _PARSED:
        if issubclass(cls, base):
            match = re.fullmatch(pattern, text, flags=re.DOTALL)
            return build(match) if match else None
    if cls is RemoteExecutionError:
        # Its constructor wrote "type: message\ntraceback"; split it back.
        match = re.fullmatch(r"(?P<type>[\w.]+): (?P<message>[^\n]*)\n(?P<tb>.*)", text, re.DOTALL)
        if match is None:
            return RemoteExecutionError("Exception", text, msg.error_traceback, msg.task_id)
        tb = match["tb"] or msg.error_traceback
        return RemoteExecutionError(match["type"], match["message"], tb, msg.task_id)
    if cls is NodeFailed:
        return _node_failed(text, msg)
    if cls is BlockLost:
        return BlockLost(
            text, task_id=msg.task_id, block_id=msg.block_id, job_id=msg.job_id, nodes=msg.nodes
        )
    if issubclass(cls, TaskError):
        return cls(
            text,
            task_id=msg.task_id,
            returncode=msg.returncode,
            stdout=msg.stdout,
            stderr=msg.stderr,
        )
    if issubclass(cls, ConfigError):
        return cls("", text)
    return cls(text)


def _spec_error(match: re.Match[str]) -> MPIEngineError:
    try:
        value: object = ast.literal_eval(match["value"])
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = match["value"]
    exc = SpecError(match["field"], value, match["allowed"])
    exc.args = (match.string,)  # the endpoint's exact text, not a re-rendered repr
    return exc


#: Classes whose constructor takes data: the message pattern their constructor writes, and how
#: to rebuild them from it. Checked in order, so subclasses before their bases.
_PARSED: tuple[tuple[type[MPIEngineError], str, Callable[[re.Match[str]], MPIEngineError]], ...] = (
    (
        TaskTooLarge,
        r"task needs (?P<req>.*), but the largest block is (?P<big>.*?); ask for .*?"
        r"(?:larger blocks \((?P<knob>.*)\))?",
        lambda m: TaskTooLarge(m["req"], m["big"], m["knob"] or "nodes_per_block"),
    ),
    (
        PayloadTooLarge,
        r"submission is (?P<size>\d+) bytes, the limit is (?P<limit>\d+) bytes; .*",
        lambda m: PayloadTooLarge(int(m["size"]), int(m["limit"])),
    ),
    (
        RateLimited,
        r"rate limit reached; retry in (?P<after>[0-9.]+) s",
        lambda m: RateLimited(float(m["after"])),
    ),
    (SpecError, r"(?P<field>.*?)=(?P<value>.*) is invalid: (?P<allowed>.*)", _spec_error),
)
