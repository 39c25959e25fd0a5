"""``mpiengine gc`` and ``mpiengine timeline``: tools over endpoints' work folders (their task
sandboxes and timeline)."""

from __future__ import annotations

from pathlib import Path

import click

from mpiengine.cli.errors import cli_errors

__all__ = ["gc", "timeline"]


@click.command()
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
    with cli_errors():
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


@click.command()
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
    with cli_errors():
        folder = workdir if workdir is not None else EndpointPaths.of(str(endpoint_name)).work
        records = read_timeline(folder)
        if not records:
            raise click.ClickException(
                f"no finished tasks recorded in {folder / TIMELINE}; is it an endpoint's work "
                "folder that has run tasks?"
            )
        written = write_timeline(records, output, title=f"mpiengine timeline of {folder}")
    click.echo(f"{len(records)} tasks; timeline written to {written.resolve()}")
