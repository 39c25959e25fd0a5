"""Futures are settled on the Executor's settling thread, never on the backend's thread; a
done-callback may wait on another future. Results are delivered by hand from a thread of the
test's (standing for the engine thread)."""

from __future__ import annotations

import gc
import threading

import dill
import pytest

from mpiengine_sdk import Executor
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import ResultMessage


class HandBackend:
    """Keeps the sink; the test delivers every result."""

    def start(self, sink):
        self.sink = sink

    def submit(self, tasks):
        pass

    def cancel(self, task_id):
        pass

    def shutdown(self, wait=True):
        pass

    def finish(self, task_id: str, value: object) -> None:
        self.sink(ResultMessage(task_id, TaskState.COMPLETED, value=dill.dumps(value)))

    def finish_from(self, name: str, task_id: str, value: object) -> None:
        """Deliver from a thread called ``name``, as the engine thread would."""
        thread = threading.Thread(target=self.finish, args=(task_id, value), name=name)
        thread.start()
        thread.join(10)


def noop():
    return None


@pytest.fixture
def hand():
    backend = HandBackend()
    ex = Executor(backend=backend)
    yield ex, backend
    ex.shutdown(wait=False)


def test_done_callbacks_run_on_the_settling_thread_not_the_backends(hand):
    ex, backend = hand
    future = ex.submit(noop, task_id="a")
    ran_on: list[str] = []
    called = threading.Event()

    def record(_):
        ran_on.append(threading.current_thread().name)
        called.set()

    future.add_done_callback(record)
    backend.finish_from("engine", "a", 1)
    assert called.wait(10)
    assert ran_on == ["mpiengine-settle"]
    assert future.result(10) == 1


def test_a_done_callback_may_wait_on_a_later_result(hand):
    ex, backend = hand
    first, second, third = (ex.submit(noop, task_id=t) for t in ("first", "second", "third"))
    waiting, callback_done, third_done = threading.Event(), threading.Event(), threading.Event()
    waited = []

    def wait_for_second(_):
        waiting.set()
        waited.append(second.result(10))
        callback_done.set()

    first.add_done_callback(wait_for_second)
    third.add_done_callback(lambda _: third_done.set())
    backend.finish("first", 1)
    assert waiting.wait(10)
    # The callback blocks the thread that settled `first`; later results still settle, and
    # their callbacks run.
    backend.finish("third", 3)
    assert third_done.wait(10)
    assert not callback_done.is_set()
    backend.finish("second", 2)
    assert callback_done.wait(10)
    assert waited == [2]


def test_results_after_shutdown_are_still_settled(hand):
    ex, backend = hand
    future = ex.submit(noop, task_id="late")
    ex.shutdown(wait=False)
    backend.finish("late", 7)  # e.g. a running task's result while the backend stops
    assert future.result(10) == 7


def test_shutdown_with_wait_ends_the_settling_thread_after_the_callbacks():
    backend = HandBackend()
    ex = Executor(backend=backend)
    future = ex.submit(noop, task_id="a")
    seen = []
    future.add_done_callback(lambda f: seen.append(f.result()))
    backend.finish("a", 5)
    ex.shutdown(wait=True)
    assert seen == [5]
    assert not ex._settler._drainer.is_alive()


def test_shutdown_from_a_done_callback_does_not_deadlock():
    backend = HandBackend()
    ex = Executor(backend=backend)
    first, second = ex.submit(noop, task_id="a"), ex.submit(noop, task_id="b")
    returned = threading.Event()
    first.add_done_callback(lambda _: (ex.shutdown(wait=True), returned.set()))
    backend.finish("a", 1)
    backend.finish("b", 2)  # shutdown(wait=True) in the callback waits for this one
    assert returned.wait(10)
    assert second.result(10) == 2


def test_an_executor_dropped_without_shutdown_ends_its_settling_thread():
    ex = Executor(backend=HandBackend())
    drainer = ex._settler._drainer
    del ex
    gc.collect()
    drainer.join(10)
    assert not drainer.is_alive()
