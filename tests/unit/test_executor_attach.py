"""Executor.attach: the Executor owns attached futures; the backend only lists and follows."""

from __future__ import annotations

import dill
import pytest

from mpiengine_sdk import Executor, RelayError
from mpiengine_sdk.relayclient.protocol import failed_result
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import ResultMessage, TaskKind


class FollowingBackend:
    """Lists the tasks it is asked for; following a finished one delivers its result at once,
    from inside ``follow`` (as a relay answering fast would)."""

    def __init__(self, finished: dict[str, object]) -> None:
        self.finished = finished
        self.followed: list[list[str]] = []

    def start(self, sink):
        self.sink = sink

    def submit(self, tasks):
        pass

    def cancel(self, task_id):
        pass

    def shutdown(self, wait=True):
        pass

    def list_tasks(self, task_ids):
        ids = list(self.finished) if task_ids is None else task_ids
        return [(tid, TaskKind.PYTHON) for tid in ids]

    def follow(self, task_ids):
        self.followed.append(list(task_ids))
        for tid in task_ids:
            if tid in self.finished:
                value = dill.dumps(self.finished[tid])
                self.sink(ResultMessage(tid, TaskState.COMPLETED, value=value))
            elif tid == "foreign":
                error = RelayError("task 'foreign' belongs to another user", "forbidden")
                self.sink(failed_result(tid, error))


def test_attach_needs_a_relay_backend() -> None:
    class Plain:  # a Backend without list_tasks/follow, as the embedded endpoint
        def start(self, sink):
            pass

        def shutdown(self, wait=True):
            pass

    ex = Executor(backend=Plain())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"attach\(\) needs an Executor in remote mode"):
        ex.attach(["a"])
    ex.shutdown()


def test_attached_futures_resolve_from_followed_results() -> None:
    backend = FollowingBackend({"a": 1, "b": 2})
    ex = Executor(backend=backend)
    futures = ex.attach()
    assert [f.task_id for f in futures] == ["a", "b"]
    assert [f.result(10) for f in futures] == [1, 2]
    assert backend.followed == [["a", "b"]]
    (foreign,) = ex.attach(["foreign"])
    with pytest.raises(RelayError, match="another user"):
        foreign.result(10)
    ex.shutdown()


def test_a_pending_task_attached_twice_is_one_future_and_shutdown_does_not_wait_for_it() -> None:
    ex = Executor(backend=FollowingBackend({}))
    (first,) = ex.attach(["pending"])
    (again,) = ex.attach(["pending"])
    assert first is again
    assert ex.outstanding() == []  # submitted here only
    ex.shutdown(wait=True)  # returns: attached futures are not waited for
    assert not first.done()
