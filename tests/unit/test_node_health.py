"""The agent's node watcher (agent/health.py) against a fake Slurm behind its run seam, and the
agent reporting failed nodes to a fake endpoint (a real zmq ROUTER)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mpiengine.agent import Agent, AgentOptions
from mpiengine.agent.health import HealthThread, NodeFault, NodeWatcher, failed_state
from mpiengine.agent.protocol import launch_to_dict
from mpiengine.agent.steps import SrunSteps
from tests.unit.test_agent import TOKEN, FakeEndpoint, spec, welcome

NODES = ("n1", "n2", "n3")


class FakeSlurm:
    """squeue, scontrol show hostnames and sinfo for one job, as the test sets them."""

    def __init__(self) -> None:
        self.job_nodes = list(NODES)
        self.states = dict.fromkeys(NODES, "allocated")
        self.reasons: dict[str, str] = {}
        self.failing: set[str] = set()  # commands that exit 1
        self.calls: list[list[str]] = []
        self._lock = threading.Lock()

    def run(self, argv: list[str], timeout: float) -> tuple[int, str]:
        with self._lock:
            self.calls.append(argv)
            if argv[0] in self.failing:
                return 1, ""
            if argv[0] == "squeue":
                assert argv[argv.index("-j") + 1] == "77"
                # Slurm compresses the list; the watcher must expand it with scontrol.
                return 0, f"compressed[{','.join(self.job_nodes)}]\n" if self.job_nodes else ""
            if argv[:3] == ["scontrol", "show", "hostnames"]:
                return 0, "".join(f"{n}\n" for n in argv[3][len("compressed[") : -1].split(","))
            if argv[0] == "sinfo":
                asked = argv[argv.index("-n") + 1].split(",")
                return 0, "".join(
                    f"{n}|{self.states[n]}|{self.reasons.get(n, 'none')}\n" for n in asked
                )
            raise AssertionError(f"unexpected command {argv}")

    def count(self, command: str) -> int:
        return sum(1 for c in self.calls if c[0] == command)


@pytest.fixture
def slurm() -> FakeSlurm:
    return FakeSlurm()


def watcher(slurm: FakeSlurm, job_id: str | None = "77") -> NodeWatcher:
    return NodeWatcher(job_id, NODES, run=slurm.run)


def test_healthy_nodes_give_nothing_and_an_unchanged_job_list_is_not_expanded_again(
    slurm,
) -> None:
    w = watcher(slurm)
    assert w.check() == [] and w.check() == []
    assert slurm.count("squeue") == 2 and slurm.count("sinfo") == 2
    assert slurm.count("scontrol") == 1


def test_a_node_slurm_took_out_of_the_job_is_failed_even_when_it_looks_idle(slurm) -> None:
    # What --no-kill does on a node failure: the job keeps running without the node, and the
    # node itself may be back to service (idle) at once.
    w = watcher(slurm)
    assert w.check() == []
    slurm.job_nodes = ["n1", "n3"]
    slurm.states["n2"] = "idle"
    [fault] = w.check()
    assert (fault.node, fault.state) == ("n2", "removed from job")
    assert "77" in fault.reason


@pytest.mark.parametrize(
    ("state", "reason", "described"),
    [
        ("down", "Not responding", "down: Not responding"),
        ("down*", "test", "down*: test"),
        ("drained", "bad disk", "drained: bad disk"),
        ("draining", "none", "draining"),
        ("failing", "ecc", "failing: ecc"),
        ("idle+drain", "x", "idle+drain: x"),
    ],
)
def test_a_node_marked_failed_is_reported_with_its_state_and_reason(
    slurm, state, reason, described
) -> None:
    slurm.states["n3"], slurm.reasons["n3"] = state, reason
    [fault] = watcher(slurm).check()
    assert fault.node == "n3" and fault.describe() == described


def test_each_node_is_reported_once_in_block_order(slurm) -> None:
    w = watcher(slurm)
    slurm.states.update(n3="down", n1="drained")
    assert [f.node for f in w.check()] == ["n1", "n3"]
    slurm.job_nodes = ["n2"]
    assert [f.node for f in w.check()] == []  # n1 and n3 are known already
    slurm.states["n2"] = "fail"
    assert [f.node for f in w.check()] == ["n2"]


@pytest.mark.parametrize("broken", ["squeue", "sinfo", "scontrol"])
def test_a_failing_command_declares_no_node_failed(slurm, broken) -> None:
    slurm.failing.add(broken)
    slurm.job_nodes = ["n1", "n2"]  # n3 is out of the job
    slurm.states["n1"] = "down"
    found = {f.node for f in watcher(slurm).check()}
    # Only what a working command showed counts.
    assert found == ({"n3"} if broken == "sinfo" else {"n1"})


def test_a_job_slurm_no_longer_lists_fails_no_node(slurm) -> None:
    slurm.job_nodes = []
    assert watcher(slurm).check() == []


def test_outside_slurm_the_watcher_is_off(slurm) -> None:
    w = watcher(slurm, job_id=None)
    assert not w.enabled and w.check() == [] and w.faults_since(time.monotonic()) == []
    assert slurm.calls == []


def test_faults_since_checks_only_when_no_check_started_after_the_given_time(slurm) -> None:
    clock = [10.0]
    w = NodeWatcher("77", NODES, run=slurm.run, clock=lambda: clock[0])
    slurm.states["n2"] = "down"
    assert [f.node for f in w.faults_since(9.0)] == ["n2"]  # no check yet: one runs
    assert slurm.count("sinfo") == 1
    assert [f.node for f in w.faults_since(9.5)] == ["n2"]  # that check started at 10
    assert slurm.count("sinfo") == 1
    clock[0] = 12.0
    assert [f.node for f in w.faults_since(11.0)] == ["n2"]  # known faults come again
    assert slurm.count("sinfo") == 2


@pytest.mark.parametrize(
    ("state", "failed"),
    [
        ("idle", False),
        ("allocated", False),
        ("mixed", False),
        ("idle*", False),  # not responding yet: Slurm marks it down when it gives up
        ("down", True),
        ("DOWN*", True),
        ("drained~", True),
        ("idle+drain", True),
        ("failing", True),
        ("maint", False),
    ],
)
def test_failed_state(state, failed) -> None:
    assert failed_state(state) is failed


def test_the_health_thread_reports_new_faults_and_stops(slurm) -> None:
    reported: list[list[NodeFault]] = []
    thread = HealthThread(watcher(slurm), 0.02, reported.append)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while slurm.count("sinfo") < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert reported == []
        slurm.states["n1"] = "down"
        while not reported:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert [f.node for f in reported[0]] == ["n1"]
    finally:
        thread.stop()
    calls = len(slurm.calls)
    time.sleep(0.1)  # several intervals: a stopped thread asks nothing
    assert len(slurm.calls) == calls


# -- the agent ---------------------------------------------------------------------------------


@pytest.fixture
def endpoint() -> Any:
    ep = FakeEndpoint()
    yield ep
    ep.close()


def start(ep: FakeEndpoint, slurm: FakeSlurm, interval: float) -> threading.Thread:
    options = AgentOptions(
        connect=f"tcp://127.0.0.1:{ep.port}",
        block_id="blk-test",
        token=TOKEN,
        heartbeat_period=0.2,
        kill_grace=0.5,
        node_check_interval=interval,
    )
    env = {"PATH": os.environ["PATH"]}
    agent = Agent(
        options,
        env=env,
        nodes=NODES,
        steps=SrunSteps(None),
        watcher=NodeWatcher("77", NODES, run=slurm.run),
    )
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    return thread


def messages_until(ep: FakeEndpoint, kind: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every message up to and including the first of ``kind``, pinging while waiting."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ep.sock.poll(100):
            _, data = ep.sock.recv_multipart()
            seen.append(json.loads(data))
            if seen[-1]["t"] == kind:
                return seen
        ep.send("ping")
    raise AssertionError(f"no {kind!r} within {timeout} s; got {[m['t'] for m in seen]}")


def test_the_agent_reports_a_failed_node_once_welcomed(endpoint, slurm) -> None:
    thread = start(endpoint, slurm, interval=0.05)
    welcome(endpoint)
    slurm.job_nodes = ["n1", "n2"]
    [msg] = [m for m in messages_until(endpoint, "nodes") if m["t"] == "nodes"]
    assert msg["failed"] == [
        {"node": "n3", "state": "removed from job", "reason": "Slurm took it out of job 77"}
    ]
    endpoint.send("shutdown")
    thread.join(10)
    assert not thread.is_alive()


def test_a_task_that_ends_badly_is_reported_after_the_node_that_killed_it(
    endpoint, slurm, tmp_path: Path
) -> None:
    # The periodic check is far off: only the check made for the failed task can see n2.
    thread = start(endpoint, slurm, interval=3600)
    welcome(endpoint)
    slurm.states["n2"] = "down"
    endpoint.send("launch", spec=launch_to_dict(spec(tmp_path, "t", "exit 3")))
    kinds = [m["t"] for m in messages_until(endpoint, "done") if m["t"] in ("nodes", "done")]
    assert kinds == ["nodes", "done"]
    # A task that ends well costs no check.
    before = slurm.count("sinfo")
    endpoint.send("launch", spec=launch_to_dict(spec(tmp_path, "ok", "true")))
    messages_until(endpoint, "done")
    assert slurm.count("sinfo") == before
    endpoint.send("shutdown")
    thread.join(10)
