"""Faults on the real broker: nothing lost, nothing duplicated at the SDK.

- the endpoint killed with SIGKILL three times during a 500-task run, restarted each time;
- RabbitMQ restarted (stop_app/start_app) mid-run;
- the relay killed with SIGKILL mid-run and restarted;
- a graceful stop returns unfinished tasks to the queue.

Each run counts the terminal results the RelayBackend hands to the Executor per task id.
"""

from __future__ import annotations

import concurrent.futures
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpiengine_sdk import Executor, ShellFunction, TaskFuture
from mpiengine_sdk.relayclient import RelayBackend
from mpiengine_sdk.wire import ResultMessage
from tests.integration.test_relay_e2e import require_broker
from tests.support.relay_harness import EndpointProcess, Principal, RelayHarness, wait_for

pytestmark = [pytest.mark.relay, pytest.mark.slow]

ENGINE = {"nodes": 4, "cores_per_node": 4, "kill_grace": 0.5}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayHarness]:
    require_broker()
    with RelayHarness(tmp_path_factory.mktemp("faults")) as h:
        yield h


@pytest.fixture(scope="module")
def owner(harness: RelayHarness) -> Principal:
    return harness.user("owner")


class Counted:
    """An Executor whose backend's terminal results are counted per task id."""

    def __init__(self, endpoint: EndpointProcess) -> None:
        self.counts: Counter[str] = Counter()
        self.backend = RelayBackend(endpoint.endpoint_id, config=endpoint.owner.client_config)
        self.executor = Executor(backend=self.backend)
        forward = self.backend._sink
        assert forward is not None

        def count(msg: ResultMessage) -> None:
            if msg.state.terminal:
                self.counts[msg.task_id] += 1
            forward(msg)

        self.backend._sink = count

    def submit(self, n: int, seconds: float = 0.05, first: int = 0) -> list[TaskFuture]:
        return [
            self.executor.submit(ShellFunction(["sh", "-c", f"sleep {seconds}; echo {i}"]))
            for i in range(first, first + n)
        ]

    def check_exactly_once(self, futures: list[TaskFuture], timeout: float = 180) -> None:
        done, pending = concurrent.futures.wait(futures, timeout=timeout)
        assert not pending, f"{len(pending)} of {len(futures)} tasks never got a result"
        assert [f.result().stdout for f in futures] == [f"{i}\n" for i in range(len(futures))]
        assert set(self.counts) == {f.task_id for f in futures}
        twice = [t for t, c in self.counts.items() if c != 1]
        assert not twice, f"{len(twice)} task(s) got more than one result"

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _done(futures: list[TaskFuture]) -> int:
    return sum(f.done() for f in futures)


def _attempts(endpoint: EndpointProcess) -> int:
    """Task sandboxes with more than one attempt: tasks that really ran twice."""
    tasks = endpoint.paths.work / "tasks"
    return sum(1 for d in tasks.iterdir() if (d / "attempt-2").exists()) if tasks.is_dir() else 0


def test_endpoint_killed_three_times(harness: RelayHarness, owner: Principal) -> None:
    ep = harness.endpoint("ep-kill", owner, backend_options=ENGINE, heartbeat_period=1.0)
    ep.start()
    run = Counted(ep)
    try:
        futures = run.submit(500)
        for round_ in range(1, 4):
            wait_for(lambda r=round_: _done(futures) >= 100 * r, 120, f"{100 * round_} done")
            ep.kill(signal.SIGKILL)
            ep.start()
        run.check_exactly_once(futures)
    finally:
        run.close()
        ep.stop()
    assert _attempts(ep) > 0, "no task ran twice: the kills did not hit running tasks"


def test_broker_restart_mid_run(harness: RelayHarness, owner: Principal) -> None:
    ep = harness.endpoint("ep-broker", owner, backend_options=ENGINE, heartbeat_period=1.0)
    ep.start()
    run = Counted(ep)
    try:
        futures = run.submit(300)
        wait_for(lambda: _done(futures) >= 50, 120, "50 done")
        harness.admin.broker.run(["stop_app"])
        time.sleep(1)
        harness.admin.broker.run(["start_app"])
        harness.admin.broker.run(["await_startup"])
        run.check_exactly_once(futures)
    finally:
        run.close()
        ep.stop()


def test_broker_restarted_while_200_tasks_are_submitted(
    harness: RelayHarness, owner: Principal
) -> None:
    """Tasks submitted while the broker is down get their real results: none raises."""
    ep = harness.endpoint("ep-outage", owner, backend_options=ENGINE, heartbeat_period=1.0)
    ep.start()
    run = Counted(ep)
    broker = harness.admin.broker
    try:
        futures = run.submit(50, seconds=0.01)
        broker.run(["stop_app"])
        try:
            futures += run.submit(100, seconds=0.01, first=50)  # the broker is down
        finally:
            broker.run(["start_app"])
            broker.run(["await_startup"])
        futures += run.submit(50, seconds=0.01, first=150)  # the client may still reconnect
        run.check_exactly_once(futures)
    finally:
        run.close()
        ep.stop()


def test_relay_killed_mid_run(harness: RelayHarness, owner: Principal) -> None:
    ep = harness.endpoint("ep-relay", owner, backend_options=ENGINE, heartbeat_period=1.0)
    ep.start()
    run = Counted(ep)
    try:
        futures = run.submit(300)
        wait_for(lambda: _done(futures) >= 50, 120, "50 done")
        harness.kill_relay(signal.SIGKILL)
        more = run.submit(100, first=300)  # queued by the broker while the relay is away
        time.sleep(1)
        harness.start_relay()
        run.check_exactly_once(futures + more)
    finally:
        run.close()
        ep.stop()


def test_graceful_stop_returns_unfinished_tasks(
    harness: RelayHarness, owner: Principal, tmp_path: Path
) -> None:
    ep = harness.endpoint(
        "ep-stop", owner, backend_options=ENGINE, heartbeat_period=1.0, stop_grace=1.0
    )
    ep.start()
    run = Counted(ep)
    try:
        futures = run.submit(40, seconds=2)  # 16 run at once, for 2 s each: longer than grace
        wait_for(lambda: any(f.running() for f in futures), 60, "tasks running")
        started = time.monotonic()
        assert ep.stop() == 0
        assert time.monotonic() - started < 15
        assert not all(f.done() for f in futures)
        ep.start()
        run.check_exactly_once(futures)
    finally:
        run.close()
        ep.stop()
