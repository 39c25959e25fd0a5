"""Property tests: the real Scheduler driven by a virtual clock (``simulate``).

Checked on every generated run: no core or GPU is held by two tasks at once, each placement
matches its request and its block, nothing runs past its block's end, the head task starts no
later than any reservation it was given, FIFO among equal shapes (so priority order too), every
task that fits eventually runs and none is lost. Plus aging under a stream of higher-priority
tasks, ``remove_block``, ``exclude_node`` (failed nodes) and ``check_fits``.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpiengine.placement import Placement
from mpiengine.scheduler import (
    BlockInfo,
    BlockShape,
    Scheduler,
    SimResult,
    SimTask,
    TaskRequest,
    check_fits,
    simulate,
)
from mpiengine_sdk.errors import TaskTooLarge

SETTINGS = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def blocks(draw, limited: bool = True) -> list[BlockInfo]:
    out = []
    for b in range(draw(st.integers(1, 3))):
        nodes = tuple(f"b{b}n{i}" for i in range(draw(st.integers(1, 5))))
        end = draw(st.one_of(st.none(), st.floats(30, 300))) if limited else None
        out.append(BlockInfo(f"b{b}", nodes, draw(st.integers(1, 6)), draw(st.integers(0, 2)), end))
    return out


@st.composite
def sim_tasks(draw, at_zero: bool = False, max_tasks: int = 25) -> list[SimTask]:
    out = []
    for i in range(draw(st.integers(1, max_tasks))):
        walltime = draw(st.one_of(st.none(), st.integers(1, 60).map(float)))
        runtime = draw(st.floats(0.1, 1.0)) * (walltime or 60.0)
        req = TaskRequest(
            task_id=f"t{i}",
            num_nodes=draw(st.integers(1, 3)),
            ranks_per_node=draw(st.integers(1, 3)),
            cpus_per_rank=draw(st.integers(1, 2)),
            gpus_per_rank=draw(st.sampled_from([0, 0, 1])),
            exclusive=draw(st.booleans()),
            walltime=walltime,
            priority=draw(st.integers(0, 2)),
            submit_time=0.0 if at_zero else float(draw(st.integers(0, 40))),
        )
        out.append(SimTask(req, runtime))
    return out


def fits_some(req: TaskRequest, blocks_: list[BlockInfo]) -> bool:
    return any(
        req.num_nodes <= len(b.nodes)
        and req.cores_per_node <= b.cores_per_node
        and req.gpus_per_node <= b.gpus_per_node
        for b in blocks_
    )


def run(blocks_: list[BlockInfo], tasks: list[SimTask], **options) -> tuple[Scheduler, SimResult]:
    sched = Scheduler(aging_interval=50.0, **options)
    for b in blocks_:
        sched.add_block(b)
    return sched, simulate(sched, tasks)


def check_trace(blocks_: list[BlockInfo], tasks: list[SimTask], result: SimResult) -> None:
    """Slots, capacity, block ends and request/placement agreement, over the whole run."""
    by_block = {b.block_id: b for b in blocks_}
    reqs = {t.request.task_id: t.request for t in tasks}
    started = [p.task_id for _, p in result.placements]
    assert len(started) == len(set(started)), "a task was placed twice"
    held: dict[tuple[str, str, str, int], list[tuple[float, float]]] = defaultdict(list)
    for start, p in result.placements:
        req, block = reqs[p.task_id], by_block[p.block_id]
        assert len(p.nodes) == req.num_nodes == len(set(p.nodes))
        assert set(p.nodes) <= set(block.nodes)
        assert start >= req.submit_time
        cores = block.cores_per_node if req.exclusive else req.cores_per_node
        gpus = block.gpus_per_node if req.exclusive else req.gpus_per_node
        assert req.cores_per_node <= block.cores_per_node
        assert req.gpus_per_node <= block.gpus_per_node
        if req.walltime is not None:
            assert p.walltime == req.walltime
        else:
            expected = None if block.end_time is None else block.end_time - start
            assert p.walltime == expected
        if block.end_time is not None:
            assert p.walltime is not None and start + p.walltime <= block.end_time + 1e-9
        end = result.ends[p.task_id]
        for node, node_cores, node_gpus in zip(p.nodes, p.cores, p.gpus, strict=True):
            assert len(node_cores) == cores == len(set(node_cores))
            assert len(node_gpus) == gpus == len(set(node_gpus))
            assert all(0 <= c < block.cores_per_node for c in node_cores)
            assert all(0 <= g < block.gpus_per_node for g in node_gpus)
            for c in node_cores:
                held[(p.block_id, node, "core", c)].append((start, end))
            for g in node_gpus:
                held[(p.block_id, node, "gpu", g)].append((start, end))
    for slot, spans in held.items():
        spans.sort()
        for (_, end1), (start2, _) in zip(spans, spans[1:], strict=False):
            assert start2 >= end1, f"{slot} double-booked"


def check_order(tasks: list[SimTask], result: SimResult, aging: float = 50.0) -> None:
    """Among tasks of one shape, a task ahead in (submit - priority * aging, submit order) is
    decided before any task behind it that was decided after it arrived."""
    reqs = sorted((t.request for t in tasks), key=lambda r: r.submit_time)
    seq = {r.task_id: i for i, r in enumerate(reqs)}
    decided = {p.task_id: (i, start) for i, (start, p) in enumerate(result.placements)}
    by_shape = defaultdict(list)
    for r in reqs:
        shape = (r.num_nodes, r.cores_per_node, r.gpus_per_node, r.exclusive, r.walltime)
        by_shape[shape].append(r)
    for group in by_shape.values():
        group.sort(key=lambda r: (r.submit_time - r.priority * aging, seq[r.task_id]))
        for k, ahead in enumerate(group):
            for behind in group[k + 1 :]:
                if behind.task_id not in decided:
                    continue
                index, start = decided[behind.task_id]
                if start >= ahead.submit_time:
                    assert ahead.task_id in decided, f"{behind.task_id} overtook {ahead.task_id}"
                    assert decided[ahead.task_id][0] < index, "order broken among equal shapes"


@SETTINGS
@given(blocks(limited=False), sim_tasks())
def test_unlimited_blocks_run_everything_that_fits(blocks_, tasks) -> None:
    tasks = [t for t in tasks if fits_some(t.request, blocks_)]
    sched, result = run(blocks_, tasks)
    check_trace(blocks_, tasks, result)
    check_order(tasks, result)
    assert result.unstarted == []
    assert sched.waiting == 0 and sched.running == 0


@SETTINGS
@given(blocks(), sim_tasks())
def test_limited_blocks_never_lose_or_overrun(blocks_, tasks) -> None:
    sched, result = run(blocks_, tasks)
    check_trace(blocks_, tasks, result)
    check_order(tasks, result)
    assert sched.running == 0
    assert sched.waiting == len(result.unstarted)
    for task_id in result.unstarted:
        assert sched.is_waiting(task_id)


@SETTINGS
@given(blocks(), sim_tasks(at_zero=True), st.sampled_from([1, 4, 64]))
def test_backfill_never_delays_the_head(blocks_, tasks, depth) -> None:
    # All tasks queued at once: the head changes only when it starts, so each reservation
    # it was given must hold.
    sched, result = run(blocks_, tasks, backfill_depth=depth)
    check_trace(blocks_, tasks, result)
    starts = {p.task_id: start for start, p in result.placements}
    for task_id, promised in result.reservations.items():
        assert task_id in starts, f"{task_id} had a reservation but never started"
        assert starts[task_id] <= promised + 1e-9


@SETTINGS
@given(blocks(limited=False), sim_tasks(at_zero=True))
def test_without_backfill_tasks_start_in_queue_order(blocks_, tasks) -> None:
    tasks = [t for t in tasks if fits_some(t.request, blocks_)]
    _, result = run(blocks_, tasks, backfill_depth=0)
    order = [p.task_id for _, p in result.placements]
    keys = {t.request.task_id: t.request.priority for t in tasks}
    index = {t.request.task_id: i for i, t in enumerate(tasks)}
    assert order == sorted(order, key=lambda i: (-keys[i], index[i]))


class NoMemoScheduler(Scheduler):
    """Re-checks every block for every shape: what the failure memos must not change."""

    def _backfill(self, first, now, res, out):
        for cls in self._queue.classes.values():  # forget every failure...
            cls.failed_at = cls.failed_free = -1
        self._last_pass = -1  # ...and count every block as released since the last pass
        super()._backfill(first, now, res, out)

    def _place(self, entry, now, res, since, cls=None, estimate=None):
        return super()._place(entry, now, res, -1, cls, estimate)


@SETTINGS
@given(blocks(), sim_tasks(max_tasks=40))
def test_failure_memos_change_no_decision(blocks_, tasks) -> None:
    _, fast = run(blocks_, tasks)
    slow_sched = NoMemoScheduler(aging_interval=50.0)
    for b in blocks_:
        slow_sched.add_block(b)
    slow = simulate(slow_sched, tasks)
    assert fast.placements == slow.placements


def test_aging_prevents_starvation_by_higher_priority_stream() -> None:
    # A whole-block task at priority 0 against a stream of priority-1 one-node tasks that keeps
    # all 4 nodes busy (one every 1.9 s, 8 s each) for 3,800 s. Tasks that arrive more than
    # aging_interval after it queue behind it, so it waits for those before them only.
    aging = 100.0
    block = BlockInfo("b", tuple(f"n{i}" for i in range(4)), 1)
    tasks = [SimTask(TaskRequest("big", 4, 1, walltime=10.0), 10.0)]
    for i in range(2000):
        req = TaskRequest(f"s{i}", 1, 1, walltime=8.0, priority=1, submit_time=i * 1.9)
        tasks.append(SimTask(req, 8.0))
    starts = {}
    for interval in (aging, 1e9):
        sched = Scheduler(aging_interval=interval)
        sched.add_block(block)
        result = simulate(sched, tasks)
        assert result.unstarted == []
        starts[interval] = {p.task_id: s for s, p in result.placements}
    assert starts[aging]["big"] <= aging + 4 * 8.0
    assert max(starts[aging].values()) > 3700  # the stream did go on
    assert starts[1e9]["big"] > 3700  # without aging it waits for the whole stream


@SETTINGS
@given(
    blocks(limited=False),
    sim_tasks(at_zero=True),
    st.lists(st.integers(0, 30), max_size=10),
    st.integers(0, 2),
)
def test_remove_block_returns_exactly_its_running_tasks(blocks_, tasks, ends, victim) -> None:
    sched = Scheduler()
    for b in blocks_:
        sched.add_block(b)
    for t in tasks:
        sched.submit(t.request)
    running: dict[str, str] = {}
    for p in sched.schedule(0.0):
        running[p.task_id] = p.block_id
    for k in ends:
        if running:
            task_id = sorted(running)[k % len(running)]
            assert sched.release(task_id)
            del running[task_id]
            for p in sched.schedule(1.0):
                running[p.task_id] = p.block_id
    block_id = blocks_[victim % len(blocks_)].block_id
    gone = sched.remove_block(block_id)
    assert sorted(gone) == sorted(t for t, b in running.items() if b == block_id)
    assert sched.running == len(running) - len(gone)
    assert all(not sched.is_running(t) for t in gone)
    placed = sched.schedule(2.0)
    assert all(p.block_id != block_id for p in placed)


shapes_st = st.lists(
    st.builds(
        BlockShape,
        st.integers(1, 8),
        st.integers(1, 8),
        st.integers(0, 2),
        st.one_of(st.none(), st.integers(10, 100).map(float)),
    ),
    max_size=3,
)


@SETTINGS
@given(shapes_st, sim_tasks(max_tasks=5))
def test_check_fits_refuses_exactly_the_impossible(shapes, tasks) -> None:
    for t in tasks:
        req = t.request
        possible = [
            s
            for s in shapes
            if req.num_nodes <= s.num_nodes
            and req.cores_per_node <= s.cores_per_node
            and req.gpus_per_node <= s.gpus_per_node
            and (s.walltime is None or req.walltime is None or req.walltime <= s.walltime)
        ]
        try:
            check_fits(req, shapes)
        except TaskTooLarge as err:
            assert not possible
            assert f"{req.num_nodes} nodes x {req.cores_per_node} cores" in str(err)
            continue
        assert possible
        # and a block of that shape, fresh, does run it
        shape = possible[0]
        sched = Scheduler()
        nodes = tuple(f"n{i}" for i in range(shape.num_nodes))
        sched.add_block(BlockInfo("b", nodes, shape.cores_per_node, shape.gpus_per_node, None))
        sched.submit(req)
        assert [p.task_id for p in sched.schedule(0.0)] == [req.task_id]


@SETTINGS
@given(
    blocks(limited=False),
    sim_tasks(),
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 2), st.integers(0, 4)), max_size=5),
)
def test_no_placement_ever_includes_an_excluded_node(blocks_, tasks, failures) -> None:
    # Nodes fail at given times; as the engine does, the tasks on a failed node are killed
    # (released) and submitted again. Checked: exclude_node names exactly the tasks running
    # there, no placement after a failure uses the node, no slot is held twice, and every
    # task that still fits what is left of some block runs.
    sched = Scheduler(aging_interval=50.0)
    for b in blocks_:
        sched.add_block(b)
    by_block = {b.block_id: b for b in blocks_}
    arrivals = sorted(tasks, key=lambda t: t.request.submit_time)
    runtime = {t.request.task_id: t.runtime for t in tasks}
    reqs = {t.request.task_id: t.request for t in tasks}
    fails = sorted(failures)
    running: dict[str, tuple[float, Placement]] = {}
    excluded: set[tuple[str, str]] = set()
    done: set[str] = set()
    now = 0.0
    while arrivals or running or fails:
        now = min(
            arrivals[0].request.submit_time if arrivals else math.inf,
            min((end for end, _ in running.values()), default=math.inf),
            fails[0][0] if fails else math.inf,
        )
        for task_id in [t for t, (end, _) in running.items() if end <= now]:
            assert sched.release(task_id)
            del running[task_id]
            done.add(task_id)
        while arrivals and arrivals[0].request.submit_time <= now:
            sched.submit(arrivals.pop(0).request)
        while fails and fails[0][0] <= now:
            _, b, n = fails.pop(0)
            block = blocks_[b % len(blocks_)]
            node = block.nodes[n % len(block.nodes)]
            hit = sched.exclude_node(block.block_id, node)
            on_node = [t for t, (_, p) in running.items() if p.block_id == block.block_id
                       and node in p.nodes]  # fmt: skip
            assert sorted(hit) == sorted(on_node)
            assert sched.exclude_node(block.block_id, node) == []  # once is enough
            excluded.add((block.block_id, node))
            for task_id in hit:
                assert sched.release(task_id)
                del running[task_id]
                sched.submit(reqs[task_id])
        for p in sched.schedule(now):
            assert not {(p.block_id, n) for n in p.nodes} & excluded, "placed on a failed node"
            for _, other in running.values():
                if other.block_id != p.block_id:
                    continue
                for node, cores in zip(p.nodes, p.cores, strict=True):
                    if node in other.nodes:
                        theirs = other.cores[other.nodes.index(node)]
                        assert not set(cores) & set(theirs), f"core on {node} held twice"
            limit = math.inf if p.walltime is None else p.walltime
            running[p.task_id] = (now + min(runtime[p.task_id], limit), p)
    for t in tasks:
        if t.request.task_id in done:
            continue
        req = t.request
        usable = {
            b.block_id: len(b.nodes) - sum(1 for bid, _ in excluded if bid == b.block_id)
            for b in blocks_
        }
        assert not any(
            req.num_nodes <= usable[b.block_id]
            and req.cores_per_node <= b.cores_per_node
            and req.gpus_per_node <= b.gpus_per_node
            for b in by_block.values()
        ), f"{req.task_id} fits what is left but never ran"
        assert sched.is_waiting(req.task_id)
    # Nothing runs now: every slot of a usable node is free, none of a failed one is offered.
    for b in blocks_:
        pool = sched._pools[b.block_id]
        assert pool.free_cores == b.cores_per_node * pool.usable


def test_exclude_node_refuses_an_unknown_block_or_node() -> None:
    sched = Scheduler()
    sched.add_block(BlockInfo("b", ("n0", "n1"), 2))
    with pytest.raises(KeyError):
        sched.exclude_node("nope", "n0")
    with pytest.raises(ValueError, match="has no node 'n9'"):
        sched.exclude_node("b", "n9")


def test_a_retired_block_takes_nothing_new_and_is_idle_once_its_tasks_end() -> None:
    sched = Scheduler()
    sched.add_block(BlockInfo("b", ("n0", "n1"), 2))
    sched.submit(TaskRequest("first", 1, 1))
    [placed] = sched.schedule(0.0)
    sched.retire_block("b")
    sched.submit(TaskRequest("second", 1, 1))
    assert sched.schedule(1.0) == []
    assert sched.idle_blocks() == []
    assert sched.demand(1.0).head_needs_new_block
    assert sched.release(placed.task_id)
    assert sched.idle_blocks() == ["b"]
    assert sched.schedule(2.0) == [] and sched.is_waiting("second")


# -- predicted runtimes: wrong both ways -------------------------------------------------------


@st.composite
def predicted_tasks(draw, max_tasks: int = 25) -> list[SimTask]:
    """Tasks all queued at 0 whose estimates are wrong both ways (a quarter to four times the
    runtime), some of a shared kind (learned as they end), some unknown (no estimate, no
    walltime: blind), some with a walltime."""
    out = []
    for i in range(draw(st.integers(1, max_tasks))):
        runtime = draw(st.floats(0.1, 30.0))
        walltime = draw(st.one_of(st.none(), st.floats(0.1, 60.0)))
        if walltime is not None:
            runtime = min(runtime, walltime)  # as killed at it
        estimate = draw(st.one_of(st.none(), st.floats(0.25, 4.0).map(lambda f, r=runtime: f * r)))
        req = TaskRequest(
            task_id=f"t{i}",
            num_nodes=draw(st.integers(1, 3)),
            ranks_per_node=draw(st.integers(1, 3)),
            cpus_per_rank=draw(st.integers(1, 2)),
            gpus_per_rank=draw(st.sampled_from([0, 0, 1])),
            exclusive=draw(st.booleans()),
            walltime=walltime,
            priority=draw(st.integers(0, 2)),
            estimate=estimate,
            kind=draw(st.sampled_from([None, None, "k1", "k2"])),
        )
        out.append(SimTask(req, runtime))
    return out


def run_learning(
    blocks_: list[BlockInfo], tasks: list[SimTask], check=None, **options
) -> tuple[Scheduler, SimResult]:
    """Simulate as the endpoint runs: a task's kind learns its runtime when it ends."""
    sched = Scheduler(aging_interval=50.0, **options)
    for b in blocks_:
        sched.add_block(b)
    kinds = {t.request.task_id: t.request.kind for t in tasks}

    def learn(task_id: str, runtime: float) -> None:
        if kinds[task_id] is not None:
            sched.set_estimate(kinds[task_id], runtime)

    on_schedule = None if check is None else (lambda now, _: check(sched, now))
    return sched, simulate(sched, tasks, on_end=learn, on_schedule=on_schedule)


def check_estimates_current(sched: Scheduler, now: float) -> None:
    """After ``schedule(now)``: no running task's estimated end is past (a task that outlived
    its estimate was corrected), and the head's finite reservation holds under the current
    estimates: each reserved node fits the head once the tasks estimated to end by then
    have ended (so it was computed again when a holder outlived its estimate)."""
    for pool in sched._pools.values():
        for run in pool.tasks.values():
            assert run.end >= now, f"{run.task_id}: estimated end {run.end} < now {now}"
    res, first = sched._res, sched._queue.first()
    if res is None or first is None or res.seq != first[1] or res.pool is None:
        return
    if res.time == math.inf:
        return
    pool = res.pool
    c, g = pool.need(sched._queue.request(res.task_id))
    for i in res.nodes:
        assert i not in pool.excluded
        cores = sum(r.ncores for r in pool.tasks.values() if i in r.nodes and r.end > res.time)
        gpus = sum(r.ngpus for r in pool.tasks.values() if i in r.nodes and r.end > res.time)
        assert pool.cpn - cores >= c and pool.gpn - gpus >= g, f"node {i} not free by {res.time}"


@SETTINGS
@given(blocks(), predicted_tasks(), st.sampled_from([1, 4, 64]))
def test_wrong_predictions_never_let_backfill_delay_the_head_past_its_last_reservation(
    blocks_, tasks, depth
) -> None:
    # All queued at once: the head changes only when it starts. Whatever the predictions,
    # it starts no later than its reservation as last computed before it started.
    sched, result = run_learning(blocks_, tasks, check_estimates_current, backfill_depth=depth)
    check_trace(blocks_, tasks, result)
    starts = {p.task_id: start for start, p in result.placements}
    for task_id, promised in result.last_reservations.items():
        if promised < math.inf:
            assert task_id in starts, f"{task_id} had a reservation but never started"
            assert starts[task_id] <= promised + 1e-9


@SETTINGS
@given(blocks(limited=False), predicted_tasks())
def test_with_predictions_every_task_that_fits_runs(blocks_, tasks) -> None:
    tasks = [t for t in tasks if fits_some(t.request, blocks_)]
    sched, result = run_learning(blocks_, tasks)
    check_trace(blocks_, tasks, result)
    assert result.unstarted == []
    assert sched.waiting == 0 and sched.running == 0 and sched.next_wake is None


@SETTINGS
@given(blocks(limited=False), predicted_tasks(), st.sampled_from([0.0, 1.0, 5.0]))
def test_no_starvation_the_head_waits_at_most_its_lending_interval_and_a_runtime(
    blocks_, tasks, lend
) -> None:
    # The aging bound: after lend seconds as the head, nothing more starts before it unless
    # its reservation rests on walltimes (then it starts by that reservation).
    tasks = [t for t in tasks if fits_some(t.request, blocks_)]
    _, result = run_learning(blocks_, tasks, lend_interval=lend)
    starts = {p.task_id: start for start, p in result.placements}
    longest = max((t.runtime for t in tasks), default=0.0)
    order = sorted(range(len(tasks)), key=lambda i: (-tasks[i].request.priority, i))
    ahead = 0.0  # when every task before it in the queue had started: it became the head
    for i in order:
        task_id = tasks[i].request.task_id
        start = starts[task_id]
        promised = result.last_reservations.get(task_id, math.inf)
        assert start <= ahead + lend + longest + 1e-9 or start <= promised + 1e-9, task_id
        ahead = max(ahead, start)


@SETTINGS
@given(
    st.integers(2, 5),
    st.lists(st.floats(0.5, 10.0), min_size=1, max_size=30),
    st.sampled_from([0.0, 1.0, 5.0]),
    st.sampled_from([None, 0.25, 0.5]),
)
def test_a_stream_of_backfills_cannot_starve_the_head(nodes, runtimes, lend, guess) -> None:
    # The head needs the whole block and waits for a running task; behind it, one-node tasks
    # would go before it one after the other: borrowing its idle nodes while nobody knows a
    # runtime (guess None), or backfilling by predictions that are too short (a quarter or
    # half of the truth), each delaying it a little more.
    block = BlockInfo("b", tuple(f"n{i}" for i in range(nodes)), 1)

    def req(task_id: str, n: int, runtime: float) -> TaskRequest:
        return TaskRequest(task_id, n, 1, estimate=None if guess is None else guess * runtime)

    tasks = [SimTask(req("blocker", 1, runtimes[0]), runtimes[0])]
    tasks.append(SimTask(req("head", nodes, 1.0), 1.0))
    tasks += [SimTask(req(f"s{i}", 1, r), r) for i, r in enumerate(runtimes[1:])]
    _, result = run_learning([block], tasks, lend_interval=lend)
    starts = {p.task_id: start for start, p in result.placements}
    assert starts["head"] <= lend + max(runtimes) + 1e-9


@SETTINGS
@given(blocks(), predicted_tasks(max_tasks=40))
def test_failure_memos_change_no_decision_as_estimates_change(blocks_, tasks) -> None:
    # Estimates learned as tasks end make a shape that failed fit again (a shorter one):
    # the memos must notice, exactly as re-checking everything does.
    _, fast = run_learning(blocks_, tasks)
    slow_sched = NoMemoScheduler(aging_interval=50.0)
    for b in blocks_:
        slow_sched.add_block(b)
    kinds = {t.request.task_id: t.request.kind for t in tasks}

    def learn(task_id: str, runtime: float) -> None:
        if kinds[task_id] is not None:
            slow_sched.set_estimate(kinds[task_id], runtime)

    slow = simulate(slow_sched, tasks, on_end=learn)
    assert fast.placements == slow.placements
