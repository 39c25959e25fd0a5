"""The one seam between the Executor and whatever runs its tasks.

The embedded endpoint (``mpiengine.embedded``) and the relay client (``mpiengine_sdk.relayclient``)
both implement it; tests swap in a fake with the same methods. Backends deal in messages
(TaskMessage in, ResultMessage out); the Executor alone owns the futures.

Backends outside the SDK are found by name through the ``mpiengine.backends`` entry-point
group (``name = "module:Class"``): the ``mpiengine`` package registers ``embedded``.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from mpiengine_sdk.errors import BackendError
from mpiengine_sdk.wire import ResultMessage, TaskKind, TaskMessage

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "Reattachable",
    "ResultSink",
    "backend_factory",
    "make_backend",
]

#: The entry-point group that names backends: ``name = "module:Class"``.
ENTRY_POINT_GROUP = "mpiengine.backends"

_NO_ENGINE = (
    "the embedded endpoint needs the engine: pip install mpiengine "
    "(or pass endpoint_id= and relay= to submit through a relay)"
)

#: Called by a backend, from any thread, for every result (and progress update) it receives;
#: the Executor's sink only queues the message (it never blocks, never runs user code).
ResultSink = Callable[[ResultMessage], None]


class Backend(Protocol):
    """Runs tasks and reports their results."""

    def start(self, sink: ResultSink) -> None:
        """Begin delivering results to ``sink``; called once, before any submit."""

    def submit(self, tasks: Sequence[TaskMessage]) -> None:
        """Accept a batch of tasks.

        Raises:
            SubmitError: (TaskTooLarge, InvalidTaskId, ...) when a task is refused; a refused
                task is not queued, and nothing else in the batch is affected when the batch has
                one task. For batches, the backend refuses through a FAILED ResultMessage.
            BackendError: the backend is unreachable.
        """

    def cancel(self, task_id: str) -> None:
        """Ask for a task to be cancelled (queued: dropped; running: killed).

        Best effort and asynchronous: the outcome arrives through the sink as a CANCELLED
        result, or as the task's normal result if it finished first.
        """

    def shutdown(self, wait: bool = True) -> None:
        """Stop; with ``wait`` let running tasks finish first. Idempotent."""


@runtime_checkable
class Reattachable(Protocol):
    """A backend whose tasks outlive the client, so another client can follow their results
    (the relay client); ``Executor.attach`` needs one."""

    def list_tasks(self, task_ids: Sequence[str] | None) -> list[tuple[str, TaskKind]]:
        """The tasks to attach, with their kinds.

        Args:
            task_ids: these tasks (an unknown one is listed too, as a Python task: following it
                brings its refusal); None for every task of this user on this endpoint whose
                result has not been fetched yet.

        Raises:
            RelayError, BackendError: the backend cannot answer.
        """

    def follow(self, task_ids: Sequence[str]) -> None:
        """Deliver these tasks' results to the sink: at once for finished tasks, as they come
        for others (also after a reconnect); an unknown, expired or foreign task as a FAILED
        result."""


def backend_factory(name: str, missing: str = "") -> Callable[..., Backend]:
    """The backend class registered as ``name`` in the ``mpiengine.backends`` entry points.

    Args:
        name: the backend's name (``embedded``).
        missing: what to tell the user when no installed package registers ``name``.

    Raises:
        BackendError: no installed package registers ``name``, or its class cannot be loaded.
    """
    entry = _registered().get(name)
    if entry is None:
        raise BackendError(
            missing or f"no backend {name!r} is installed (entry-point group {ENTRY_POINT_GROUP!r})"
        )
    try:
        factory: Callable[..., Backend] = entry.load()
    except (ImportError, AttributeError) as exc:
        raise BackendError(f"cannot load backend {name!r} ({entry.value}): {exc}") from exc
    return factory


def make_backend(endpoint_id: str | None, relay: str | None, options: Mapping[str, Any]) -> Backend:
    """The Executor's backend: the embedded endpoint when ``endpoint_id`` is None, else the
    relay client.

    Raises:
        BackendError: the embedded endpoint is not installed (``pip install mpiengine``).
        AuthenticationError: remote mode without a configured user.
    """
    if endpoint_id is None:
        return backend_factory("embedded", _NO_ENGINE)(**options)
    # Imported here: the relay client (and pika) only load in remote mode.
    from mpiengine_sdk.relayclient.client import RelayBackend

    return RelayBackend(endpoint_id=endpoint_id, relay=relay, **options)


@functools.cache
def _registered() -> dict[str, importlib.metadata.EntryPoint]:
    """Installed backends by name (read once: scanning the installed packages is slow)."""
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry)
    return found
