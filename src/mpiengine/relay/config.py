"""The relay's configuration: a YAML file of a few keys, each with a default.

``MPIENGINE_BROKER_URL`` overrides ``broker_url``; ``MPIENGINE_RELAY_CONFIG`` names the file
(default ``<MPIENGINE_HOME or ~/.mpiengine>/relay/relay.yaml``; a missing default file means all
defaults).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mpiengine.relay.database import store_url
from mpiengine_sdk.client_config import mpiengine_home
from mpiengine_sdk.errors import ConfigError

__all__ = [
    "RelayConfig",
    "load_relay_config",
    "merged_relay_config",
    "relay_config_path",
    "write_relay_config",
]

_MiB = 1024 * 1024


@dataclass(frozen=True)
class RelayConfig:
    """The relay's settings.

    Attributes:
        broker_url: the broker as an admin user (creates queues, reads every queue).
        store: where tasks and results are kept: ``sqlite:///PATH`` (or a bare path) for one
            relay host, ``postgresql://user@host:port/database`` for several relay processes
            serving one broker ("" means ``<home>/relay/relay.db``).
        max_payload_bytes: the largest task or result accepted (100 MiB; Globus Compute: 10 MB).
        result_retention: seconds a result is kept after the client has fetched it.
        result_max_age: seconds an unfetched result is kept after the task finished; then it
            expires and a fetch says so.
        heartbeat_threshold: seconds without a heartbeat before an endpoint counts as offline.
        rate: default per-user limit in tasks per second (None: unlimited).
        burst: default per-user burst in tasks (None: one second's worth of ``rate``).
        prefetch: unacknowledged messages per relay queue.
        sweep_interval: seconds between expiry sweeps.
    """

    broker_url: str = "amqp://guest:guest@127.0.0.1:5672/mpiengine"
    store: str = ""
    max_payload_bytes: int = 100 * _MiB
    result_retention: float = 3600.0
    result_max_age: float = 7 * 86400.0
    heartbeat_threshold: float = 30.0
    rate: float | None = None
    burst: float | None = None
    prefetch: int = 64
    sweep_interval: float = 60.0

    @property
    def store_url(self) -> str:
        """The store as a URL (``sqlite:///...`` or ``postgresql://...``).

        Raises:
            ConfigError: ``store`` is a URL of a scheme the relay cannot use.
        """
        return store_url(self.store, mpiengine_home() / "relay/relay.db")

    def as_dict(self) -> dict[str, Any]:
        """Plain types, every key."""
        return dataclasses.asdict(self)


def relay_config_path() -> Path:
    """``$MPIENGINE_RELAY_CONFIG``, else ``<home>/relay/relay.yaml``."""
    named = os.environ.get("MPIENGINE_RELAY_CONFIG")
    return Path(named) if named else mpiengine_home() / "relay" / "relay.yaml"


def _allowed() -> str:
    return ", ".join(f"{f.name} (default {f.default!r})" for f in dataclasses.fields(RelayConfig))


def _check(doc: dict[str, Any]) -> None:
    types = {f.name: f.type for f in dataclasses.fields(RelayConfig)}
    for key, value in doc.items():
        kind = str(types[key])
        if kind == "str" and not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if kind != "str" and not (numeric or (value is None and "None" in kind)):
            raise ConfigError(key, f"must be a number, got {value!r}", _allowed())
        if numeric and value <= 0:
            raise ConfigError(key, f"must be positive, got {value!r}")
    store_url(doc.get("store", ""), Path("relay.db"))  # an unknown scheme is refused here
    if "prefetch" in doc or "max_payload_bytes" in doc:
        for key in ("prefetch", "max_payload_bytes"):
            if key in doc and not isinstance(doc[key], int):
                raise ConfigError(key, f"must be an integer, got {doc[key]!r}")


def _read(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), f"cannot read the relay config: {exc}") from exc
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(str(path), "the relay config must be a mapping", _allowed())
    return dict(loaded or {})


def load_relay_config(path: str | Path | None = None, **overrides: Any) -> RelayConfig:
    """Read the relay config, apply ``MPIENGINE_BROKER_URL`` and then ``overrides``.

    Raises:
        ConfigError: unreadable file, unknown key, or a value of the wrong type.
    """
    target = Path(path) if path is not None else relay_config_path()
    doc = _read(target) if path is not None or target.exists() else {}
    if os.environ.get("MPIENGINE_BROKER_URL"):
        doc["broker_url"] = os.environ["MPIENGINE_BROKER_URL"]
    doc.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(doc) - {f.name for f in dataclasses.fields(RelayConfig)})
    if unknown:
        raise ConfigError("", f"unknown relay config key(s) {unknown}", _allowed())
    _check(doc)
    return RelayConfig(**doc)


def _merged(path: Path, values: dict[str, Any]) -> dict[str, Any]:
    doc = _read(path) if path.exists() else {}
    doc.update(values)
    unknown = sorted(set(doc) - {f.name for f in dataclasses.fields(RelayConfig)})
    if unknown:
        raise ConfigError("", f"unknown relay config key(s) {unknown}", _allowed())
    _check(doc)
    return doc


def merged_relay_config(path: Path, **values: Any) -> RelayConfig:
    """The config the file would hold with these keys set (nothing is written).

    Raises:
        ConfigError: an unknown key or a bad value.
    """
    return RelayConfig(**_merged(path, values))


def write_relay_config(path: Path, **values: Any) -> RelayConfig:
    """Set keys in the relay config file (created if missing; other keys are kept), readable
    by its owner only (it holds the broker password).

    Returns:
        The config as ``load_relay_config`` reads it back.

    Raises:
        ConfigError: an unknown key or a bad value (the file is not written then).
    """
    doc = _merged(path, values)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        yaml.safe_dump(doc, out, sort_keys=False)
    os.chmod(path, 0o600)
    return load_relay_config(path)
