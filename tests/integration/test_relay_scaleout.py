"""Scale-out on the real broker and a real PostgreSQL: two relay processes serve one broker and
one store at once (competing consumers), and each in turn is SIGKILLed mid-run: no result
lost, none duplicated at the SDK, none mixed up."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpiengine_sdk import TaskFuture
from tests.integration.test_relay_e2e import require_broker
from tests.integration.test_relay_faults import ENGINE, Counted
from tests.support.relay_harness import RelayHarness, wait_for

pytestmark = [pytest.mark.relay, pytest.mark.slow]


@pytest.fixture
def harness(tmp_path: Path, postgres_url: str) -> Iterator[RelayHarness]:
    require_broker()
    with RelayHarness(tmp_path, relay_options={"store": postgres_url}) as h:
        h.start_relay(instance="second")
        yield h


def _consumers(harness: RelayHarness, queue: str) -> int:
    out = harness.admin.broker.run(["list_queues", "-p", harness.vhost, "name", "consumers"])
    counts = dict(line.split("\t") for line in out.splitlines() if "\t" in line)
    return int(counts.get(queue, 0))


def _done(futures: list[TaskFuture]) -> int:
    return sum(f.done() for f in futures)


def test_two_relays_on_postgresql_either_killed_mid_run(harness: RelayHarness) -> None:
    owner = harness.user("owner")
    ep = harness.endpoint("ep", owner, backend_options=ENGINE, heartbeat_period=1.0)
    ep.start()
    first, second = harness.relays
    assert _consumers(harness, "relay.requests") == _consumers(harness, "relay.results") == 2
    run = Counted(ep)
    try:
        futures = run.submit(300)
        wait_for(lambda: _done(futures) >= 100, 120, "100 done")
        harness.kill_relay(signal.SIGKILL, first)
        assert _done(futures) < 300, "the run was over before the kill"
        futures += run.submit(100, first=300)  # the second relay alone
        harness.start_relay(instance="third")
        wait_for(lambda: _done(futures) >= 250, 120, "250 done")
        harness.kill_relay(signal.SIGKILL, second)
        futures += run.submit(100, first=400)  # the third relay alone
        run.check_exactly_once(futures)
    finally:
        run.close()
        ep.stop()
    # One row per task in the shared store, each with its result.
    assert harness.admin.store.task_counts() == {"completed": 500}
