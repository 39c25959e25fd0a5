"""The versioned wire format shared by the SDK, the relay and the endpoint.

A task or result is a JSON object with a ``"v"`` version field. Python callables, arguments and
return values travel as dill bytes (base64 inside the JSON) in ``payload``/``value``: the relay and
the endpoint's scheduler never unpickle them; only the process that runs the task (and the SDK
that gets the result) does.

Shell and MPI commands travel as data (``argv`` or ``script``), never pickled, so the relay and an
endpoint's allowed-functions list can inspect them.
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
    "WIRE_VERSION",
    "ResultMessage",
    "TaskKind",
    "TaskMessage",
    "WireError",
    "decode_result",
    "decode_task",
    "encode_result",
    "encode_task",
]

#: Bumped on any incompatible change; a decoder refuses versions it does not know.
WIRE_VERSION = 1


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
        spec: the ResourceSpec as a dict (``ResourceSpec.to_dict()``).
        argv: SHELL/MPI: the command argv, executed directly (no shell).
        script: SHELL/MPI: a rendered bash script, run as ``bash -c script`` (template commands).
        payload: PYTHON/MPI_PYTHON: dill bytes of ``(fn, args, kwargs)``.
        name: a human label (function name), used in listings and logs.
        snippet_lines: how many trailing lines of stdout/stderr to return.
        return_all: MPI_PYTHON: return every rank's value as a list instead of rank 0's.
        retries: how many times the task may be re-run when its block is lost.
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
    retries: int = 0
    user_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    user: str = ""
    staging: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class ResultMessage:
    """The outcome of one task, as the SDK receives it.

    Shell/MPI tasks fill returncode, the tails, the paths and the launch details; Python tasks
    fill ``value`` (dill bytes of the return value) or the ``error_*`` fields.

    Attributes:
        task_id: the task's id.
        state: a terminal TaskState (or QUEUED/RUNNING for progress updates).
        returncode: the exit code (124 after a walltime kill); None when the task never ran.
        stdout: the last ``snippet_lines`` lines of stdout, bounded in bytes.
        stderr: the same for stderr.
        stdout_path: the full stdout file in the sandbox.
        stderr_path: the full stderr file in the sandbox.
        sandbox: the task's sandbox directory.
        argv: the exact argv that was launched.
        nodes: the nodes of the placement.
        num_ranks: ranks launched (1 for a plain shell or Python task).
        started: wall-clock start (epoch seconds), None if it never started.
        ended: wall-clock end (epoch seconds).
        value: PYTHON/MPI_PYTHON: dill bytes of the return value.
        error_type: type name of the error (an mpiengine error class or the remote exception).
        error_message: its message.
        error_traceback: the remote traceback, for Python tasks that raised.
        error_payload: dill bytes of the remote exception, when it could be pickled.
        block_id: the block that ran it.
        job_id: the batch job id of that block ("" for local blocks).
        attempts: how many times it was launched.
        staging: what was staged: ``{"in": [...], "out": [...], "error": ""}``, each file as
            ``{"path", "url", "bytes", "seconds"}``; empty when the task staged nothing.
    """

    task_id: str
    state: TaskState
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_path: str = ""
    stderr_path: str = ""
    sandbox: str = ""
    argv: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    num_ranks: int = 0
    started: float | None = None
    ended: float | None = None
    value: bytes = b""
    error_type: str = ""
    error_message: str = ""
    error_traceback: str = ""
    error_payload: bytes = b""
    block_id: str = ""
    job_id: str = ""
    attempts: int = 1
    staging: Mapping[str, Any] = dataclasses.field(default_factory=dict)


_BYTES_FIELDS = {"payload", "value", "error_payload"}
_TUPLE_FIELDS = {"argv", "nodes"}


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
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise WireError(f"{kind}.{key} must be a list of strings")
                value = tuple(value)
            elif key == "kind":
                value = TaskKind(value)
            elif key == "state":
                value = TaskState(value)
            elif key == "spec" and not isinstance(value, dict):
                raise WireError(f"{kind}.spec must be an object")
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
