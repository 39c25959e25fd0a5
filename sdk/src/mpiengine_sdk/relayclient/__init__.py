"""The relay client: submit through a relay (RabbitMQ) to an endpoint on a login node.

``Executor(endpoint_id=..., relay=...)`` constructs a :class:`RelayBackend`; the API is the
embedded default's. Tasks outlive the client: :func:`attach` re-attaches futures to them, from
this or another process.
"""

from __future__ import annotations

from collections.abc import Iterable

from mpiengine_sdk.executor import Executor
from mpiengine_sdk.future import TaskFuture
from mpiengine_sdk.relayclient.client import RelayBackend

__all__ = ["RelayBackend", "attach"]


def attach(executor: Executor, task_ids: Iterable[str] | None = None) -> list[TaskFuture]:
    """Futures for tasks submitted earlier through the relay (by any process of this user).

    Args:
        executor: an Executor in remote mode (``Executor(endpoint_id=..., relay=...)``).
        task_ids: the tasks; None for every task on the executor's endpoint whose result was
            not fetched yet.

    Returns:
        One TaskFuture per task (see RelayBackend.attach).

    Raises:
        TypeError: the executor does not submit through a relay.
    """
    backend = executor.backend
    if not isinstance(backend, RelayBackend):
        raise TypeError("attach() needs an Executor in remote mode (endpoint_id=..., relay=...)")
    return backend.attach(task_ids)
