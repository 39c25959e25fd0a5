"""A throwaway relay on the real broker, for integration tests and benchmarks.

``RelayHarness`` makes a fresh vhost and principals (names unique to the harness), runs the
relay (one process or several, on a SQLite or a PostgreSQL store) and endpoint services as
child processes under one folder, and on ``close`` ends every process it started (by pid, plus
any task process left in its folder), then deletes its broker users and vhost. Every wait has
a deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

from mpiengine.relay.admin import BrokerAdmin, Rabbitmqctl, RelayAdmin
from mpiengine.relay.store import RelayStore
from mpiengine.service.config import EndpointPaths, ServiceConfig, load_service_config
from mpiengine_sdk.client_config import write_client_config
from mpiengine_sdk.errors import BackendError

__all__ = ["EndpointProcess", "Principal", "RelayHarness", "wait_for"]

_CLI = [sys.executable, "-m", "mpiengine"]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until true.

    Raises:
        TimeoutError: still false after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@dataclass(frozen=True)
class Principal:
    """A relay user: its broker name, password, and an SDK client config file."""

    name: str
    password: str
    client_config: Path


class EndpointProcess:
    """An endpoint service run as a child process (``mpiengine endpoint start NAME``)."""

    def __init__(self, harness: RelayHarness, name: str, owner: Principal) -> None:
        self.harness = harness
        self.name = name
        self.owner = owner
        self.paths = EndpointPaths(name, harness.home / name)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_id(self) -> str:
        """The id the relay gave it (after the first start)."""
        eid = load_service_config(self.paths.config).endpoint_id
        if not eid:
            raise BackendError(f"endpoint {self.name} is not registered yet")
        return eid

    @property
    def pid(self) -> int:
        """The running process's pid."""
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> EndpointProcess:
        """Start it and wait until it serves."""
        log_path = self.paths.root / "process.log"
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*_CLI, "endpoint", "start", self.name],
                env=self.harness.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.harness.track(self.proc)
        proc = self.proc

        def serving() -> bool:
            if proc.poll() is not None:
                raise BackendError(f"endpoint {self.name} exited:\n{_tail(log_path)}")
            status = _json(self.paths.status)
            return status.get("pid") == proc.pid and status.get("state") == "running"

        wait_for(serving, timeout, f"endpoint {self.name} serving")
        return self

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 60.0) -> int | None:
        """Send ``sig`` and wait for the process to end; returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)

    def stop(self, timeout: float = 60.0) -> int | None:
        """Graceful stop (SIGTERM), SIGKILL after ``timeout``."""
        return self.kill(signal.SIGTERM, timeout)


def _json(path: Path) -> dict[str, Any]:
    import json

    with contextlib.suppress(OSError, ValueError):
        value = json.loads(path.read_text())
        if isinstance(value, dict):
            return value
    return {}


class RelayHarness:
    """A relay of its own on the broker at ``host:port``.

    Args:
        root: a folder for everything (relay store, endpoint homes, logs).
        relay_options: relay config keys (limits, thresholds, ``store``: a PostgreSQL URL to
            use instead of a SQLite file in ``root``).
        broker: the admin seam (default rabbitmqctl).
        admin: the broker admin user and password the relay connects as.
    """

    def __init__(
        self,
        root: Path,
        *,
        relay_options: dict[str, Any] | None = None,
        broker: BrokerAdmin | None = None,
        host: str = "127.0.0.1",
        port: int = 5672,
        admin: tuple[str, str] = ("guest", "guest"),
    ) -> None:
        self.root = Path(root)
        self.home = self.root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.tag = uuid.uuid4().hex[:6]
        self.vhost = f"mpiengine-test-{self.tag}"
        self.url = f"amqp://{host}:{port}/{self.vhost}"
        self.config_path = self.root / "relay.yaml"
        options = {
            "broker_url": f"amqp://{admin[0]}:{admin[1]}@{host}:{port}/{self.vhost}",
            "store": str(self.root / "relay.db"),
            **(relay_options or {}),
        }
        self.config_path.write_text(yaml.safe_dump(options))
        self.admin = RelayAdmin(
            RelayStore(options["store"]), broker or Rabbitmqctl(), self.vhost, admin[0]
        )
        self.env = {**os.environ, "MPIENGINE_HOME": str(self.home)}
        self.env.pop("MPIENGINE_BROKER_URL", None)
        self.env["MPIENGINE_RELAY_CONFIG"] = str(self.config_path)
        self.principals: list[Principal] = []
        self.endpoints: list[EndpointProcess] = []
        self.relay_proc: subprocess.Popen[bytes] | None = None
        self.relays: list[subprocess.Popen[bytes]] = []
        self._children: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> RelayHarness:
        self.admin.init()
        self.start_relay()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def track(self, proc: subprocess.Popen[bytes]) -> None:
        """Remember a child process to end at close."""
        self._children.append(proc)

    def user(self, name: str, rate: float | None = None, burst: float | None = None) -> Principal:
        """A new principal ``t<tag>-<name>`` with a client config file."""
        full = f"t{self.tag}-{name}"
        password = self.admin.add_user(full, rate=rate, burst=burst)
        config = write_client_config(
            self.root / f"{full}.toml", relay=self.url, user=full, password=password
        )
        principal = Principal(full, password, config)
        self.principals.append(principal)
        return principal

    def start_relay(self, timeout: float = 30.0, instance: str = "main") -> subprocess.Popen[bytes]:
        """Start a relay process (instance) and wait until it serves; each instance of the
        harness's config logs to ``relay-<instance>.log`` in ``root`` (``relay.log`` for
        ``main``)."""
        ready = self.root / f"relay-{instance}.ready"
        ready.unlink(missing_ok=True)
        log_path = self.root / ("relay.log" if instance == "main" else f"relay-{instance}.log")
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [*_CLI, "relay", "serve", "--config", str(self.config_path)]
                + ["--instance", instance, "--ready-file", str(ready)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.track(proc)
        self.relay_proc = proc
        self.relays.append(proc)

        def up() -> bool:
            if proc.poll() is not None:
                raise BackendError(f"the relay exited:\n{_tail(log_path)}")
            return ready.exists()

        wait_for(up, timeout, "relay ready")
        return proc

    def kill_relay(
        self, sig: int = signal.SIGKILL, proc: subprocess.Popen[bytes] | None = None
    ) -> None:
        """End a relay process (default: the last one started)."""
        proc = proc or self.relay_proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(30)

    def endpoint(
        self, name: str, owner: Principal, backend: str = "embedded", **settings: Any
    ) -> EndpointProcess:
        """Configure (not start) endpoint ``name`` of ``owner``; settings are ServiceConfig
        fields (the backend's options in ``backend_options``)."""
        handle = EndpointProcess(self, name, owner)
        config = ServiceConfig(relay=self.url, user=owner.name, backend=backend, **settings)
        config.save(handle.paths.config)
        handle.paths.save_password(owner.password)
        self.endpoints.append(handle)
        return handle

    def dead_letters(self) -> int:
        """Messages in the dead-letter queue."""
        out = self.admin.broker.run(["list_queues", "-p", self.vhost, "name", "messages"])
        for line in out.splitlines():
            parts = line.split("\t")
            if parts[0] == "mpiengine.dead":
                return int(parts[1])
        return 0

    def reap_strays(self) -> None:
        """Kill processes left running in this harness's folder (tasks of killed endpoints)."""
        root = str(self.root.resolve())
        for proc in psutil.process_iter(["pid", "cwd"]):
            cwd = proc.info.get("cwd") or ""
            if proc.pid != os.getpid() and cwd.startswith(root):
                with contextlib.suppress(psutil.Error):
                    proc.kill()

    def close(self) -> None:
        """End every process, delete the principals and the vhost."""
        for proc in reversed(self._children):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        self.reap_strays()
        for principal in self.principals:
            with contextlib.suppress(BackendError):
                self.admin.delete_user(principal.name)
        with contextlib.suppress(BackendError):
            self.admin.delete_vhost()
        self.admin.store.close()
