"""The Executor: ``concurrent.futures.Executor`` for mpiengine tasks.

With no endpoint named it runs an embedded endpoint in this process (this host as K virtual
nodes); with ``endpoint_id`` and ``relay`` it submits through the relay. The API is the same.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mpiengine_sdk import deps
from mpiengine_sdk.backend import Backend, Reattachable, make_backend
from mpiengine_sdk.errors import (
    BackendError,
    ConfigError,
    DependencyFailed,
    ExecutorShutdown,
    SubmitError,
)
from mpiengine_sdk.functions import (
    MPIPythonFunction,
    ShellFunction,
    check_arguments,
    python_task,
)
from mpiengine_sdk.future import TaskFuture
from mpiengine_sdk.results import unpack_result
from mpiengine_sdk.settler import Settler, before_wait
from mpiengine_sdk.spec import ResourceSpec, coerce_spec
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.timeline import Timeline, TimelineRecorder
from mpiengine_sdk.wire import ResultMessage, TaskKind, TaskMessage

__all__ = ["Executor"]

SpecLike = ResourceSpec | Mapping[str, Any] | None
#: What ``submit`` accepts: a task type or any Python callable.
Submittable = ShellFunction | MPIPythonFunction | Callable[..., Any]


def _user_config(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """User variables checked at the edge: a mapping of names to JSON values."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(
            "user_config",
            f"must be a mapping of variable names to values, got {type(value).__name__}",
        )
    try:
        json.dumps(dict(value))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            "user_config",
            f"values must be JSON data (str, int, float, bool, None, lists, mappings): {exc}",
        ) from exc
    return dict(value)


class Executor(concurrent.futures.Executor):
    """Submit shell commands, MPI programs and Python functions; get futures back.

    Args:
        endpoint_id: the endpoint to submit to through a relay; None runs an embedded
            endpoint in this process.
        relay: the relay's broker URL (remote mode); None reads the client config.
        resource_spec: the default ResourceSpec (or dict) for every submit; a submit's own
            ``resource_spec=`` is merged over it.
        backend: an explicit Backend (tests, custom transports); overrides the two above.
        user_config: user variables for a multi-user endpoint (e.g. ``{"account": ...,
            "queue": ...}``), sent with every task; the endpoint validates them against its
            admin's schema and refuses a task whose variables fail it (ConfigError naming
            the variable and the rule).
        **options: passed to the backend: for the embedded endpoint ``nodes``,
            ``cores_per_node``, ``gpus_per_node``, ``workdir``...; for remote mode the
            credentials.

    Raises:
        BackendError: the backend cannot start.
        ConfigError: ``user_config`` is not a mapping of names to JSON values.

    Futures are settled, and their done-callbacks run, on this executor's settling thread
    (never on the engine's or the relay client's threads); see :mod:`mpiengine_sdk.settler`.
    """

    def __init__(
        self,
        endpoint_id: str | None = None,
        *,
        relay: str | None = None,
        resource_spec: SpecLike = None,
        backend: Backend | None = None,
        user_config: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self._default_spec = coerce_spec(resource_spec) or ResourceSpec()
        self._user_config = _user_config(user_config)
        self._last_merge: tuple[ResourceSpec, ResourceSpec, ResourceSpec] | None = None
        if backend is None:
            backend = make_backend(endpoint_id, relay, options)
        self._backend = backend
        self.endpoint_id = endpoint_id
        self._lock = threading.Lock()
        self._futures: dict[str, TaskFuture] = {}
        # Futures of tasks submitted elsewhere (attach): settled alike, never waited for.
        self._attached: dict[str, TaskFuture] = {}
        # Tasks held in this client until their dependencies resolve (see _submit_after).
        self._waiting: set[str] = set()
        self._timeline = TimelineRecorder()
        self._shutdown = False
        self._settler: Settler[ResultMessage] = Settler(self._on_result, "mpiengine-settle")
        weakref.finalize(self, self._settler.stop, False)  # dropped without shutdown()
        try:
            self._backend.start(self._settler.put)
        except BaseException:
            self._settler.stop(wait=False)
            raise

    # -- configuration -------------------------------------------------------------------
    @property
    def resource_spec(self) -> ResourceSpec:
        """The default resource specification merged into every submit."""
        return self._default_spec

    @resource_spec.setter
    def resource_spec(self, value: SpecLike) -> None:
        self._default_spec = coerce_spec(value) or ResourceSpec()

    @property
    def backend(self) -> Backend:
        """The backend running the tasks (embedded endpoint or relay client)."""
        return self._backend

    # -- submission ----------------------------------------------------------------------
    def submit(  # type: ignore[override]
        self,
        fn: Submittable,
        /,
        *args: Any,
        resource_spec: SpecLike = None,
        task_id: str | None = None,
        **kwargs: Any,
    ) -> TaskFuture:
        """Submit one task.

        Args:
            fn: a ShellFunction, MPIFunction, MPIPythonFunction or any Python callable.
            *args: positional arguments (Python callables only).
            resource_spec: this task's resources, merged over the executor's default.
            task_id: an explicit id (letters, digits, ``_.-``); a random one otherwise.
            **kwargs: template values for shell functions, keyword arguments otherwise.

        Returns:
            A TaskFuture whose ``task_id`` is set at once.

        Raises:
            SpecError, TemplateError, SerializationError: the task is malformed.
            SubmitError: the endpoint refused it (TaskTooLarge, InvalidTaskId, ...).
            ExecutorShutdown: after shutdown().

        A TaskFuture among the arguments (or template values) makes the task wait for it and
        receive its result (see :mod:`mpiengine_sdk.deps`); the future then fails with
        DependencyFailed when a dependency does not succeed.
        """
        dependencies = deps.futures_in(args, kwargs)
        if dependencies:
            return self._submit_after(dependencies, fn, args, kwargs, resource_spec, task_id)
        task = self.prepare(fn, args, kwargs, resource_spec=resource_spec, task_id=task_id)
        future = TaskFuture(task.task_id, task.kind, self._cancel)
        self._register(future)
        self._timeline.submitted(task)
        try:
            self._backend.submit([task])
        except BaseException:
            with self._lock:
                self._futures.pop(task.task_id, None)
            raise
        return future

    def _register(self, future: TaskFuture) -> None:
        with self._lock:
            if self._shutdown:
                raise ExecutorShutdown("cannot submit: the executor is shut down")
            if future.task_id in self._futures:
                raise SubmitError(f"task id {future.task_id!r} is already in use by this executor")
            self._futures[future.task_id] = future

    def _submit_after(
        self,
        dependencies: list[TaskFuture],
        fn: Submittable,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        resource_spec: SpecLike,
        task_id: str | None,
    ) -> TaskFuture:
        """Check the task now (futures standing in as placeholder values), hold it in this
        client until its dependencies resolve, then send it with their values."""
        tid = task_id if task_id is not None else uuid.uuid4().hex
        template = isinstance(fn, ShellFunction)
        check_args, check_kwargs = deps.stand_in(args, kwargs)
        if template or not isinstance(fn, MPIPythonFunction) and not callable(fn):
            kind = self.prepare(fn, check_args, check_kwargs, resource_spec=resource_spec).kind
        elif isinstance(fn, MPIPythonFunction):
            check_arguments(fn.fn, (None, *check_args), check_kwargs, fn.name, leading="comm")
            kind = fn.kind
        else:
            check_arguments(fn, check_args, check_kwargs, getattr(fn, "__name__", repr(fn)))
            kind = TaskKind.PYTHON
        self._merged(resource_spec)  # a bad spec fails now, not when the dependencies resolve
        future = TaskFuture(tid, kind, self._cancel)
        self._register(future)
        with self._lock:
            self._waiting.add(tid)

        def ready() -> None:
            with self._lock:
                if tid not in self._waiting:
                    return  # cancelled while waiting
                self._waiting.discard(tid)
            try:
                values, named = deps.resolve(args, kwargs, template=template)
                task = self.prepare(fn, values, named, resource_spec=resource_spec, task_id=tid)
                self._timeline.submitted(task)
                self._backend.submit([task])
            except BaseException as exc:
                with self._lock:
                    self._futures.pop(tid, None)
                _settle(future, exc=exc)

        def failed(error: DependencyFailed) -> None:
            with self._lock:
                self._waiting.discard(tid)
                self._futures.pop(tid, None)
            _settle(future, exc=error)

        deps.when_ready(dependencies, tid, ready, failed)
        return future

    def prepare(
        self,
        fn: Submittable,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        resource_spec: SpecLike = None,
        task_id: str | None = None,
    ) -> TaskMessage:
        """Build (and validate) the wire message for a task without submitting it."""
        spec = self._merged(resource_spec)
        tid = task_id if task_id is not None else uuid.uuid4().hex
        if isinstance(fn, ShellFunction | MPIPythonFunction):
            task = fn.to_task(tid, tuple(args), dict(kwargs), spec)
        elif not callable(fn):
            raise TypeError(
                f"cannot submit {fn!r}: expected a ShellFunction, MPIFunction, "
                "MPIPythonFunction or a Python callable"
            )
        else:
            task = python_task(fn, tuple(args), dict(kwargs), tid, spec)
        if self._user_config:
            task = dataclasses.replace(task, user_config=self._user_config)
        return task

    def _merged(self, resource_spec: SpecLike) -> ResourceSpec:
        """The default spec merged with ``resource_spec``; remembered for the last
        ResourceSpec object, since a batch of submits usually passes the same one (specs are
        immutable, so the same two objects always merge the same)."""
        default = self._default_spec
        last = self._last_merge
        if isinstance(resource_spec, ResourceSpec) and last is not None:
            if last[0] is default and last[1] is resource_spec:
                return last[2]
        spec = default.merged(resource_spec)
        if isinstance(resource_spec, ResourceSpec):
            self._last_merge = (default, resource_spec, spec)
        return spec

    def attach(self, task_ids: Iterable[str] | None = None) -> list[TaskFuture]:
        """Futures for tasks submitted earlier through the relay (by any process of this user).

        Args:
            task_ids: the tasks; None for every task on this executor's endpoint whose result
                was not fetched yet.

        Returns:
            One TaskFuture per task, resolved as results arrive (at once for finished ones); the
            same future for a task already attached or submitted here and not yet resolved. An
            unknown, expired or foreign task id resolves with a RelayError. ``shutdown`` does
            not wait for attached futures.

        Raises:
            TypeError: the executor does not submit through a relay.
            RelayError, BackendError: the relay cannot list the tasks.
        """
        backend = self._backend
        if not isinstance(backend, Reattachable):
            raise TypeError(
                "attach() needs an Executor in remote mode (endpoint_id=..., relay=...)"
            )
        tasks = backend.list_tasks(None if task_ids is None else list(task_ids))
        futures = []
        with self._lock:
            for tid, kind in tasks:
                future = self._futures.get(tid) or self._attached.get(tid)
                if future is None:
                    future = self._attached[tid] = TaskFuture(tid, kind, self._cancel)
                futures.append(future)
        backend.follow([tid for tid, _ in tasks])  # after the futures exist: results may follow
        return futures

    # -- results -------------------------------------------------------------------------
    def _on_result(self, msg: ResultMessage) -> None:
        """Settle the message's future (on the settling thread)."""
        tid = msg.task_id
        with self._lock:
            future = self._futures.get(tid)
            if future is None:
                future = self._attached.get(tid)
                if future is not None and msg.state.terminal:
                    del self._attached[tid]
            elif msg.state.terminal:
                del self._futures[tid]
        if future is None or future.done():
            return  # unknown or duplicate delivery: one result per task id reaches the user
        if msg.state.terminal:
            self._timeline.finished(msg)
        if msg.state is TaskState.RUNNING:
            future.mark_running()
            return
        if not msg.state.terminal:
            return
        future.message = msg
        try:
            value = unpack_result(future.kind, msg)
        except BaseException as exc:  # the task's error is the future's exception
            _settle(future, exc=exc)
        else:
            _settle(future, value=value)

    def _cancel(self, task_id: str) -> None:
        with self._lock:
            if task_id in self._waiting:  # never sent: nothing to cancel on the endpoint
                self._waiting.discard(task_id)
                self._futures.pop(task_id, None)
                return
        self._backend.cancel(task_id)

    def timeline(self) -> Timeline:
        """Where and when each finished task of this executor ran (see
        :mod:`mpiengine_sdk.timeline`): records with ``to_csv``, ``to_html`` and ``to_png``.

        With an endpoint in this process (embedded or batch), its failed (excluded) nodes come
        along (``Timeline.excluded``) and are drawn as shaded rows; through a relay they are not
        asked for (that would be a round trip).
        """
        records = self._timeline.timeline()
        status = getattr(self._backend, "status", None)
        if getattr(self._backend, "workdir", None) is not None and callable(status):
            try:
                excluded = getattr(status(), "excluded_nodes", None)
            except BackendError:
                excluded = None  # not started or already stopped: the records still stand
            if isinstance(excluded, Mapping):
                records.excluded = {b: dict(nodes) for b, nodes in excluded.items()}
        return records

    def outstanding(self) -> list[TaskFuture]:
        """Futures not yet resolved, in submission order."""
        with self._lock:
            return list(self._futures.values())

    # -- lifecycle -----------------------------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks, as ``concurrent.futures.Executor.shutdown``.

        Args:
            wait: block until every outstanding future is resolved.
            cancel_futures: cancel tasks that have not started yet (running ones continue).
        """
        with self._lock:
            self._shutdown = True
            pending = list(self._futures.values())
        if cancel_futures:
            for future in pending:
                if not future.running():
                    future.cancel()
        if wait:
            before_wait()  # from a done-callback: the results waited for still get settled
            concurrent.futures.wait(pending)
        self._backend.shutdown(wait=wait)
        self._settler.stop(wait=wait)


def _settle(future: TaskFuture, *, value: object = None, exc: BaseException | None = None) -> None:
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass  # cancelled concurrently: the cancellation stands
