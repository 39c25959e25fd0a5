"""An endpoint service's folder and configuration.

Everything of endpoint NAME lives in ``<MPIENGINE_HOME or ~/.mpiengine>/NAME/``:

- ``endpoint.yaml``: this config (relay, user, endpoint id once registered, backend, limits);
- ``credentials``: the broker password (mode 0600);
- ``endpoint.pid``, ``endpoint.log``, ``status.json`` (the last heartbeat's status);
- ``state.db``: results not yet confirmed by the broker, and cancels of unseen tasks;
- ``work/``: the backend's working directory (task sandboxes).

Older endpoint.yaml files name the backend ``engine:`` and its options ``engine_options:``; they
still load, with a warning (once per file and key) naming the new key.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mpiengine_sdk.client_config import mpiengine_home
from mpiengine_sdk.errors import ConfigError
from mpiengine_sdk.relayclient.protocol import DEFAULT_BROKER_URL

__all__ = [
    "EndpointPaths",
    "RENAMED_KEYS",
    "ServiceConfig",
    "check_name",
    "load_service_config",
]

_log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
#: Folders of MPIENGINE_HOME used by other parts.
_RESERVED = {"relay", "embedded"}


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid endpoint name.

    Raises:
        ConfigError: not 1-64 characters of ``[A-Za-z0-9_.-]`` (not starting with '.'), or
            a reserved name.
    """
    if _NAME.fullmatch(name) is None or name in _RESERVED:
        raise ConfigError(
            "name",
            f"{name!r} is not a valid endpoint name",
            f"1-64 of [A-Za-z0-9_.-], not starting with '.', not one of {sorted(_RESERVED)}",
        )
    return name


@dataclass(frozen=True)
class EndpointPaths:
    """The files of one endpoint."""

    name: str
    root: Path

    @classmethod
    def of(cls, name: str) -> EndpointPaths:
        """The paths of endpoint ``name`` under the mpiengine home."""
        return cls(check_name(name), mpiengine_home() / name)

    @property
    def config(self) -> Path:
        """endpoint.yaml."""
        return self.root / "endpoint.yaml"

    @property
    def credentials(self) -> Path:
        """The broker password."""
        return self.root / "credentials"

    @property
    def pid(self) -> Path:
        """The pid file of a running endpoint."""
        return self.root / "endpoint.pid"

    @property
    def log(self) -> Path:
        """The log file."""
        return self.root / "endpoint.log"

    @property
    def status(self) -> Path:
        """The last status, as JSON."""
        return self.root / "status.json"

    @property
    def state(self) -> Path:
        """The local SQLite store."""
        return self.root / "state.db"

    @property
    def work(self) -> Path:
        """The backend's working directory."""
        return self.root / "work"

    def password(self) -> str:
        """The stored broker password.

        Raises:
            ConfigError: the credentials file is missing.
        """
        try:
            return self.credentials.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                str(self.credentials),
                "no credentials: run `mpiengine endpoint configure NAME --password-file ...`",
            ) from exc

    def save_password(self, password: str) -> None:
        """Store the broker password, readable by its owner only."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(password + "\n")


@dataclass(frozen=True)
class ServiceConfig:
    """An endpoint service's settings.

    Attributes:
        relay: the broker URL (without credentials).
        user: the broker user the endpoint logs in as (its owner).
        endpoint_id: given by the relay at the first start (registration).
        backend: what runs the tasks: ``embedded`` (this host as virtual nodes), ``batch``
            (blocks from a batch system; options: block config keys), ``null``
            (completes every task at once: relay benchmarks), or ``package.module:factory``
            (called with ``workdir=`` and the backend options; returns a Backend). Formerly
            ``engine``.
        backend_options: keyword arguments of the backend (``nodes``, ``cores_per_node``...).
            Formerly ``engine_options``.
        prefetch: task batches held unacknowledged at once.
        heartbeat_period: seconds between heartbeats.
        stop_grace: seconds ``stop`` lets running tasks finish before returning them.
        max_result_bytes: a larger result is replaced by a FAILED PayloadTooLarge.
        keep_results: seconds the endpoint remembers a sent result (duplicate deliveries).
    """

    relay: str = DEFAULT_BROKER_URL
    user: str = ""
    endpoint_id: str | None = None
    backend: str = "embedded"
    backend_options: dict[str, Any] = field(default_factory=dict)
    prefetch: int = 4
    heartbeat_period: float = 5.0
    stop_grace: float = 30.0
    max_result_bytes: int = 100 * 1024 * 1024
    keep_results: float = 7 * 86400.0

    def as_dict(self) -> dict[str, Any]:
        """Plain types, every key."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> ServiceConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def save(self, path: Path) -> None:
        """Write as YAML."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.as_dict(), sort_keys=False), encoding="utf-8")


def _allowed() -> str:
    return ", ".join(f.name for f in dataclasses.fields(ServiceConfig))


#: Keys of older endpoint.yaml files, and the keys that replaced them.
RENAMED_KEYS = {"engine": "backend", "engine_options": "backend_options"}
_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _renamed(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    """``doc`` with its old keys under their new names, warning once per file and key.

    Raises:
        ConfigError: a key given under both its old and its new name.
    """
    doc = dict(doc)
    for old, new in RENAMED_KEYS.items():
        if old not in doc:
            continue
        if new in doc:
            raise ConfigError(
                str(path), f"both {old!r} and {new!r}: {old!r} is the old name of {new!r}, keep one"
            )
        doc[new] = doc.pop(old)
        with _warned_lock:
            first = (str(path), old) not in _warned
            _warned.add((str(path), old))
        if first:
            _log.warning(
                "%s: the key %r is deprecated, rename it %r (it still loads; "
                "`mpiengine endpoint configure NAME` rewrites the file)",
                path,
                old,
                new,
            )
    return doc


def load_service_config(path: Path) -> ServiceConfig:
    """Read an endpoint.yaml.

    Old keys (:data:`RENAMED_KEYS`) load under their new names, with a deprecation warning.

    Raises:
        ConfigError: missing or unreadable file, unknown key, or a value of the wrong type.
    """
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise ConfigError(
            str(path), "no such endpoint: run `mpiengine endpoint configure NAME` first"
        ) from exc
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), f"cannot read the endpoint config: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(str(path), "the endpoint config must be a mapping", _allowed())
    doc = _renamed(doc, path)
    unknown = sorted(set(doc) - {f.name for f in dataclasses.fields(ServiceConfig)})
    if unknown:
        raise ConfigError(str(path), f"unknown key(s) {unknown}", _allowed())
    if not isinstance(doc.get("backend_options", {}), dict):
        raise ConfigError("backend_options", "must be a mapping of keyword arguments")
    for key in ("prefetch", "max_result_bytes"):
        if key in doc and (not isinstance(doc[key], int) or doc[key] < 1):
            raise ConfigError(key, f"must be a positive integer, got {doc[key]!r}")
    for key in ("heartbeat_period", "stop_grace", "keep_results"):
        if key in doc and (not isinstance(doc[key], int | float) or doc[key] < 0):
            raise ConfigError(key, f"must be a number >= 0, got {doc[key]!r}")
    return ServiceConfig(**doc)
