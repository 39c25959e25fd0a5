"""The versioned wire format shared by the SDK, the relay and the endpoint.

A task or result is a JSON object with a ``"v"`` version field. Python callables, arguments and
return values travel as dill bytes (base64 inside the JSON) in ``payload``/``value``: the relay and
the endpoint's scheduler never unpickle them; only the process that runs the task (and the SDK
that gets the result) does.

Shell and MPI commands travel as data (``argv`` or ``script``), never pickled, so the relay and an
endpoint's allowed-functions list can inspect them.

Two records are defined here once and used on both sides:

- :class:`RunRecord`: how a command ran (argv, returncode, tails, paths, nodes, times, block).
  The runner's report, the result on the wire and the SDK's ``ShellResult`` are each this record
  plus their own fields; no side copies its fields by hand.
- :class:`ErrorRecord`: an error as type name, message and fields (the data its constructor
  took). ``mpiengine_sdk.errors`` builds one from an exception and rebuilds the same typed
  exception from it; a result carries it as ``error_type``/``error_message``/``error_fields``,
  a relay reply as ``{"type", "message", "fields"}``.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mpiengine_sdk.states import TaskState

__all__ = [
    "HUNG_RETURNCODE",
    "TIMEOUT_RETURNCODE",
    "WIRE_VERSION",
    "ErrorRecord",
    "ResultMessage",
    "RunRecord",
    "TaskKind",
    "TaskMessage",
    "WireError",
    "decode_result",
    "decode_task",
    "encode_result",
    "encode_task",
    "error_result",
    "run_fields_from",
]

#: Bumped on any incompatible change; a decoder refuses versions it does not know.
WIRE_VERSION = 1
#: Returncode of a task killed at its walltime (as coreutils ``timeout`` reports it).
TIMEOUT_RETURNCODE = 124
#: Returncode of a task killed as hung: its stdout and stderr did not grow for its
#: ``progress_timeout``. Next to 124, and not a code a shell gives itself (126: not executable,
#: 127: not found, 128+N: killed by signal N).
HUNG_RETURNCODE = 125


class WireError(ValueError):
    """A message is not valid wire format (bad JSON, wrong version, missing or mistyped field)."""


class TaskKind(enum.StrEnum):
    """What a task runs."""

    #: A command run once on the lead node of its placement (argv or bash script).
    SHELL = "shell"
    #: A command run under the launcher on every rank of its placement.
    MPI = "mpi"
    #: A Python callable run once, in its own process.
    PYTHON = "python"
    #: A Python callable run on every MPI rank with an mpi4py communicator as first argument.
    MPI_PYTHON = "mpi_python"


@dataclass(frozen=True)
class TaskMessage:
    """One task, as the endpoint receives it.

    Attributes:
        task_id: unique id (``[A-Za-z0-9_.-]``, 1-128 chars, not starting with '.').
        kind: what the task runs.
        spec: the ResourceSpec as a dict (``ResourceSpec.to_dict()``); its ``retries`` is how
            many times the task may be re-run when its block or a node under it is lost.
        argv: SHELL/MPI: the command argv, executed directly (no shell).
        script: SHELL/MPI: a rendered bash script, run as ``bash -c script`` (template commands).
        payload: PYTHON/MPI_PYTHON: dill bytes of ``(fn, args, kwargs)``.
        name: a human label (function name), used in listings and logs.
        snippet_lines: how many trailing lines of stdout/stderr to return.
        return_all: MPI_PYTHON: return every rank's value as a list instead of rank 0's.
        user_config: user variables for a multi-user endpoint's config template (validated
            there against the admin's schema); empty elsewhere.
        user: the submitting identity (set by the relay; empty on the embedded endpoint).
        staging: SHELL/MPI: files to stage, ``{"in": {path: url}, "out": {glob: url}}``
            (fsspec URLs; see ``mpiengine.staging``); empty for none.
    """

    task_id: str
    kind: TaskKind
    spec: Mapping[str, Any]
    argv: tuple[str, ...] = ()
    script: str | None = None
    payload: bytes = b""
    name: str = ""
    snippet_lines: int = 1000
    return_all: bool = False
    user_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    user: str = ""
    staging: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """How one command ran: the one record of a run, from the runner to the SDK's result.

    The runner fills what it saw (argv, returncode, tails, paths, times); the endpoint adds
    where it ran (nodes, ranks, block). ``Completion`` (the runner's report), ``ResultMessage``
    (the wire) and ``ShellResult`` (the SDK's result) are this record plus their own fields, and
    carry it from one to the next with :meth:`run_fields`.

    Attributes:
        argv: the exact argv that was launched (launcher included, for MPI tasks).
        returncode: the exit status (negative: killed by that signal); 124
            (``TIMEOUT_RETURNCODE``) after a walltime kill, 125 (``HUNG_RETURNCODE``) after a
            kill as hung; None when it never ran.
        stdout: the last ``snippet_lines`` lines of stdout, bounded in bytes.
        stderr: the same for stderr.
        stdout_path: the full stdout file, in the sandbox on the endpoint's filesystem.
        stderr_path: the full stderr file.
        sandbox: the task's working directory on the endpoint's filesystem.
        nodes: the nodes of its placement.
        num_ranks: the ranks launched (1 for a shell or Python task; 0 when it never ran).
        started: wall-clock start, epoch seconds (None if it never started).
        ended: wall-clock end, epoch seconds (None if unknown).
        block_id: the block that ran it.
        job_id: that block's batch job id ("" for local blocks).
    """

    argv: tuple[str, ...] = ()
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_path: str = ""
    stderr_path: str = ""
    sandbox: str = ""
    nodes: tuple[str, ...] = ()
    num_ranks: int = 0
    started: float | None = None
    ended: float | None = None
    block_id: str = ""
    job_id: str = ""

    def run_fields(self) -> dict[str, Any]:
        """This record's fields by name (also of a subclass: only the RunRecord part).

        Pass them to another record type's constructor to carry the run on, or encode them as
        JSON (argv and nodes stay tuples, which ``json`` writes as arrays).
        """
        return _read_run(self)


_RUN_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunRecord))


def _read_run(record: Any) -> dict[str, Any]:
    """The RunRecord fields of ``record`` by name."""
    return {name: getattr(record, name) for name in _RUN_NAMES}


def run_fields_from(data: Mapping[str, Any]) -> dict[str, Any]:
    """The RunRecord fields that ``data`` (a decoded JSON object) carries, for a constructor.

    Fields it lacks are left out (they take their defaults); argv and nodes become tuples.

    Raises:
        WireError: argv or nodes is not a list of strings.
    """
    fields = {name: data[name] for name in _RUN_NAMES if name in data}
    for key in _TUPLE_FIELDS:
        value = fields.get(key)
        if value is not None:
            fields[key] = _strings(value, key)
    return fields


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise WireError(f"{what} must be a list of strings")
    return tuple(value)


@dataclass(frozen=True)
class ErrorRecord:
    """An error as it crosses the wire: what ``mpiengine_sdk.errors.error_from_record`` turns
    back into the same typed exception (``error_record`` builds one from an exception).

    Attributes:
        type: the class name: an mpiengine error (see ``mpiengine_sdk.errors.ERROR_TYPES``) or
            any other exception's name, which stays a name.
        message: its message.
        fields: the data its constructor took, by parameter name (JSON values); empty when
            the message is all there is.
    """

    type: str
    message: str
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """As a JSON object: ``{"type", "message", "fields"}``."""
        return {"type": self.type, "message": self.message, "fields": dict(self.fields)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorRecord:
        """Read :meth:`to_dict`'s object back; also the flat ``{"type", "message", key: value}``
        that older relays wrote (every other key is then a field). Missing parts are empty."""
        fields = data.get("fields")
        if not isinstance(fields, Mapping):
            fields = {k: v for k, v in data.items() if k not in ("type", "message", "fields")}
        return cls(str(data.get("type", "")), str(data.get("message", "")), dict(fields))


@dataclass(frozen=True)
class ResultMessage(RunRecord):
    """The outcome of one task, as the SDK receives it: its run (a RunRecord) and its outcome.

    Shell/MPI tasks fill the run record; Python tasks also fill ``value`` (dill bytes of the
    return value) or the ``error_*`` fields.

    Attributes:
        task_id: the task's id.
        state: a terminal TaskState (or QUEUED/RUNNING for progress updates).
        value: PYTHON/MPI_PYTHON: dill bytes of the return value.
        error_type: type name of the error (an mpiengine error class or the remote exception).
        error_message: its message.
        error_fields: the error's data by constructor parameter (see :class:`ErrorRecord`);
            empty when the message is all there is.
        error_traceback: the remote traceback, for Python tasks that raised.
        error_payload: dill bytes of the remote exception, when it could be pickled.
        attempts: how many times it was launched.
        staging: what was staged: ``{"in": [...], "out": [...], "error": ""}``, each file as
            ``{"path", "url", "bytes", "seconds"}``; empty when the task staged nothing.

    The run's fields (argv, returncode, tails, paths, nodes, num_ranks, times, block_id,
    job_id) are :class:`RunRecord`'s; ``returncode`` is None when the task never ran.
    """

    task_id: str
    state: TaskState
    value: bytes = b""
    error_type: str = ""
    error_message: str = ""
    error_fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    error_traceback: str = ""
    error_payload: bytes = b""
    attempts: int = 1
    staging: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def error(self) -> ErrorRecord | None:
        """The structured error (type, message, fields); None when the result names none."""
        if not self.error_type:
            return None
        return ErrorRecord(self.error_type, self.error_message, self.error_fields)


def error_result(
    task_id: str, error: ErrorRecord, state: TaskState = TaskState.FAILED, **extra: Any
) -> ResultMessage:
    """The result standing for ``error`` (a refusal, a task that never ran, or one lost).

    Args:
        task_id: the task's id.
        error: the structured error (``mpiengine_sdk.errors.error_record(exc)``).
        state: FAILED by default; CANCELLED or LOST where that is what happened.
        extra: further ResultMessage fields (nodes, block_id, attempts, ...).
    """
    return ResultMessage(
        task_id,
        state,
        error_type=error.type,
        error_message=error.message,
        error_fields=error.fields,
        **extra,
    )


_BYTES_FIELDS = {"payload", "value", "error_payload"}
_TUPLE_FIELDS = ("argv", "nodes")
#: Sent only when not empty, so that a result without them reads as before they existed.
_OMITTED_WHEN_EMPTY = {"error_fields"}
#: Fields that older senders write and this side no longer has: accepted, and dropped.
_RETIRED: dict[type[Any], tuple[str, ...]] = {TaskMessage: ("retries",)}


def _to_jsonable(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"v": WIRE_VERSION}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in _BYTES_FIELDS:
            value = base64.b64encode(value).decode("ascii")
        elif isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            if not value and f.name in _OMITTED_WHEN_EMPTY:
                continue
            value = dict(value)
        out[f.name] = value
    return out


def _from_jsonable(cls: type[Any], data: bytes | str, kind: str) -> Any:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"{kind} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise WireError(f"{kind} must be a JSON object, got {type(obj).__name__}")
    version = obj.pop("v", None)
    if version != WIRE_VERSION:
        raise WireError(f"{kind} has wire version {version!r}; this side speaks {WIRE_VERSION}")
    for retired in _RETIRED.get(cls, ()):
        obj.pop(retired, None)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(obj) - set(names))
    if unknown:
        raise WireError(f"{kind} has unknown fields {unknown}; known: {sorted(names)}")
    kwargs: dict[str, Any] = {}
    try:
        for key, value in obj.items():
            if key in _BYTES_FIELDS:
                value = base64.b64decode(value, validate=True)
            elif key in _TUPLE_FIELDS:
                value = _strings(value, f"{kind}.{key}")
            elif key == "kind":
                value = TaskKind(value)
            elif key == "state":
                value = TaskState(value)
            elif key in ("spec", "error_fields") and not isinstance(value, dict):
                raise WireError(f"{kind}.{key} must be an object")
            kwargs[key] = value
        return cls(**kwargs)
    except WireError:
        raise
    except (TypeError, ValueError) as exc:
        raise WireError(f"{kind} is malformed: {exc}") from exc


def encode_task(msg: TaskMessage) -> bytes:
    """Encode a task for the wire."""
    return json.dumps(_to_jsonable(msg), separators=(",", ":")).encode()


def decode_task(data: bytes | str) -> TaskMessage:
    """Decode a task; raises WireError on anything malformed."""
    msg: TaskMessage = _from_jsonable(TaskMessage, data, "task")
    if not isinstance(msg.task_id, str) or not msg.task_id:
        raise WireError("task.task_id must be a non-empty string")
    return msg


def encode_result(msg: ResultMessage) -> bytes:
    """Encode a result for the wire."""
    return json.dumps(_to_jsonable(msg), separators=(",", ":")).encode()


def decode_result(data: bytes | str) -> ResultMessage:
    """Decode a result; raises WireError on anything malformed."""
    result: ResultMessage = _from_jsonable(ResultMessage, data, "result")
    return result


def replace(msg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` re-exported for message updates."""
    return dataclasses.replace(msg, **changes)
