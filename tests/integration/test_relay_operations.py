"""Day-to-day features through the real relay: dependent tasks, the timeline, progress."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from mpiengine_sdk import DependencyFailed, Executor, ShellFunction, progress
from tests.integration.test_relay_e2e import require_broker
from tests.support.relay_harness import EndpointProcess, Principal, RelayHarness

pytestmark = pytest.mark.relay


def add(a, b):
    return a + b


def fail():
    raise RuntimeError("upstream broke")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Executor, EndpointProcess]]:
    require_broker()
    with RelayHarness(tmp_path_factory.mktemp("relay-ops")) as harness:
        owner: Principal = harness.user("ops")
        endpoint = harness.endpoint("ep", owner, backend_options={"nodes": 2})
        endpoint.start()
        try:
            with Executor(endpoint_id=endpoint.endpoint_id, config=owner.client_config) as ex:
                yield ex, endpoint
        finally:
            endpoint.stop()


def test_dependent_tasks_through_the_relay(remote):
    ex, _ = remote
    three = ex.submit(add, 1, 2)
    echoed = ex.submit(ShellFunction("echo {n}"), n=ex.submit(add, three, 4))
    assert echoed.result(timeout=120).stdout == "7\n"
    broken = ex.submit(fail)
    after = ex.submit(add, broken, 1)
    with pytest.raises(DependencyFailed) as info:
        after.result(timeout=120)
    assert info.value.dependency == broken.task_id
    assert "(RuntimeError: upstream broke)" in str(info.value)


def test_timeline_and_progress_through_the_relay(remote):
    ex, endpoint = remote
    futures = [ex.submit(ShellFunction("sleep 0.2; echo {i}"), i=i) for i in range(4)]
    screen = Terminal()
    assert len(list(progress(futures, desc="remote", file=screen))) == 4
    assert "remote: 4/4" in screen.getvalue()
    assert "done 4 failed 0" in screen.getvalue()
    records = {r.task_id: r for r in ex.timeline()}
    for future in futures:
        record = records[future.task_id]
        assert record.state == "completed"
        assert record.nodes and set(record.nodes) <= {"vnode0", "vnode1"}
        assert record.block == "local"
        assert record.started is not None and record.ended is not None
        assert record.queued <= record.started + 1.0 and record.started <= record.ended
    # The endpoint service kept the same records in its work folder.
    from mpiengine.timeline_store import read_timeline

    kept = {r.task_id for r in read_timeline(endpoint.paths.work)}
    assert {f.task_id for f in futures} <= kept
