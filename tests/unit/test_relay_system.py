"""The relay, an endpoint service and the SDK client in one process, on the in-memory broker.

Fast checks of the protocol's guarantees: results stream back, duplicates never reach the
user, a broker restart loses nothing, a graceful stop returns unfinished tasks, malformed and
hostile messages are dead-lettered, results expire with a clear error.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from mpiengine.relay.config import RelayConfig
from mpiengine.relay.service import RelayService
from mpiengine.service.config import EndpointPaths, ServiceConfig
from mpiengine.service.worker import EndpointService
from mpiengine_sdk import (
    AuthorizationError,
    Executor,
    RelayError,
    ShellFunction,
    SubmitError,
    TaskCancelled,
    TaskFuture,
    TaskState,
)
from mpiengine_sdk.backend import ResultSink
from mpiengine_sdk.relayclient import RelayBackend
from mpiengine_sdk.relayclient.fake import FakeBroker
from mpiengine_sdk.relayclient.protocol import (
    EXCHANGE_IN,
    QUEUE_DEAD,
    QUEUE_REQUESTS,
    decode_frame,
    encode_frame,
    session_queue,
    task_queue,
)
from mpiengine_sdk.wire import ResultMessage, TaskMessage, encode_result

TRUE = ShellFunction(["true"])


class ManualBackend:
    """An engine whose tasks finish when the test says so."""

    def __init__(self) -> None:
        self.sink: ResultSink | None = None
        self.started: list[str] = []
        self.lock = threading.Lock()

    def start(self, sink: ResultSink) -> None:
        self.sink = sink

    def submit(self, tasks: Sequence[TaskMessage]) -> None:
        assert self.sink is not None
        for task in tasks:
            with self.lock:
                self.started.append(task.task_id)
            self.sink(ResultMessage(task.task_id, TaskState.RUNNING, nodes=("n0",)))

    def finish(self, task_id: str, stdout: str = "") -> None:
        assert self.sink is not None
        self.sink(ResultMessage(task_id, TaskState.COMPLETED, returncode=0, stdout=stdout))

    def cancel(self, task_id: str) -> None:
        assert self.sink is not None
        self.sink(ResultMessage(task_id, TaskState.CANCELLED, error_type="TaskCancelled"))

    def shutdown(self, wait: bool = True) -> None:
        pass


class System:
    """Relay + endpoint(s) + clients on one FakeBroker, each on its own thread."""

    def __init__(self, root: Path, **relay_options: object) -> None:
        self.root = root
        self.broker = FakeBroker()
        config = RelayConfig(store=str(root / "relay.db"), **relay_options)  # type: ignore[arg-type]
        self.config = config
        self.relay = RelayService(config, transport=self.broker.transport("admin"))
        for user in ("alice", "bob"):
            self.relay.store.add_user(user)
        self.endpoint_id = self.relay.store.add_endpoint("ep", "alice")[0].id
        self.threads: list[threading.Thread] = []
        self.services: list[EndpointService] = []
        self.executors: list[Executor] = []
        ready = threading.Event()
        self._spawn(lambda: self.relay.serve(on_ready=ready.set))
        assert ready.wait(5)

    def _spawn(self, target: object) -> threading.Thread:
        thread = threading.Thread(target=target, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self.threads.append(thread)
        return thread

    def endpoint(self, backend: object = None, **settings: object) -> EndpointService:
        config = ServiceConfig(
            user="alice",
            endpoint_id=self.endpoint_id,
            backend="null",
            heartbeat_period=0.1,
            **settings,  # type: ignore[arg-type]
        )
        paths = EndpointPaths("ep", self.root / "ep")
        service = EndpointService(
            config,
            paths,
            transport=self.broker.transport("alice"),
            backend=backend,  # type: ignore[arg-type]
        )
        service.thread = self._spawn(service.run)  # type: ignore[attr-defined]
        self.services.append(service)
        return service

    def restart_relay(self) -> None:
        """Stop the relay and start another on the same store."""
        self.relay.stop()
        self.threads[0].join(10)
        self.relay = RelayService(self.config, transport=self.broker.transport("admin"))
        ready = threading.Event()
        self.threads[0] = self._spawn(lambda: self.relay.serve(on_ready=ready.set))
        assert ready.wait(5)

    def executor(self, user: str = "alice", **options: Any) -> Executor:
        backend = RelayBackend(self.endpoint_id, transport=self.broker.transport(user), **options)
        ex = Executor(backend=backend)
        self.executors.append(ex)
        return ex

    def close(self) -> None:
        for ex in self.executors:
            ex.shutdown(wait=False, cancel_futures=True)
        for service in self.services:
            service.request_stop(0)
        self.relay.stop()
        for thread in self.threads:
            thread.join(10)


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    s = System(tmp_path)
    yield s
    s.close()


def _counting(ex: Executor) -> Counter[str]:
    backend = ex.backend
    assert isinstance(backend, RelayBackend)
    counts: Counter[str] = Counter()
    forward = backend._sink
    assert forward is not None

    def sink(msg: ResultMessage) -> None:
        if msg.state.terminal:
            counts[msg.task_id] += 1
        forward(msg)

    backend._sink = sink
    return counts


def test_results_stream_back(system: System) -> None:
    system.endpoint()
    ex = system.executor()
    futures = [ex.submit(ShellFunction(["echo", str(i)])) for i in range(500)]
    done, pending = concurrent.futures.wait(futures, timeout=30)
    assert not pending and all(f.result().returncode == 0 for f in futures)
    assert ex.submit(pow, 2, 3).result(10) is None  # the null engine returns None


def test_running_then_cancel_reaches_the_engine(system: System) -> None:
    engine = ManualBackend()
    system.endpoint(engine)
    ex = system.executor()
    future = ex.submit(TRUE)
    deadline = time.monotonic() + 10
    while not future.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert future.running()
    ex.backend.cancel(future.task_id)  # through the relay's control queue
    with pytest.raises(TaskCancelled):
        future.result(10)


def test_duplicates_never_reach_the_user(system: System) -> None:
    engine = ManualBackend()
    service = system.endpoint(engine)
    ex = system.executor()
    counts = _counting(ex)
    future = ex.submit(TRUE)
    deadline = time.monotonic() + 10
    while future.task_id not in engine.started and time.monotonic() < deadline:
        time.sleep(0.01)
    settled: Counter[str] = Counter()  # done-callbacks run, per future
    ran = {"submitted": threading.Event(), "attached": threading.Event()}

    def note(which: str) -> Callable[[object], None]:
        return lambda _: (settled.update([which]), ran[which].set())

    future.add_done_callback(note("submitted"))
    engine.finish(future.task_id, "one")
    engine.finish(future.task_id, "two")  # an engine (or redelivery) reporting twice
    assert future.result(10).stdout == "one" and ran["submitted"].wait(10)
    time.sleep(0.3)  # a window for a late duplicate to show (absence cannot be awaited)
    assert counts[future.task_id] == 1 and settled == {"submitted": 1}
    # The relay re-sends a stored result on fetch: once more, for the attached future only,
    # which is settled once; the first future is not settled again.
    attached = ex.attach([future.task_id])[0]
    attached.add_done_callback(note("attached"))
    assert attached.result(10).stdout == "one" and ran["attached"].wait(10)
    time.sleep(0.3)
    assert counts[future.task_id] == 2
    assert settled == {"submitted": 1, "attached": 1}
    assert future.result().stdout == "one"
    assert service.status()["tasks_completed"] == 1


def test_a_broker_restart_loses_nothing(system: System) -> None:
    system.endpoint()
    ex = system.executor()
    counts = _counting(ex)
    futures = [ex.submit(TRUE) for _ in range(300)]
    system.broker.restart()
    futures += [ex.submit(TRUE) for _ in range(300)]
    done, pending = concurrent.futures.wait(futures, timeout=60)
    assert not pending
    assert sorted(counts) == sorted(f.task_id for f in futures)
    assert set(counts.values()) == {1}


def _wait(condition: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.01)


def test_tasks_submitted_while_the_broker_is_down_get_their_results(system: System) -> None:
    system.endpoint()
    ex = system.executor()
    counts = _counting(ex)
    futures = [ex.submit(ShellFunction(["echo", str(i)])) for i in range(50)]
    with system.broker.lock:
        system.broker.down = True
        system.broker.restart()
    futures += [ex.submit(ShellFunction(["echo", str(i)])) for i in range(50, 150)]
    _wait(lambda: ex.backend._channel is None, "the client saw the broker go")  # type: ignore[attr-defined]
    system.broker.down = False
    done, pending = concurrent.futures.wait(futures, timeout=60)
    assert not pending
    assert [f.exception() for f in futures] == [None] * 150  # no "unknown task" among them
    assert set(counts.values()) == {1} and len(counts) == 150


def _hold_a_submit(system: System, ex: Executor) -> tuple[TaskFuture, Any]:
    """A task whose submit the broker confirmed but no relay has seen (as if another relay
    process held it), asked for after a reconnect."""
    ex.submit(TRUE).result(10)
    system.relay.stop()
    system.threads[0].join(10)
    future = ex.submit(TRUE)
    requests = system.broker.queues[QUEUE_REQUESTS]
    _wait(lambda: len(requests.ready) == 1, "the submit queued")
    with system.broker.lock:
        held = requests.ready.popleft()
    backend = ex.backend
    assert isinstance(backend, RelayBackend)
    answered = backend._on_asked
    unknown: list[str] = []

    def spy(ids: list[str]) -> None:
        unknown.extend(ids)
        answered(ids)

    backend._on_asked = spy  # type: ignore[method-assign]
    system.broker.restart()  # the client reconnects, and asks for the task
    system.restart_relay()
    _wait(lambda: unknown.count(future.task_id) >= 3, "the relay answered unknown 3 times")
    return future, held


def test_an_unknown_task_submitted_here_is_asked_for_again(system: System) -> None:
    system.endpoint()
    ex = system.executor()
    future, held = _hold_a_submit(system, ex)
    assert not future.done()
    with system.broker.lock:  # the other relay hands the submit on
        system.broker.queues[QUEUE_REQUESTS].ready.append(held)
        system.broker.changed.notify_all()
    assert future.result(20).returncode == 0


def test_a_task_unknown_for_too_long_fails_with_a_relay_error(system: System) -> None:
    system.endpoint()
    ex = system.executor(unknown_retry_for=1.0)
    future, _held = _hold_a_submit(system, ex)
    with pytest.raises(RelayError, match="does not know task .* submit it again") as info:
        future.result(20)
    assert not isinstance(info.value, AuthorizationError)


def test_graceful_stop_returns_unfinished_tasks(system: System) -> None:
    engine = ManualBackend()
    service = system.endpoint(engine, stop_grace=0.2)
    ex = system.executor()
    futures = [ex.submit(TRUE) for _ in range(5)]
    deadline = time.monotonic() + 10
    while len(engine.started) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.finish(futures[0].task_id, "done before the stop")
    assert futures[0].result(10).stdout == "done before the stop"
    service.request_stop()
    service.thread.join(10)  # type: ignore[attr-defined]
    assert not any(f.done() for f in futures[1:])
    queue = task_queue("alice", system.endpoint_id)
    # Every unfinished task is back in the queue (in however many batches the SDK sent).
    returned = [
        json.loads(line)["task_id"]
        for body in system.broker.ready(queue)
        for line in body.splitlines()[1:]
    ]
    assert len(returned) == len(set(returned)), "a task went back to the queue twice"
    # The first task may come back with its batch (the new endpoint must not run it again).
    assert {f.task_id for f in futures[1:]} <= set(returned) <= {f.task_id for f in futures}
    system.endpoint()  # a new endpoint (null engine) finishes the rest, not the first again
    assert all(f.result(10).returncode == 0 for f in futures[1:])
    assert futures[0].result().stdout == "done before the stop"


def test_cross_user_access_is_refused(system: System) -> None:
    system.endpoint()
    with pytest.raises(AuthorizationError, match="does not allow user 'bob'"):
        system.executor("bob")
    system.relay.store.allow(system.endpoint_id, "bob")
    alice, bob = system.executor("alice"), system.executor("bob")
    mine = alice.submit(TRUE, task_id="alices-task")
    mine.result(10)
    (theirs,) = bob.attach(["alices-task"])
    with pytest.raises(AuthorizationError, match="another user's"):
        theirs.result(10)
    with pytest.raises(SubmitError, match="already taken"):
        bob.submit(TRUE, task_id="alices-task").result(10)
    with pytest.raises(AuthorizationError):
        RelayBackend("no-such-endpoint", transport=system.broker.transport("alice")).start(
            lambda m: None
        )


def test_hostile_and_malformed_messages_are_dead_lettered(system: System) -> None:
    service = system.endpoint()
    ex = system.executor()
    ex.submit(TRUE).result(10)
    broker = system.broker
    reply = session_queue("alice", "raw")
    with broker.lock:
        channel = broker.transport("alice").connect()
        channel.declare_queue(reply, durable=False)
    hello = encode_frame({"type": "hello", "endpoint_id": system.endpoint_id, "cid": "c"})
    broker.inject(EXCHANGE_IN, "request", hello, reply_to=reply)  # no user_id
    forged = encode_frame(
        {"type": "results", "endpoint_id": system.endpoint_id},
        [encode_result(ResultMessage("zz", TaskState.COMPLETED))],
    )
    broker.inject(EXCHANGE_IN, "result", forged, user_id="bob")  # bob does not own it
    broker.inject(EXCHANGE_IN, "request", b"\x00junk", user_id="alice")
    broker.inject(EXCHANGE_IN, "heartbeat", b"{}", user_id="alice")
    broker.inject("", task_queue("alice", system.endpoint_id), b"{broken")
    broker.inject("", ex.backend._queue, b"junk for the client")  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while len(broker.ready(QUEUE_DEAD)) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(broker.ready(QUEUE_DEAD)) == 5
    answer = decode_frame(broker.ready(reply)[0]).header
    assert answer["ok"] is False and answer["error"]["type"] == "AuthenticationError"
    assert ex.submit(TRUE).result(10).returncode == 0  # everybody still serves
    assert service.status()["state"] == "running"


def test_unfetched_results_expire_with_a_clear_error(tmp_path: Path) -> None:
    s = System(tmp_path, result_max_age=0.2, sweep_interval=0.05)
    try:
        engine = ManualBackend()
        s.endpoint(engine)
        first = s.executor()
        task_id = first.submit(TRUE).task_id
        deadline = time.monotonic() + 10
        while task_id not in engine.started and time.monotonic() < deadline:
            time.sleep(0.01)
        first.shutdown(wait=False)  # fire and forget: nobody fetches the result
        engine.finish(task_id)
        time.sleep(1.0)  # > result_max_age, with sweeps every 50 ms
        (future,) = s.executor().attach([task_id])
        with pytest.raises(RelayError, match="expired: it was not fetched within"):
            future.result(10)
    finally:
        s.close()
