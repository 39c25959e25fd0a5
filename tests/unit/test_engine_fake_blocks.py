"""The engine against a fake block source: blocks come and go through the EnginePort (as the
block manager's do), tasks "run" when the test finishes them. No process, no socket, no sleep:
every wait is on a queue, a condition or an event.

A fake block runs a launch where its argv sends it (srun's ``--nodelist``), so "the task ran on
its placed node" is checked on what the engine asked the block to start, not on what it says.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpiengine.binding import REAL_NODES, Binding
from mpiengine.endpoint import Endpoint
from mpiengine.engine import Engine
from mpiengine.engineport import CompletionSink, EnginePort
from mpiengine.launchers import LauncherSpec, load_launcher
from mpiengine.retention import EndpointRetention
from mpiengine.runner.launch import Completion, LaunchSpec
from mpiengine.scheduler import BlockInfo, BlockShape, Demand
from mpiengine_sdk import Executor, MPIFunction, ResourceSpec, ShellFunction, SubmitError
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import TaskMessage
from tests.unit.test_node_failure import Results  # the engine's sink, waited on

SHAPE = BlockShape(num_nodes=3, cores_per_node=2)
WAIT = 15.0  # the most any one wait may take before the test fails


class FakeBlock:
    """A BlockHandle: records each launch; the test ends tasks with :meth:`finish`."""

    def __init__(self, block_id: str, nodes: tuple[str, ...], sink: CompletionSink) -> None:
        self._info = BlockInfo(block_id, nodes, cores_per_node=SHAPE.cores_per_node)
        self._sink = sink
        self._launcher = load_launcher("srun")
        self.launches: queue.Queue[LaunchSpec] = queue.Queue()
        self.running: dict[str, LaunchSpec] = {}
        self.killed: list[str] = []
        self.closed = threading.Event()
        self.running_at_close: set[str] | None = None

    @property
    def info(self) -> BlockInfo:
        return self._info

    @property
    def launcher(self) -> LauncherSpec:
        return self._launcher

    @property
    def binding(self) -> Binding:
        return REAL_NODES

    @property
    def job_id(self) -> str:
        return f"job-{self._info.block_id}"

    def launch(self, spec: LaunchSpec) -> None:
        self.running[spec.task_id] = spec
        self.launches.put(spec)

    def kill(self, task_id: str) -> None:
        self.killed.append(task_id)
        self.finish(task_id, returncode=-15, cancelled=True)

    def close(self) -> None:
        self.running_at_close = set(self.running)
        self.closed.set()

    def next_launch(self) -> LaunchSpec:
        """The next task the engine starts here (waits for it)."""
        return self.launches.get(timeout=WAIT)

    def finish(
        self, task_id: str, returncode: int = 0, stdout: str = "", cancelled: bool = False
    ) -> None:
        """End a running task: its Completion goes to the engine, as a runner's would."""
        spec = self.running.pop(task_id)
        now = time.time()
        done = Completion(
            task_id=task_id,
            returncode=returncode,
            stdout=stdout,
            stderr="",
            stdout_path="",
            stderr_path="",
            sandbox=str(spec.sandbox),
            argv=spec.argv,
            started=now,
            ended=now,
            timed_out=False,
            cancelled=cancelled,
        )
        self._sink(self._info.block_id, done)


def placed_on(spec: LaunchSpec) -> tuple[str, ...]:
    """The nodes a launch runs on: srun's ``--nodelist``."""
    [nodelist] = [a.removeprefix("--nodelist=") for a in spec.argv if a.startswith("--nodelist=")]
    return tuple(nodelist.split(","))


class FakeSource:
    """A BlockSource: offers FakeBlocks through the EnginePort and watches its ticks."""

    def __init__(self) -> None:
        self.engine: EnginePort | None = None
        self.ticks: queue.Queue[tuple[int, Demand]] = queue.Queue()
        self.closed = False

    def attach(self, engine: EnginePort) -> None:
        self.engine = engine

    def offer(self, block_id: str, nodes: tuple[str, ...]) -> FakeBlock:
        assert self.engine is not None
        block = FakeBlock(block_id, nodes, self.engine.report)
        self.engine.add_block(block)
        return block

    def on_tick(self, now: float, engine: EnginePort) -> None:
        self.ticks.put((engine.waiting, engine.demand(now)))

    def close(self) -> None:
        self.closed = True


def whole_node(task_id: str, retries: int = 0) -> TaskMessage:
    """A shell task holding one whole node (both its cores)."""
    spec = ResourceSpec(num_nodes=1, cpus_per_rank=SHAPE.cores_per_node, retries=retries)
    return ShellFunction("true").to_task(task_id, (), {}, spec)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Engine, FakeSource, Results]]:
    results, source = Results(), FakeSource()
    engine = Engine(
        workdir=tmp_path,
        sink=results,
        shapes=[SHAPE],
        base_env={"PATH": "/usr/bin:/bin"},
        on_tick=source.on_tick,
        tick_interval=0.02,
    )
    source.attach(engine)
    engine.start()
    yield engine, source, results
    engine.shutdown(wait=False, timeout=WAIT)


def test_each_task_runs_on_the_nodes_it_was_placed_on(rig) -> None:
    engine, source, results = rig
    block = source.offer("a", ("a0", "a1", "a2"))
    engine.submit([whole_node(t) for t in ("t0", "t1", "t2", "t3")])
    launched = {spec.task_id: spec for spec in (block.next_launch() for _ in range(3))}
    for task_id, spec in launched.items():
        assert placed_on(spec) == results.running(task_id).nodes
    nodes = sorted(placed_on(spec)[0] for spec in launched.values())
    assert nodes == ["a0", "a1", "a2"]  # whole-node tasks: one per node
    assert "t3" not in launched  # no node is free: it waits
    first = next(iter(launched))
    block.finish(first, stdout="hello\n")
    later = block.next_launch()
    assert later.task_id == "t3"
    assert placed_on(later) == placed_on(launched[first])  # the node just freed
    done = results.final(first)
    assert (done.state, done.returncode, done.stdout) == (TaskState.COMPLETED, 0, "hello\n")
    assert (done.nodes, done.block_id, done.job_id) == (placed_on(launched[first]), "a", "job-a")


def test_a_source_sees_the_waiting_tasks_demand_through_the_port_on_its_tick(rig) -> None:
    engine, source, _ = rig
    engine.submit([whole_node("early")])  # no block yet: it waits, and asks for one
    waiting, demand = source.ticks.get(timeout=WAIT)
    while waiting == 0:  # a tick may come before the submit is handled
        waiting, demand = source.ticks.get(timeout=WAIT)
    assert (waiting, demand.waiting_tasks, demand.largest_task_nodes) == (1, 1, 1)
    assert demand.head_needs_new_block
    block = source.offer("late", ("l0", "l1", "l2"))
    assert block.next_launch().task_id == "early"


def test_a_task_of_a_lost_block_is_retried_on_another_and_a_late_completion_is_ignored(
    rig,
) -> None:
    engine, source, results = rig
    first = source.offer("a", ("a0", "a1", "a2"))
    engine.submit([whole_node("r", retries=1)])
    assert placed_on(first.next_launch()) == results.running("r").nodes
    second = source.offer("b", ("b0", "b1", "b2"))
    engine.lose_block("a", "its agent went silent")
    again = second.next_launch()
    running = results.running("r", attempt=2)
    assert (again.task_id, running.block_id) == ("r", "b")
    assert placed_on(again) == running.nodes and running.nodes[0].startswith("b")
    assert first.closed.wait(WAIT)  # the engine let the lost block go
    first.finish("r", returncode=1)  # too late: that attempt no longer counts
    second.finish("r")
    done = results.final("r")
    assert (done.state, done.returncode, done.block_id, done.attempts) == (
        TaskState.COMPLETED,
        0,
        "b",
        2,
    )


def test_without_retries_a_lost_blocks_task_is_reported_lost(rig) -> None:
    engine, source, results = rig
    block = source.offer("a", ("a0", "a1", "a2"))
    engine.submit([whole_node("once")])
    block.next_launch()
    engine.lose_block("a", "job ended (NODE_FAIL)")
    done = results.final("once")
    assert (done.state, done.error_type, done.block_id) == (TaskState.LOST, "BlockLost", "a")
    assert "job ended (NODE_FAIL)" in done.error_message


def test_a_failed_node_is_excluded_and_its_task_killed_and_placed_elsewhere(rig) -> None:
    engine, source, results = rig
    block = source.offer("a", ("a0", "a1", "a2"))
    engine.submit([whole_node("f", retries=1)])
    [bad] = placed_on(block.next_launch())
    engine.fail_node("a", bad, "down: not responding")
    retried = block.next_launch()
    assert block.killed == ["f"]
    assert retried.task_id == "f" and placed_on(retried) != (bad,)
    assert results.running("f", attempt=2).nodes == placed_on(retried)
    assert engine.excluded_nodes() == {"a": {bad: "down: not responding"}}
    engine.submit([whole_node("g"), whole_node("h")])  # two nodes left, one busy: g runs
    later = block.next_launch()
    assert later.task_id == "g" and placed_on(later) not in ((bad,), placed_on(retried))
    block.finish("f")
    last = block.next_launch()  # f's node, never the failed one
    assert (last.task_id, placed_on(last)) == ("h", placed_on(retried))
    assert results.final("f").state is TaskState.COMPLETED


def test_shutdown_with_wait_lets_running_and_queued_tasks_finish_first(rig) -> None:
    engine, source, results = rig
    block = source.offer("one", ("n0",))
    engine.submit([whole_node("run"), whole_node("queued")])
    assert block.next_launch().task_id == "run"
    engine.shutdown(wait=True, timeout=0.05)  # posted; the engine waits for its tasks
    block.finish("run")  # handled after the stop: it still counts, and the next one starts
    assert block.next_launch().task_id == "queued"
    block.finish("queued")
    engine.shutdown(wait=True, timeout=WAIT)
    assert [results.final(t).state for t in ("run", "queued")] == [TaskState.COMPLETED] * 2
    assert block.closed.is_set() and block.running_at_close == set()
    with pytest.raises(SubmitError):
        engine.submit([whole_node("too-late")])


def test_shutdown_without_wait_kills_running_tasks_and_drops_queued_ones(rig) -> None:
    engine, source, results = rig
    block = source.offer("one", ("n0",))
    engine.submit([whole_node("run"), whole_node("queued")])
    assert block.next_launch().task_id == "run"
    engine.shutdown(wait=False, timeout=WAIT)
    assert block.killed == ["run"] and block.closed.is_set()
    assert block.launches.empty()  # the queued task never started
    for task_id in ("run", "queued"):
        assert results.final(task_id).state is TaskState.CANCELLED


def test_through_an_endpoint_a_completion_reaches_the_sdk_future_and_its_callback(
    tmp_path: Path,
) -> None:
    source = FakeSource()
    endpoint = Endpoint(
        tmp_path,
        source=lambda: source,
        shape=SHAPE,
        retention=EndpointRetention(tmp_path, keep=True, owned=False),
        base_env=lambda: {"PATH": "/usr/bin:/bin"},
        tick_interval=0.02,
    )
    with Executor(backend=endpoint) as ex:
        block = source.offer("a", ("a0", "a1", "a2"))
        called = threading.Event()
        two = ResourceSpec(num_nodes=2, ranks_per_node=1)
        future = ex.submit(MPIFunction("echo hi"), resource_spec=two)
        future.add_done_callback(lambda _: called.set())
        spec = block.next_launch()
        block.finish(spec.task_id, stdout="hi\n")
        result = future.result(timeout=WAIT)
        assert called.wait(WAIT)
        assert (result.returncode, result.stdout) == (0, "hi\n")
        assert result.nodes == placed_on(spec) and len(result.nodes) == 2  # ranks on both
    assert source.closed and block.closed.is_set()  # the source is closed after the engine
