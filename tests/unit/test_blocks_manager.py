"""The block manager and BatchEndpoint against a fake batch system that runs real agents.

``FakeBatch`` is a BlockProvider: each "job" is the agent command run by bash in its own
session on this host (as Parsl's LocalProvider does), so blocks connect, heartbeat and run real
tasks; the fake can refuse submits, fail status queries, and cancel or freeze jobs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from mpiengine.blocks.provider import JobView, ProviderFailure
from mpiengine.slurm_endpoint import BatchEndpoint
from mpiengine_sdk import BlockLost, Executor, ShellFunction, TaskTooLarge


class FakeBatch:
    """A BlockProvider whose jobs are local process groups running the agent."""

    label = "fake"

    def __init__(self) -> None:
        self.jobs: dict[str, subprocess.Popen[bytes]] = {}
        self.refuse_submits = 0
        self.fail_status = False
        self.submits = 0
        self.most_alive = 0
        self.cancelled: list[str] = []
        self._lock = threading.Lock()

    def alive(self) -> list[str]:
        return [j for j, p in self.jobs.items() if p.poll() is None]

    def submit(self, command: str, script_dir: Path, job_name: str) -> str:
        with self._lock:
            self.submits += 1
            if self.refuse_submits:
                self.refuse_submits -= 1
                raise ProviderFailure(
                    "submit", "sbatch refused", "sbatch job.sh", 1, "sbatch: error: QOSMaxJobs"
                )
            script = script_dir / f"{job_name}.sh"
            script.write_text(f"export MPIENGINE_BLOCK_START=$(date +%s)\n{command}\n")
            with open(script_dir / f"{job_name}.out", "wb") as out:
                proc = subprocess.Popen(
                    ["/bin/bash", str(script)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.jobs[str(proc.pid)] = proc
            self.most_alive = max(self.most_alive, len(self.alive()))
            return str(proc.pid)

    def status(self, job_ids: Sequence[str]) -> dict[str, JobView]:
        if self.fail_status:
            raise ProviderFailure("status", "squeue failed", "squeue", 1, "Unable to contact")
        return {
            j: JobView("RUNNING" if self.jobs[j].poll() is None else "COMPLETED") for j in job_ids
        }

    def cancel(self, job_ids: Sequence[str]) -> None:
        for job in job_ids:
            self.cancelled.append(job)
            self.signal(job, signal.SIGTERM)
            self.signal(job, signal.SIGCONT)

    def signal(self, job: str, sig: int) -> None:
        try:
            os.killpg(int(job), sig)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        for job, proc in self.jobs.items():
            if proc.poll() is None:
                self.signal(job, signal.SIGKILL)
            proc.wait(10)


CONFIG: dict[str, Any] = {
    "provider": "local",
    "cores_per_node": 2,
    "max_blocks": 1,
    "heartbeat_period": 0.2,
    "heartbeat_threshold": 1.5,
    "agent_grace": 3,
    "poll_interval": 0.3,
    "kill_grace": 0.3,
    "max_backoff": 0.5,
    "max_idle_time": 600,
}


@pytest.fixture
def batch() -> Iterator[FakeBatch]:
    fake = FakeBatch()
    yield fake
    fake.close()


@pytest.fixture
def make(
    batch: FakeBatch, tmp_path: Path
) -> Iterator[Callable[..., tuple[BatchEndpoint, Executor]]]:
    made: list[Executor] = []

    def build(**extra: Any) -> tuple[BatchEndpoint, Executor]:
        ep = BatchEndpoint(
            CONFIG | extra, workdir=tmp_path / "ep", provider=batch, tick_interval=0.1
        )
        ex = Executor(backend=ep)
        made.append(ex)
        return ep, ex

    yield build
    for ex in made:
        ex.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + 10
    while batch.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not batch.alive(), "a job outlived its endpoint"


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_a_block_is_requested_on_demand_and_keeps_its_files(make, tmp_path) -> None:
    ep, ex = make()
    result = ex.submit(ShellFunction("echo $MPIENGINE_BLOCK_ID")).result(30)
    [block] = ep.blocks()
    assert result.stdout.strip() == block.block_id
    assert (block.directory / "token").stat().st_mode & 0o777 == 0o600
    assert "connecting to tcp://127.0.0.1:" in (block.directory / "agent.log").read_text()
    assert list(block.directory.glob("*.sh")), "the submit script is kept"
    status = ep.status()
    assert status.blocks == 1 and status.completed == 1 and status.last_error == ""


def test_a_task_larger_than_a_block_is_refused_before_any_block_exists(make, batch) -> None:
    ep, ex = make()
    with pytest.raises(TaskTooLarge):
        ex.submit(ShellFunction("true"), resource_spec={"num_nodes": 2})
    assert batch.submits == 0


def test_refused_submits_are_reported_retried_with_backoff_and_lose_no_task(make, batch) -> None:
    batch.refuse_submits = 2
    ep, ex = make()
    future = ex.submit(ShellFunction("echo ok"))
    wait_for(lambda: "QOSMaxJobs" in ep.status().last_error)
    assert "provider submit failed" in ep.status().last_error
    assert future.result(30).stdout == "ok\n"
    assert batch.submits == 3


def test_a_failing_status_query_is_reported_and_tasks_go_on(make, batch) -> None:
    ep, ex = make()
    ex.submit(ShellFunction("true")).result(30)
    batch.fail_status = True
    wait_for(lambda: "Unable to contact" in ep.status().last_error)
    assert ex.submit(ShellFunction("echo still")).result(30).stdout == "still\n"


def test_a_cancelled_job_retries_within_budget_fails_the_rest_and_is_replaced(
    make, batch, tmp_path
) -> None:
    ep, ex = make(cores_per_node=4)
    marker = tmp_path / "started"
    retried = ex.submit(
        ShellFunction(f"if [ -e {marker} ]; then echo again; else touch {marker}; sleep 60; fi"),
        resource_spec={"retries": 1},
    )
    doomed = ex.submit(ShellFunction("sleep 60"))
    wait_for(lambda: marker.exists() and doomed.running())
    [old] = ep.blocks()
    batch.cancel([old.job_id])  # as scancel: the agent gets SIGTERM
    with pytest.raises(BlockLost) as info:
        doomed.result(30)
    assert (info.value.block_id, info.value.job_id) == (old.block_id, old.job_id)
    assert info.value.nodes == old.nodes
    assert retried.result(30).stdout == "again\n"
    [new] = ep.blocks()
    assert new.block_id != old.block_id


def test_a_silent_agent_is_declared_lost_and_its_job_cancelled(make, batch) -> None:
    ep, ex = make()
    doomed = ex.submit(ShellFunction("sleep 60"))
    wait_for(doomed.running)
    [old] = ep.blocks()
    batch.signal(old.job_id, signal.SIGSTOP)  # a hung node: no heartbeat, no bye
    with pytest.raises(BlockLost, match="no heartbeat"):
        doomed.result(30)
    wait_for(lambda: old.job_id in batch.cancelled)
    assert ex.submit(ShellFunction("echo next")).result(30).stdout == "next\n"


def test_an_idle_block_is_released_after_max_idle_time(make, batch) -> None:
    ep, ex = make(max_idle_time=0.5)
    ex.submit(ShellFunction("true")).result(30)
    [block] = ep.blocks()
    wait_for(lambda: not batch.alive())
    assert block.job_id in batch.cancelled
    assert ep.status().blocks == 0
    assert ex.submit(ShellFunction("echo back")).result(30).stdout == "back\n"  # on demand again


def test_never_more_than_max_blocks(make, batch) -> None:
    ep, ex = make(max_blocks=2)
    futures = [ex.submit(ShellFunction("sleep 0.5")) for _ in range(6)]
    for f in futures:
        assert f.result(30).returncode == 0
    assert batch.most_alive <= 2
    assert batch.submits == 2


def test_shutdown_cancels_every_job(make, batch) -> None:
    ep, ex = make(min_blocks=1, init_blocks=1)
    wait_for(lambda: ep.status().blocks == 1)
    ex.shutdown(wait=True)
    wait_for(lambda: not batch.alive())


def test_no_task_starts_that_would_outlive_its_block(make, batch) -> None:
    # A 60 s block keeps its last 10 s free: a 55 s task must wait for another block, while a
    # 30 s one starts at once.
    # The fake batch jobs have no Slurm: tasks start without a launcher, as on one host.
    ep, ex = make(provider="slurm", launcher="local", walltime="00:01:00", walltime_margin=10)
    short = ex.submit(ShellFunction("sleep 30"), resource_spec={"walltime": 30})
    wait_for(short.running)
    [block] = ep.blocks()
    assert block.end_time is not None
    assert 45 < block.end_time - time.monotonic() <= 50
    long = ex.submit(ShellFunction("true"), resource_spec={"walltime": 55})
    time.sleep(1.5)
    assert not long.running() and not long.done()
    assert ep.status().waiting == 1
