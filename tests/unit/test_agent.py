"""The block agent against a real zmq ROUTER standing in for the endpoint, with real tasks."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from mpiengine.agent import Agent, AgentOptions
from mpiengine.agent.protocol import launch_to_dict
from mpiengine.agent.steps import SrunSteps
from mpiengine.runner.launch import LaunchSpec
from mpiengine.runner.sandbox import create_sandbox

TOKEN = "s3cret"


class FakeEndpoint:
    """A ROUTER socket that talks to one agent as the endpoint would."""

    def __init__(self) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.identity = b""

    def recv(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next message of this type (others are skipped), pinging while waiting."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(100):
                ident, data = self.sock.recv_multipart()
                self.identity = ident
                msg = json.loads(data)
                assert msg["token"] == TOKEN
                if msg["t"] == kind:
                    return msg
            if self.identity:
                self.send("ping")
        raise AssertionError(f"no {kind!r} message within {timeout} s")

    def send(self, kind: str, **fields: Any) -> None:
        self.sock.send_multipart([self.identity, json.dumps({"t": kind, **fields}).encode()])

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


@pytest.fixture
def endpoint() -> Iterator[FakeEndpoint]:
    ep = FakeEndpoint()
    yield ep
    ep.close()


def start_agent(ep: FakeEndpoint, **opts: Any) -> tuple[Agent, threading.Thread, list[str]]:
    options = AgentOptions(
        connect=f"tcp://127.0.0.1:{ep.port}",
        block_id="blk-test",
        token=TOKEN,
        heartbeat_period=opts.pop("heartbeat_period", 0.2),
        grace=opts.pop("grace", 30.0),
        kill_grace=0.5,
        **opts,
    )
    env = {"PATH": os.environ["PATH"], "JOB_VAR": "from-the-job", "MPIENGINE_TASK_ID": "stale"}
    agent = Agent(options, env=env, nodes=("n1", "n2"), steps=SrunSteps(None))
    reasons: list[str] = []
    thread = threading.Thread(target=lambda: reasons.append(agent.run()), daemon=True)
    thread.start()
    return agent, thread, reasons


def spec(tmp_path: Path, task_id: str, script: str, walltime: float | None = None) -> LaunchSpec:
    return LaunchSpec(
        task_id=task_id,
        argv=("/bin/bash", "-c", script),
        env={"MPIENGINE_TASK_ID": task_id, "TASK_VAR": "mine"},
        sandbox=create_sandbox(tmp_path, task_id),
        walltime=walltime,
        files={"input.txt": b"hello file"},
    )


def welcome(ep: FakeEndpoint) -> dict[str, Any]:
    hello = ep.recv("hello")
    ep.send("welcome")
    return hello


def test_hello_then_a_task_runs_with_the_jobs_env_under_its_own(endpoint, tmp_path) -> None:
    agent, thread, reasons = start_agent(endpoint)
    hello = welcome(endpoint)
    assert hello["nodes"] == ["n1", "n2"] and hello["pid"] == os.getpid()
    script = 'echo "$JOB_VAR $TASK_VAR $MPIENGINE_TASK_ID"; cat input.txt'
    endpoint.send("launch", spec=launch_to_dict(spec(tmp_path, "t1", script)))
    done = endpoint.recv("done")["c"]
    assert done["task_id"] == "t1" and done["returncode"] == 0
    assert done["stdout"] == "from-the-job mine t1\nhello file"
    endpoint.recv("hb")  # heartbeats flow once welcomed
    endpoint.send("shutdown")
    assert endpoint.recv("bye")["reason"] == "the endpoint released the block"
    thread.join(10)
    assert not thread.is_alive() and reasons == ["the endpoint released the block"]


def test_walltime_kill_reports_124(endpoint, tmp_path) -> None:
    agent, thread, _ = start_agent(endpoint)
    welcome(endpoint)
    endpoint.send("launch", spec=launch_to_dict(spec(tmp_path, "slow", "sleep 30", walltime=0.5)))
    done = endpoint.recv("done")["c"]
    assert done["timed_out"] and done["returncode"] == 124
    endpoint.send("shutdown")
    thread.join(10)


def test_launches_beyond_the_limit_wait_their_turn_and_a_waiting_kill_never_starts(
    endpoint, tmp_path
) -> None:
    agent, thread, _ = start_agent(endpoint, max_launches=1)
    welcome(endpoint)
    for name in ("a", "b", "c"):
        endpoint.send("launch", spec=launch_to_dict(spec(tmp_path, name, "sleep 0.4")))
    endpoint.send("kill", task_id="c")
    results = {}
    while len(results) < 3:
        done = endpoint.recv("done")["c"]
        results[done["task_id"]] = done
    assert results["c"]["cancelled"] and results["c"]["started"] is None
    a, b = results["a"], results["b"]
    assert a["returncode"] == 0 and b["returncode"] == 0
    assert b["started"] >= a["ended"] - 0.05  # one launcher at a time
    endpoint.send("shutdown")
    thread.join(10)


def test_without_the_endpoint_the_agent_kills_its_tasks_and_exits_within_grace(
    endpoint, tmp_path
) -> None:
    agent, thread, reasons = start_agent(endpoint, grace=1.5)
    welcome(endpoint)
    pidfile = tmp_path / "pid"
    endpoint.send(
        "launch", spec=launch_to_dict(spec(tmp_path, "long", f"echo $$ > {pidfile}; sleep 60"))
    )
    deadline = time.monotonic() + 5
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    silent_from = time.monotonic()  # from now on nobody pings the agent
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - silent_from < 1.5 + 2.0  # the grace, plus the kill grace
    assert "no word from the endpoint" in reasons[0]
    assert (
        not os.path.exists(f"/proc/{pid}")
        or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )


def test_the_agent_stops_on_request_killing_running_tasks(endpoint, tmp_path) -> None:
    agent, thread, reasons = start_agent(endpoint)
    welcome(endpoint)
    endpoint.send("launch", spec=launch_to_dict(spec(tmp_path, "long", "sleep 60")))
    time.sleep(0.3)
    agent.stop("signal SIGTERM (job cancelled or out of walltime)")  # what the handler does
    # bye first: the endpoint loses the block (retrying its tasks) before it sees them killed
    assert "SIGTERM" in endpoint.recv("bye")["reason"]
    done = endpoint.recv("done")["c"]
    assert done["task_id"] == "long" and done["cancelled"]
    thread.join(10)
    assert reasons and "SIGTERM" in reasons[0]


def test_a_duplicate_launch_is_refused_not_run_twice(endpoint, tmp_path) -> None:
    agent, thread, _ = start_agent(endpoint)
    welcome(endpoint)
    s = launch_to_dict(spec(tmp_path, "dup", "sleep 0.5"))
    endpoint.send("launch", spec=s)
    endpoint.send("launch", spec=s)
    first = endpoint.recv("done")["c"]
    assert "already running" in first["error"]
    second = endpoint.recv("done")["c"]
    assert second["returncode"] == 0
    endpoint.send("shutdown")
    thread.join(10)
