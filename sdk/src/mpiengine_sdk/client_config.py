"""The SDK's client config file: where the relay is and who you are.

``Executor(endpoint_id=...)`` without ``relay=`` reads it. The file is TOML (the standard
library reads it; the SDK stays light), by default ``~/.mpiengine/client.toml``
(``MPIENGINE_HOME`` moves the folder, ``MPIENGINE_CLIENT_CONFIG`` names the file)::

    relay = "amqp://127.0.0.1:5672/mpiengine"   # the broker URL (MPIENGINE_RELAY overrides)
    user = "alice"
    password_file = "~/.mpiengine/alice.password"  # or: password = "..."
    endpoint_id = "..."                            # optional default endpoint

``mpiengine relay add-user NAME --client-config PATH`` writes one.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from mpiengine_sdk.errors import ConfigError

__all__ = [
    "ClientConfig",
    "client_config_path",
    "load_client_config",
    "mpiengine_home",
    "write_client_config",
]

DEFAULT_RELAY = "amqp://127.0.0.1:5672/mpiengine"


def mpiengine_home() -> Path:
    """``$MPIENGINE_HOME``, else ``~/.mpiengine``."""
    return Path(os.environ.get("MPIENGINE_HOME") or Path.home() / ".mpiengine")


def client_config_path() -> Path:
    """``$MPIENGINE_CLIENT_CONFIG``, else ``<home>/client.toml``."""
    named = os.environ.get("MPIENGINE_CLIENT_CONFIG")
    return Path(named) if named else mpiengine_home() / "client.toml"


@dataclass(frozen=True)
class ClientConfig:
    """Where the relay is and the credentials to use there.

    Attributes:
        relay: the broker URL; user and password may be in it.
        user: the principal (broker user) name.
        password: its password.
        endpoint_id: a default endpoint (unused by the Executor, which needs one named).
    """

    relay: str = DEFAULT_RELAY
    user: str | None = None
    password: str | None = None
    endpoint_id: str | None = None

    def resolved(
        self, relay: str | None, user: str | None, password: str | None
    ) -> tuple[str, str | None, str | None]:
        """Arguments win over credentials in the URL, which win over the file's.

        Returns:
            (url, user, password).
        """
        url = relay or os.environ.get("MPIENGINE_RELAY") or self.relay
        parts = urlsplit(url)
        url_user = unquote(parts.username) if parts.username else None
        url_password = unquote(parts.password) if parts.password else None
        return (
            url,
            user or url_user or self.user,
            password or url_password or self.password,
        )


def _valid_keys() -> str:
    return ", ".join(
        [f"{f.name} (default {f.default!r})" for f in fields(ClientConfig)] + ["password_file"]
    )


def load_client_config(path: str | Path | None = None) -> ClientConfig:
    """Read the client config; a missing file (when not named explicitly) gives the defaults.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or has an unknown key.
    """
    target = Path(path) if path is not None else client_config_path()
    if not target.exists():
        if path is not None:
            raise ConfigError(str(target), "the client config file does not exist")
        return ClientConfig()
    try:
        doc: dict[str, Any] = tomllib.loads(target.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(str(target), f"cannot read the client config: {exc}") from exc
    known = {f.name for f in fields(ClientConfig)} | {"password_file"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ConfigError(str(target), f"unknown key(s) {unknown}", _valid_keys())
    for key, value in doc.items():
        if not isinstance(value, str):
            raise ConfigError(f"{target}:{key}", f"must be a string, got {value!r}")
    password_file = doc.pop("password_file", None)
    if password_file is not None and "password" not in doc:
        secret = Path(password_file).expanduser()
        try:
            doc["password"] = secret.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{target}:password_file", f"cannot read {secret}: {exc}") from exc
    return ClientConfig(**doc)


def write_client_config(
    path: str | Path, *, relay: str, user: str, password: str, endpoint_id: str | None = None
) -> Path:
    """Write a client config readable only by its owner (mode 0600).

    Returns:
        The path written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    values = {"relay": relay, "user": user, "password": password, "endpoint_id": endpoint_id}
    # A JSON string is a valid TOML basic string for everything json.dumps emits here.
    text = "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items() if v is not None)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return target
