"""mpiengine against Parsl's HighThroughputExecutor in MPI mode, side by side, 16 virtual nodes.

Three sections, each run on mpiengine (embedded endpoint, in this process) and then on Parsl
(``MPIExecutor``, in a subprocess started for that section alone), never both at once:

- dispatch: N trivial tasks (``true``, 1 node x 1 rank) submitted at once; tasks/s from the
  first submit to the last result, after a warm-up. The fork/exec rate of a bare shell
  (``subprocess`` running ``true`` one at a time and from 2 threads) is the machine's limit.
  Goal: mpiengine >= 5x Parsl.
  Goal: mpiengine >= 0.8x the bare fork/exec rate, in the same run.
- packing: three workloads of whole-node tasks submitted at once (200 tasks of 1/2/4/8 nodes
  and 0.2-2.0 s; 20 x (16-node 1 s, 1-node 1 s) alternating; one 8-node 6 s task, 16 x
  16-node 0.5 s, 16 x 1-node 1 s), each with no walltimes, walltimes 3x too long and exact
  walltimes; mpiengine cold (no history) and warm (restarted on the same working directory,
  runtimes learned); Parsl once per workload; the policy alone on a virtual clock. Makespan /
  area lower bound, the largest task's wait, tasks lost (see ``_bench_packing``).
- latency: sequential round trips (submit ``true``, wait for the result); p50/p95 in ms.
  Goal: mpiengine p50 <= 2 ms.
- scale: the scheduler alone at 1,000 / 10,000 / 100,000 nodes with 10 queued tasks per node
  (``bench_scheduler.py --sweep``): microseconds per placement. Goal: <= 50 us at 10,000.

    python benchmarks/bench_core.py [--only dispatch|packing|latency|scale] [--no-parsl]
        [--tasks 2000] [--pack-tasks 200] [--workloads packing,alternating,long-head]
        [--modes none,3x,exact] [--rounds 50] [--repeat 3] [--seed 1] [--quick]
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
import _bench_packing as packing

HERE = Path(__file__).resolve().parent
SECTIONS = ("dispatch", "packing", "latency", "scale")
GOAL_DISPATCH_X = 5.0
GOAL_DISPATCH_FORKEXEC = 0.8
GOAL_LATENCY_P50_MS = 2.0
GOAL_SCALE_US = 50.0


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

    def submit_sleep(self, nodes: int, seconds: float, walltime: float | None) -> Future[Any]:
        spec = self._spec(num_nodes=nodes, ranks_per_node=1, exclusive=True, walltime=walltime)
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
    makes for a task (its folder, stdout and stderr files) and runs there: the limit for any
    system that gives each task a sandbox on that filesystem."""

    def run(i: int) -> int:
        if sandbox is None:
            return subprocess.run(["true"], check=False).returncode
        folder = sandbox / f"t{i}"
        folder.mkdir(mode=0o700)
        with open(folder / "stdout", "wb") as out, open(folder / "stderr", "wb") as err:
            return subprocess.run(["true"], stdout=out, stderr=err, cwd=folder).returncode

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
    """Dispatch or latency on mpiengine; figures (or ``error``)."""
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
    return common.run_latency(side, args.rounds, warmup=args.warmup, timeout=args.stall)


def run_parsl(section: str, args: argparse.Namespace, workload: str = "packing") -> dict[str, Any]:
    """One section (for packing: one workload) on Parsl, in its own subprocess; every process
    it leaves is ended by pid."""
    scratch = Path(tempfile.mkdtemp(prefix="bench-core-parsl-out-"))
    out, errlog = scratch / "figures.json", scratch / "stderr.log"
    if section == "packing":
        count = packing.count_for(workload, args)
        work = common.workload(workload, count, args.seed, quick=args.quick)
        deadline = packing.deadline_for(work)
    else:
        count, deadline = (args.tasks if section == "dispatch" else args.rounds), 60.0
    cmd = [
        sys.executable, str(HERE / "_parsl_side.py"), "--section", section,
        "--tasks", str(count), "--seed", str(args.seed), "--warmup", str(args.warmup),
        "--stall", str(args.stall), "--repeat", str(args.repeat), "--deadline", str(deadline),
        "--workload", workload, "--out", str(out),
    ] + (["--quick"] if args.quick else [])  # fmt: skip
    budget = 60 + 120 + args.stall + deadline + count * 0.1 * args.repeat + 90
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


def run_scale(args: argparse.Namespace) -> dict[str, Any]:
    """``bench_scheduler.py --sweep`` in a subprocess; its figures per size."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "scale.json"
        cmd = [sys.executable, str(HERE / "bench_scheduler.py"), "--sweep", "--json", str(out)]
        done = subprocess.run(cmd + (["--quick"] if args.quick else []), capture_output=True,
                              text=True, check=False)  # fmt: skip
        if not out.is_file():
            return {"error": f"bench_scheduler.py exited {done.returncode}: {done.stderr[-600:]}"}
        return {"sizes": json.loads(out.read_text())}


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


Verdicts = list[tuple[str, bool | None]]


def report_dispatch(figs: dict[str, Any], args: argparse.Namespace) -> Verdicts:
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
    lost = figs["mpiengine"].get("lost", 1)
    if lost:
        ok = False
    near = bool(mine / limit >= GOAL_DISPATCH_FORKEXEC and not lost)
    return [
        (f"dispatch: mpiengine >= {GOAL_DISPATCH_X:g}x parsl tasks/s, none lost", ok),
        (f"dispatch: mpiengine >= {GOAL_DISPATCH_FORKEXEC:g}x the bare fork/exec rate", near),
    ]


def report_packing(figs: dict[str, Any], args: argparse.Namespace) -> Verdicts:
    return packing.report_packing(figs, args.modes)


def report_latency(figs: dict[str, Any], args: argparse.Namespace) -> Verdicts:
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


def report_scale(figs: dict[str, Any], args: argparse.Namespace) -> Verdicts:
    scale = figs["scale"]
    if "error" in scale:
        print(f"  ERROR {scale['error'][:300]}")
        return [(f"scale: <= {GOAL_SCALE_US:g} us per placement at 10,000 nodes", False)]
    print(f"  {'nodes':>8}{'tasks':>10}{'us/placement':>14}{'CPU us':>9}{'unstarted':>11}")
    ok: bool | None = None
    for fig in scale["sizes"]:
        print(f"  {fig['nodes']:>8}{fig['tasks']:>10}{fig['us_per_placement']:>14.1f}"
              f"{fig['us_per_placement_cpu']:>9.1f}{fig['unstarted']:>11}")  # fmt: skip
        if fig["nodes"] == 10_000:
            ok = bool(fig["us_per_placement"] <= GOAL_SCALE_US and not fig["unstarted"])
    return [(f"scale: <= {GOAL_SCALE_US:g} us per placement at 10,000 nodes", ok)]


Report = Callable[[dict[str, Any], argparse.Namespace], Verdicts]
REPORTS: dict[str, Report] = {
    "dispatch": report_dispatch,
    "packing": report_packing,
    "latency": report_latency,
    "scale": report_scale,
}


def _title(section: str, args: argparse.Namespace) -> str:
    load = os.getloadavg()[0]
    what = {
        "dispatch": f"{args.tasks} x `true` (1 node, 1 rank) submitted at once",
        "packing": f"workloads {', '.join(args.workloads)} x walltimes {', '.join(args.modes)}; "
        "mpiengine cold, then warm (restarted)",
        "latency": f"{args.rounds} sequential round trips of `true`",
        "scale": "the scheduler alone, 10 queued tasks per node, 30% of them with a learned "
        "estimate and no walltime",
    }[section]
    if section == "scale":
        return f"== {section}: {what}; load {load:.1f} =="
    where = f"sandboxes in {args.workdir} ({filesystem_of(args.workdir)})"
    return f"== {section}: {what}; {common.NODES} virtual nodes; {where}; load {load:.1f} =="


def run_section(section: str, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one section on every side, one side at a time."""
    print(_title(section, args), flush=True)
    figs: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    if section == "scale":
        figs["scale"] = run_scale(args)
        return figs
    if section == "packing":
        parsl = None if args.no_parsl else (lambda name: run_parsl("packing", args, name))
        figs.update(packing.run_packing_section(args, EngineSide, parsl))
        headline = figs["workloads"].get("packing", {}).get("cells", {}).get("none", {})
        if "warm" in headline:  # the summary row: 200 tasks, no walltimes, warm
            figs["mpiengine"] = headline["warm"]
        return figs
    if section == "dispatch":
        figs["forkexec_1"] = forkexec_rate(args.tasks, 1, args.repeat)
        figs["forkexec_2"] = forkexec_rate(args.tasks, 2, args.repeat)
        scratch = Path(tempfile.mkdtemp(prefix="bench-core-forkexec-", dir=args.workdir))
        try:
            figs["forkexec_sandbox"] = forkexec_rate(args.tasks, 2, args.repeat, scratch / "s")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    figs["mpiengine"] = run_engine(section, args)
    if not args.no_parsl:
        figs["parsl"] = run_parsl(section, args)
    return figs


def _names(text: str, known: tuple[str, ...] | dict[str, str], what: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{what} {unknown or text!r}: choose from {list(known)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=SECTIONS, help="run one section")
    parser.add_argument("--no-parsl", action="store_true", help="mpiengine only")
    parser.add_argument("--tasks", type=int, default=2000, help="dispatch tasks (2000)")
    parser.add_argument("--pack-tasks", type=int, default=200, help="packing tasks (200)")
    parser.add_argument(
        "--workloads",
        type=lambda t: _names(t, common.WORKLOADS, "workloads"),
        default=list(common.WORKLOADS),
        help="packing workloads, comma-separated (packing,alternating,long-head)",
    )
    parser.add_argument(
        "--modes",
        type=lambda t: _names(t, common.MODES, "modes"),
        default=list(common.MODES),
        help="walltime modes, comma-separated (none,3x,exact)",
    )
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
        broken |= _has_error(figs)
        verdicts += REPORTS[section](figs, args)
        print(flush=True)
    for goal, ok in verdicts:
        print(f"{_verdict(ok)}  {goal}")
    results["verdicts"] = {goal: ok for goal, ok in verdicts}
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    if broken:
        return 2
    return 0 if all(ok for _, ok in verdicts if ok is not None) else 1


def _has_error(figs: Any) -> bool:
    """Whether any figure dict under ``figs`` holds an ``error`` (a side failed to run)."""
    if isinstance(figs, dict):
        return "error" in figs or any(_has_error(v) for v in figs.values())
    if isinstance(figs, list):
        return any(_has_error(v) for v in figs)
    return False


if __name__ == "__main__":
    sys.exit(main())
