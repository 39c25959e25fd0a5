"""Setting a relay up and taking it down: ``mpiengine relay init`` and ``relay destroy``.

``init`` makes what the relay needs on the broker: its vhost, and its admin user when the
broker has none of that name; logs in as that user, so a wrong password shows at once, not
when the relay first starts; then writes the relay's config (the broker URL with the admin
credentials, the store). ``destroy`` removes the vhost, the broker users of the relay's
principals (and the admin user if ``init`` created it) and the store; the config file stays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from mpiengine.relay.admin import BrokerAdmin, Rabbitmqctl, RelayAdmin
from mpiengine.relay.config import RelayConfig, merged_relay_config, write_relay_config
from mpiengine.relay.store import RelayStore
from mpiengine_sdk.errors import AuthenticationError, ConfigError
from mpiengine_sdk.relayclient.protocol import DEFAULT_VHOST
from mpiengine_sdk.relayclient.transport import PikaTransport

__all__ = ["BrokerSettings", "admin_for", "init_relay", "settings_of"]


@dataclass(frozen=True)
class BrokerSettings:
    """Where the relay's broker is and who the relay logs in as.

    Attributes:
        url: ``amqp://host:port`` (a path or credentials in it are ignored).
        vhost: the relay's virtual host.
        admin_user: the broker user the relay connects as.
        admin_password: its password.
    """

    url: str = "amqp://127.0.0.1:5672"
    vhost: str = DEFAULT_VHOST
    admin_user: str = "mpiengine-relay"
    admin_password: str = ""

    def broker_url(self) -> str:
        """The config's ``broker_url``: host and port, credentials and vhost (quoted).

        Raises:
            ConfigError: ``url`` is not ``amqp://`` or ``amqps://`` with a host.
        """
        parts = urlsplit(self.url)
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise ConfigError("broker_url", f"{self.url!r} is not a broker URL", "amqp://host:port")
        port = f":{parts.port}" if parts.port else ""
        user = f"{quote(self.admin_user, safe='')}:{quote(self.admin_password, safe='')}"
        return f"{parts.scheme}://{user}@{parts.hostname}{port}/{quote(self.vhost, safe='')}"


def settings_of(config: RelayConfig) -> BrokerSettings:
    """The broker settings a config holds."""
    parts = urlsplit(config.broker_url)
    port = f":{parts.port}" if parts.port else ""
    return BrokerSettings(
        url=f"{parts.scheme}://{parts.hostname}{port}",
        vhost=unquote(parts.path.lstrip("/")) or "/",
        admin_user=unquote(parts.username or "guest"),
        admin_password=unquote(parts.password or ""),
    )


def admin_for(config: RelayConfig, broker: BrokerAdmin | None = None) -> RelayAdmin:
    """The admin commands of the relay a config describes (opens its store)."""
    settings = settings_of(config)
    store = RelayStore(config.store_url)
    return RelayAdmin(store, broker or Rabbitmqctl(), settings.vhost, settings.admin_user)


def init_relay(
    config_path: Path,
    settings: BrokerSettings,
    store: str | None = None,
    broker: BrokerAdmin | None = None,
) -> tuple[RelayConfig, bool]:
    """Make the vhost (and the admin user), log in once, then write the config.

    Returns:
        (the config, whether the admin user was created).

    Raises:
        ConfigError: a bad setting.
        AuthenticationError: the broker refused the admin user's password.
        BackendError: a broker command failed, or the broker or the store is unreachable.
        (The config file is left as it was on any error.)
    """
    values: dict[str, object] = {"broker_url": settings.broker_url()}
    if store is not None:
        values["store"] = store
    config = merged_relay_config(config_path, **values)
    admin = admin_for(config, broker)
    try:
        created = admin.init(settings.admin_password)
    finally:
        admin.store.close()
    try:
        PikaTransport(config.broker_url).connect().close()
    except AuthenticationError as exc:
        raise AuthenticationError(
            f"the broker refused user {settings.admin_user!r}: it exists already with another "
            "password (give that one, or pick another --admin-user)",
            "unauthenticated",
        ) from exc
    return write_relay_config(config_path, **values), created
