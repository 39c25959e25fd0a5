"""The ``mpiengine`` command: a thin click layer over the library."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mpiengine.agent.cli import agent
from mpiengine.cli_remote import endpoint, relay
from mpiengine.cli_sites import sites
from mpiengine_sdk.errors import MPIEngineError, TaskTooLarge

__all__ = ["main"]


@click.group()
@click.version_option(package_name="mpiengine")
def main() -> None:
    """Run shell commands, MPI programs and Python functions on HPC allocations."""


@main.command(context_settings={"ignore_unknown_options": True})
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

    try:
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
    except TaskTooLarge as exc:
        # The endpoint's own message names the batch knob (nodes_per_block); here the
        # embedded endpoint's size is --virtual-nodes.
        raise click.ClickException(
            f"task needs {exc.requested}, but the largest block is {exc.largest}; ask for "
            "fewer nodes/cores/GPUs or run it on more virtual nodes (--virtual-nodes N)"
        ) from exc
    except MPIEngineError as exc:
        raise click.ClickException(str(exc)) from exc
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


@main.command()
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

    try:
        run_demo(nodes=nodes, workdir=workdir, echo=click.echo, picture=picture)
    except MPIEngineError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--workdir", "workdirs", multiple=True, type=click.Path(path_type=Path))
@click.option("--endpoint", "endpoints", multiple=True, help="A configured endpoint's name.")
@click.option("--embedded", is_flag=True, help="Every embedded run folder of MPIENGINE_HOME.")
@click.option(
    "--max-age",
    type=float,
    default=7 * 24 * 3600.0,
    show_default=True,
    help="Seconds after delivery before a task's sandbox goes.",
)
@click.option("--max-bytes", type=int, default=None, help="Keep all sandboxes under this total.")
@click.option("--dry-run", is_flag=True, help="Say what would go; remove nothing.")
def gc(
    workdirs: tuple[Path, ...],
    endpoints: tuple[str, ...],
    embedded: bool,
    max_age: float,
    max_bytes: int | None,
    dry_run: bool,
) -> None:
    """Remove old task sandboxes by hand and say what was freed.

    Only sandboxes of tasks whose results were delivered go (oldest first); a queued or
    running task's never does.
    """
    import os

    from mpiengine.retention import collect, remove_empty_run
    from mpiengine.service.config import EndpointPaths

    folders = list(workdirs)
    try:
        folders += [EndpointPaths.of(name).work for name in endpoints]
        if embedded:
            home = Path(os.environ.get("MPIENGINE_HOME", Path.home() / ".mpiengine"))
            runs = home / "embedded"
            folders += sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
        if not folders:
            raise click.UsageError(
                "name what to clean: --workdir DIR, --endpoint NAME or --embedded"
            )
        freed = 0
        for folder in folders:
            if embedded and folder.parent.name == "embedded" and not (folder / "tasks").is_dir():
                continue  # an embedded run that never ran a task
            report = collect(folder, max_age=max_age, max_bytes=max_bytes, dry_run=dry_run)
            freed += report.freed
            click.echo(f"{folder}: {report.summary(dry_run=dry_run)}")
            if embedded and not dry_run and remove_empty_run(folder, max_age=max_age):
                click.echo(f"{folder}: empty, removed")
        click.echo(f"total {'would free' if dry_run else 'freed'}: {freed} bytes")
    except MPIEngineError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=None)
@click.option("--endpoint", "endpoint_name", default=None, help="A configured endpoint's name.")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="run.png (a Gantt chart of nodes over time), run.html or run.csv.",
)
def timeline(workdir: Path | None, endpoint_name: str | None, output: Path) -> None:
    """Draw where and when each task of an endpoint ran, from its work folder's timeline."""
    from mpiengine.demo import write_timeline
    from mpiengine.service.config import EndpointPaths
    from mpiengine.timeline_store import TIMELINE, read_timeline

    if (workdir is None) == (endpoint_name is None):
        raise click.UsageError("name one of --workdir DIR or --endpoint NAME")
    try:
        folder = workdir if workdir is not None else EndpointPaths.of(str(endpoint_name)).work
        records = read_timeline(folder)
        if not records:
            raise click.ClickException(
                f"no finished tasks recorded in {folder / TIMELINE}; is it an endpoint's work "
                "folder that has run tasks?"
            )
        written = write_timeline(records, output, title=f"mpiengine timeline of {folder}")
    except MPIEngineError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{len(records)} tasks; timeline written to {written.resolve()}")


# The agent, relay, endpoint and sites command groups live in their own modules.
main.add_command(agent)
main.add_command(relay)
main.add_command(endpoint)
main.add_command(sites)
