"""``mpiengine endpoint ...``: configure, start, stop and inspect endpoint services, a thin
click layer over ``mpiengine.service``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from mpiengine.cli.errors import cli_errors
from mpiengine.cli.output import echo_json

__all__ = ["endpoint"]


@click.group()
def endpoint() -> None:
    """Configure, start, stop and inspect endpoint services (~/.mpiengine/NAME/)."""


def _parse_options(options: tuple[str, ...]) -> dict[str, Any]:
    import yaml

    parsed: dict[str, Any] = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--option")
        parsed[key] = yaml.safe_load(value)
    return parsed


def _backend_choice(backend: str | None, old_engine: str | None) -> str | None:
    """``--backend``, or the deprecated ``--engine`` it replaced (with a note on stderr)."""
    if old_engine is None:
        return backend
    click.echo("mpiengine: --engine is deprecated; use --backend (the same values)", err=True)
    if backend is not None and backend != old_engine:
        raise click.UsageError("--engine (deprecated) and --backend disagree: give --backend")
    return old_engine


@endpoint.command()
@click.argument("name")
@click.option("--relay", "relay_url", default=None, help="Broker URL (amqp://host:port/vhost).")
@click.option("--user", default=None, help="The broker user the endpoint logs in as.")
@click.option("--password-file", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option(
    "--backend",
    default=None,
    help="What runs the tasks: embedded (default), batch (blocks from Slurm/PBS/local), null, "
    "or module:factory.",
)
@click.option("--engine", "old_engine", default=None, hidden=True, help="Deprecated: --backend.")
@click.option("--nodes", type=int, default=None, help="Embedded backend: virtual nodes.")
@click.option("--cores-per-node", type=int, default=None, help="Embedded backend: cores each.")
@click.option("--option", "options", multiple=True, help="Backend option KEY=VALUE (repeatable).")
@click.option("--site", default=None, help="A named machine (mpiengine sites list): batch backend.")
@click.option("--set", "sets", multiple=True, help="With --site: KEY=VALUE (account, queue...).")
@click.option("--prefetch", type=int, default=None, help="Task batches held at once.")
@click.option("--heartbeat-period", type=float, default=None)
@click.option("--stop-grace", type=float, default=None)
@click.option(
    "--multi-user",
    is_flag=True,
    help="A manager endpoint (run as root): each principal's tasks run as its mapped local "
    "user, from the admin's files in the endpoint's folder (README: multi-user endpoints).",
)
def configure(name: str, **kw: Any) -> None:
    """Create or update endpoint NAME's config."""
    from mpiengine.service.config import EndpointPaths, ServiceConfig, load_service_config

    with cli_errors():
        kw["backend"] = _backend_choice(kw["backend"], kw.pop("old_engine"))
        paths = EndpointPaths.of(name)
        config = load_service_config(paths.config) if paths.config.exists() else ServiceConfig()
        backend_options = dict(config.backend_options)
        site, sets = kw.pop("site"), kw.pop("sets")
        if sets and site is None:
            raise click.UsageError("--set needs --site (use --option for backend options)")
        if site is not None:  # the machine's whole config replaces the backend options
            from mpiengine.cli.sites import site_backend_options

            backend_options = site_backend_options(site, sets)
            kw["backend"] = "batch"
        if kw.pop("multi_user"):
            from mpiengine.multiuser.manager import MANAGER_ENGINE

            kw["backend"] = MANAGER_ENGINE
        backend_options.update(_parse_options(kw.pop("options")))
        config_path = backend_options.get("config")
        if config_path is not None and not Path(str(config_path)).expanduser().is_file():
            raise click.BadParameter(
                f"config={config_path}: no such file; give the path of an endpoint config "
                "file (YAML) that exists on this host",
                param_hint="--option",
            )
        for key in ("nodes", "cores_per_node"):
            if kw.get(key) is not None:
                backend_options[key] = kw[key]
        changes = {
            "relay": kw["relay_url"],
            "user": kw["user"],
            "backend": kw["backend"],
            "prefetch": kw["prefetch"],
            "heartbeat_period": kw["heartbeat_period"],
            "stop_grace": kw["stop_grace"],
        }
        config = config.replace(
            backend_options=backend_options, **{k: v for k, v in changes.items() if v is not None}
        )
        config.save(paths.config)
        if kw["password_file"] is not None:
            paths.save_password(kw["password_file"].read_text().strip())
        elif kw["password_stdin"]:
            paths.save_password(sys.stdin.readline().strip())
    click.echo(f"endpoint {name} configured in {paths.root}")


@endpoint.command()
@click.argument("name")
@click.option("--detach", is_flag=True, help="Run in the background (pid file, log file).")
@click.option("--foreground-child", is_flag=True, hidden=True)
def start(name: str, detach: bool, foreground_child: bool) -> None:
    """Start endpoint NAME (registering it with the relay the first time)."""
    from mpiengine.service.daemon import serve_foreground, start_detached

    with cli_errors():
        if detach:
            pid = start_detached(name)
            click.echo(f"endpoint {name} running (pid {pid})")
            return
        serve_foreground(name, log_to_file=not foreground_child)


@endpoint.command()
@click.argument("name")
@click.option("--grace", type=float, default=None, help="Seconds running tasks may finish.")
def stop(name: str, grace: float | None) -> None:
    """Stop endpoint NAME: running tasks finish within the grace period, or go back to the
    queue."""
    from mpiengine.service.daemon import stop_endpoint

    with cli_errors():
        stopped = stop_endpoint(name, grace)
    click.echo(f"endpoint {name} {'stopped' if stopped else 'was not running'}")


@endpoint.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def status(name: str, as_json: bool) -> None:
    """Show endpoint NAME's state and last heartbeat."""
    from mpiengine.service.daemon import endpoint_status

    with cli_errors():
        info = endpoint_status(name)
    if as_json:
        echo_json(info)
        return
    last = info["last_status"]
    click.echo(f"endpoint  {name} ({info['endpoint_id'] or 'not registered'})")
    click.echo(f"state     {'running, pid ' + str(info['pid']) if info['running'] else 'stopped'}")
    click.echo(f"relay     {info['relay']} as {info['user']}")
    if last:
        click.echo(
            f"blocks    {last.get('blocks')}  nodes {last.get('nodes')} "
            f"(busy {last.get('nodes_busy')}, free {last.get('nodes_free')})"
        )
        click.echo(
            f"tasks     waiting {last.get('tasks_waiting')}  running {last.get('tasks_running')}"
            f"  completed {last.get('tasks_completed')}"
        )
        click.echo(f"error     {last.get('last_error') or '-'}")
        if last.get("multi_user"):
            users = ", ".join(
                f"{u['principal']} as {u['user']} ({u['tasks']} tasks)"
                for u in last.get("user_endpoints") or []
            )
            click.echo(f"intake    {last.get('intake')}  user endpoints: {users or '-'}")


@endpoint.command("list")
def list_() -> None:
    """List configured endpoints."""
    from mpiengine.service.daemon import list_endpoints

    for info in list_endpoints():
        state = "running" if info.get("running") else "stopped"
        click.echo(f"{info['name']}  {info.get('endpoint_id') or '-'}  {state}")


@endpoint.command()
@click.argument("name")
@click.option("--force", is_flag=True, help="Stop it first if it runs.")
def delete(name: str, force: bool) -> None:
    """Delete endpoint NAME's folder (config, credentials, logs, sandboxes)."""
    from mpiengine.service.daemon import delete_endpoint

    with cli_errors():
        delete_endpoint(name, force=force)
    click.echo(f"endpoint {name} deleted")


@endpoint.command("render-config")
@click.argument("name")
@click.option(
    "--vars",
    "vars_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="A JSON file of user variables.",
)
@click.option("--principal", required=True, help="The relay principal to render for.")
def render_config(name: str, vars_file: Path, principal: str) -> None:
    """Render multi-user endpoint NAME's user config template offline: the schema check, the
    identity mapping and the template, exactly as a submit from PRINCIPAL would."""
    import yaml

    from mpiengine.multiuser.manager import render_offline

    with cli_errors():
        try:
            variables = json.loads(vars_file.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--vars") from exc
        click.echo(yaml.safe_dump(render_offline(name, principal, variables), sort_keys=False))
