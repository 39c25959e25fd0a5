"""The one seam between the Executor and whatever runs its tasks.

The embedded endpoint (``mpiengine.embedded``) and the relay client (``mpiengine_sdk.relayclient``)
both implement it; tests swap in a fake with the same methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from mpiengine_sdk.wire import ResultMessage, TaskMessage

__all__ = ["Backend", "ResultSink"]

#: Called by a backend, from any thread, for every result (and progress update) it receives.
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
