"""Run, stop, inspect and delete endpoint services: the library behind ``mpiengine endpoint``.

A running endpoint is known by its pid file; a pid counts only if that process's command line
names mpiengine and the endpoint (a recycled pid is not mistaken for it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from mpiengine import detach
from mpiengine.service.config import EndpointPaths, load_service_config
from mpiengine.service.register import register
from mpiengine.service.worker import EndpointService
from mpiengine_sdk.client_config import mpiengine_home
from mpiengine_sdk.errors import BackendError, ConfigError
from mpiengine_sdk.relayclient.transport import PikaTransport

__all__ = [
    "delete_endpoint",
    "endpoint_status",
    "list_endpoints",
    "running_pid",
    "serve_foreground",
    "start_detached",
    "stop_endpoint",
]

log = logging.getLogger(__name__)


def running_pid(paths: EndpointPaths) -> int | None:
    """The pid of the running endpoint, or None."""
    try:
        pid = int(paths.pid.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    args = [a.decode(errors="replace") for a in cmdline]
    if paths.name in args and any("mpiengine" in a for a in args):
        return pid
    return None


def _configure_logging(paths: EndpointPaths, to_file: bool) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if to_file:
        handlers.append(logging.FileHandler(paths.log))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # our own warnings say it


def serve_foreground(name: str, *, log_to_file: bool = True) -> None:
    """Register if needed, then serve in this process until SIGTERM/SIGINT.

    Raises:
        ConfigError: not configured, or already running.
        AuthenticationError, AuthorizationError, BackendError: broker or relay refusals.
    """
    paths = EndpointPaths.of(name)
    config = load_service_config(paths.config)
    other = running_pid(paths)
    if other is not None and other != os.getpid():
        raise ConfigError(name, f"endpoint {name!r} is already running (pid {other})")
    paths.root.mkdir(parents=True, exist_ok=True)
    _configure_logging(paths, log_to_file)
    transport = PikaTransport(config.relay, user=config.user, password=paths.password())
    if not config.endpoint_id:
        answer = register(transport, name)
        config = config.replace(endpoint_id=str(answer["endpoint_id"]))
        config.save(paths.config)
        log.info("endpoint %s registered: id %s", name, config.endpoint_id)
    service = EndpointService(config, paths, transport=transport)

    def on_signal(_signum: int, _frame: object) -> None:
        service.request_stop(_stop_grace(paths))

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    paths.pid.write_text(f"{os.getpid()}\n")
    try:
        service.run()
    finally:
        with contextlib.suppress(OSError):
            paths.pid.unlink()
        with contextlib.suppress(OSError):
            (paths.root / "stop-grace").unlink()


def _stop_grace(paths: EndpointPaths) -> float | None:
    try:
        return float((paths.root / "stop-grace").read_text().strip())
    except (OSError, ValueError):
        return None


def _read_status(paths: EndpointPaths) -> dict[str, Any]:
    try:
        value = json.loads(paths.status.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def start_detached(name: str, timeout: float = 60.0) -> int:
    """Start the endpoint in the background (its own session, output to its log).

    Returns:
        Its pid, once it serves (its status file says so).

    Raises:
        ConfigError: not configured, or already running.
        BackendError: it exited or did not come up within ``timeout`` (the log's tail says why).
    """
    paths = EndpointPaths.of(name)
    load_service_config(paths.config)
    if running_pid(paths) is not None:
        raise ConfigError(name, f"endpoint {name!r} is already running (pid {running_pid(paths)})")
    paths.root.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "mpiengine", "endpoint", "start", "--foreground-child"]
    pid = detach.spawn([*argv, name], paths.log, mode=0o644)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _read_status(paths)
        if status.get("pid") == pid and status.get("state") == "running":
            return pid
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            raise BackendError(f"endpoint {name!r} exited ({code}):\n{detach.log_tail(paths.log)}")
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise BackendError(
        f"endpoint {name!r} did not start within {timeout:.0f} s:\n{detach.log_tail(paths.log)}"
    )


def stop_endpoint(name: str, grace: float | None = None, timeout: float | None = None) -> bool:
    """Stop a running endpoint: SIGTERM, then SIGKILL if it outlives grace + ``timeout``.

    Returns only once the process has exited (a zombie not yet reaped by its parent counts as
    exited; its pid file going away does not: the interpreter is still shutting down then).

    Returns:
        False if it was not running.

    Raises:
        BackendError: it still runs 30 s after SIGKILL (stuck in the kernel).
    """
    paths = EndpointPaths.of(name)
    pid = running_pid(paths)
    if pid is None:
        return False

    def wait() -> float:
        config = load_service_config(paths.config)
        if grace is not None:
            (paths.root / "stop-grace").write_text(f"{grace}\n")
        return (grace if grace is not None else config.stop_grace) + (timeout or 15.0)

    stopped = detach.stop(
        pid, what=f"endpoint {name!r}", still_ours=lambda: running_pid(paths) == pid, wait=wait
    )
    if not stopped:
        return False
    with contextlib.suppress(OSError, ValueError):
        if int(paths.pid.read_text().strip()) == pid:  # left behind by a SIGKILL
            paths.pid.unlink()
    return True


def endpoint_status(name: str) -> dict[str, Any]:
    """The endpoint's config, whether it runs, and its last status."""
    paths = EndpointPaths.of(name)
    config = load_service_config(paths.config)
    pid = running_pid(paths)
    last = _read_status(paths)
    return {
        "name": name,
        "endpoint_id": config.endpoint_id,
        "relay": config.relay,
        "user": config.user,
        "engine": config.backend,
        "running": pid is not None,
        "pid": pid,
        "last_status": last,
    }


def list_endpoints() -> list[dict[str, Any]]:
    """Every configured endpoint under the mpiengine home, by name."""
    home = mpiengine_home()
    if not home.is_dir():
        return []
    found = []
    for child in sorted(home.iterdir()):
        if (child / "endpoint.yaml").is_file():
            try:
                found.append(endpoint_status(child.name))
            except ConfigError as exc:
                found.append({"name": child.name, "error": str(exc)})
    return found


def delete_endpoint(name: str, *, force: bool = False) -> None:
    """Remove an endpoint's folder (config, credentials, logs, sandboxes).

    Raises:
        ConfigError: it is running and ``force`` is not set, or it does not exist.
    """
    paths = EndpointPaths.of(name)
    if not paths.config.exists():
        raise ConfigError(name, f"no endpoint {name!r} under {paths.root.parent}")
    if running_pid(paths) is not None:
        if not force:
            raise ConfigError(name, f"endpoint {name!r} is running; stop it first (or --force)")
        stop_endpoint(name, grace=0)
    shutil.rmtree(paths.root)
