"""A block losing nodes: the block manager passes the agent's node reports to the engine, shows
the excluded nodes, and replaces a block once fewer than half its nodes are usable (a fake
engine and provider; the manager's own agent server is real)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from mpiengine.blocks.blockstate import BlockState
from mpiengine.blocks.manager import BlockManager
from mpiengine.blocks.provider import JobView
from mpiengine.blocks.scaling import needs_replacement
from mpiengine.config import load_config
from mpiengine.launchers import load_launcher
from mpiengine.scheduler import Demand

NODES = ["n1", "n2", "n3", "n4"]


class FakeProvider:
    label = "fake"

    def __init__(self) -> None:
        self.submits = 0
        self.cancelled: list[str] = []

    def submit(self, command: str, script_dir: Path, job_name: str) -> str:
        self.submits += 1
        return str(100 + self.submits)

    def status(self, job_ids: Sequence[str]) -> dict[str, JobView]:
        return {j: JobView("RUNNING") for j in job_ids}

    def cancel(self, job_ids: Sequence[str]) -> None:
        self.cancelled.extend(job_ids)


class FakeScheduler:
    def __init__(self) -> None:
        self.idle: list[str] = []
        self.waiting = 0

    def demand(self, now: float) -> Demand:
        return Demand(0, 0, 0, 0, 0, False)

    def idle_blocks(self) -> list[str]:
        return list(self.idle)


class FakeEngine:
    """The EnginePort the block manager calls, recorded."""

    def __init__(self) -> None:
        self.scheduler = FakeScheduler()
        self.excluded: dict[str, dict[str, str]] = {}
        self.failed: list[tuple[str, str, str]] = []
        self.retired: list[str] = []
        self.lost: list[tuple[str, str]] = []
        self.added: list[Any] = []

    def excluded_nodes(self) -> dict[str, dict[str, str]]:
        return {b: dict(n) for b, n in self.excluded.items()}

    def fail_node(self, block_id: str, node: str, reason: str) -> None:
        self.failed.append((block_id, node, reason))

    def retire_block(self, block_id: str) -> None:
        self.retired.append(block_id)

    def lose_block(self, block_id: str, reason: str) -> None:
        self.lost.append((block_id, reason))

    def add_block(self, handle: Any) -> None:
        self.added.append(handle)

    def report(self, block_id: str, done: Any) -> None:
        pass

    def note_error(self, message: str) -> None:
        raise AssertionError(message)

    def demand(self, now: float) -> Demand:
        return self.scheduler.demand(now)

    def idle_blocks(self) -> list[str]:
        return self.scheduler.idle_blocks()

    @property
    def waiting(self) -> int:
        return self.scheduler.waiting


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[BlockManager, FakeEngine, FakeProvider, str]]:
    cfg = load_config(
        {
            "provider": "slurm",
            "nodes_per_block": len(NODES),
            "cores_per_node": 2,
            "max_blocks": 1,
            "init_blocks": 1,
            "walltime": "01:00:00",
            "poll_interval": 3600,
        }
    )
    provider = FakeProvider()
    manager = BlockManager(cfg, provider, load_launcher("srun"), tmp_path)
    engine = FakeEngine()
    manager.attach(engine)
    manager.on_tick(0.0, engine)
    wait_for(lambda: [b.state for b in manager.blocks()] == [BlockState.PENDING])
    [block] = manager.blocks()
    hello = {"t": "hello", "nodes": NODES, "started": time.time(), "job_id": block.job_id}
    manager.on_agent(block.block_id, hello)
    assert len(engine.added) == 1
    yield manager, engine, provider, block.block_id
    manager.close()


def tick(manager: BlockManager, engine: FakeEngine) -> None:
    manager.on_tick(1.0, engine)


@pytest.mark.parametrize(
    ("nodes", "failed", "replace"),
    [(4, 0, False), (4, 1, False), (4, 2, False), (4, 3, True), (2, 1, False), (1, 1, True),
     (3, 1, False), (3, 2, True)],
)  # fmt: skip
def test_a_block_is_replaced_once_fewer_than_half_its_nodes_are_usable(
    nodes, failed, replace
) -> None:
    assert needs_replacement(nodes, failed) is replace


def test_an_agents_node_report_reaches_the_engine_and_bad_ones_are_ignored(rig) -> None:
    manager, engine, _, block_id = rig
    report = {"node": "n2", "state": "down", "reason": "Not responding"}
    manager.on_agent(block_id, {"t": "nodes", "failed": [report, {"node": "n3", "state": "fail"}]})
    manager.on_agent(block_id, {"t": "nodes", "failed": [{"state": "down"}]})  # no node: dropped
    manager.on_agent(block_id, {"t": "nodes", "failed": "n4"})
    assert engine.failed == [(block_id, "n2", "down: Not responding"), (block_id, "n3", "fail")]


def test_blocks_show_their_excluded_nodes(rig) -> None:
    manager, engine, _, block_id = rig
    engine.excluded = {block_id: {"n2": "down: test"}}
    [block] = manager.blocks()
    assert block.excluded == {"n2": "down: test"}
    assert block.as_dict()["excluded"] == {"n2": "down: test"}


def test_a_degraded_block_retires_gets_a_replacement_and_goes_once_idle(rig) -> None:
    manager, engine, provider, block_id = rig
    engine.excluded = {block_id: {"n2": "down", "n3": "down"}}
    tick(manager, engine)
    assert engine.retired == [] and provider.submits == 1  # half usable: kept
    engine.excluded[block_id]["n4"] = "drained"
    tick(manager, engine)
    assert engine.retired == [block_id]
    states = {b.block_id: b.state for b in manager.blocks()}
    assert states[block_id] is BlockState.RETIRING
    # The replacement comes although max_blocks is 1: a retiring block only ends its tasks.
    wait_for(lambda: provider.submits == 2)
    tick(manager, engine)
    assert engine.lost == [] and engine.retired == [block_id]  # still busy: kept, once retired
    engine.scheduler.idle = [block_id]
    tick(manager, engine)
    assert engine.lost == [(block_id, "released: replaced (too many nodes failed)")]
    assert provider.submits == 2  # one replacement, not one per tick


def test_a_retiring_block_whose_agent_leaves_is_lost(rig) -> None:
    manager, engine, _, block_id = rig
    engine.excluded = {block_id: dict.fromkeys(["n1", "n2", "n3"], "down")}
    tick(manager, engine)
    manager.on_agent(block_id, {"t": "bye", "reason": "job ended"})
    assert engine.lost == [(block_id, "its agent exited: job ended")]
