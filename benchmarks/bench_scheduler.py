"""Benchmark the scheduler at scale with a virtual clock.

Drives the real :class:`mpiengine.scheduler.Scheduler` through :func:`simulate`: ``--nodes``
nodes in several blocks (CPU and GPU nodes, some with a walltime), ``--tasks`` heterogeneous
tasks all queued at time 0 (whole-node tasks of 1-64 nodes, sub-node tasks of a few ranks,
some on GPUs; walltimes, priorities; ``--predicted`` of them without walltime but with a
prediction wrong by up to 2x either way, of 64 kinds that learn as tasks end), run to
completion. Prints the placements, the microseconds per placement decision (wall time inside
``schedule()``/``release()``/``set_estimate()`` divided by placements), utilisation, makespan
against the area lower bound, and PASS/FAIL against the 50 us goal. ``--sweep`` runs 1,000,
10,000 and 100,000 nodes (10 queued tasks per node) to show how the cost grows.

    python benchmarks/bench_scheduler.py [--nodes 10000 --tasks 100000 --seed 1] [--quick]
    python benchmarks/bench_scheduler.py --sweep [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

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


def make_tasks(
    count: int, rng: random.Random, max_nodes: int, predicted: float = 0.0
) -> list[SimTask]:
    """Whole-node tasks (1-64 nodes, mostly small) and sub-node tasks, with walltimes; a
    ``predicted`` share of them give no walltime but carry a prediction (wrong by a factor
    of up to 2 either way) and one of 64 kinds, which learn from their runtimes."""
    tasks = []
    for i in range(count):
        guessed = predicted > 0 and rng.random() < predicted
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
        runtime = walltime * rng.uniform(0.2, 1.0)
        if guessed:
            estimate = runtime * 2 ** rng.uniform(-1.0, 1.0)
            kind = f"kind{rng.randrange(64)}"
            req = replace(req, walltime=None, estimate=estimate, kind=kind)
        tasks.append(SimTask(req, runtime=runtime))
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


def run_one(args: argparse.Namespace) -> dict[str, float | int]:
    """One simulated run at ``args.nodes`` / ``args.tasks``; its figures."""
    rng = random.Random(args.seed)
    blocks = make_blocks(args.nodes)
    max_nodes = min(64, min(len(b.nodes) for b in blocks))
    tasks = make_tasks(args.tasks, rng, max_nodes, predicted=args.predicted)
    options = {} if args.backfill_depth is None else {"backfill_depth": args.backfill_depth}
    sched = Scheduler(**options)
    for block in blocks:
        sched.add_block(block)
    kinds = {t.request.task_id: t.request.kind for t in tasks if t.request.kind is not None}
    learning = [0.0]

    def learn(task_id: str, runtime: float) -> None:
        # What the endpoint tells the scheduler when a task of a kind ends (its predictor's
        # new estimate; here simply the last runtime), timed as scheduler work.
        kind = kinds.get(task_id)
        if kind is not None:
            started = time.perf_counter()
            sched.set_estimate(kind, runtime)
            learning[0] += time.perf_counter() - started

    started = time.perf_counter()
    timer = PairTimer()
    result = simulate(sched, tasks, timer=timer, track_reservations=False, on_end=learn)
    elapsed = time.perf_counter() - started

    placements = len(result.placements)
    busy = result.busy_seconds + learning[0]
    cpn = {b.block_id: b.cores_per_node for b in blocks}
    by_id = {t.request.task_id: t for t in tasks}
    used = sum(core_seconds(by_id[p.task_id], cpn[p.block_id]) for _, p in result.placements)
    total_cores = sum(len(b.nodes) * b.cores_per_node for b in blocks)
    total_gpus = sum(len(b.nodes) * b.gpus_per_node for b in blocks)
    need = sum(core_seconds(t, 64) for t in tasks)
    gpu_need = sum(t.request.num_nodes * t.request.gpus_per_node * t.runtime for t in tasks)
    bound = max(need / total_cores, gpu_need / total_gpus, max(t.runtime for t in tasks))
    return {
        "nodes": args.nodes,
        "blocks": len(blocks),
        "tasks": args.tasks,
        "predicted_share": args.predicted,
        "placements": placements,
        "unstarted": len(result.unstarted),
        "calls": result.calls,
        "scheduler_s": busy,
        "simulation_s": elapsed,
        "us_per_placement": busy / max(1, placements) * 1e6,
        "us_per_placement_cpu": (timer.cpu_seconds + learning[0]) / max(1, placements) * 1e6,
        "utilisation": used / (total_cores * result.makespan) if result.makespan else 0.0,
        "makespan_h": result.makespan / HOUR,
        "bound_h": bound / HOUR,
        "load": os.getloadavg()[0],
    }


def report_one(fig: dict[str, float | int], seed: int) -> bool:
    """Print one run's figures; whether it met the goal."""
    ok = fig["us_per_placement"] <= GOAL_US and not fig["unstarted"]
    print(f"nodes {fig['nodes']} in {fig['blocks']} blocks, tasks {fig['tasks']}, seed {seed}")
    print(f"predicted share       {fig['predicted_share']:.0%} (no walltime, a learned estimate)")
    print(f"placements            {fig['placements']} (unstarted {fig['unstarted']})")
    print(f"schedule() calls      {fig['calls']}")
    print(
        f"scheduler time        {fig['scheduler_s']:.2f} s "
        f"(simulation total {fig['simulation_s']:.1f} s)"
    )
    print(f"per placement         {fig['us_per_placement']:.1f} us wall (goal <= {GOAL_US:.0f} us)")
    print(
        f"per placement, CPU    {fig['us_per_placement_cpu']:.1f} us "
        f"(load average {fig['load']:.1f})"
    )
    print(f"utilisation           {fig['utilisation']:.1%}")
    print(f"makespan              {fig['makespan_h']:.2f} h")
    ratio = fig["makespan_h"] / fig["bound_h"]
    print(f"area lower bound      {fig['bound_h']:.2f} h (makespan / bound {ratio:.2f})")
    return bool(ok)


SWEEP = (1_000, 10_000, 100_000)


def sweep(args: argparse.Namespace, sizes: tuple[int, ...]) -> tuple[list[dict[str, Any]], bool]:
    """One run per size (tasks 10x nodes), each in its own process (1,000,000 queued tasks
    take 1.5 GB); prints the cost per placement as it grows. The goal holds at 10,000."""
    figures: list[dict[str, Any]] = []
    print(f"{'nodes':>8} {'tasks':>9} {'us/placement':>13} {'CPU us':>8} {'util':>7} "
          f"{'makespan/bound':>15} {'unstarted':>10}")  # fmt: skip
    ok = True
    for nodes in sizes:
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "figures.json"
            cmd = [
                sys.executable, __file__, "--nodes", str(nodes), "--tasks", str(10 * nodes),
                "--seed", str(args.seed), "--predicted", str(args.predicted), "--json", str(out),
            ]  # fmt: skip
            if args.backfill_depth is not None:
                cmd += ["--backfill-depth", str(args.backfill_depth)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if not out.is_file():
                print(f"{nodes:>8} ERROR {done.stderr[-300:]}")
                ok = False
                continue
            fig = json.loads(out.read_text())
        figures.append(fig)
        ratio = fig["makespan_h"] / fig["bound_h"]
        print(f"{fig['nodes']:>8} {fig['tasks']:>9} {fig['us_per_placement']:>13.1f} "
              f"{fig['us_per_placement_cpu']:>8.1f} {fig['utilisation']:>7.1%} "
              f"{ratio:>15.2f} {fig['unstarted']:>10}", flush=True)  # fmt: skip
        ok &= not fig["unstarted"]
        if nodes == 10_000:
            ok &= fig["us_per_placement"] <= GOAL_US
    return figures, ok


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0 on PASS, 1 on FAIL."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--backfill-depth", type=int, default=None)
    parser.add_argument(
        "--predicted",
        type=float,
        default=0.3,
        help="share of tasks with no walltime but a learned estimate (0.3)",
    )
    parser.add_argument(
        "--sweep", action="store_true", help="1,000, 10,000 and 100,000 nodes (10x tasks)"
    )
    parser.add_argument("--quick", action="store_true", help="200 nodes, 3,000 tasks")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.sweep:
        sizes = (100, 300, 1_000) if args.quick else SWEEP
        figures, ok = sweep(args, sizes)
        if args.json:
            args.json.write_text(json.dumps(figures))
        print(("PASS" if ok else "FAIL") + f"  <= {GOAL_US:.0f} us per placement at 10,000 nodes")
        return 0 if ok else 1
    if args.quick:
        args.nodes, args.tasks = 200, 3_000
    fig = run_one(args)
    if args.json:
        args.json.write_text(json.dumps(fig))
    ok = report_one(fig, args.seed)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
