"""``mpiengine run`` and ``mpiengine demo``: tasks on the embedded endpoint (this host as
virtual nodes)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mpiengine.cli.errors import cli_errors

__all__ = ["demo", "run"]


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--nodes", "num_nodes", type=int, default=None, help="Nodes for the task.")
@click.option("--ranks-per-node", type=int, default=None, help="MPI ranks on each node.")
@click.option("--num-ranks", type=int, default=None, help="Total MPI ranks.")
@click.option("--cpus-per-rank", type=int, default=1, show_default=True)
@click.option("--walltime", type=float, default=None, help="Seconds before the task is killed.")
@click.option("--exclusive", is_flag=True, help="Hold the nodes whole.")
@click.option(
    "--mpi/--no-mpi",
    default=None,
    help="Run under the MPI launcher (default: when more than one rank is asked for).",
)
@click.option("--virtual-nodes", type=int, default=None, help="Embedded endpoint size.")
@click.option("--workdir", type=click.Path(path_type=Path), default=None)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    num_nodes: int | None,
    ranks_per_node: int | None,
    num_ranks: int | None,
    cpus_per_rank: int,
    walltime: float | None,
    exclusive: bool,
    mpi: bool | None,
    virtual_nodes: int | None,
    workdir: Path | None,
    command: tuple[str, ...],
) -> None:
    """Run one COMMAND on the embedded endpoint and print its result.

    Example: mpiengine run --nodes 2 --ranks-per-node 2 -- hostname
    """
    from mpiengine_sdk.executor import Executor
    from mpiengine_sdk.functions import MPIFunction, ShellFunction
    from mpiengine_sdk.progressbar import progress
    from mpiengine_sdk.spec import ResourceSpec

    with cli_errors(embedded=True):
        spec = ResourceSpec(
            num_nodes=num_nodes,
            ranks_per_node=ranks_per_node,
            num_ranks=num_ranks,
            cpus_per_rank=cpus_per_rank,
            walltime=walltime,
            exclusive=exclusive,
        )
        use_mpi = mpi if mpi is not None else spec.num_ranks > 1
        fn = (MPIFunction if use_mpi else ShellFunction)(list(command))
        with Executor(nodes=virtual_nodes, workdir=workdir) as ex:
            future = ex.submit(fn, resource_spec=spec)
            for _ in progress([future], desc="mpiengine run"):  # a live line on a terminal only
                pass
            result = future.result()
    click.echo(f"task      {result.task_id}")
    click.echo(f"nodes     {','.join(result.nodes)}")
    click.echo(f"argv      {' '.join(result.argv)}")
    if result.sandbox and Path(result.sandbox).exists():
        click.echo(f"sandbox   {result.sandbox}")
    else:  # the embedded endpoint removes a successful task's sandbox unless told to keep it
        click.echo("sandbox   removed (the task succeeded); --workdir DIR keeps it")
    click.echo(f"seconds   {result.duration:.3f}")
    click.echo(f"returncode {result.returncode}")
    if result.stdout:
        click.echo("--- stdout (tail) ---\n" + result.stdout.rstrip("\n"))
    if result.stderr:
        click.echo("--- stderr (tail) ---\n" + result.stderr.rstrip("\n"), err=True)
    sys.exit(result.returncode if result.returncode is not None else 1)


@click.command()
@click.option("--nodes", type=int, default=4, show_default=True, help="Virtual nodes.")
@click.option("--workdir", type=click.Path(path_type=Path), default=None)
@click.option(
    "-o",
    "--picture",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the timeline goes (.png, .html or .csv); default ./mpiengine-demo.png.",
)
def demo(nodes: int, workdir: Path | None, picture: Path | None) -> None:
    """Run a small mixed ensemble on the embedded endpoint, show a table, draw the timeline."""
    from mpiengine.demo import run_demo

    with cli_errors():
        run_demo(nodes=nodes, workdir=workdir, echo=click.echo, picture=picture)
