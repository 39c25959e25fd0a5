"""A block's end on the real Slurm cluster: the endpoint vanishing, and the block's walltime.

Each test has its own endpoint (one block of 2 nodes); see test_slurm_blocks for the cluster
fixture.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpiengine.slurm_endpoint import BatchEndpoint
from mpiengine_sdk import Executor, ResourceSpec, ShellFunction, TaskTimeout
from tests.integration.test_slurm_blocks import conf, config, marked_processes, no_jobs_left

__all__ = ["conf"]  # the module-scoped cluster fixture, shared

pytestmark = [pytest.mark.slurm]


def job_alive(job_id: str) -> bool:
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%t"], capture_output=True, text=True, timeout=10
    ).stdout.strip()
    return out not in ("", "CD", "CA", "F", "TO")


@pytest.fixture
def small(conf: Path, tmp_path: Path) -> Iterator[tuple[BatchEndpoint, Executor]]:
    ep = BatchEndpoint(config(nodes_per_block=2, agent_grace=3), workdir=tmp_path / "ep")
    ex = Executor(backend=ep)
    yield ep, ex
    ex.shutdown(wait=False, cancel_futures=True)
    assert no_jobs_left(ep)


def test_when_the_endpoint_goes_away_the_agent_ends_its_tasks_and_its_job(small) -> None:
    ep, ex = small
    future = ex.submit(ShellFunction("sleep 300"), resource_spec=ResourceSpec(num_nodes=1))
    deadline = time.monotonic() + 60
    while not future.running():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    [block] = ep.blocks()
    time.sleep(0.5)
    assert marked_processes(future.task_id)
    ep.manager.server.close()  # the endpoint's side of the link is gone: no more pings
    gone_by = time.monotonic() + 3 + 10  # agent_grace, then the kill and the job's exit
    while job_alive(block.job_id):
        assert time.monotonic() < gone_by, "the orphaned block kept running"
        time.sleep(0.2)
    assert marked_processes(future.task_id) == []
    agent_log = (block.directory / "agent.log").read_text()
    assert "no word from the endpoint" in agent_log


@pytest.mark.slow
def test_tasks_never_outlive_a_block_and_it_is_given_back_at_its_end(conf: Path, tmp_path) -> None:
    # A 1-minute block keeps its last 10 s free: a task without a walltime gets the rest of
    # the block and is stopped (timeout) before Slurm ends the job; the ended block is replaced.
    cfg = config(nodes_per_block=2, walltime="00:01:00", walltime_margin=10)
    ep = BatchEndpoint(cfg, workdir=tmp_path / "ep")
    ex = Executor(backend=ep)
    try:
        future = ex.submit(ShellFunction("sleep 300"))
        result = future.result(90)
        assert result.returncode == 124
        with pytest.raises(TaskTimeout):
            result.check()
        [block] = ep.blocks()
        assert result.ended is not None and block.end_time is not None
        deadline = time.monotonic() + 60
        while any(b.block_id == block.block_id for b in ep.blocks()):
            assert time.monotonic() < deadline, "the block outlived its walltime"
            time.sleep(0.5)
        assert ex.submit(ShellFunction("echo after")).result(60).stdout == "after\n"
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
    assert no_jobs_left(ep)
