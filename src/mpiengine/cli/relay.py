"""``mpiengine relay ...``: run and administer the relay, a thin click layer over
``mpiengine.relay``.

The lifecycle: ``init`` (config, vhost, admin user), ``serve [--detach]``, ``status``, ``stop``,
``destroy``; principals and endpoints: ``add-user``, ``delete-user``, ``add-endpoint``,
``allow``, ``users``, ``endpoints``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import click

from mpiengine.cli.errors import cli_errors
from mpiengine.cli.output import echo_json

__all__ = ["relay"]

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Relay config YAML (default: $MPIENGINE_RELAY_CONFIG or ~/.mpiengine/relay/relay.yaml).",
)


@click.group()
def relay() -> None:
    """Run and administer the relay (RabbitMQ + the relay service)."""


def _path(config_path: Path | None) -> Path:
    from mpiengine.relay.config import relay_config_path

    return config_path if config_path is not None else relay_config_path()


_instance_option = click.option(
    "--instance",
    default="main",
    show_default=True,
    help="Name of this relay process (pid file and log relay-NAME.* beside the config); "
    "several processes of one config serve one broker and store.",
)


@relay.command()
@_config_option
@_instance_option
@click.option("--detach", is_flag=True, help="Run in the background (pid file, log file).")
@click.option("--ready-file", type=click.Path(path_type=Path), default=None, hidden=True)
def serve(config_path: Path | None, instance: str, detach: bool, ready_file: Path | None) -> None:
    """Serve until SIGTERM/SIGINT or `relay stop` (in the foreground unless --detach)."""
    import logging
    import os
    import signal

    from mpiengine.relay import RelayService, load_relay_config
    from mpiengine.relay.daemon import (
        RelayInstance,
        claim_pid_file,
        release_pid_file,
        start_detached,
    )

    with cli_errors():
        me = RelayInstance(_path(config_path), instance)
        if detach:
            pid = start_detached(me)
            click.echo(f"relay {instance} running (pid {pid})")
            return
        logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)
        logging.getLogger("pika").setLevel(logging.CRITICAL)  # our own warnings say it
        service = RelayService(load_relay_config(config_path))
        signal.signal(signal.SIGTERM, lambda *_: service.stop())
        signal.signal(signal.SIGINT, lambda *_: service.stop())
        claim_pid_file(me)

        def ready() -> None:
            click.echo(f"mpiengine relay {instance}: ready", err=True)
            if ready_file is not None:
                ready_file.write_text(f"{os.getpid()}\n")

        try:
            service.serve(on_ready=ready)
        finally:
            release_pid_file(me)


@relay.command("stop")
@_config_option
@click.option("--instance", default=None, help="Only this relay process (default: all).")
@click.option(
    "--grace", type=float, default=15.0, show_default=True, help="Seconds before SIGKILL."
)
def stop_(config_path: Path | None, instance: str | None, grace: float) -> None:
    """Stop this config's relay processes: SIGTERM (each finishes the message at hand), SIGKILL
    after the grace period; returns once they have exited."""
    from mpiengine.relay.daemon import RelayInstance, instances, stop_relay

    path = _path(config_path)
    with cli_errors():
        targets = [RelayInstance(path, instance)] if instance else instances(path)
        for target in targets or [RelayInstance(path)]:
            stopped = stop_relay(target, grace)
            click.echo(f"relay {target.name} {'stopped' if stopped else 'was not running'}")


@relay.command("status")
@_config_option
@click.option("--json", "as_json", is_flag=True)
def status_(config_path: Path | None, as_json: bool) -> None:
    """Show the relay processes, the broker and the relay's queues, the endpoints online and
    the tasks by state."""
    from mpiengine.relay.status import relay_status

    with cli_errors():
        info = relay_status(_path(config_path))
    if as_json:
        echo_json(info)
        return
    procs = "; ".join(
        f"{p['instance']} " + (f"running, pid {p['pid']}" if p["running"] else "stopped")
        for p in info["processes"]
    )
    broker = info["broker"]
    reach = "reachable" if broker["reachable"] else f"unreachable ({broker['error']})"
    queues = "  ".join(
        f"{name} " + ("-" if q is None else f"{q['messages']} ({_consumers(q['consumers'])})")
        for name, q in info["queues"].items()
    )
    tasks = "  ".join(f"{state} {count}" for state, count in info["tasks"].items())
    endpoints = info["endpoints"]
    click.echo(f"relay     {procs or 'stopped'}")
    click.echo(f"config    {info['config']}")
    click.echo(f"broker    {broker['url']} as {broker['user']}: {reach}")
    click.echo(f"queues    {queues or '-'}")
    click.echo(f"store     {info['store']}")
    click.echo(f"endpoints {endpoints['total']} ({endpoints['online']} online)")
    click.echo(f"tasks     {tasks or '-'}")


def _consumers(count: int) -> str:
    return f"{count} consumer{'' if count == 1 else 's'}"


def _admin(config_path: Path | None) -> Any:
    from mpiengine.relay import load_relay_config
    from mpiengine.relay.setup import admin_for

    return admin_for(load_relay_config(config_path))


def _client_url(config_path: Path | None) -> str:
    from mpiengine.relay import load_relay_config

    url = urlsplit(load_relay_config(config_path).broker_url)
    return f"{url.scheme}://{url.hostname}:{url.port or 5672}{url.path}"


def _is_terminal() -> bool:
    return sys.stdin.isatty()


def _init_settings(path: Path, given: dict[str, Any], password: str | None) -> Any:
    """The broker settings from the options, else the existing config, else a prompt (on a
    terminal); off a terminal a missing one is an error naming its option."""
    from mpiengine.relay.config import load_relay_config
    from mpiengine.relay.setup import BrokerSettings, settings_of

    known = settings_of(load_relay_config(path)) if path.exists() else None
    if given["url"] and urlsplit(given["url"]).path.strip("/") and not given["vhost"]:
        given["vhost"] = unquote(urlsplit(given["url"]).path.strip("/"))
    values: dict[str, Any] = {}
    for key, option, label in (
        ("url", "--broker-url", "broker URL"),
        ("vhost", "--vhost", "vhost"),
        ("admin_user", "--admin-user", "admin user"),
        ("admin_password", "--admin-password-file or --admin-password-stdin", "admin password"),
    ):
        secret = key == "admin_password"
        value = password if secret else given[key]
        # The config's password only goes with the config's user.
        if value is None and known is not None:
            if not secret or values["admin_user"] == known.admin_user:
                value = getattr(known, key) or None
        if value is None and _is_terminal():
            default = None if secret else getattr(BrokerSettings(), key)
            value = click.prompt(label, default=default, hide_input=secret)
        if value is None:
            raise click.UsageError(f"{option} is needed (no terminal to ask on)")
        values[key] = value
    return BrokerSettings(**values)


@relay.command()
@_config_option
@click.option(
    "--broker-url", default=None, help="The broker, amqp://host:port (a /VHOST path sets --vhost)."
)
@click.option("--vhost", default=None, help="The relay's virtual host (default mpiengine).")
@click.option(
    "--admin-user", default=None, help="The broker user the relay connects as; created if missing."
)
@click.option("--admin-password-file", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--admin-password-stdin", is_flag=True, help="Read the admin password from stdin.")
@click.option(
    "--store", default=None, help="sqlite:///PATH (default) or postgresql://user@host/db."
)
def init(
    config_path: Path | None,
    broker_url: str | None,
    vhost: str | None,
    admin_user: str | None,
    admin_password_file: Path | None,
    admin_password_stdin: bool,
    store: str | None,
) -> None:
    """Write the relay's config and create its vhost (and admin user) on the broker; run it on
    the broker's host. Missing options come from an existing config, or are asked for on a
    terminal."""
    from mpiengine.relay.setup import init_relay

    password = None
    if admin_password_file is not None:
        password = admin_password_file.read_text().strip()
    elif admin_password_stdin:
        password = sys.stdin.readline().strip()
    path = _path(config_path)
    with cli_errors():
        given = {"url": broker_url, "vhost": vhost, "admin_user": admin_user}
        settings = _init_settings(path, given, password)
        config, created = init_relay(path, settings, store)
    made = "created" if created else "exists"
    click.echo(f"relay config written to {path}")
    click.echo(f"vhost {settings.vhost} ready; broker user {settings.admin_user} {made}")
    click.echo(f"store {config.store_url}")


@relay.command()
@_config_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True, help="Stop this config's running relay processes first.")
def destroy(config_path: Path | None, yes: bool, force: bool) -> None:
    """Remove the relay: its vhost (queues and messages), its users on the broker and its
    store. The config file stays (`relay init` makes it all again)."""
    from mpiengine.relay.daemon import instances, running_pid, stop_relay

    path = _path(config_path)
    with cli_errors():
        running = [(i, pid) for i in instances(path) if (pid := running_pid(i)) is not None]
        if running and not force:
            names = ", ".join(f"{i.name} (pid {pid})" for i, pid in running)
            raise click.ClickException(f"relay {names} is running; stop it first (or --force)")
        admin = _admin(path)
        users = [u.name for u in admin.store.users()]
        if not yes:
            click.confirm(
                f"Remove vhost {admin.vhost} with its queues and messages, {len(users)} user(s) "
                f"{users}, and the store {admin.store.url}?",
                abort=True,
            )
        for instance, _pid in running:
            stop_relay(instance)
        removed = admin.destroy()
    users_gone = ", ".join(removed) or "none"
    click.echo(
        f"relay destroyed: vhost {admin.vhost}, broker users {users_gone}, {admin.store.url}"
    )


@relay.command("add-user")
@_config_option
@click.argument("name")
@click.option("--password-file", type=click.Path(path_type=Path), default=None)
@click.option("--rate", type=float, default=None, help="Tasks per second (default: relay's).")
@click.option("--burst", type=float, default=None, help="Burst size in tasks.")
@click.option(
    "--client-config",
    type=click.Path(path_type=Path),
    default=None,
    help="Write an SDK client config (TOML) with the credentials here instead of printing them.",
)
def add_user(
    config_path: Path | None,
    name: str,
    password_file: Path | None,
    rate: float | None,
    burst: float | None,
    client_config: Path | None,
) -> None:
    """Create principal NAME (a broker user limited to its own queues)."""
    from mpiengine_sdk.client_config import write_client_config

    password = password_file.read_text().strip() if password_file else None
    with cli_errors():
        secret = _admin(config_path).add_user(name, password, rate, burst)
    if client_config is not None:
        url = _client_url(config_path)
        write_client_config(client_config, relay=url, user=name, password=secret)
        click.echo(f"user {name} ready; credentials written to {client_config}")
    elif password is None:
        click.echo(f"user {name} ready; password: {secret}")
    else:
        click.echo(f"user {name} ready")


@relay.command("delete-user")
@_config_option
@click.argument("name")
def delete_user(config_path: Path | None, name: str) -> None:
    """Remove principal NAME."""
    with cli_errors():
        _admin(config_path).delete_user(name)
    click.echo(f"user {name} deleted")


@relay.command("add-endpoint")
@_config_option
@click.argument("name")
@click.option("--owner", required=True, help="The principal the endpoint runs as.")
@click.option("--allow", "allowed", multiple=True, help="Another principal who may submit.")
def add_endpoint(config_path: Path | None, name: str, owner: str, allowed: tuple[str, ...]) -> None:
    """Create endpoint NAME of OWNER (or find it) and print its id."""
    with cli_errors():
        record = _admin(config_path).add_endpoint(name, owner, allowed)
    click.echo(record.id)


@relay.command()
@_config_option
@click.argument("endpoint_id")
@click.argument("user")
@click.option("--revoke", is_flag=True, help="Stop sharing instead.")
def allow(config_path: Path | None, endpoint_id: str, user: str, revoke: bool) -> None:
    """Let USER submit to ENDPOINT_ID (or, with --revoke, no longer)."""
    with cli_errors():
        record = _admin(config_path).allow(endpoint_id, user, not revoke)
    click.echo(f"endpoint {record.id}: owner {record.owner}, shared with {list(record.allowed)}")


@relay.command()
@_config_option
def users(config_path: Path | None) -> None:
    """List principals."""
    with cli_errors():
        for user in _admin(config_path).store.users():
            limit = f" rate={user.rate}/s burst={user.burst}" if user.rate else ""
            click.echo(f"{user.name}{limit}")


@relay.command()
@_config_option
def endpoints(config_path: Path | None) -> None:
    """List endpoints with their owner, sharing and online state."""
    import time

    from mpiengine.relay import load_relay_config
    from mpiengine.relay.access import endpoint_view

    with cli_errors():
        threshold = load_relay_config(config_path).heartbeat_threshold
        for record in _admin(config_path).store.endpoints():
            view = endpoint_view(record, threshold, time.time())
            state = "online" if view["online"] else "offline"
            if view["multi_user"]:
                state += "  multi-user"
            shared = ",".join(record.allowed) or "-"
            click.echo(
                f"{record.id}  {record.name}  owner={record.owner}  {state}  shared={shared}"
            )
