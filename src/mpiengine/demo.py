"""``mpiengine demo``: a small mixed ensemble on the embedded endpoint.

Shell tasks, MPI tasks of 1, 2 and 4 virtual nodes, an MPI Python function doing an mpi4py
allreduce, and one task that hits its walltime; progress while it runs, then a table and the
total utilisation.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpiengine_sdk.errors import ConfigError
from mpiengine_sdk.executor import Executor
from mpiengine_sdk.functions import MPIFunction, MPIPythonFunction, ShellFunction
from mpiengine_sdk.future import TaskFuture
from mpiengine_sdk.progressbar import progress
from mpiengine_sdk.results import ShellResult
from mpiengine_sdk.spec import ResourceSpec
from mpiengine_sdk.timeline import Timeline

__all__ = ["DemoRow", "allreduce_ranks", "run_demo", "write_timeline"]

# One write(2) per rank, so hydra never interleaves two ranks' lines.
_MPI_HELLO = (
    "from mpi4py import MPI; import os; c = MPI.COMM_WORLD; "
    "os.write(1, f'rank {c.rank} of {c.size} says hello\\n'.encode())"
)


def allreduce_ranks(comm: Any, scale: int) -> int:
    """Runs on every rank: the sum over ranks of ``rank * scale`` (an mpi4py allreduce)."""
    total: int = comm.allreduce(comm.rank * scale)
    return total


@dataclass(frozen=True)
class DemoRow:
    """One line of the demo's table."""

    label: str
    nodes: int
    returncode: int | None
    seconds: float
    started: float
    ended: float
    note: str


def _ensemble(ex: Executor) -> list[tuple[str, TaskFuture]]:
    py = sys.executable
    jobs: list[tuple[str, TaskFuture]] = []
    greet = ShellFunction("echo hello {who} from $MPIENGINE_NODELIST", name="greet")
    for who in ("Ada", "Grace", "Katherine"):
        jobs.append((f"shell greet {who}", ex.submit(greet, who=who)))
    for nodes in (1, 2, 4):
        spec = ResourceSpec(num_nodes=nodes, ranks_per_node=2, exclusive=True, walltime=60)
        fn = MPIFunction([py, "-c", _MPI_HELLO], name="mpi-hello")
        jobs.append((f"mpi hello {nodes} node(s)", ex.submit(fn, resource_spec=spec)))
    spec = ResourceSpec(num_nodes=2, ranks_per_node=2, walltime=60)
    jobs.append(
        (
            "mpi python allreduce",
            ex.submit(MPIPythonFunction(allreduce_ranks), 10, resource_spec=spec),
        )
    )
    sleepy = ShellFunction("sleep 30", walltime=2, name="too-slow")
    jobs.append(("shell sleep 30 (walltime 2 s)", ex.submit(sleepy)))
    return jobs


def _row(label: str, future: TaskFuture) -> DemoRow:
    try:
        value = future.result()
    except Exception as exc:  # the table shows failures; the demo keeps going
        return DemoRow(label, 0, None, 0.0, 0.0, 0.0, f"{type(exc).__name__}: {exc}"[:60])
    if isinstance(value, ShellResult):
        start, end = value.started or 0.0, value.ended or 0.0
        note = (value.stdout.strip().splitlines() or [""])[-1][:60]
        if value.num_ranks > 1:
            replied = value.stdout.count("says hello")
            note = f"{replied}/{value.num_ranks} ranks replied"
        if value.returncode == 124:
            note = "walltime expired: whole tree killed"
        return DemoRow(label, len(value.nodes), value.returncode, end - start, start, end, note)
    msg = future.message
    start = (msg.started or 0.0) if msg else 0.0
    end = (msg.ended or 0.0) if msg else 0.0
    nodes = len(msg.nodes) if msg else 0
    return DemoRow(label, nodes, 0, end - start, start, end, f"allreduce returned {value!r}")


def run_demo(
    *,
    nodes: int = 4,
    workdir: Path | None = None,
    echo: Callable[[str], None] = print,
    picture: Path | None = None,
) -> list[DemoRow]:
    """Run the demo ensemble and print progress, a table and the utilisation, then draw where
    each task ran.

    Args:
        nodes: virtual nodes of the embedded endpoint.
        workdir: the endpoint's work folder (sandboxes); None: a new one.
        echo: prints a line.
        picture: where the timeline goes: a .png (needs matplotlib, the SDK's ``timeline``
            extra), .html or .csv; None: ``mpiengine-demo.png`` in the current folder
            (``.html`` when matplotlib is missing).

    Returns:
        The table rows, in submission order.
    """
    began = time.time()
    with Executor(nodes=nodes, workdir=workdir) as ex:
        jobs = _ensemble(ex)
        echo(f"submitted {len(jobs)} tasks to the embedded endpoint ({nodes} virtual nodes)")
        for _ in progress([f for _, f in jobs], desc="demo"):  # a live line on a terminal
            pass
        rows = [_row(label, f) for label, f in jobs]
        records = ex.timeline()
    _table(rows, echo)
    makespan = max(time.time() - began, 1e-9)
    busy = sum(r.nodes * r.seconds for r in rows)
    echo(f"makespan {makespan:.2f} s, utilisation {busy / (nodes * makespan):.0%} of {nodes} nodes")
    written = write_timeline(records, picture)
    echo(f"timeline of where each task ran: {written.resolve()}")
    return rows


def write_timeline(records: Timeline, path: Path | None, *, title: str = "mpiengine demo") -> Path:
    """Write ``records`` by the suffix of ``path`` (.png, .html or .csv).

    With no path: ``mpiengine-demo.png``, or ``mpiengine-demo.html`` when matplotlib is
    missing.

    Raises:
        ConfigError: the suffix is none of the three.
        ImportError: a .png was asked for and matplotlib is missing.
    """
    if path is None:
        try:
            return records.to_png(Path("mpiengine-demo.png"), title=title)
        except ImportError:
            path = Path("mpiengine-demo.html")
    suffix = path.suffix.lower()
    if suffix == ".png":
        return records.to_png(path, title=title)
    if suffix == ".html":
        records.to_html(path)
        return path
    if suffix == ".csv":
        records.to_csv(path)
        return path
    raise ConfigError("picture", f"{str(path)!r} has no known suffix", ".png, .html or .csv")


def _table(rows: list[DemoRow], echo: Callable[[str], None]) -> None:
    echo(f"{'task':32} {'nodes':>5} {'rc':>4} {'seconds':>8}  output")
    for r in rows:
        rc = "-" if r.returncode is None else str(r.returncode)
        echo(f"{r.label:32} {r.nodes:>5} {rc:>4} {r.seconds:>8.2f}  {r.note}")
