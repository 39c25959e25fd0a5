"""``mpiengine sites list|show``: the named-machine library on the command line, and the
``--site``/``--set`` part of ``mpiengine endpoint configure``."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

import click

from mpiengine.cli.errors import cli_errors

__all__ = ["site_backend_options", "sites"]


@click.group()
def sites() -> None:
    """Named machines (site-configs/): list them, show one."""


@sites.command("list")
def list_sites() -> None:
    """List the shipped machines."""
    from mpiengine.sites import available_sites, load_site

    rows = [("NAME", "MACHINE", "FACILITY", "BATCH", "LAUNCHER", "CORES", "GPUS", "QUEUES")]
    with cli_errors():
        for name in available_sites():
            s = load_site(name)
            gpus = f"{s.node.gpus} {s.node.gpu_vendor}" if s.node.gpus else "-"
            queues = sum(1 for q in s.queues if not q.unsupported)
            facility = s.facility.split(" (")[0]
            rows.append((name, s.title, facility, s.batch, s.launcher_name,
                         str(s.node.usable_cores), gpus, str(queues)))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _node_line(node: Any) -> str:
    text = f"{node.usable_cores} usable cores"
    if node.reserved_cores:
        text += f" ({node.cores} with {len(node.reserved_cores)} kept for the system)"
    if node.gpus:
        tiles = f" ({node.gpu_tiles} tiles each)" if node.gpu_tiles > 1 else ""
        text += f"; {node.gpus} x {node.gpu or 'GPU'}{tiles}, {node.gpu_vendor}"
    return text


@sites.command()
@click.argument("name")
@click.option("--queue", default=None, help="Show this queue's nodes (default: the default).")
def show(name: str, queue: str | None) -> None:
    """Show machine NAME: what it is, its queues, and the launch line of a sample task."""
    from mpiengine.site_preview import batch_header, sample_tasks
    from mpiengine.sites import load_site
    from mpiengine_sdk.errors import MPIEngineError

    with cli_errors():
        site = load_site(name)
        q = site.queue(queue)
        node = q.node if q is not None else site.node
        click.echo(f"{site.name}: {site.title}, {site.facility}")
        click.echo(f"  {site.description}")
        provider = "yes" if site.provider else "no provider yet: launch lines only"
        click.echo(f"batch     {site.batch} (blocks: {provider})")
        options = " ".join(site.launcher(q).site_options) or "-"
        click.echo(f"launcher  {site.launcher_name} (site options: {options})")
        click.echo(f"nodes     {node.cpu or ''}: {_node_line(node)}".replace(" : ", " "))
        needed = "required" if site.account_required else "optional"
        click.echo(f"account   {needed}, e.g. {site.account_example or '-'}. {site.account_note}")
        click.echo(f"queues ({site.queue_kind}; * default):")
        for entry in site.queues:
            mark = "*" if entry.default else " "
            tags = ", ".join(t for t in ("debug" if entry.debug else "", entry.limits()) if t)
            note = entry.unsupported and f"not for blocks: {entry.unsupported}" or entry.notes
            click.echo(f"  {mark}{entry.name:<16} {tags:<36} {note}".rstrip())
        if site.scheduler_options:
            click.echo("directives every job gets:")
            for line in site.scheduler_options.splitlines():
                click.echo(f"  {line}")
        if site.worker_init:
            click.echo(f"worker_init: {'; '.join(site.worker_init.splitlines())}")
        for sample in sample_tasks(site, q):
            if sample.name == "2nodes_rank_per_gpu":
                p = sample.placement
                gpus = f", {p.gpus_per_rank} GPU each" if p.gpus_per_rank else ""
                click.echo(
                    f"sample MPI task ({p.num_nodes} nodes x {p.ranks_per_node} ranks,"
                    f" {p.cpus_per_rank} cores{gpus}):"
                )
                launch = sample.launch(site, q)
                env = " ".join(f"{k}={v}" for k, v in launch.env.items()
                               if not k.startswith(("MPIENGINE_", "PARSL_")))  # fmt: skip
                click.echo(f"  {env + ' ' if env else ''}{shlex.join(launch.argv)}")
                for file_name, data in sorted(launch.files.items()):
                    click.echo(f"  with {file_name}:")
                    for line in data.decode().splitlines():
                        click.echo(f"    {line}")
        if site.provider is not None:
            account = site.account_example or "ACCOUNT"
            try:
                header = batch_header(site.config(account=account, queue=q and q.name))
            except MPIEngineError as exc:  # e.g. parsl not installed, or the queue's limits
                header = [f"(not shown: {exc})"]
            click.echo(f"block job (account={account}):")
            for line in header:
                click.echo(f"  {line}")
        if site.unsure:
            click.echo("unsure:")
            for line in site.unsure:
                click.echo(f"  - {line}")
        click.echo("sources:")
        for url in site.sources:
            click.echo(f"  {url}")
        if site.provider is None:
            click.echo(f"configure: not yet ({site.batch} has no provider)")
            return
        example = "--set account=YOUR_PROJECT " if site.account_required else ""
        click.echo(f"configure: mpiengine endpoint configure NAME --site {site.name} {example}"
                   "[--set queue=...]")  # fmt: skip


def site_backend_options(site: str, sets: Sequence[str]) -> dict[str, Any]:
    """The batch backend options of ``--site SITE --set KEY=VALUE ...``: the site's endpoint
    config with the user's values, validated, keeping only what differs from the defaults.

    Raises:
        ConfigError: as :func:`mpiengine.sites.site_config`.
        click.BadParameter: a ``--set`` that is not KEY=VALUE.
    """
    from mpiengine.config import BlockConfig
    from mpiengine.sites import site_config

    overrides: dict[str, Any] = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        overrides[key] = value if key in ("account", "queue", "partition") else _value(value)
    defaults = BlockConfig().as_dict()
    return {k: v for k, v in site_config(site, **overrides).as_dict().items() if defaults[k] != v}


def _value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text) if text else text
