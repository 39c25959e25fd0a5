"""The Parsl side of ``bench_core.py``: one section on HighThroughputExecutor in MPI mode.

Run by ``bench_core.py`` as a subprocess (one per section), so that Parsl's interchange and
worker pool exist only while Parsl is measured, and a section that wedges Parsl (the backlog
RecursionError) cannot spoil the next one. Writes the section's figures as JSON to ``--out``.

The executor is ``parsl.executors.MPIExecutor``: the HighThroughputExecutor subclass that sets
``enable_mpi_mode = True`` (in Parsl 2026.10 HTEX itself no longer takes ``enable_mpi_mode=``
and refuses ``num_nodes`` in a resource specification), with ``mpi_launcher="mpiexec"``,
``max_workers_per_block=16`` and a LocalProvider of one 16-node block (SimpleLauncher). The
manager's MPITaskScheduler reads its nodes from ``$PBS_NODEFILE``: a fake node file with 16
distinct names. Bash apps never use ``$PARSL_MPI_PREFIX`` (the nodes are fake), so each task's
work is the same as on the mpiengine side.

    python benchmarks/_parsl_side.py --section dispatch --tasks 2000 --out figures.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import _bench_common as common

log = logging.getLogger("bench_core.parsl")


def _shell(cmd: str, parsl_resource_specification: dict[str, Any] | None = None) -> str:
    """The bash app's body: Parsl runs the returned string with a shell on a worker."""
    return cmd


class ParslSide:
    """A DataFlowKernel with one MPIExecutor on 16 fake nodes."""

    name = "parsl"

    def __init__(self, rundir: Path) -> None:
        import parsl
        from parsl.app.app import bash_app
        from parsl.config import Config
        from parsl.executors import MPIExecutor
        from parsl.launchers import SimpleLauncher
        from parsl.providers import LocalProvider

        nodefile = rundir / "nodefile"
        # Distinct names: the MPITaskScheduler does not de-duplicate a PBS node file.
        nodefile.write_text("".join(f"fake-node-{i:02d}\n" for i in range(1, common.NODES + 1)))
        provider = LocalProvider(  # type: ignore[no-untyped-call]
            nodes_per_block=common.NODES,
            launcher=SimpleLauncher(),
            init_blocks=1,
            min_blocks=1,
            max_blocks=1,
            worker_init=f"export PBS_NODEFILE={nodefile}",
        )
        executor = MPIExecutor(
            label="htex_mpi",
            provider=provider,
            address="127.0.0.1",  # interchange listens on loopback only
            max_workers_per_block=common.NODES,
            mpi_launcher="mpiexec",
        )
        config = Config(executors=[executor], run_dir=str(rundir / "runinfo"), strategy="none")
        self.dfk = parsl.load(config)
        self._app = bash_app(_shell, executors=["htex_mpi"])

    def _submit(self, cmd: str, nodes: int) -> Future[Any]:
        spec = {"num_nodes": nodes, "num_ranks": nodes, "ranks_per_node": 1}
        future: Future[Any] = self._app(cmd, parsl_resource_specification=spec)
        return future

    def submit_true(self) -> Future[Any]:
        return self._submit("true", 1)

    def submit_sleep(self, nodes: int, seconds: float, walltime: float | None) -> Future[Any]:
        # A bash app's walltime only kills; Parsl's MPI scheduling never reads it, so the
        # tasks are submitted without one whatever the run's walltime mode.
        return self._submit(f"sleep {seconds}", nodes)

    def close(self, timeout: float = 60.0) -> bool:
        """Executor shutdown and DFK cleanup, bounded; True if it finished in time."""
        import parsl

        def cleanup() -> None:
            try:
                self.dfk.cleanup()
            finally:
                parsl.clear()

        worker = threading.Thread(target=cleanup, name="parsl-cleanup", daemon=True)
        worker.start()
        worker.join(timeout)
        return not worker.is_alive()


def run_section(section: str, args: argparse.Namespace) -> dict[str, Any]:
    """Start Parsl, run one section, shut Parsl down; the section's figures."""
    rundir = Path(tempfile.mkdtemp(prefix="bench-core-parsl-"))
    side: ParslSide | None = None
    figures: dict[str, Any] = {}
    try:
        figures["load"] = os.getloadavg()[0]
        started = time.perf_counter()
        side = ParslSide(rundir)
        figures["startup_s"] = time.perf_counter() - started
        figures.update(_measure(section, side, args))
    except Exception as exc:  # report, never crash the comparison
        figures["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if side is not None:
            closing = time.perf_counter()
            figures["clean_shutdown"] = side.close()
            figures["shutdown_s"] = time.perf_counter() - closing
        common.reap_children()
        survivors = common.descendants()
        for pid, _ in survivors:
            log.warning("left after cleanup: %s", _cmdline(pid))
        leftover = common.kill_pids(survivors)
        common.reap_children()
        figures["killed_leftovers"] = len(leftover)
        figures["recursion_errors_in_logs"] = _count_in_logs(rundir, "RecursionError")
        shutil.rmtree(rundir, ignore_errors=True)
    return figures


def _count_in_logs(rundir: Path, needle: str) -> int:
    """Lines of Parsl's logs (interchange, manager, workers) that mention ``needle``."""
    count = 0
    for path in rundir.rglob("*.log"):
        try:
            with path.open(errors="replace") as lines:
                count += sum(needle in line for line in lines)
        except OSError:
            continue
    return count


def _cmdline(pid: int) -> str:
    try:
        return f"{pid} " + " ".join(Path(f"/proc/{pid}/cmdline").read_text().split("\0"))[:200]
    except OSError:
        return str(pid)


def _measure(section: str, side: ParslSide, args: argparse.Namespace) -> dict[str, Any]:
    if section == "dispatch":
        return common.run_dispatch(
            side, args.tasks, warmup=args.warmup, stall=args.stall, repeat=args.repeat
        )
    if section == "latency":
        return common.run_latency(side, args.tasks, warmup=args.warmup, timeout=args.stall)
    workload = common.workload(args.workload, args.tasks, args.seed, quick=args.quick)
    return common.run_packing(
        side, workload, warmup=args.warmup, stall=args.stall, deadline=args.deadline
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--section", choices=["dispatch", "latency", "packing"], required=True)
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--stall", type=float, default=30.0)
    parser.add_argument("--deadline", type=float, default=600.0)
    parser.add_argument("--workload", choices=sorted(common.WORKLOADS), default="packing")
    parser.add_argument("--quick", action="store_true", help="packing times x 0.2")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    # Orphans (the worker pool, started in the background of a shell that exits) re-parent to
    # this process, so the final sweep finds and ends them by pid.
    common.become_subreaper()
    figures = run_section(args.section, args)
    args.out.write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
