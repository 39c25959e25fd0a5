"""mpiengine against Parsl's HighThroughputExecutor in MPI mode, side by side, 16 virtual nodes.

Three sections, each run on mpiengine (embedded endpoint, in this process) and then on Parsl
(``MPIExecutor``, in a subprocess started for that section alone), never both at once:

- dispatch: N trivial tasks (``true``, 1 node x 1 rank) submitted at once; tasks/s from the
  first submit to the last result, after a warm-up. The fork/exec rate of a bare shell
  (``subprocess`` running ``true`` one at a time and from 2 threads) is the machine's limit.
  Goal: mpiengine >= 5x Parsl.
- packing: a seeded heterogeneous workload (200 tasks, 1/2/4/8 nodes, sleeps 0.2-2.0 s) all
  submitted at once, whole-node tasks (mpiengine: ``exclusive=True``, walltime = sleep + 1 s).
  Makespan / area lower bound, utilisation, tasks lost. Goal: mpiengine <= 1.10x, none lost.
- latency: sequential round trips (submit ``true``, wait for the result); p50/p95 in ms.
  Goal: mpiengine p50 <= 2 ms.

    python benchmarks/bench_core.py [--only dispatch|packing|latency] [--no-parsl]
        [--tasks 2000] [--pack-tasks 200] [--rounds 50] [--repeat 3] [--seed 1] [--quick]
        [--json PATH] [--workdir DIR]

Exit status: 0 every goal met, 1 a goal missed (or not measurable), 2 a side failed to run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _bench_common as common

HERE = Path(__file__).resolve().parent
SECTIONS = ("dispatch", "packing", "latency")
GOAL_DISPATCH_X = 5.0
GOAL_PACKING_RATIO = 1.10
GOAL_LATENCY_P50_MS = 2.0


class EngineSide:
    """The mpiengine SDK Executor on an embedded endpoint of 16 virtual nodes."""

    name = "mpiengine"

    def __init__(self, workdir: Path, cores_per_node: int = 1) -> None:
        from mpiengine_sdk.executor import Executor
        from mpiengine_sdk.functions import ShellFunction
        from mpiengine_sdk.spec import ResourceSpec

        self._shell = ShellFunction
        self._spec = ResourceSpec
        # One core per virtual node: at most 16 trivial tasks at once, as Parsl's 16 workers.
        self.executor = Executor(nodes=common.NODES, cores_per_node=cores_per_node, workdir=workdir)
        self._true = ShellFunction(["true"])
        self._one = ResourceSpec(num_nodes=1, ranks_per_node=1)

    def submit_true(self) -> Future[Any]:
        return self.executor.submit(self._true, resource_spec=self._one)

    def submit_sleep(self, nodes: int, seconds: float) -> Future[Any]:
        spec = self._spec(num_nodes=nodes, ranks_per_node=1, exclusive=True, walltime=seconds + 1)
        return self.executor.submit(self._shell(["sleep", f"{seconds}"]), resource_spec=spec)

    def close(self, timeout: float = 30.0) -> bool:
        """Shut the executor down (cancel what is left), bounded; True if it finished."""

        def stop() -> None:
            self.executor.shutdown(wait=False, cancel_futures=True)

        worker = threading.Thread(target=stop, name="engine-shutdown", daemon=True)
        worker.start()
        worker.join(timeout)
        return not worker.is_alive()


def default_workdir() -> Path:
    """Where the sandboxes go unless ``--workdir`` says: tmpfs (``/dev/shm``) when writable,
    else the system temp directory. On this host's ext4 ``/tmp`` every create after a large
    delete walks the recently deleted inodes (0.05-0.8 ms each, measured with perf), which
    would make the run measure the filesystem's history instead of the engine."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


def filesystem_of(path: Path) -> str:
    """The filesystem type ``path`` is on (longest mount point prefix in /proc/mounts)."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) > 2 and (target + "/").startswith(parts[1].rstrip("/") + "/"):
            if len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


def forkexec_rate(
    count: int, workers: int, repeat: int = 1, sandbox: Path | None = None
) -> dict[str, Any]:
    """``count`` runs of ``true`` through subprocess from ``workers`` threads, ``repeat``
    times: the median run's runs/s. With ``sandbox``, each run first makes what mpiengine
    makes for a task (a task folder, an attempt folder, stdout and stderr files) and runs
    there: the limit for any system that gives each task a sandbox on that filesystem."""

    def run(i: int) -> int:
        if sandbox is None:
            return subprocess.run(["true"], check=False).returncode
        attempt = sandbox / f"t{i}" / "attempt-1"
        attempt.mkdir(parents=True)
        with open(attempt / "stdout", "wb") as out, open(attempt / "stderr", "wb") as err:
            return subprocess.run(["true"], stdout=out, stderr=err, cwd=attempt).returncode

    runs = []
    load = os.getloadavg()[0]
    for _ in range(max(1, repeat)):
        if sandbox is not None:
            shutil.rmtree(sandbox, ignore_errors=True)
            sandbox.mkdir(parents=True)
        start = time.perf_counter()
        if workers == 1:
            codes = [run(i) for i in range(count)]
        else:
            with ThreadPoolExecutor(workers) as pool:
                codes = list(pool.map(run, range(count)))
        elapsed = time.perf_counter() - start
        runs.append((count / elapsed, elapsed, sum(1 for c in codes if c)))
    rate, elapsed, lost = sorted(runs)[len(runs) // 2]
    return {
        "tasks": count,
        "seconds": elapsed,
        "tasks_per_s": rate,
        "runs_tasks_per_s": [r[0] for r in runs],
        "lost": lost,
        "load": load,
    }


def run_engine(section: str, args: argparse.Namespace) -> dict[str, Any]:
    """One section on mpiengine; figures (or ``error``)."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-core-mpiengine-", dir=args.workdir))
    side: EngineSide | None = None
    figures: dict[str, Any] = {}
    try:
        figures["load"] = os.getloadavg()[0]
        started = time.perf_counter()
        side = EngineSide(workdir)
        figures["startup_s"] = time.perf_counter() - started
        figures.update(measure(section, side, args))
    except Exception as exc:  # report it beside the other side's figures
        figures["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if side is not None:
            figures["clean_shutdown"] = side.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return figures


def measure(section: str, side: common.Side, args: argparse.Namespace) -> dict[str, Any]:
    """The section's driver with this run's sizes (the Parsl subprocess mirrors this)."""
    if section == "dispatch":
        return common.run_dispatch(
            side, args.tasks, warmup=args.warmup, stall=args.stall, repeat=args.repeat
        )
    if section == "latency":
        return common.run_latency(side, args.rounds, warmup=args.warmup, timeout=args.stall)
    workload = common.packing_workload(args.pack_tasks, args.seed)
    return common.run_packing(
        side, workload, warmup=args.warmup, stall=args.stall, deadline=pack_deadline(args)
    )


def pack_deadline(args: argparse.Namespace) -> float:
    """Give up on the packing run after 3x the lower bound (at least a minute)."""
    bound = common.lower_bound(common.packing_workload(args.pack_tasks, args.seed))
    return max(60.0, 3 * bound)


def policy_only(workload: list[common.PackingTask]) -> dict[str, Any]:
    """mpiengine's scheduler on a virtual clock for the same workload: the makespan its policy
    alone achieves, with no process, file or thread overhead (the measured run minus this is
    the engine's overhead)."""
    from mpiengine.scheduler import BlockInfo, Scheduler, SimTask, TaskRequest, simulate

    sched = Scheduler()
    sched.add_block(BlockInfo("local", tuple(f"vnode{i}" for i in range(common.NODES)), 1))
    tasks = [
        SimTask(TaskRequest(f"t{i}", t.nodes, 1, exclusive=True, walltime=t.seconds + 1), t.seconds)
        for i, t in enumerate(workload)
    ]
    result = simulate(sched, tasks)
    bound = common.lower_bound(workload)
    area = sum(t.nodes * t.seconds for t in workload)
    return {
        "makespan_s": result.makespan,
        "lower_bound_s": bound,
        "ratio": result.makespan / bound,
        "utilisation": area / (common.NODES * result.makespan),
        "completed": len(result.ends),
        "lost": len(result.unstarted),
    }


def run_parsl(section: str, args: argparse.Namespace) -> dict[str, Any]:
    """One section on Parsl, in its own subprocess; every process it leaves is ended by pid."""
    scratch = Path(tempfile.mkdtemp(prefix="bench-core-parsl-out-"))
    out, errlog = scratch / "figures.json", scratch / "stderr.log"
    count = {"dispatch": args.tasks, "latency": args.rounds, "packing": args.pack_tasks}[section]
    cmd = [
        sys.executable, str(HERE / "_parsl_side.py"), "--section", section,
        "--tasks", str(count), "--seed", str(args.seed), "--warmup", str(args.warmup),
        "--stall", str(args.stall), "--repeat", str(args.repeat),
        "--deadline", str(pack_deadline(args)), "--out", str(out),
    ]  # fmt: skip
    budget = 60 + 120 + args.stall + pack_deadline(args) + count * 0.1 * args.repeat + 90
    seen: set[tuple[int, float]] = set()
    try:
        with errlog.open("w") as err:
            proc = subprocess.Popen(cmd, stdout=err, stderr=err, cwd=HERE)
            rc = _watch(proc, budget, seen)
        if out.is_file():
            figures: dict[str, Any] = json.loads(out.read_text())
        else:
            tail = errlog.read_text(errors="replace")[-600:]
            figures = {"error": f"Parsl subprocess exited {rc} without figures: {tail}"}
        figures["leftover_processes_killed"] = len(common.kill_pids(seen))
        return figures
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _watch(proc: subprocess.Popen[bytes], budget: float, seen: set[tuple[int, float]]) -> int:
    """Wait for ``proc`` at most ``budget`` s, recording its descendants; kill it on expiry."""
    import psutil

    seen.add((proc.pid, psutil.Process(proc.pid).create_time()))
    end = time.monotonic() + budget
    while proc.poll() is None:
        seen |= common.descendants(proc.pid)
        if time.monotonic() > end:
            common.kill_pids(seen)
            break
        time.sleep(0.5)
    return proc.wait(timeout=10)


# -- report ------------------------------------------------------------------------------------
def _num(value: Any, fmt: str) -> str:
    if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
        return format(value, fmt)
    return "-"


def _row(label: str, fig: dict[str, Any], cols: list[tuple[str, str]]) -> str:
    if "error" in fig and len(fig) <= 3:
        return f"  {label:<24} ERROR {fig['error'][:200]}"
    cells = "".join(f"{_num(fig.get(key), fmt):>12}" for key, fmt in cols)
    notes = "; ".join(fig.get("errors", []))
    return f"  {label:<24}{cells}" + (f"   [{notes[:160]}]" if notes else "")


def _verdict(ok: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a "}[ok]


LABELS = {
    "forkexec_1": "fork/exec (sequential)",
    "forkexec_2": "fork/exec (2 workers)",
    "forkexec_sandbox": "fork/exec+sandbox (2 w.)",
    "mpiengine": "mpiengine",
    "mpiengine_policy": "mpiengine policy (sim)",
    "parsl": "parsl htex-mpi",
}


def _table(figs: dict[str, Any], cols: list[tuple[str, str, str]]) -> None:
    """One row per side present in ``figs``; ``cols`` are (heading, key, format)."""
    cols = [*cols, ("load", "load", ".1f")]
    print(f"  {'':<24}" + "".join(f"{head:>12}" for head, _, _ in cols))
    for key, label in LABELS.items():
        if key in figs:
            print(_row(label, figs[key], [(k, fmt) for _, k, fmt in cols]))


def report_dispatch(figs: dict[str, Any]) -> list[tuple[str, bool | None]]:
    _table(
        figs,
        [
            ("tasks/s", "tasks_per_s", ".1f"),
            ("seconds", "seconds", ".2f"),
            ("submit s", "submit_seconds", ".2f"),
            ("lost", "lost", "d"),
        ],
    )
    mine = figs["mpiengine"].get("tasks_per_s", math.nan)
    limit = max(figs[k].get("tasks_per_s", math.nan) for k in ("forkexec_1", "forkexec_2"))
    print(f"  mpiengine / fork-exec limit: {mine / limit:.2f}x")
    with_sandbox = figs.get("forkexec_sandbox", {}).get("tasks_per_s", math.nan)
    print(f"  mpiengine / fork-exec+sandbox limit: {mine / with_sandbox:.2f}x")
    ok: bool | None = None
    if "parsl" in figs:
        theirs = figs["parsl"].get("tasks_per_s", math.nan)
        ratio = mine / theirs if theirs else math.nan
        ok = bool(ratio >= GOAL_DISPATCH_X)
        print(f"  mpiengine / parsl: {ratio:.2f}x (fork-exec limit / parsl: {limit / theirs:.2f}x)")
    if figs["mpiengine"].get("lost", 1):
        ok = False
    return [(f"dispatch: mpiengine >= {GOAL_DISPATCH_X:g}x parsl tasks/s, none lost", ok)]


def report_packing(figs: dict[str, Any]) -> list[tuple[str, bool | None]]:
    _table(
        figs,
        [
            ("makespan s", "makespan_s", ".2f"),
            ("bound s", "lower_bound_s", ".2f"),
            ("ratio", "ratio", ".3f"),
            ("util", "utilisation", ".1%"),
            ("done", "completed", "d"),
            ("lost", "lost", "d"),
        ],
    )
    mine, parsl = figs["mpiengine"], figs.get("parsl", {})
    if "recursion_errors_in_logs" in parsl:
        print(f"  parsl: RecursionError in its logs {parsl['recursion_errors_in_logs']} time(s)")
    if "makespan_s" in parsl and "makespan_s" in mine:
        slower = parsl["makespan_s"] / mine["makespan_s"]
        print(f"  parsl makespan / mpiengine makespan: {slower:.2f}x")
    ok = bool(mine.get("ratio", math.nan) <= GOAL_PACKING_RATIO and mine.get("lost", 1) == 0)
    goal = f"packing: mpiengine makespan <= {GOAL_PACKING_RATIO:g}x lower bound, none lost"
    return [(goal, ok)]


def report_latency(figs: dict[str, Any]) -> list[tuple[str, bool | None]]:
    _table(
        figs,
        [
            ("p50 ms", "p50_ms", ".2f"),
            ("p95 ms", "p95_ms", ".2f"),
            ("min ms", "min_ms", ".2f"),
            ("max ms", "max_ms", ".2f"),
            ("lost", "lost", "d"),
        ],
    )
    mine = figs["mpiengine"].get("p50_ms", math.nan)
    if "parsl" in figs:
        print(f"  parsl p50 / mpiengine p50: {figs['parsl'].get('p50_ms', math.nan) / mine:.2f}x")
    ok = bool(mine <= GOAL_LATENCY_P50_MS and figs["mpiengine"].get("lost", 1) == 0)
    return [(f"latency: mpiengine p50 <= {GOAL_LATENCY_P50_MS:g} ms, none lost", ok)]


REPORTS: dict[str, Callable[[dict[str, Any]], list[tuple[str, bool | None]]]] = {
    "dispatch": report_dispatch,
    "packing": report_packing,
    "latency": report_latency,
}


def _title(section: str, args: argparse.Namespace) -> str:
    load = os.getloadavg()[0]
    what = {
        "dispatch": f"{args.tasks} x `true` (1 node, 1 rank) submitted at once",
        "packing": f"{args.pack_tasks} tasks of 1/2/4/8 whole nodes, sleep 0.2-2.0 s, "
        f"seed {args.seed}",
        "latency": f"{args.rounds} sequential round trips of `true`",
    }[section]
    where = f"sandboxes in {args.workdir} ({filesystem_of(args.workdir)})"
    return f"== {section}: {what}; {common.NODES} virtual nodes; {where}; load {load:.1f} =="


def run_section(section: str, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one section on every side, one side at a time."""
    print(_title(section, args), flush=True)
    figs: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    if section == "dispatch":
        figs["forkexec_1"] = forkexec_rate(args.tasks, 1, args.repeat)
        figs["forkexec_2"] = forkexec_rate(args.tasks, 2, args.repeat)
        scratch = Path(tempfile.mkdtemp(prefix="bench-core-forkexec-", dir=args.workdir))
        try:
            figs["forkexec_sandbox"] = forkexec_rate(args.tasks, 2, args.repeat, scratch / "s")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    figs["mpiengine"] = run_engine(section, args)
    if section == "packing":
        try:
            figs["mpiengine_policy"] = policy_only(
                common.packing_workload(args.pack_tasks, args.seed)
            )
        except Exception as exc:  # engine internals changed: the row is optional
            figs["mpiengine_policy"] = {"error": f"{type(exc).__name__}: {exc}"}
    if not args.no_parsl:
        figs["parsl"] = run_parsl(section, args)
    return figs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=SECTIONS, help="run one section")
    parser.add_argument("--no-parsl", action="store_true", help="mpiengine only")
    parser.add_argument("--tasks", type=int, default=2000, help="dispatch tasks (2000)")
    parser.add_argument("--pack-tasks", type=int, default=200, help="packing tasks (200)")
    parser.add_argument("--rounds", type=int, default=50, help="latency round trips (50)")
    parser.add_argument("--seed", type=int, default=1, help="packing workload seed (1)")
    parser.add_argument("--repeat", type=int, default=3, help="dispatch runs, median (3)")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up tasks per run (50)")
    parser.add_argument("--stall", type=float, default=20.0, help="give up after S s idle (20)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="parent of mpiengine's sandboxes (default: /dev/shm when writable, else system temp)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a few seconds")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args(argv)
    if args.workdir is None:
        args.workdir = default_workdir()
    if args.quick:
        args.tasks, args.pack_tasks, args.rounds, args.warmup, args.repeat = 100, 6, 10, 5, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, Any] = {"cpus": os.cpu_count(), "args": vars(args) | {"json": None}}
    verdicts: list[tuple[str, bool | None]] = []
    broken = False
    for section in [args.only] if args.only else list(SECTIONS):
        figs = run_section(section, args)
        results[section] = figs
        broken |= any("error" in f for f in figs.values() if isinstance(f, dict))
        verdicts += REPORTS[section](figs)
        print(flush=True)
    for goal, ok in verdicts:
        print(f"{_verdict(ok)}  {goal}")
    results["verdicts"] = {goal: ok for goal, ok in verdicts}
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    if broken:
        return 2
    return 0 if all(ok for _, ok in verdicts if ok is not None) else 1


if __name__ == "__main__":
    sys.exit(main())
