"""Benchmark the scheduler at scale with a virtual clock.

Drives the real :class:`mpiengine.scheduler.Scheduler` through :func:`simulate`: ``--nodes``
nodes in several blocks (CPU and GPU nodes, some with a walltime), ``--tasks`` heterogeneous
tasks all queued at time 0 (whole-node tasks of 1-64 nodes, sub-node tasks of a few ranks,
some on GPUs; walltimes, priorities), run to completion. Prints the placements, the
microseconds per placement decision (wall time inside ``schedule()``/``release()`` divided by
placements), utilisation, makespan against the area lower bound, and PASS/FAIL against the
50 us goal.

    python benchmarks/bench_scheduler.py [--nodes 10000 --tasks 100000 --seed 1] [--quick]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

from mpiengine.scheduler import BlockInfo, Scheduler, SimTask, TaskRequest, simulate

GOAL_US = 50.0
HOUR = 3600.0


def make_blocks(nodes: int) -> list[BlockInfo]:
    """Several blocks of 64-core nodes: 70% CPU only, 30% with 4 GPUs; some end after 4 days."""
    fractions = [
        (0.30, 64, 0, None),
        (0.20, 64, 0, 96 * HOUR),
        (0.20, 64, 0, None),
        (0.15, 64, 4, None),
        (0.15, 64, 4, 96 * HOUR),
    ]
    blocks = []
    start = 0
    for index, (share, cores, gpus, end) in enumerate(fractions):
        count = max(1, round(nodes * share)) if index < len(fractions) - 1 else nodes - start
        names = tuple(f"nid{start + i:06d}" for i in range(count))
        blocks.append(BlockInfo(f"block{index}", names, cores, gpus, end))
        start += count
    return blocks


def make_tasks(count: int, rng: random.Random, max_nodes: int) -> list[SimTask]:
    """Whole-node tasks (1-64 nodes, mostly small) and sub-node tasks, with walltimes."""
    tasks = []
    for i in range(count):
        walltime = rng.choice([300.0, 600.0, 1800.0, HOUR, 2 * HOUR])
        priority = rng.choices([0, 1, 2], weights=[85, 10, 5])[0]
        kind = rng.random()
        if kind < 0.5:  # whole nodes, exclusive
            nodes = min(max_nodes, int(2 ** rng.uniform(0, 6)))
            req = TaskRequest(
                f"t{i}", nodes, rng.choice([1, 4, 32]), exclusive=True,
                walltime=walltime, priority=priority,
            )  # fmt: skip
        elif kind < 0.85:  # sub-node CPU
            req = TaskRequest(
                f"t{i}", rng.choice([1, 1, 1, 2, 4]), rng.choice([1, 2, 4, 8]),
                cpus_per_rank=rng.choice([1, 2, 4]), walltime=walltime, priority=priority,
            )  # fmt: skip
        else:  # sub-node GPU
            ranks = rng.choice([1, 2, 4])
            req = TaskRequest(
                f"t{i}", rng.choice([1, 1, 2]), ranks, cpus_per_rank=rng.choice([1, 4, 8]),
                gpus_per_rank=1, walltime=walltime, priority=priority,
            )  # fmt: skip
        tasks.append(SimTask(req, runtime=walltime * rng.uniform(0.2, 1.0)))
    return tasks


class PairTimer:
    """``time.perf_counter`` for ``simulate``, which calls it in (before, after) pairs around
    each scheduler call; also sums the CPU time (``time.process_time``) of those pairs, which
    a busy machine disturbs less than wall time."""

    def __init__(self) -> None:
        self.cpu_seconds = 0.0
        self._cpu_start: float | None = None

    def __call__(self) -> float:
        # Read the CPU clock outside the timed span: before the wall clock at a start, after
        # it at an end, so that its cost is not counted as scheduler time.
        if self._cpu_start is None:
            self._cpu_start = time.process_time()
            return time.perf_counter()
        wall = time.perf_counter()
        self.cpu_seconds += time.process_time() - self._cpu_start
        self._cpu_start = None
        return wall


def core_seconds(task: SimTask, cores_per_node: int) -> float:
    """Cores a task holds times its runtime (exclusive tasks hold whole nodes)."""
    req = task.request
    per_node = cores_per_node if req.exclusive else req.cores_per_node
    return req.num_nodes * per_node * task.runtime


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0 on PASS, 1 on FAIL."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--backfill-depth", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="200 nodes, 3,000 tasks")
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes, args.tasks = 200, 3_000
    rng = random.Random(args.seed)
    blocks = make_blocks(args.nodes)
    tasks = make_tasks(args.tasks, rng, max_nodes=min(64, min(len(b.nodes) for b in blocks)))
    options = {} if args.backfill_depth is None else {"backfill_depth": args.backfill_depth}
    sched = Scheduler(**options)
    for block in blocks:
        sched.add_block(block)

    started = time.perf_counter()
    timer = PairTimer()
    result = simulate(sched, tasks, timer=timer, track_reservations=False)
    elapsed = time.perf_counter() - started

    placements = len(result.placements)
    per_decision = result.busy_seconds / max(1, placements) * 1e6
    per_decision_cpu = timer.cpu_seconds / max(1, placements) * 1e6
    cpn = {b.block_id: b.cores_per_node for b in blocks}
    by_id = {t.request.task_id: t for t in tasks}
    used = sum(core_seconds(by_id[p.task_id], cpn[p.block_id]) for _, p in result.placements)
    total_cores = sum(len(b.nodes) * b.cores_per_node for b in blocks)
    total_gpus = sum(len(b.nodes) * b.gpus_per_node for b in blocks)
    need = sum(core_seconds(t, 64) for t in tasks)
    gpu_need = sum(t.request.num_nodes * t.request.gpus_per_node * t.runtime for t in tasks)
    bound = max(need / total_cores, gpu_need / total_gpus, max(t.runtime for t in tasks))
    utilisation = used / (total_cores * result.makespan) if result.makespan else 0.0
    ok = per_decision <= GOAL_US and not result.unstarted

    print(f"nodes {args.nodes} in {len(blocks)} blocks, tasks {args.tasks}, seed {args.seed}")
    print(f"placements            {placements} (unstarted {len(result.unstarted)})")
    print(f"schedule() calls      {result.calls}")
    print(f"scheduler time        {result.busy_seconds:.2f} s (simulation total {elapsed:.1f} s)")
    print(f"per placement         {per_decision:.1f} us wall (goal <= {GOAL_US:.0f} us)")
    print(
        f"per placement, CPU    {per_decision_cpu:.1f} us (load average {os.getloadavg()[0]:.1f})"
    )
    print(f"utilisation           {utilisation:.1%}")
    print(f"makespan              {result.makespan / HOUR:.2f} h")
    ratio = result.makespan / bound
    print(f"area lower bound      {bound / HOUR:.2f} h (makespan / bound {ratio:.2f})")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
