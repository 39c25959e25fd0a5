"""A node of a running Slurm block marked down under a task (ci/slurm-docker cluster).

Each test gets its own 2-node block (submitted with --no-kill, so Slurm keeps the job when a node
fails), holds both nodes with a whole-node task each, marks the node that is not the block's lead
node down with ``scontrol update``, and always brings it back (``state=resume``) and waits for
it to be usable again, so the other tests on the cluster are not disturbed.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mpiengine.slurm_endpoint import BatchEndpoint
from mpiengine_sdk import Executor, NodeFailed, ShellFunction
from mpiengine_sdk.future import TaskFuture
from tests.conftest import require
from tests.integration.test_slurm_blocks import cluster_up, config, slurm_conf

pytestmark = [pytest.mark.slurm]

#: Node states that leave a node unusable (sinfo %T, flags stripped).
_BAD = ("down", "drain", "fail")


@pytest.fixture
def conf() -> Iterator[Path]:
    path = slurm_conf()
    require(cluster_up(path), "the Slurm cluster", "start it with: bash ci/slurm-docker/start.sh")
    assert path is not None
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(path)
    yield path
    if old is None:
        del os.environ["SLURM_CONF"]
    else:
        os.environ["SLURM_CONF"] = old


@pytest.fixture
def endpoint(conf: Path, tmp_path: Path) -> Iterator[tuple[BatchEndpoint, Executor]]:
    ep = BatchEndpoint(config(nodes_per_block=2, node_check_interval=1), workdir=tmp_path / "ep")
    ex = Executor(backend=ep)
    try:
        yield ep, ex
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


def node_state(node: str) -> str:
    out = subprocess.run(
        ["sinfo", "-h", "-N", "-n", node, "-o", "%T"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    return out.strip().lower()


def scontrol_update(node: str, *state: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["scontrol", "update", f"nodename={node}", *state],
        capture_output=True,
        text=True,
        timeout=20,
    )


def restore(node: str) -> None:
    """Resume the node and wait until Slurm may use it again (idle, or already taken by a job).

    ``resume`` is refused for a node that is not down or drained (with ReturnToService=2 the
    CI cluster's nodes come back by themselves), which is fine.
    """
    deadline = time.monotonic() + 60
    while any(bad in node_state(node) for bad in _BAD):
        scontrol_update(node, "state=resume")
        assert time.monotonic() < deadline, f"{node} did not come back: {node_state(node)}"
        time.sleep(0.2)


def wait_for(check: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def holder(marks: Path, name: str) -> ShellFunction:
    """A whole-node task that records each attempt's host (``marks/name.N``) and runs until
    ``marks/release`` exists."""
    script = (
        f"n=$(ls {marks}/{name}.* 2>/dev/null | wc -l); hostname > {marks}/{name}.$n; "
        f"while [ ! -e {marks}/release ]; do sleep 0.1; done; hostname"
    )
    return ShellFunction(script)


def attempts(marks: Path, name: str) -> list[str]:
    """The host of each attempt so far, in order."""
    found = sorted(marks.glob(f"{name}.*"), key=lambda p: int(p.suffix[1:]))
    return [p.read_text().strip() for p in found if p.read_text().strip()]


def hold_both_nodes(
    ex: Executor, ep: BatchEndpoint, marks: Path, retries: int
) -> tuple[dict[str, TaskFuture], str, str, str]:
    """Two whole-node tasks running at once; returns them, the name of the one on the
    non-lead node, that node, and the lead node."""
    spec = {"cpus_per_rank": 2, "retries": retries, "walltime": 300}
    futures = {name: ex.submit(holder(marks, name), resource_spec=spec) for name in ("a", "b")}
    wait_for(lambda: bool(attempts(marks, "a")) and bool(attempts(marks, "b")))
    [block] = ep.blocks()
    lead, other = block.nodes
    on = {attempts(marks, name)[0]: name for name in futures}
    assert set(on) == {lead, other}, on  # each task on its own node of the block
    return futures, on[other], other, lead


def test_a_task_on_a_node_marked_down_completes_on_another_and_the_node_stays_excluded(
    endpoint, tmp_path
) -> None:
    ep, ex = endpoint
    marks = tmp_path / "marks"
    marks.mkdir()
    futures, victim, down, lead = hold_both_nodes(ex, ep, marks, retries=1)
    [block] = ep.blocks()
    try:
        result = scontrol_update(down, "state=down", "reason=mpiengine-test")
        assert result.returncode == 0, result.stderr
        wait_for(lambda: down in ep.status().excluded_nodes.get(block.block_id, {}))
        wait_for(lambda: ep.status().waiting == 1)  # killed, waiting to run again
        assert not futures[victim].done()
        (marks / "release").touch()  # the other task ends; the victim gets the lead node
        survivor = next(n for n in futures if n != victim)
        assert futures[survivor].result(120).stdout.strip() == lead
        again = futures[victim].result(120)
        assert again.returncode == 0 and again.nodes == (lead,)
        assert again.stdout.strip() == lead
        assert attempts(marks, victim) == [down, lead]
        # No later task lands on the down node (it is back in service for Slurm by now).
        later = [
            ex.submit(ShellFunction("hostname"), resource_spec={"cpus_per_rank": 2})
            for _ in range(4)
        ]
        assert {f.result(120).stdout.strip() for f in later} == {lead}
        assert all(f.result().nodes == (lead,) for f in later)
        status = ep.status()
        assert list(status.excluded_nodes) == [block.block_id]
        assert list(status.excluded_nodes[block.block_id]) == [down]
        [same] = ep.blocks()  # one node of two left: half usable, the block is kept
        assert same.block_id == block.block_id and list(same.excluded) == [down]
        assert same.state.value == "connected"
    finally:
        (marks / "release").touch()
        restore(down)


def test_without_retries_the_task_fails_with_node_failed_naming_the_node(
    endpoint, tmp_path
) -> None:
    ep, ex = endpoint
    marks = tmp_path / "marks"
    marks.mkdir()
    futures, victim, down, lead = hold_both_nodes(ex, ep, marks, retries=0)
    [block] = ep.blocks()
    try:
        result = scontrol_update(down, "state=down", "reason=mpiengine-test")
        assert result.returncode == 0, result.stderr
        with pytest.raises(NodeFailed) as info:
            futures[victim].result(120)
        err = info.value
        assert (err.node, err.block_id, err.job_id) == (down, block.block_id, block.job_id)
        assert err.nodes == (down,)
        assert f"node {down} of block {block.block_id}" in str(err)
        assert attempts(marks, victim) == [down]  # not run again
        survivor = next(n for n in futures if n != victim)
        assert futures[survivor].running()  # the rest of the block goes on
        (marks / "release").touch()
        assert futures[survivor].result(120).stdout.strip() == lead
    finally:
        (marks / "release").touch()
        restore(down)
