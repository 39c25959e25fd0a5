"""Scaling rules: when to request blocks, when to release them, how long to back off."""

from __future__ import annotations

from mpiengine.blocks.scaling import backoff_delay, blocks_to_add, blocks_to_release
from mpiengine.scheduler import Demand


def demand(waiting=0, nodes=0, free=0, largest=0, stuck=False) -> Demand:
    return Demand(
        waiting_tasks=waiting,
        waiting_nodes=nodes,
        free_nodes=free,
        extra_nodes=max(0, nodes - free),
        largest_task_nodes=largest,
        head_needs_new_block=stuck,
    )


def add(d: Demand, connected=0, pending=0, npb=4, lo=0, hi=3) -> int:
    return blocks_to_add(
        d, connected=connected, pending=pending, nodes_per_block=npb, min_blocks=lo, max_blocks=hi
    )


def test_nothing_waiting_nothing_requested() -> None:
    assert add(demand()) == 0


def test_min_blocks_are_kept_counting_pending_ones() -> None:
    assert add(demand(), lo=2) == 2
    assert add(demand(), pending=1, lo=2) == 1
    assert add(demand(), connected=2, lo=2) == 0


def test_waiting_nodes_beyond_free_ones_ask_for_enough_blocks() -> None:
    assert add(demand(waiting=3, nodes=6, free=0)) == 2  # 6 nodes / 4 per block
    assert add(demand(waiting=3, nodes=6, free=2), connected=1) == 1


def test_pending_blocks_count_against_the_need() -> None:
    assert add(demand(waiting=2, nodes=4, free=0), pending=1) == 0
    assert add(demand(waiting=3, nodes=9, free=0), pending=1) == 2


def test_never_above_max_blocks() -> None:
    assert add(demand(waiting=100, nodes=400), hi=3) == 3
    assert add(demand(waiting=100, nodes=400), connected=2, pending=1, hi=3) == 0
    assert add(demand(), connected=3, lo=5, hi=3) == 0


def test_a_head_that_fits_no_block_gets_one_new_block() -> None:
    # e.g. the only block ends too soon for the head's walltime, though nodes are free
    assert add(demand(waiting=1, nodes=1, free=4, stuck=True), connected=1) == 1
    assert add(demand(waiting=1, nodes=1, free=4, stuck=True), connected=1, pending=1) == 0


def release(now, idle, ends=None, connected=None, waiting=0, lo=0, idle_time=10.0):
    return blocks_to_release(
        now,
        idle,
        ends or {},
        connected=len(idle) if connected is None else connected,
        waiting_tasks=waiting,
        min_blocks=lo,
        max_idle_time=idle_time,
        margin=1.0,
    )


def test_idle_blocks_are_released_after_max_idle_time_oldest_first() -> None:
    assert release(105.0, {"a": 100.0}) == []
    assert release(111.0, {"b": 101.0, "a": 100.0}) == ["a", "b"]


def test_min_blocks_are_kept_even_when_idle() -> None:
    assert release(200.0, {"a": 100.0, "b": 101.0}, lo=1) == ["a"]
    assert release(200.0, {"a": 100.0}, connected=2, lo=2) == []


def test_nothing_is_released_while_tasks_wait() -> None:
    assert release(200.0, {"a": 100.0}, waiting=1) == []


def test_a_block_at_its_end_is_released_at_once() -> None:
    assert release(100.5, {"a": 100.0}, ends={"a": 101.0}, waiting=3, lo=1) == ["a"]


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_delay(n, 10) for n in range(6)] == [0.0, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert backoff_delay(1000, 60) == 60
