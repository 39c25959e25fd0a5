"""Tasks that depend on tasks: a TaskFuture among a task's arguments.

A :class:`~mpiengine_sdk.future.TaskFuture` passed as an argument of a Python function (or an
MPI Python function), or as a template value of a ShellFunction/MPIFunction, makes the new task
wait, in the client, until that future resolves, and then receive its result in its place:

- as a Python argument: the dependency's value itself (a ShellResult for a shell task);
- as a template value: a ShellResult's stdout without its trailing newlines (as ``$(...)`` in a
  shell), any other value as it is, quoted like every template value.

Futures are found at the top level of the arguments and inside lists, tuples and dicts. A
dependency that raised, was cancelled, or (a shell or MPI task) exited non-zero fails the
dependent task with :class:`~mpiengine_sdk.errors.DependencyFailed` naming it; the dependent is
never sent to the endpoint.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mpiengine_sdk.errors import DependencyFailed, TaskError
from mpiengine_sdk.future import TaskFuture
from mpiengine_sdk.results import ShellResult

__all__ = ["futures_in", "resolve", "stand_in", "when_ready"]


def futures_in(args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[TaskFuture]:
    """Every TaskFuture among ``args`` and ``kwargs`` (also inside lists, tuples and dicts),
    each once, in the order found."""
    found: dict[int, TaskFuture] = {}

    def visit(obj: Any) -> None:
        if isinstance(obj, TaskFuture):
            found.setdefault(id(obj), obj)
        elif isinstance(obj, list | tuple):
            for item in obj:
                visit(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                visit(item)

    visit(list(args))
    visit(list(kwargs.values()))
    return list(found.values())


def _replace(obj: Any, swap: Callable[[TaskFuture], Any]) -> Any:
    if isinstance(obj, TaskFuture):
        return swap(obj)
    if isinstance(obj, list):
        return [_replace(item, swap) for item in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_replace(item, swap) for item in obj)
    if isinstance(obj, dict):
        return {key: _replace(item, swap) for key, item in obj.items()}
    return obj


def _template_value(value: Any) -> Any:
    if isinstance(value, ShellResult):
        return value.stdout.rstrip("\n")
    return value


def stand_in(
    args: Sequence[Any], kwargs: Mapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``args`` and ``kwargs`` with each future replaced by a placeholder word, so a task can be
    checked at submit before its dependencies have values."""
    return (
        tuple(_replace(a, lambda f: "0") for a in args),
        {k: _replace(v, lambda f: "0") for k, v in kwargs.items()},
    )


def resolve(
    args: Sequence[Any], kwargs: Mapping[str, Any], *, template: bool
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``args`` and ``kwargs`` with each (resolved, successful) future replaced by its value.

    Args:
        args: positional arguments.
        kwargs: keyword arguments (template values when ``template``).
        template: the values fill a command template: a ShellResult becomes its stdout.
    """

    def value(future: TaskFuture) -> Any:
        result = future.result(timeout=0)
        return _template_value(result) if template else result

    return (
        tuple(_replace(a, value) for a in args),
        {k: _replace(v, value) for k, v in kwargs.items()},
    )


def _failure(dependency: TaskFuture, task_id: str) -> DependencyFailed | None:
    """The DependencyFailed for ``task_id`` if ``dependency`` (resolved) did not succeed."""
    if dependency.cancelled():
        return _dependency_failed(dependency.task_id, "it was cancelled", task_id)
    exc = dependency.exception(timeout=0)
    if exc is None:
        result = dependency.result(timeout=0)
        if isinstance(result, ShellResult):
            try:
                result.check()
            except TaskError as failed:
                exc = failed
    if exc is None:
        return None
    first_line = (str(exc).splitlines() or [""])[0]
    error = _dependency_failed(dependency.task_id, f"{type(exc).__name__}: {first_line}", task_id)
    error.__cause__ = exc
    return error


def _dependency_failed(dependency: str, reason: str, task_id: str) -> DependencyFailed:
    return DependencyFailed(
        f"dependency {dependency} did not succeed ({reason}); this task was not run",
        dependency=dependency,
        task_id=task_id,
    )


def when_ready(
    dependencies: Sequence[TaskFuture],
    task_id: str,
    on_ready: Callable[[], None],
    on_failed: Callable[[DependencyFailed], None],
) -> None:
    """Call ``on_ready`` once every dependency succeeded, or ``on_failed`` at the first one that
    did not (once, with the first failure by resolution order).

    The call happens on its own thread: a future's callbacks run on the thread that resolved it
    (the backend's result thread), which must not block on submitting the next task.
    """
    lock = threading.Lock()
    state = {"left": len(dependencies), "settled": False}

    def fire(target: Callable[..., None], *args: Any) -> None:
        threading.Thread(target=target, args=args, name=f"deps-{task_id}", daemon=True).start()

    def done(dependency: Any) -> None:
        failure = _failure(dependency, task_id)
        with lock:
            if state["settled"]:
                return
            state["left"] -= 1
            if failure is None and state["left"] > 0:
                return
            state["settled"] = True
        if failure is not None:
            fire(on_failed, failure)
        else:
            fire(on_ready)

    for dependency in dependencies:
        dependency.add_done_callback(done)
