"""The packing section of ``bench_core.py``: three workloads x three walltime modes, mpiengine
cold and warm beside Parsl's MPI mode, and the policy alone on a virtual clock.

For each workload and walltime mode, mpiengine runs twice on one endpoint working directory:
*cold* (a fresh directory: no history) and then *warm* (a new executor on the same directory,
after a restart: the runtimes learned by the cold run are loaded from its predictions file).
Parsl runs each workload once: its MPI scheduling never reads walltimes, so that one run is its
figure for every mode. ``policy (sim)`` is mpiengine's scheduler with the endpoint's predictor
in the loop on a virtual clock (tasks run their sleep plus 5 ms): what the policy alone does.

Figures per cell: makespan / area lower bound, the largest task's wait (the longest time a task
of the most nodes spent beyond its own sleep between submit and result), tasks lost.
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _bench_common as common

__all__ = ["policy_only", "report_packing", "run_packing_section"]

#: Goals of the issue, warm and without walltimes: makespan / area bound per workload.
GOALS_WARM = {"packing": 1.10, "alternating": 1.15, "long-head": 1.20}
#: Walltimes 3x too long, on the 200-task workload, cold and warm.
GOAL_3X = 1.10
#: What a task runs beyond its sleep in the simulation (starting and reporting a process).
SIM_OVERHEAD = 0.005

MODE_LABELS = {"none": "none", "3x": "3x too long", "exact": f"exact+{common.EXACT_MARGIN:g}s"}
PHASES = ("cold", "warm")


def count_for(name: str, args: argparse.Namespace) -> int:
    """The size parameter of workload ``name`` for this run."""
    if name == "packing":
        return int(args.pack_tasks)
    return 2 if args.quick else {"alternating": 20, "long-head": 16}[name]


def deadline_for(work: list[common.PackingTask]) -> float:
    """Give up on a run after 3x the lower bound (at least a minute)."""
    return max(60.0, 3 * common.lower_bound(work))


def policy_only(work: list[common.PackingTask], mode: str, runs: int = 2) -> list[float]:
    """mpiengine's scheduler on a virtual clock, with the endpoint's predictor learning from
    each run (the same kinds as the engine gives the tasks): makespan / bound per run."""
    from mpiengine.predict import Predictor, task_kinds
    from mpiengine.scheduler import BlockInfo, Scheduler, SimTask, TaskRequest, simulate
    from mpiengine_sdk import ResourceSpec, ShellFunction

    predictor = Predictor(None)
    ratios = []
    for _ in range(runs):
        sched = Scheduler()
        sched.add_block(BlockInfo("local", tuple(f"vnode{i}" for i in range(common.NODES)), 1))
        tasks, kinds = [], {}
        for i, t in enumerate(work):
            walltime = common.walltime_for(mode, t.seconds)
            spec = ResourceSpec(num_nodes=t.nodes, ranks_per_node=1, exclusive=True)
            msg = ShellFunction(["sleep", f"{t.seconds}"]).to_task(f"t{i}", (), {}, spec)
            kinds[f"t{i}"] = task_kinds(msg, spec)
            estimate, kind = predictor.predict(kinds[f"t{i}"])
            req = TaskRequest(
                f"t{i}", t.nodes, 1, exclusive=True, walltime=walltime, estimate=estimate,
                kind=kind,
            )  # fmt: skip
            tasks.append(SimTask(req, t.seconds + SIM_OVERHEAD))

        def learn(
            task_id: str, runtime: float, sched: Scheduler = sched, kinds: dict[str, Any] = kinds
        ) -> None:
            for kind, seconds in predictor.record(kinds[task_id], runtime):
                sched.set_estimate(kind, seconds)

        result = simulate(sched, tasks, on_end=learn)
        ratios.append(result.makespan / common.lower_bound(work))
    return ratios


def run_packing_section(
    args: argparse.Namespace,
    engine: Callable[[Path], Any],
    parsl: Callable[[str], dict[str, Any]] | None,
) -> dict[str, Any]:
    """Every workload x mode x (cold, warm) on mpiengine, the simulation, and Parsl once per
    workload. ``engine(workdir)`` makes an mpiengine side (with ``close()``); ``parsl(name)``
    runs a workload on Parsl."""
    out: dict[str, Any] = {"workloads": {}}
    for name in args.workloads:
        work = common.workload(name, count_for(name, args), args.seed, quick=args.quick)
        count = count_for(name, args)
        entry: dict[str, Any] = {
            "description": common.WORKLOADS[name].format(count=count, seed=args.seed)
            + (" (times x 0.2)" if args.quick else ""),
            "tasks": len(work),
            "lower_bound_s": common.lower_bound(work),
            "cells": {},
        }
        for mode in args.modes:
            cell: dict[str, Any] = {}
            sim = policy_only(work, mode)
            cell["sim_cold"], cell["sim_warm"] = sim[0], sim[1]
            workdir = Path(tempfile.mkdtemp(prefix="bench-core-mpiengine-", dir=args.workdir))
            try:
                for phase in PHASES:  # warm: a restart on the same working directory
                    cell[phase] = _engine_run(engine, workdir, work, mode, args)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            entry["cells"][mode] = cell
        if parsl is not None:
            entry["parsl"] = parsl(name)
        out["workloads"][name] = entry
    return out


def _engine_run(
    engine: Callable[[Path], Any],
    workdir: Path,
    work: list[common.PackingTask],
    mode: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    side = None
    try:
        side = engine(workdir)
        figures = common.run_packing(
            side, work, warmup=args.warmup, stall=args.stall, deadline=deadline_for(work),
            mode=mode,
        )  # fmt: skip
    except Exception as exc:  # report it beside the other cells
        figures["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if side is not None:
            started = time.perf_counter()
            figures["clean_shutdown"] = side.close()
            figures["shutdown_s"] = time.perf_counter() - started
    return figures


# -- report ------------------------------------------------------------------------------------
def _cell(fig: dict[str, Any] | None) -> str:
    if not fig:
        return f"{'-':>21}"
    if "ratio" not in fig:
        return f"{'ERROR':>21}"
    wait = fig.get("largest_wait_s", math.nan)
    return f"{fig['ratio']:>8.3f}{wait:>7.1f}{fig.get('lost', 0):>6d}"


def _sim(value: float | None) -> str:
    return f"{'-':>21}" if value is None else f"{value:>8.3f}{'':>13}"


def report_packing(figs: dict[str, Any], modes: list[str]) -> list[tuple[str, bool | None]]:
    """Print one table per workload (no blank line inside the section); the verdicts."""
    verdicts: list[tuple[str, bool | None]] = []
    print("  cells: makespan / area bound, largest task's wait (s), tasks lost")
    for name, entry in figs["workloads"].items():
        cells = entry["cells"]
        print(f"  -- {entry['description']}: area bound {entry['lower_bound_s']:.2f} s")
        print(f"  {'walltimes:':<22}" + "".join(f"{MODE_LABELS[m]:>21}" for m in modes))
        for phase in PHASES:
            row = "".join(_cell(cells[m].get(phase)) for m in modes)
            print(f"  {'mpiengine ' + phase:<22}{row}")
        for phase in PHASES:
            row = "".join(_sim(cells[m].get(f"sim_{phase}")) for m in modes)
            print(f"  {'policy (sim) ' + phase:<22}{row}")
        parsl = entry.get("parsl")
        if parsl is not None:
            note = "  (ignores walltimes: one run)"
            if "recursion_errors_in_logs" in parsl:
                note += f"; RecursionError {parsl['recursion_errors_in_logs']} x in its logs"
            print(f"  {'parsl htex-mpi':<22}{_cell(parsl)}{note}")
        verdicts += _verdicts(name, cells, parsl, modes)
    return verdicts


def _ratio(fig: dict[str, Any] | None) -> float:
    return float(fig.get("ratio", math.nan)) if fig and not fig.get("lost", 1) else math.nan


def _worst(*ratios: float) -> float:
    """The largest ratio; NaN if any is NaN (a run that failed or lost tasks)."""
    return math.nan if any(math.isnan(r) for r in ratios) else max(ratios)


def _verdicts(
    name: str, cells: dict[str, Any], parsl: dict[str, Any] | None, modes: list[str]
) -> list[tuple[str, bool | None]]:
    out: list[tuple[str, bool | None]] = []
    lost = sum(cells[m][p].get("lost", 1) for m in modes for p in PHASES if p in cells[m])
    out.append((f"packing {name}: mpiengine lost no task in any run", lost == 0))
    if "none" in modes:
        warm, cold = _ratio(cells["none"].get("warm")), _ratio(cells["none"].get("cold"))
        goal = GOALS_WARM[name]
        out.append((f"packing {name}: warm, no walltimes <= {goal:.2f}x area bound", warm <= goal))
        theirs = float(parsl.get("ratio", math.nan)) if parsl else math.nan
        judged = None if parsl is None or math.isnan(theirs) else bool(_worst(warm, cold) <= theirs)
        out.append((f"packing {name}: cold and warm, no walltimes, <= parsl", judged))
    if name == "packing" and "3x" in modes:
        worst = _worst(*(_ratio(cells["3x"].get(p)) for p in PHASES))
        out.append((f"packing {name}: walltimes 3x too long <= {GOAL_3X:.2f}x", worst <= GOAL_3X))
    return out
