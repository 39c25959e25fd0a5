"""Every error mpiengine raises, in one tree.

```
MPIEngineError                      base of everything below
├── SpecError                       a ResourceSpec field is wrong (field, value, allowed)
├── TemplateError                   a ShellFunction template is broken or misses a value
├── ArgumentError                   a Python task's arguments do not fit its function's signature
├── SerializationError              a function or argument cannot be serialised (dill)
├── SubmitError                     the endpoint refused a task at submit
│   ├── TaskTooLarge                no block can ever hold the task
│   ├── InvalidTaskId               a task id is not a safe sandbox name
│   └── ExecutorShutdown            submit after shutdown()
├── ConfigError                     a config file or value is invalid (key, problem, allowed)
├── BackendError                    the embedded endpoint or relay connection failed
│   └── RelayError                  the relay answered with an error (code, message)
│       ├── AuthenticationError     no or forged identity
│       ├── AuthorizationError      identity may not use this endpoint or task
│       ├── PayloadTooLarge         a submission exceeds the size limit
│       └── RateLimited             too many requests; retry after `retry_after` seconds
└── TaskError                       a task ran (or was meant to run) and did not succeed
    ├── TaskFailed                  non-zero exit (from result.check()), or the launch failed
    ├── TaskTimeout                 the walltime expired; the whole process tree was killed
    ├── TaskHung                    no output for progress_timeout s; the whole tree was killed
    ├── TaskCancelled               cancelled before or while running
    ├── BlockLost                   the block running it vanished and retries ran out
    ├── NodeFailed                  a node under it failed (down, drained) and retries ran out
    ├── DependencyFailed            a task it depends on (a TaskFuture argument) did not succeed
    ├── StagingError                a file could not be staged in or out (names the file)
    └── RemoteExecutionError        a Python task raised; carries the remote traceback
```

Errors carry data as attributes, chain their causes with ``raise ... from``, and their messages
say what to do next.

On the wire an error is an ``ErrorRecord`` (``mpiengine_sdk.wire``): ``error_record(exc)`` builds
it from what the error recorded at construction (its class name, its message, and its
constructor's arguments as ``fields``, see ``MPIEngineError.wire_fields``), and
``error_from_record(record)`` rebuilds the same class with the same attributes and the same
``str()``, looking the name up in ``ERROR_TYPES``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from mpiengine_sdk.wire import ErrorRecord

__all__ = [
    "ERROR_TYPES",
    "ArgumentError",
    "AuthenticationError",
    "AuthorizationError",
    "BackendError",
    "BlockLost",
    "ConfigError",
    "DependencyFailed",
    "ExecutorShutdown",
    "InvalidTaskId",
    "MPIEngineError",
    "NodeFailed",
    "PayloadTooLarge",
    "RateLimited",
    "RelayError",
    "RemoteExecutionError",
    "SerializationError",
    "SpecError",
    "StagingError",
    "SubmitError",
    "TaskCancelled",
    "TaskError",
    "TaskFailed",
    "TaskHung",
    "TaskTimeout",
    "TaskTooLarge",
    "TemplateError",
    "error_from_record",
    "error_record",
]


def _rebuild(
    cls: type[MPIEngineError], args: tuple[object, ...], kwargs: dict[str, object]
) -> MPIEngineError:
    return cls(*args, **kwargs)


class MPIEngineError(Exception):
    """Base class of every mpiengine error.

    Errors pickle (dill) with their data, so one raised inside a Python task comes back whole.
    """

    _init: tuple[tuple[object, ...], dict[str, object]] | None = None

    def _remember(self, *args: object, **kwargs: object) -> None:
        # The most derived constructor calls this first; its base classes' calls are ignored.
        if self._init is None:
            self._init = (args, kwargs)

    def wire_fields(self) -> dict[str, Any]:
        """The data this error's constructor took, by parameter name, as JSON values.

        Built from what the error recorded at construction; arguments left at their default
        are left out, and so is a ``message`` that is the error's own message. A value that
        is not JSON (a SpecError's value may be anything) travels as its ``repr``.
        """
        signature = _constructor(type(self))
        if signature is None or self._init is None:
            return {}
        args, kwargs = self._init
        given = signature.bind(*args, **kwargs).arguments
        params = signature.parameters
        fields = {
            k: _plain(v)
            for k, v in given.items()
            if params[k].default is inspect.Parameter.empty or v != params[k].default
        }
        if fields.get("message") == _message(self):
            del fields["message"]
        return fields

    def __reduce__(self) -> tuple[object, ...]:
        if self._init is None:
            reduced = super().__reduce__()
            assert isinstance(reduced, tuple)
            return reduced
        args, kwargs = self._init
        state = {k: v for k, v in self.__dict__.items() if k != "_init"}
        return (_rebuild, (type(self), args, kwargs), state)


class SpecError(MPIEngineError, ValueError):
    """A resource specification field is invalid.

    Attributes:
        field: the offending field name.
        value: the value that was given.
        allowed: a short description of what is allowed.
    """

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self._remember(field, value, allowed)
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}={value!r} is invalid: {allowed}")


class TemplateError(MPIEngineError, ValueError):
    """A ShellFunction command template is malformed or a placeholder has no value."""


class ArgumentError(MPIEngineError, TypeError):
    """A Python task's arguments do not fit its function's signature (checked at submit)."""


class SerializationError(MPIEngineError, TypeError):
    """A function, its arguments or its result cannot be serialised."""


class SubmitError(MPIEngineError):
    """The endpoint refused a task at submit; nothing was queued."""


class TaskTooLarge(SubmitError):
    """No block of the endpoint can ever hold the task.

    Attributes:
        requested: what the task asked for, e.g. ``"5 nodes x 4 cores"``.
        largest: the largest block shape the endpoint offers.
        knob: the setting that makes blocks larger where the task was submitted
            (``nodes_per_block`` in an endpoint config, ``Executor(nodes=N)`` embedded).
    """

    def __init__(self, requested: str, largest: str, knob: str = "nodes_per_block") -> None:
        self._remember(requested, largest, knob)
        self.requested = requested
        self.largest = largest
        self.knob = knob
        super().__init__(
            f"task needs {requested}, but the largest block is {largest}; "
            f"ask for fewer nodes/cores/GPUs or configure larger blocks ({knob})"
        )


class InvalidTaskId(SubmitError, ValueError):
    """A task id is not a safe identifier (it would escape the sandbox or is malformed)."""


class ExecutorShutdown(SubmitError, RuntimeError):
    """The executor was shut down; no new task is accepted."""


class ConfigError(MPIEngineError, ValueError):
    """A configuration is invalid.

    Attributes:
        key: dotted path of the offending key ("" for the whole document).
        problem: what is wrong.
        allowed: what is allowed (valid keys with their defaults, or the value range).
    """

    def __init__(self, key: str, problem: str, allowed: str = "") -> None:
        self._remember(key, problem, allowed)
        self.key = key
        self.problem = problem
        self.allowed = allowed
        where = f"{key}: " if key else ""
        hint = f" (allowed: {allowed})" if allowed else ""
        super().__init__(f"{where}{problem}{hint}")


class BackendError(MPIEngineError, RuntimeError):
    """The endpoint backend (embedded endpoint or relay connection) failed."""


class RelayError(BackendError):
    """The relay answered with an error.

    Attributes:
        code: a short machine-readable code, e.g. ``"unauthorized"``.
    """

    def __init__(self, message: str, code: str = "relay_error") -> None:
        self._remember(message, code)
        self.code = code
        super().__init__(message)


class AuthenticationError(RelayError):
    """The request carried no valid identity."""


class AuthorizationError(RelayError):
    """The identity may not use this endpoint, task or result."""


class PayloadTooLarge(RelayError):
    """A submission is larger than the relay's limit."""

    def __init__(self, size: int, limit: int) -> None:
        self._remember(size, limit)
        self.size = size
        self.limit = limit
        super().__init__(
            f"submission is {size} bytes, the limit is {limit} bytes; "
            "pass large data by path or raise the relay's max_payload_bytes",
            code="payload_too_large",
        )


class RateLimited(RelayError):
    """Too many requests; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        self._remember(retry_after)
        self.retry_after = retry_after
        super().__init__(f"rate limit reached; retry in {retry_after:.1f} s", code="rate_limited")


class TaskError(MPIEngineError):
    """A task did not succeed.

    Attributes:
        task_id: the task's id.
        returncode: the exit code, when the task ran.
        stdout: the tail of its stdout ("" when unknown).
        stderr: the tail of its stderr ("" when unknown).
    """

    def __init__(
        self,
        message: str,
        *,
        task_id: str = "",
        returncode: int | None = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        self._remember(
            message, task_id=task_id, returncode=returncode, stdout=stdout, stderr=stderr
        )
        self.task_id = task_id
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(message)

    def __str__(self) -> str:
        text = super().__str__()
        if self.stderr:
            text += "\n--- stderr (tail) ---\n" + self.stderr.rstrip("\n")
        return text


class TaskFailed(TaskError):
    """The task exited non-zero (raised by ``result.check()``) or could not be launched."""


class TaskTimeout(TaskError):
    """The task's walltime expired; its whole process tree was killed (returncode 124)."""


class TaskHung(TaskError):
    """The task wrote nothing to stdout or stderr for its ``progress_timeout`` and was killed.

    Its whole process tree was killed as at a walltime (returncode 125, state HUNG); ``stdout``
    and ``stderr`` hold the tails, which show where it stopped.
    """

    def __str__(self) -> str:
        # The base shows the stderr tail; a hung task's last words are as often on stdout.
        text = super().__str__()
        if self.stdout:
            text += "\n--- stdout (tail) ---\n" + self.stdout.rstrip("\n")
        return text


class TaskCancelled(TaskError):
    """The task was cancelled before or while it ran."""


class BlockLost(TaskError):
    """The block running the task disappeared and the task's retry budget is spent.

    Attributes:
        block_id: the endpoint's id of the block.
        job_id: the batch system's job id ("" for local blocks).
        nodes: the block's nodes.
    """

    def __init__(
        self,
        message: str,
        *,
        task_id: str = "",
        block_id: str = "",
        job_id: str = "",
        nodes: Sequence[str] = (),
    ) -> None:
        self.block_id = block_id
        self.job_id = job_id
        self._remember(message, task_id=task_id, block_id=block_id, job_id=job_id, nodes=nodes)
        self.nodes = tuple(nodes)
        super().__init__(message, task_id=task_id)


class NodeFailed(TaskError):
    """A node under the task failed and the task's retry budget is spent.

    The batch system marked the node down, drained or failing, or the launcher reported that
    the node failed. The task's ranks on every node were killed; the endpoint places no more
    tasks on that node (the rest of its block goes on serving). Resubmitting runs the task on
    other nodes; more ``retries`` in its ResourceSpec let the endpoint do that by itself.

    Attributes:
        node: the node that failed.
        block_id: the endpoint's id of its block.
        job_id: the batch system's job id of that block.
        nodes: the nodes the task was placed on.
    """

    def __init__(
        self,
        message: str,
        *,
        task_id: str = "",
        node: str = "",
        block_id: str = "",
        job_id: str = "",
        nodes: Sequence[str] = (),
        returncode: int | None = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        self._remember(
            message, task_id=task_id, node=node, block_id=block_id, job_id=job_id, nodes=nodes,
            returncode=returncode, stdout=stdout, stderr=stderr,
        )  # fmt: skip
        self.node = node
        self.block_id = block_id
        self.job_id = job_id
        self.nodes = tuple(nodes)
        super().__init__(
            message, task_id=task_id, returncode=returncode, stdout=stdout, stderr=stderr
        )


class DependencyFailed(TaskError):
    """A task this one depends on (a TaskFuture among its arguments) did not succeed.

    The dependent task was never sent to the endpoint. Its ``__cause__`` is the dependency's
    own error.

    Attributes:
        dependency: the task id of the dependency that did not succeed.
    """

    def __init__(
        self,
        message: str,
        *,
        dependency: str = "",
        task_id: str = "",
        returncode: int | None = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        self._remember(
            message, dependency=dependency, task_id=task_id, returncode=returncode,
            stdout=stdout, stderr=stderr,
        )  # fmt: skip
        self.dependency = dependency
        super().__init__(
            message, task_id=task_id, returncode=returncode, stdout=stdout, stderr=stderr
        )


class StagingError(TaskError):
    """A file of a task's ``stage_in`` or ``stage_out`` could not be copied.

    The message names the file, its URL and the cause. A failed stage-in means the command never
    ran; the staging report (what did move) is in the future's ``message.staging``.
    """


class RemoteExecutionError(TaskError):
    """A Python task raised and its exception could not be rebuilt locally.

    Attributes:
        type_name: the remote exception's qualified type name.
        remote_traceback: the formatted remote traceback.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str, task_id: str = ""):
        self._remember(type_name, message, remote_traceback, task_id)
        self.type_name = type_name
        self.remote_traceback = remote_traceback
        super().__init__(f"{type_name}: {message}\n{remote_traceback}", task_id=task_id)


#: Every mpiengine error class by name: the types a structured error is rebuilt into.
ERROR_TYPES: Mapping[str, type[MPIEngineError]] = MappingProxyType(
    {
        cls.__name__: cls
        for cls in list(globals().values())
        if isinstance(cls, type) and issubclass(cls, MPIEngineError)
    }
)


def error_record(exc: BaseException) -> ErrorRecord:
    """``exc`` as it crosses the wire: its class name, its message and, for an mpiengine
    error, its constructor's data (``exc.wire_fields()``)."""
    if isinstance(exc, MPIEngineError):
        return ErrorRecord(type(exc).__name__, _message(exc), exc.wire_fields())
    return ErrorRecord(type(exc).__name__, str(exc))


def error_from_record(
    record: ErrorRecord, context: Mapping[str, Any] | None = None
) -> MPIEngineError | None:
    """The mpiengine error ``record`` stands for: same class, attributes and ``str()``.

    Args:
        record: the structured error; its type is a name in ``ERROR_TYPES``, bare or as
            ``mpiengine_sdk.errors.Name``.
        context: constructor arguments the record's fields do not carry, taken where the
            constructor has such a parameter: a result passes its task id, returncode, tails,
            block and nodes, which a TaskError takes.

    Returns:
        The rebuilt error; None when the type is not an mpiengine error, or its fields do not
        fit its constructor (the caller falls back: TaskFailed for a result, RelayError for a
        relay reply).
    """
    module, _, name = record.type.rpartition(".")
    cls = ERROR_TYPES.get(name) if module in ("", __name__) else None
    if cls is None:
        return None
    signature = _constructor(cls)
    try:
        if signature is None:
            exc = cls(record.message)
        else:
            params = signature.parameters
            kwargs = {k: v for k, v in (context or {}).items() if k in params}
            kwargs.update((k, v) for k, v in record.fields.items() if k in params)
            if "message" in params:
                kwargs.setdefault("message", record.message)
            exc = cls(**kwargs)
    except (TypeError, ValueError):
        return None
    if _message(exc) != record.message:
        exc.args = (record.message,)  # the sender's exact text (a value that travelled as repr)
    return exc


_CONSTRUCTORS: dict[type[MPIEngineError], inspect.Signature | None] = {}


def _constructor(cls: type[MPIEngineError]) -> inspect.Signature | None:
    """The signature of ``cls``'s own constructor; None when it takes the message alone."""
    if cls not in _CONSTRUCTORS:
        own = next((k for k in cls.__mro__ if "__init__" in vars(k)), MPIEngineError)
        mine = issubclass(own, MPIEngineError) and own is not MPIEngineError
        _CONSTRUCTORS[cls] = inspect.signature(own) if mine else None
    return _CONSTRUCTORS[cls]


def _message(exc: MPIEngineError) -> str:
    """An error's own message: its ``str()`` without what ``__str__`` adds (a stderr tail)."""
    return Exception.__str__(exc)


def _plain(value: Any) -> Any:
    """``value`` as JSON: plain values and lists of them as they are, anything else as repr."""
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, list | tuple) and all(
        v is None or isinstance(v, str | int | float) for v in value
    ):
        return list(value)
    return repr(value)
