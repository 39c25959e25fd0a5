"""``mpiengine relay ...`` and ``mpiengine endpoint ...``: thin click layers over
``mpiengine.relay`` and ``mpiengine.service``. The main CLI mounts both groups;
``python -m mpiengine.cli_remote`` runs them on their own.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import click
import yaml

from mpiengine_sdk.errors import MPIEngineError

__all__ = ["endpoint", "relay"]


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except MPIEngineError as exc:
        raise click.ClickException(str(exc)) from exc


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# -- relay ------------------------------------------------------------------------------------
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


@relay.command()
@_config_option
@click.option("--ready-file", type=click.Path(path_type=Path), default=None, hidden=True)
def serve(config_path: Path | None, ready_file: Path | None) -> None:
    """Serve in the foreground until SIGTERM/SIGINT."""
    from mpiengine.relay import RelayService, load_relay_config

    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # our own warnings say it
    with _errors():
        service = RelayService(load_relay_config(config_path))
        signal.signal(signal.SIGTERM, lambda *_: service.stop())
        signal.signal(signal.SIGINT, lambda *_: service.stop())

        def ready() -> None:
            click.echo("mpiengine relay: ready", err=True)
            if ready_file is not None:
                ready_file.write_text("ready\n")

        service.serve(on_ready=ready)


def _admin(config_path: Path | None) -> Any:
    from mpiengine.relay import Rabbitmqctl, RelayAdmin, RelayStore, load_relay_config

    config = load_relay_config(config_path)
    url = urlsplit(config.broker_url)
    vhost = unquote(url.path.lstrip("/")) or "/"
    return RelayAdmin(RelayStore(config.store_url), Rabbitmqctl(), vhost, url.username or "guest")


def _client_url(config_path: Path | None) -> str:
    from mpiengine.relay import load_relay_config

    url = urlsplit(load_relay_config(config_path).broker_url)
    return f"{url.scheme}://{url.hostname}:{url.port or 5672}{url.path}"


@relay.command()
@_config_option
def init(config_path: Path | None) -> None:
    """Create the relay's vhost on the broker (run once, on the broker's host)."""
    with _errors():
        admin = _admin(config_path)
        admin.init()
    click.echo(f"vhost {admin.vhost} ready")


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
    with _errors():
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
    with _errors():
        _admin(config_path).delete_user(name)
    click.echo(f"user {name} deleted")


@relay.command("add-endpoint")
@_config_option
@click.argument("name")
@click.option("--owner", required=True, help="The principal the endpoint runs as.")
@click.option("--allow", "allowed", multiple=True, help="Another principal who may submit.")
def add_endpoint(config_path: Path | None, name: str, owner: str, allowed: tuple[str, ...]) -> None:
    """Create endpoint NAME of OWNER (or find it) and print its id."""
    with _errors():
        record = _admin(config_path).add_endpoint(name, owner, allowed)
    click.echo(record.id)


@relay.command()
@_config_option
@click.argument("endpoint_id")
@click.argument("user")
@click.option("--revoke", is_flag=True, help="Stop sharing instead.")
def allow(config_path: Path | None, endpoint_id: str, user: str, revoke: bool) -> None:
    """Let USER submit to ENDPOINT_ID (or, with --revoke, no longer)."""
    with _errors():
        record = _admin(config_path).allow(endpoint_id, user, not revoke)
    click.echo(f"endpoint {record.id}: owner {record.owner}, shared with {list(record.allowed)}")


@relay.command()
@_config_option
def users(config_path: Path | None) -> None:
    """List principals."""
    with _errors():
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

    with _errors():
        threshold = load_relay_config(config_path).heartbeat_threshold
        for record in _admin(config_path).store.endpoints():
            view = endpoint_view(record, threshold, time.time())
            state = "online" if view["online"] else "offline"
            shared = ",".join(record.allowed) or "-"
            click.echo(f"{record.id}  {record.name}  owner={record.owner}  {state}  shared={shared}")


# -- endpoint ---------------------------------------------------------------------------------
@click.group()
def endpoint() -> None:
    """Configure, start, stop and inspect endpoint services (~/.mpiengine/NAME/)."""


def _parse_options(options: tuple[str, ...]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--option")
        parsed[key] = yaml.safe_load(value)
    return parsed


@endpoint.command()
@click.argument("name")
@click.option("--relay", "relay_url", default=None, help="Broker URL (amqp://host:port/vhost).")
@click.option("--user", default=None, help="The broker user the endpoint logs in as.")
@click.option("--password-file", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option(
    "--engine",
    default=None,
    help="embedded (default), batch (blocks from Slurm/PBS/local), null, or module:factory.",
)
@click.option("--nodes", type=int, default=None, help="Embedded engine: virtual nodes.")
@click.option("--cores-per-node", type=int, default=None, help="Embedded engine: cores each.")
@click.option("--option", "options", multiple=True, help="Engine option KEY=VALUE (repeatable).")
@click.option("--prefetch", type=int, default=None, help="Task batches held at once.")
@click.option("--heartbeat-period", type=float, default=None)
@click.option("--stop-grace", type=float, default=None)
def configure(name: str, **kw: Any) -> None:
    """Create or update endpoint NAME's config."""
    from mpiengine.service.config import EndpointPaths, ServiceConfig, load_service_config

    with _errors():
        paths = EndpointPaths.of(name)
        config = load_service_config(paths.config) if paths.config.exists() else ServiceConfig()
        engine_options = dict(config.engine_options)
        engine_options.update(_parse_options(kw.pop("options")))
        for key in ("nodes", "cores_per_node"):
            if kw.get(key) is not None:
                engine_options[key] = kw[key]
        changes = {
            "relay": kw["relay_url"],
            "user": kw["user"],
            "engine": kw["engine"],
            "prefetch": kw["prefetch"],
            "heartbeat_period": kw["heartbeat_period"],
            "stop_grace": kw["stop_grace"],
        }
        config = config.replace(
            engine_options=engine_options, **{k: v for k, v in changes.items() if v is not None}
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

    with _errors():
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

    with _errors():
        stopped = stop_endpoint(name, grace)
    click.echo(f"endpoint {name} {'stopped' if stopped else 'was not running'}")


@endpoint.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def status(name: str, as_json: bool) -> None:
    """Show endpoint NAME's state and last heartbeat."""
    from mpiengine.service.daemon import endpoint_status

    with _errors():
        info = endpoint_status(name)
    if as_json:
        _echo_json(info)
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

    with _errors():
        delete_endpoint(name, force=force)
    click.echo(f"endpoint {name} deleted")


def _main() -> Callable[[], None]:
    group = click.Group("mpiengine", help="The relay and endpoint commands of mpiengine.")
    group.add_command(relay)
    group.add_command(endpoint)
    return group


if __name__ == "__main__":
    _main()()
