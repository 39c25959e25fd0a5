"""Tasks that depend on tasks, on a backend whose results the test delivers by hand."""

from __future__ import annotations

import threading

import dill
import pytest

from mpiengine_sdk import (
    ArgumentError,
    DependencyFailed,
    Executor,
    MPIFunction,
    ShellFunction,
    TaskFailed,
    TemplateError,
)
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import ResultMessage, TaskMessage


class HandBackend:
    """Keeps submitted tasks; the test decides every result."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskMessage] = {}
        self.cancelled: list[str] = []
        self.arrived = threading.Condition()

    def start(self, sink):
        self.sink = sink

    def submit(self, tasks):
        with self.arrived:
            for task in tasks:
                self.tasks[task.task_id] = task
            self.arrived.notify_all()

    def cancel(self, task_id):
        self.cancelled.append(task_id)

    def shutdown(self, wait=True):
        pass

    def wait_for(self, task_id: str, timeout: float = 10.0) -> TaskMessage:
        with self.arrived:
            assert self.arrived.wait_for(lambda: task_id in self.tasks, timeout), task_id
            return self.tasks[task_id]

    def finish_python(self, task_id: str, value: object) -> None:
        self.sink(
            ResultMessage(task_id=task_id, state=TaskState.COMPLETED, value=dill.dumps(value))
        )

    def finish_shell(self, task_id: str, stdout: str, returncode: int = 0) -> None:
        state = TaskState.COMPLETED if returncode == 0 else TaskState.FAILED
        self.sink(ResultMessage(task_id=task_id, state=state, stdout=stdout, returncode=returncode))


def add(a, b):
    return a + b


def call_of(task: TaskMessage):
    assert task.payload is not None
    return dill.loads(task.payload)


@pytest.fixture
def hand():
    backend = HandBackend()
    ex = Executor(backend=backend)
    yield ex, backend
    ex.shutdown(wait=False)


def test_a_python_argument_future_is_awaited_and_replaced_by_its_value(hand):
    ex, backend = hand
    first = ex.submit(add, 1, 2, task_id="first")
    second = ex.submit(add, first, [first, 5], task_id="second")
    backend.wait_for("first")
    assert "second" not in backend.tasks  # held until its dependency resolves
    assert not second.done()
    backend.finish_python("first", 3)
    _, args, kwargs = call_of(backend.wait_for("second"))
    assert args == (3, [3, 5])
    assert kwargs == {}
    backend.finish_python("second", 9)
    assert second.result(timeout=10) == 9


def test_a_template_value_future_becomes_the_shell_result_stdout_quoted(hand):
    ex, backend = hand
    listing = ex.submit(ShellFunction("ls"), task_id="ls")
    ex.submit(ShellFunction("wc -c {name}"), name=listing, task_id="wc")
    backend.finish_shell("ls", "a file; rm -rf x\n\n")
    task = backend.wait_for("wc")
    assert task.script == "wc -c 'a file; rm -rf x'"


def test_a_python_value_fills_an_mpi_template(hand):
    ex, backend = hand
    steps = ex.submit(add, 40, 2, task_id="steps")
    ex.submit(MPIFunction("./solver --steps {steps}"), steps=steps, task_id="solve")
    backend.finish_python("steps", 42)
    assert backend.wait_for("solve").script == "./solver --steps 42"


def test_a_dependency_that_raised_fails_the_dependent_naming_it(hand):
    ex, backend = hand
    first = ex.submit(add, 1, 2, task_id="first")
    second = ex.submit(add, first, 1, task_id="second")
    backend.sink(
        ResultMessage(
            task_id="first",
            state=TaskState.FAILED,
            error_type="TaskFailed",
            error_message="launch failed",
        )
    )
    with pytest.raises(DependencyFailed) as info:
        second.result(timeout=10)
    assert str(info.value) == (
        "dependency first did not succeed (TaskFailed: launch failed); this task was not run"
    )
    assert info.value.dependency == "first"
    assert info.value.task_id == "second"
    assert isinstance(info.value.__cause__, TaskFailed)
    assert "second" not in backend.tasks
    assert ex.outstanding() == []


def test_a_shell_dependency_that_exited_non_zero_fails_the_dependent(hand):
    ex, backend = hand
    first = ex.submit(ShellFunction("false"), task_id="first")
    second = ex.submit(ShellFunction("echo {x}"), x=first, task_id="second")
    backend.finish_shell("first", "", returncode=1)
    with pytest.raises(DependencyFailed, match=r"^dependency first did not succeed \(TaskFailed"):
        second.result(timeout=10)
    assert "second" not in backend.tasks


def test_failure_propagates_down_a_chain(hand):
    ex, backend = hand
    a = ex.submit(add, 1, 1, task_id="a")
    b = ex.submit(add, a, 1, task_id="b")
    c = ex.submit(add, b, 1, task_id="c")
    a.cancel()
    with pytest.raises(DependencyFailed, match=r"^dependency b did not succeed \(DependencyFailed"):
        c.result(timeout=10)
    with pytest.raises(DependencyFailed, match=r"^dependency a did not succeed \(it was cancelled"):
        b.result(timeout=10)
    assert backend.cancelled == ["a"]  # b and c were never sent, so never cancelled remotely


def test_cancelling_a_waiting_dependent_never_sends_it(hand):
    ex, backend = hand
    first = ex.submit(add, 1, 2, task_id="first")
    second = ex.submit(add, first, 1, task_id="second")
    assert second.cancel()
    assert second.cancelled()
    assert "second" not in backend.cancelled  # held in the client: nothing to kill remotely
    called = threading.Event()
    first.add_done_callback(lambda _: called.set())  # runs after the dependency's own callback
    backend.finish_python("first", 3)
    assert first.result(timeout=10) == 3
    assert called.wait(10)
    # The dependency's callback has run and started the launch thread (if any); once it has
    # ended, a wrongly scheduled launch would have happened.
    for thread in threading.enumerate():
        if thread.name == "deps-second":
            thread.join(timeout=10)
    assert "second" not in backend.tasks
    assert ex.outstanding() == []


def test_a_dependent_is_checked_at_submit(hand):
    ex, backend = hand
    first = ex.submit(add, 1, 2, task_id="first")
    with pytest.raises(ArgumentError, match=r"add\(a, b\) cannot be called"):
        ex.submit(add, first, 1, 2)
    with pytest.raises(TemplateError, match=r"did you mean \{name\} for 'nmae'"):
        ex.submit(ShellFunction("echo {name}"), nmae=first)


def test_an_already_resolved_dependency_is_used_at_once(hand):
    ex, backend = hand
    first = ex.submit(add, 1, 2, task_id="first")
    backend.finish_python("first", 3)
    assert first.result(timeout=10) == 3
    ex.submit(add, first, 1, task_id="second")
    _, args, _ = call_of(backend.wait_for("second"))
    assert args == (3, 1)
