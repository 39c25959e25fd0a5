"""TaskFuture: a real ``concurrent.futures.Future`` that knows its task id and can kill its task."""

from __future__ import annotations

import concurrent.futures
import concurrent.futures._base as _fbase
from collections.abc import Callable
from typing import Any

from mpiengine_sdk.settler import before_wait
from mpiengine_sdk.wire import ResultMessage, TaskKind

__all__ = ["TaskFuture"]

_DONE = (_fbase.FINISHED, _fbase.CANCELLED_AND_NOTIFIED)


class TaskFuture(concurrent.futures.Future[Any]):
    """The future of one mpiengine task.

    ``task_id`` is known at once (before the result), so it can be stored and used later to
    fetch the result from another process (remote mode).

    Unlike a thread-pool future, ``cancel()`` also works on a *running* task: it asks the
    endpoint to kill the task's whole process tree (every MPI rank included) and the future is
    cancelled at once. It returns False only when the task has already finished.
    """

    def __init__(
        self, task_id: str, kind: TaskKind, canceller: Callable[[str], None] | None = None
    ) -> None:
        super().__init__()
        self.task_id = task_id
        self.kind = kind
        self._canceller = canceller
        #: The endpoint's final report (nodes, times, sandbox, attempts), once resolved; for
        #: Python tasks the only place where these details are.
        self.message: ResultMessage | None = None

    def __repr__(self) -> str:
        return f"<TaskFuture {self.task_id} {self.kind.value} state={self._state.lower()}>"

    def result(self, timeout: float | None = None) -> Any:
        """As ``Future.result``; from a done-callback, settling moves to another thread first."""
        if self._state not in _DONE:
            before_wait()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """As ``Future.exception``; from a done-callback, settling moves to another thread
        first."""
        if self._state not in _DONE:
            before_wait()
        return super().exception(timeout)

    def cancel(self) -> bool:
        """Cancel the task: drop it if queued, kill it if running.

        Returns:
            True if the future is now cancelled, False if the task had already finished.
        """
        with self._condition:
            if self._state == _fbase.FINISHED:
                return False
            if self._state in (_fbase.CANCELLED, _fbase.CANCELLED_AND_NOTIFIED):
                return True
            # A RUNNING future is put back to PENDING so the stdlib's own transition (which
            # notifies waiters, callbacks and as_completed) applies unchanged.
            self._state = _fbase.PENDING
        if self._canceller is not None:
            self._canceller(self.task_id)
        if not super().cancel():
            return False
        self.set_running_or_notify_cancel()
        return True

    def mark_running(self) -> None:
        """Record that the endpoint started the task (idempotent; ignored once done)."""
        with self._condition:
            if self._state != _fbase.PENDING:
                return
        self.set_running_or_notify_cancel()
