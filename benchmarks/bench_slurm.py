"""Benchmark mpiengine on the real Slurm cluster (ci/slurm-docker: 4 nodes x 2 CPUs).

1. Overhead: the same ``true`` step, 1 node and 2 nodes (1 rank a node, whole nodes), run
   ``--repeat`` times (a) as mpiengine tasks, timed from ``submit`` to the result in the SDK,
   and (b) as bare ``srun`` steps with the exact argv the endpoint used, run by a shell task
   inside the same block (same allocation, same run). Reports both medians and the overhead
   (goal: <= 5 ms).
2. Packing: ``--tasks`` seeded tasks of 1, 2 or 4 whole nodes sleeping 0.2-2 s, all submitted
   at once to one 4-node block. Reports the makespan (first start to last end) against the
   lower bound max(node-seconds / 4, longest task), and the utilisation (busy node-seconds /
   (4 x makespan)).

    source .state/slurm/env.sh && python benchmarks/bench_slurm.py [--repeat 20 --tasks 40]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
from typing import Any

from mpiengine.slurm_endpoint import BatchEndpoint
from mpiengine_sdk import Executor, MPIFunction, ResourceSpec, ShellFunction

GOAL_MS = 5.0
NODES = 4


def endpoint_config() -> dict[str, object]:
    return {
        "provider": "slurm",
        "partition": "debug",
        "nodes_per_block": NODES,
        "cores_per_node": 2,
        "max_blocks": 1,
        "walltime": "00:20:00",
        "poll_interval": 2,
        "max_idle_time": 600,
    }


def whole(nodes: int) -> ResourceSpec:
    return ResourceSpec(num_nodes=nodes, ranks_per_node=1, exclusive=True)


def overhead(ex: Executor, nodes: int, repeat: int) -> dict[str, float]:
    """Median ms of an mpiengine task and of the bare srun step it runs, same shape.

    The two alternate (task, bare step, task, ...) so that load on the host hits both alike.
    ``pipeline_ms`` is what mpiengine adds around its launcher process (end to end minus the
    launcher's own run time, as the agent measured it).
    """
    warm = ex.submit(MPIFunction(["true"]), resource_spec=whole(nodes)).result(120)
    # The same argv as the endpoint's, minus the step name it adds (a bare step has none).
    argv = shlex.join(a for a in warm.argv if not a.startswith("--job-name="))
    timed = f"s=$(date +%s%N); {argv}; e=$(date +%s%N); echo $(( (e - s) / 1000 ))"
    task_ms, srun_ms, pipeline_ms = [], [], []
    for _ in range(repeat):
        t0 = time.time()
        result = ex.submit(MPIFunction(["true"]), resource_spec=whole(nodes)).result(120)
        t1 = time.time()
        assert result.returncode == 0, result.stderr
        task_ms.append((t1 - t0) * 1000)
        pipeline_ms.append((t1 - t0 - ((result.ended or t1) - (result.started or t0))) * 1000)
        bare = ex.submit(ShellFunction(["/bin/bash", "-c", timed]), resource_spec=whole(nodes))
        srun_ms.append(int(bare.result(120).stdout.split()[-1]) / 1000)
    task, srun = statistics.median(task_ms), statistics.median(srun_ms)
    return {
        "nodes": nodes,
        "task_ms": task,
        "srun_ms": srun,
        "overhead_ms": task - srun,
        "pipeline_ms": statistics.median(pipeline_ms),
    }


def packing(ex: Executor, count: int, seed: int) -> dict[str, float]:
    """Makespan and utilisation of a seeded heterogeneous whole-node workload."""
    rng = random.Random(seed)
    shapes = [(rng.choice((1, 2, 4)), round(rng.uniform(0.2, 2.0), 2)) for _ in range(count)]
    t0 = time.time()
    futures = [ex.submit(MPIFunction(["sleep", str(s)]), resource_spec=whole(n)) for n, s in shapes]
    results = [f.result(600) for f in futures]
    starts = [r.started or t0 for r in results]
    ends = [r.ended or t0 for r in results]
    makespan = max(ends) - min(starts)
    busy = sum(n * (e - s) for (n, _), s, e in zip(shapes, starts, ends, strict=True))
    lower = max(sum(n * s for n, s in shapes) / NODES, max(s for _, s in shapes))
    return {
        "tasks": count,
        "seed": seed,
        "makespan_s": makespan,
        "submit_to_last_s": max(ends) - t0,
        "lower_bound_s": lower,
        "makespan_over_bound": makespan / lower,
        "utilisation": busy / (NODES * makespan),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not os.environ.get("SLURM_CONF"):
        print("set SLURM_CONF (source .state/slurm/env.sh after ci/slurm-docker/start.sh)")
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-slurm-") as workdir:
        ep = BatchEndpoint(endpoint_config(), workdir=workdir)
        with Executor(backend=ep) as ex:
            t0 = time.time()
            ex.submit(ShellFunction("true")).result(120)
            print(f"first block ready and first task done in {time.time() - t0:.2f} s")
            report: dict[str, Any] = {
                "overhead": [overhead(ex, n, args.repeat) for n in (1, 2)],
                "packing": packing(ex, args.tasks, args.seed),
            }
    for row in report["overhead"]:
        verdict = "PASS" if row["overhead_ms"] <= GOAL_MS else "FAIL"
        print(
            f"{row['nodes']} node(s): mpiengine task {row['task_ms']:.1f} ms, bare srun "
            f"{row['srun_ms']:.1f} ms, overhead {row['overhead_ms']:.1f} ms "
            f"(median of {args.repeat}; goal <= {GOAL_MS} ms: {verdict}); around the "
            f"launcher process: {row['pipeline_ms']:.1f} ms"
        )
    pack = report["packing"]
    print(
        f"packing {pack['tasks']} tasks (seed {pack['seed']}): "
        f"makespan {pack['makespan_s']:.2f} s, "
        f"lower bound {pack['lower_bound_s']:.2f} s, ratio {pack['makespan_over_bound']:.2f}, "
        f"utilisation {pack['utilisation']:.0%}"
    )
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
