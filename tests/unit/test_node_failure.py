"""A failed node under running tasks: the engine (real scheduler, fake block) excludes it, kills
and retries or fails its tasks, and the SDK raises NodeFailed with its data."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mpiengine.binding import REAL_NODES, Binding
from mpiengine.engine import Engine
from mpiengine.launchers import LauncherSpec, load_launcher
from mpiengine.nodefail import failed_node_in
from mpiengine.runner.launch import Completion, LaunchSpec
from mpiengine.scheduler import BlockInfo, BlockShape
from mpiengine_sdk import NodeFailed, ResourceSpec, ShellFunction
from mpiengine_sdk.results import unpack_result
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import ResultMessage, TaskKind, TaskMessage

NODES = ("n0", "n1", "n2")


class FakeBlock:
    """A BlockHandle whose tasks end when the test says so; a kill ends the task at once
    (``kill_ends=False``: the killed task's completion waits for :meth:`finish`)."""

    def __init__(self, engine: Engine, block_id: str = "blk", kill_ends: bool = True) -> None:
        self._info = BlockInfo(block_id, NODES, cores_per_node=2)
        self._engine = engine
        self.kill_ends = kill_ends
        self.launched: dict[str, LaunchSpec] = {}
        self.killed: list[str] = []
        self.closed = False

    @property
    def info(self) -> BlockInfo:
        return self._info

    @property
    def launcher(self) -> LauncherSpec:
        return load_launcher("srun")

    @property
    def binding(self) -> Binding:
        return REAL_NODES

    @property
    def job_id(self) -> str:
        return "4242"

    def launch(self, spec: LaunchSpec) -> None:
        self.launched[spec.task_id] = spec

    def kill(self, task_id: str) -> None:
        self.killed.append(task_id)
        if self.kill_ends:
            self.finish(task_id, returncode=-15, cancelled=True, stderr="killed\n")

    def finish(
        self, task_id: str, returncode: int = 0, stderr: str = "", cancelled: bool = False
    ) -> None:
        spec = self.launched[task_id]
        done = Completion(
            task_id=task_id,
            returncode=returncode,
            stdout=f"out of {task_id}\n",
            stderr=stderr,
            stdout_path="",
            stderr_path="",
            sandbox=str(spec.sandbox),
            argv=spec.argv,
            started=time.time(),
            ended=time.time(),
            timed_out=False,
            cancelled=cancelled,
            error="",
        )
        self._engine.report(self._info.block_id, done)

    def close(self) -> None:
        self.closed = True


class Results:
    """The engine's sink: every ResultMessage, with a way to wait for one."""

    def __init__(self) -> None:
        self.messages: list[ResultMessage] = []
        self._cond = threading.Condition()

    def __call__(self, msg: ResultMessage) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def wait(self, check: Callable[[ResultMessage], bool], timeout: float = 15.0) -> ResultMessage:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for msg in self.messages:
                    if check(msg):
                        return msg
                left = deadline - time.monotonic()
                assert left > 0, f"no such result; got {self.messages}"
                self._cond.wait(left)

    def running(self, task_id: str, attempt: int = 1) -> ResultMessage:
        return self.wait(
            lambda m: (
                m.task_id == task_id and m.state is TaskState.RUNNING and m.attempts == attempt
            )
        )

    def final(self, task_id: str) -> ResultMessage:
        return self.wait(lambda m: m.task_id == task_id and m.state.terminal)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Engine, FakeBlock, Results]]:
    results = Results()
    engine = Engine(
        workdir=tmp_path,
        sink=results,
        shapes=[BlockShape(len(NODES), 2)],
        base_env={"PATH": "/usr/bin:/bin"},
        tick_interval=0.05,
    )
    block = FakeBlock(engine)
    engine.add_block(block)
    engine.start()
    yield engine, block, results
    engine.shutdown(wait=False, timeout=10)


def whole_node(task_id: str, retries: int = 0, nodes: int = 1) -> TaskMessage:
    """A task holding whole nodes (both cores), so each node runs one at a time."""
    spec = ResourceSpec(num_nodes=nodes, cpus_per_rank=2, retries=retries)
    return ShellFunction("true").to_task(task_id, (), {}, spec)


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_a_task_on_a_failed_node_is_killed_and_retried_on_another(rig) -> None:
    engine, block, results = rig
    engine.submit([whole_node(t, retries=1) for t in ("a", "b", "c")])
    first = {t: results.running(t).nodes[0] for t in ("a", "b", "c")}
    engine.fail_node("blk", first["b"], "down: fan failure")
    wait_for(lambda: engine.status().excluded_nodes != {})
    assert block.killed == ["b"]
    # Every other node is busy: b waits until one is free; its failed node is free but never
    # offered again.
    wait_for(lambda: engine.status().waiting == 1)
    assert not any(m.task_id == "b" and m.attempts == 2 for m in results.messages)
    block.finish("a")
    again = results.running("b", attempt=2)
    assert again.nodes == (first["a"],)
    block.finish("b")
    done = results.final("b")
    assert (done.state, done.attempts) == (TaskState.COMPLETED, 2)
    status = engine.status()
    assert status.excluded_nodes == {"blk": {first["b"]: "down: fan failure"}}
    assert status.as_dict()["excluded_nodes"] == {"blk": {first["b"]: "down: fan failure"}}
    assert engine.excluded_nodes() == {"blk": {first["b"]: "down: fan failure"}}


def test_no_later_task_lands_on_a_failed_node(rig) -> None:
    engine, block, results = rig
    engine.fail_node("blk", "n1", "drained")
    ids = [f"t{i}" for i in range(6)]
    engine.submit([whole_node(t) for t in ids])
    for t in ids:
        node = results.running(t).nodes[0]
        assert node != "n1"
        block.finish(t)
    assert all(results.final(t).state is TaskState.COMPLETED for t in ids)


def test_without_retries_the_task_fails_with_node_failed_naming_node_block_and_job(rig) -> None:
    engine, block, results = rig
    engine.submit([whole_node("solo")])
    node = results.running("solo").nodes[0]
    engine.fail_node("blk", node, "down: not responding")
    msg = results.final("solo")
    assert (msg.state, msg.error_type, msg.block_id, msg.job_id) == (
        TaskState.LOST,
        "NodeFailed",
        "blk",
        "4242",
    )
    with pytest.raises(NodeFailed) as info:
        unpack_result(TaskKind.SHELL, msg)
    err = info.value
    assert (err.task_id, err.node, err.block_id, err.job_id) == ("solo", node, "blk", "4242")
    assert err.nodes == (node,) and err.stderr == "killed\n"
    assert "down: not responding" in str(err)
    assert "retries" in str(err) and "Resubmit" in str(err)  # says what to do


def test_srun_reporting_a_node_failure_counts_as_one_even_with_returncode_0(rig) -> None:
    engine, block, results = rig
    engine.submit([whole_node("m", retries=1, nodes=2)])
    nodes = results.running("m").nodes
    # As srun 22.05 does when a node of its step fails: the error line, then exit 0.
    block.finish("m", returncode=0, stderr=f"srun: error: Node failure on {nodes[1]}\n")
    again = results.running("m", attempt=2)
    assert nodes[1] not in again.nodes
    assert engine.excluded_nodes() == {"blk": {nodes[1]: "the launcher reported a node failure"}}
    block.finish("m")
    assert results.final("m").state is TaskState.COMPLETED


def test_the_killed_tasks_other_nodes_stay_held_until_its_ranks_are_gone(tmp_path) -> None:
    results = Results()
    engine = Engine(
        workdir=tmp_path, sink=results, shapes=[BlockShape(3, 2)], base_env={}, tick_interval=0.05
    )
    block = FakeBlock(engine, kill_ends=False)
    engine.add_block(block)
    engine.start()
    try:
        engine.submit([whole_node("wide", nodes=3)])
        engine.submit([whole_node("next")])
        nodes = results.running("wide").nodes
        engine.fail_node("blk", nodes[2], "down")
        wait_for(lambda: block.killed == ["wide"])
        time.sleep(0.3)  # several engine ticks: "next" must still wait for wide's nodes
        assert "next" not in block.launched
        block.finish("wide", returncode=-15, cancelled=True)
        assert results.final("wide").error_type == "NodeFailed"
        assert results.running("next").nodes[0] in nodes[:2]
    finally:
        engine.shutdown(wait=False, timeout=10)


def test_a_task_that_ended_well_before_the_kill_reached_it_keeps_its_result(tmp_path) -> None:
    results = Results()
    engine = Engine(
        workdir=tmp_path, sink=results, shapes=[BlockShape(3, 2)], base_env={}, tick_interval=0.05
    )
    block = FakeBlock(engine, kill_ends=False)
    engine.add_block(block)
    engine.start()
    try:
        engine.submit([whole_node("quick")])
        node = results.running("quick").nodes[0]
        engine.fail_node("blk", node, "drained")
        wait_for(lambda: block.killed == ["quick"])
        block.finish("quick", returncode=0)
        msg = results.final("quick")
        assert (msg.state, msg.returncode, msg.attempts) == (TaskState.COMPLETED, 0, 1)
    finally:
        engine.shutdown(wait=False, timeout=10)


def test_a_cancel_while_its_node_failure_kill_is_under_way_is_a_cancel(tmp_path) -> None:
    results = Results()
    engine = Engine(
        workdir=tmp_path, sink=results, shapes=[BlockShape(3, 2)], base_env={}, tick_interval=0.05
    )
    block = FakeBlock(engine, kill_ends=False)
    engine.add_block(block)
    engine.start()
    try:
        engine.submit([whole_node("c", retries=3)])
        node = results.running("c").nodes[0]
        engine.fail_node("blk", node, "down")
        wait_for(lambda: block.killed == ["c"])
        engine.cancel("c")
        wait_for(lambda: block.killed == ["c", "c"])
        block.finish("c", returncode=-15, cancelled=True)
        assert results.final("c").state is TaskState.CANCELLED
    finally:
        engine.shutdown(wait=False, timeout=10)


def test_reports_for_unknown_blocks_or_nodes_change_nothing(rig) -> None:
    engine, block, results = rig
    engine.fail_node("other", "n0", "down")
    engine.fail_node("blk", "n9", "down")
    engine.submit([whole_node("x")])
    results.running("x")
    assert engine.excluded_nodes() == {}


def test_a_lost_block_forgets_its_failed_nodes(rig) -> None:
    engine, block, results = rig
    engine.fail_node("blk", "n0", "down")
    wait_for(lambda: engine.excluded_nodes() == {"blk": {"n0": "down"}})
    engine.lose_block("blk", "job ended")
    wait_for(lambda: engine.excluded_nodes() == {} and block.closed)


@pytest.mark.parametrize(
    ("stderr", "found"),
    [
        ("srun: error: Node failure on n1\n", "n1"),
        ("work\nsrun: error: Node failure on n2\nsrun: error: n0: task 0: Killed\n", "n2"),
        ("srun: error: Node failure on elsewhere\n", None),  # not a node of the task
        ("echo srun: error: Node failure on n1\n", None),  # not srun's own line
        ("", None),
    ],
)
def test_failed_node_in_reads_only_srun_lines_naming_the_tasks_nodes(stderr, found) -> None:
    assert failed_node_in(stderr, ("n0", "n1", "n2")) == found
