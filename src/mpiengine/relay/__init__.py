"""The relay: RabbitMQ is the transport and the durable queue; this service authenticates,
authorises, validates and routes tasks, stores results by task id and tracks endpoints.

See ``docs/relay.md`` for the design and ``mpiengine relay --help`` for the commands.
"""

from __future__ import annotations

from mpiengine.relay.admin import BrokerAdmin, Rabbitmqctl, RelayAdmin
from mpiengine.relay.config import RelayConfig, load_relay_config
from mpiengine.relay.service import RelayService
from mpiengine.relay.store import RelayStore

__all__ = [
    "BrokerAdmin",
    "Rabbitmqctl",
    "RelayAdmin",
    "RelayConfig",
    "RelayService",
    "RelayStore",
    "load_relay_config",
]
