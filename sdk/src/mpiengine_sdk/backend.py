"""The one seam between the Executor and whatever runs its tasks.

The embedded endpoint (``mpiengine.embedded``) and the relay client (``mpiengine_sdk.relayclient``)
both implement it; tests swap in a fake with the same methods. Backends deal in messages
(TaskMessage in, ResultMessage out); the Executor alone owns the futures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from mpiengine_sdk.wire import ResultMessage, TaskKind, TaskMessage

__all__ = ["Backend", "Reattachable", "ResultSink"]

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
