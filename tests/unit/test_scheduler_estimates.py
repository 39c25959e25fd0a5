"""Example tests of runtime estimates in the scheduler: predictions steer backfill and never
kill, corrections when a task outlives its estimate, estimates shared by kind, the cold-start
rule (borrowing the head's idle nodes) and the aging bound that ends it."""

from __future__ import annotations

import math

import pytest

from mpiengine.placement import Placement
from mpiengine.scheduler import BlockInfo, Scheduler, SimTask, TaskRequest, simulate
from mpiengine.scheduler.estimates import corrected
from mpiengine_sdk.errors import SpecError


def block(nodes: int = 4, cores: int = 1, end: float | None = None) -> BlockInfo:
    return BlockInfo("b", tuple(f"n{i}" for i in range(nodes)), cores, 0, end)


def task(task_id: str, nodes: int = 1, **kw: object) -> TaskRequest:
    return TaskRequest(task_id, nodes, 1, exclusive=True, **kw)  # type: ignore[arg-type]


def ids(placements: list[Placement]) -> list[str]:
    return [p.task_id for p in placements]


def test_a_prediction_steers_backfill_but_only_the_walltime_kills() -> None:
    sched = Scheduler()
    sched.add_block(block(nodes=2))
    sched.submit(task("running", walltime=100.0, estimate=10.0))
    assert ids(sched.schedule(0.0)) == ["running"]
    sched.submit(task("head", 2, walltime=100.0, estimate=10.0, submit_time=1.0))
    # Its walltime (50 s) would end after the head's reservation (10 s, by the running
    # task's prediction); its prediction (5 s) does not.
    sched.submit(task("short", walltime=50.0, estimate=5.0, submit_time=2.0))
    sched.submit(task("open", estimate=3.0, submit_time=3.0))
    placed = sched.schedule(1.0)
    assert ids(placed) == ["short"]
    res = sched.reservation
    assert res is not None and res.time == 10.0 and not res.blind
    assert placed[0].walltime == 50.0  # the user's walltime, never the prediction
    sched.release("short")
    assert ids(sched.schedule(6.0)) == ["open"]
    assert sched.is_running("open")


def test_a_prediction_alone_never_becomes_a_deadline() -> None:
    sched = Scheduler()
    sched.add_block(block(nodes=1))
    sched.submit(task("t", estimate=1.0))
    (p,) = sched.schedule(0.0)
    assert p.walltime is None  # unlimited block, no walltime: nothing kills it
    limited = Scheduler()
    limited.add_block(block(nodes=1, end=500.0))
    limited.submit(task("t", estimate=1.0))
    (p,) = limited.schedule(100.0)
    assert p.walltime == 400.0  # the block's end, as without an estimate


def test_outliving_the_estimate_moves_the_reservation_at_once() -> None:
    sched = Scheduler()
    sched.add_block(block(nodes=2))
    sched.submit(task("slow", estimate=10.0))
    sched.submit(task("head", 2, estimate=1.0))
    assert ids(sched.schedule(0.0)) == ["slow"]
    res = sched.reservation
    assert res is not None and res.task_id == "head" and res.time == 10.0
    assert sched.next_wake == 10.0
    # Still running at 10 s: it is now expected to run 1.1 x 10 s.
    assert sched.schedule(10.0) == []
    res = sched.reservation
    assert res is not None and res.time == pytest.approx(11.0)
    assert sched.next_wake == pytest.approx(11.0)
    # Woken late, at 12.5 s: the corrections catch up past now (1.3 x, 1.7 x).
    assert sched.schedule(12.5) == []
    res = sched.reservation
    assert res is not None and res.time == pytest.approx(13.0)
    assert sched.schedule(13.5) == []
    assert sched.reservation is not None and sched.reservation.time == pytest.approx(17.0)
    sched.release("slow")
    assert ids(sched.schedule(14.0)) == ["head"]
    assert sched.next_wake == 15.0  # the head's own estimate now


def test_corrections_grow_geometrically_and_stop_at_the_walltime() -> None:
    steps = []
    runtime, fixes = 10.0, 0
    for _ in range(5):
        runtime, fixes = corrected(10.0, runtime, fixes)
        steps.append(round(runtime, 6))
    assert steps == [11.0, 13.0, 17.0, 25.0, 41.0]
    assert corrected(10.0, 100.0, 0) == pytest.approx((137.0, 7))  # first step past 100 s
    sched = Scheduler()
    sched.add_block(block(nodes=2))
    sched.submit(task("t", walltime=12.0, estimate=10.0))
    sched.submit(task("head", 2))
    sched.schedule(0.0)
    assert sched.next_wake == 10.0
    sched.schedule(10.0)
    assert sched.next_wake == pytest.approx(11.0)
    sched.schedule(11.0)  # 13 s would pass the walltime: it is killed at 12 s
    assert sched.next_wake is None
    assert sched.reservation is not None and sched.reservation.time == 12.0


def test_tasks_of_a_kind_share_what_is_learned() -> None:
    sched = Scheduler()
    sched.add_block(block(nodes=2))
    sched.submit(task("running", walltime=10.0))
    sched.submit(task("head", 2, walltime=10.0))
    sched.submit(task("a", kind="sim|1x1"))  # no history: unknown runtime
    sched.submit(task("b", kind="sim|1x1"))
    assert ids(sched.schedule(0.0)) == ["running"]  # a would have no end in sight
    sched.set_estimate("sim|1x1", 4.0)
    assert ids(sched.schedule(1.0)) == ["a"]  # ends by 10 s, by the learned estimate
    sched.set_estimate("sim|1x1", 20.0)
    assert sched.schedule(2.0) == []  # b would not, any more
    sched.set_estimate("nobody|1x1", 1.0)  # no task of this kind: nothing to remember
    assert "nobody|1x1" not in sched._estimates.by_kind


def test_a_running_task_of_a_kind_learned_later_gets_an_end() -> None:
    sched = Scheduler()
    sched.add_block(block(nodes=2))
    sched.submit(task("first", kind="k"))
    sched.submit(task("head", 2, kind="h"))
    assert ids(sched.schedule(0.0)) == ["first"]
    res = sched.reservation
    assert res is not None and res.blind and res.time == math.inf
    sched.set_estimate("k", 5.0)  # a task of kind k ended elsewhere: 5 s
    sched.schedule(1.0)
    res = sched.reservation
    assert res is not None and not res.blind and res.time == 5.0
    assert sched.next_wake == 5.0


def test_blind_head_lends_its_idle_nodes_to_smaller_tasks_only() -> None:
    sched = Scheduler()
    sched.add_block(block(nodes=4))
    sched.submit(task("unknown", 2))
    sched.submit(task("head", 4))
    sched.submit(task("same", 4))
    sched.submit(task("small", 1))
    sched.submit(task("small2", 1))
    placed = sched.schedule(0.0)
    assert ids(placed) == ["unknown", "small", "small2"]
    res = sched.reservation
    assert res is not None and res.task_id == "head" and res.blind
    off = Scheduler(lend_interval=0.0)  # nothing may start before the head
    off.add_block(block(nodes=4))
    for req in (task("unknown", 2), task("head", 4), task("small", 1)):
        off.submit(req)
    assert ids(off.schedule(0.0)) == ["unknown"]


def test_after_its_lending_interval_only_walltimes_may_go_before_the_head() -> None:
    sched = Scheduler(lend_interval=10.0)
    sched.add_block(block(nodes=4))
    sched.submit(task("unknown", 2))
    sched.submit(task("head", 4))
    assert ids(sched.schedule(0.0)) == ["unknown"]
    sched.submit(task("small", 1, submit_time=10.0))
    assert sched.schedule(10.0) == []  # lending is over: the head is served next
    # A reservation that rests on walltimes alone is still backfilled, by walltimes only.
    sure = Scheduler(lend_interval=10.0)
    sure.add_block(block(nodes=4))
    sure.submit(task("running", 2, walltime=100.0))
    sure.submit(task("head", 4))
    assert ids(sure.schedule(0.0)) == ["running"]
    sure.submit(task("guessed", 1, walltime=200.0, estimate=5.0, submit_time=20.0))
    sure.submit(task("bounded", 1, walltime=50.0, submit_time=20.0))
    assert ids(sure.schedule(20.0)) == ["bounded"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"estimate": 0.0}, "estimate"),
        ({"estimate": math.inf}, "estimate"),
        ({"estimate": "1"}, "estimate"),
        ({"kind": ""}, "kind"),
        ({"kind": 3}, "kind"),
    ],
)
def test_estimate_and_kind_are_checked(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError, match=field):
        TaskRequest("t", 1, 1, **kwargs)  # type: ignore[arg-type]


def test_set_estimate_refuses_a_non_positive_or_infinite_value() -> None:
    sched = Scheduler()
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="finite and > 0"):
            sched.set_estimate("k", bad)
    with pytest.raises(ValueError, match="lend_interval"):
        Scheduler(lend_interval=-1.0)


# -- the cold-start rule on the benchmark's head-of-line workloads (16 nodes) --------------


def _learned(sched: Scheduler, tasks: list[SimTask], kinds: dict[str, str]) -> float:
    """Simulate with the endpoint's learning in the loop (the last runtime of each kind)."""

    def learn(task_id: str, runtime: float) -> None:
        sched.set_estimate(kinds[task_id], runtime)

    sched.add_block(block(nodes=16))
    return simulate(sched, tasks, on_end=learn).makespan


def _workload(shapes: list[tuple[int, float]]) -> tuple[list[SimTask], dict[str, str]]:
    tasks, kinds = [], {}
    for i, (nodes, seconds) in enumerate(shapes):
        kinds[f"t{i}"] = f"sleep {seconds}|{nodes}"
        tasks.append(SimTask(task(f"t{i}", nodes, kind=kinds[f"t{i}"]), seconds))
    return tasks, kinds


def test_cold_start_packs_the_alternating_workload() -> None:
    # 20 x (16 nodes 1 s, 1 node 1 s): area bound 21.25 s; FIFO alternates (40 s).
    tasks, kinds = _workload([(16, 1.0), (1, 1.0)] * 20)
    assert _learned(Scheduler(), tasks, kinds) <= 22.0
    assert _learned(Scheduler(lend_interval=0.0), tasks, kinds) == 40.0


def test_cold_start_packs_the_one_long_task_workload() -> None:
    # 8 nodes 6 s, 16 x 16 nodes 0.5 s, 16 x 1 node 1 s: the best is 14 s (the 1-node tasks
    # beside the long one, then the wide ones).
    tasks, kinds = _workload([(8, 6.0)] + [(16, 0.5)] * 16 + [(1, 1.0)] * 16)
    assert _learned(Scheduler(), tasks, kinds) == 14.0
    assert _learned(Scheduler(lend_interval=0.0), tasks, kinds) == 15.0


def test_a_shape_that_failed_is_tried_again_once_its_estimate_shrinks() -> None:
    # c failed to backfill on the GPU block (its estimate ran past the head's reservation);
    # nothing was released there since, but its kind learned a shorter estimate.
    sched = Scheduler()
    sched.add_block(BlockInfo("gpu", ("g0", "g1"), 1, 1))
    sched.add_block(BlockInfo("cpu", ("c0",), 1, 0))
    sched.submit(TaskRequest("x", 1, 1, gpus_per_rank=1, estimate=10.0))
    sched.submit(TaskRequest("head", 2, 1, gpus_per_rank=1, estimate=1.0))
    sched.submit(TaskRequest("y", 1, 1, kind="k", estimate=50.0))
    sched.submit(TaskRequest("c", 1, 1, gpus_per_rank=1, kind="k"))
    assert ids(sched.schedule(0.0)) == ["x", "y"]
    assert sched.is_waiting("c")
    sched.release("y")  # on the CPU block
    sched.set_estimate("k", 1.0)
    assert ids(sched.schedule(1.0)) == ["c"]
