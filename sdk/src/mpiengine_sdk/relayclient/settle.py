"""Resolve a TaskFuture from a ResultMessage (for futures the Executor does not own)."""

from __future__ import annotations

import concurrent.futures

from mpiengine_sdk.future import TaskFuture
from mpiengine_sdk.results import unpack_result
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import ResultMessage

__all__ = ["settle_from_message"]


def settle_from_message(future: TaskFuture, msg: ResultMessage) -> None:
    """RUNNING marks the future running; a terminal result sets its value or exception.

    A future that is already done (cancelled meanwhile, or a duplicate result) is left alone.
    """
    if future.done():
        return
    if msg.state is TaskState.RUNNING:
        future.mark_running()
        return
    if not msg.state.terminal:
        return
    future.message = msg
    try:
        value = unpack_result(future.kind, msg)
    except BaseException as exc:  # the task's error is the future's exception
        outcome: tuple[object, BaseException | None] = (None, exc)
    else:
        outcome = (value, None)
    try:
        if outcome[1] is not None:
            future.set_exception(outcome[1])
        else:
            future.set_result(outcome[0])
    except concurrent.futures.InvalidStateError:
        pass  # cancelled concurrently: the cancellation stands
