"""Queue topology on the broker: the relay's queues and exchanges and an endpoint's queues
(idempotent declarations), and the dead-letter arguments every queue is declared with.

Neither side owns it: the relay declares its topology and each endpoint's queues, and the
endpoint service declares its registration queue with the same dead-letter arguments.
The names themselves are the SDK's (``mpiengine_sdk.relayclient.protocol``).
"""

from __future__ import annotations

from mpiengine_sdk.relayclient.protocol import (
    EXCHANGE_DEAD,
    EXCHANGE_IN,
    KEY_HEARTBEAT,
    KEY_REQUEST,
    KEY_RESULT,
    QUEUE_DEAD,
    QUEUE_HEARTBEATS,
    QUEUE_REQUESTS,
    QUEUE_RESULTS,
    control_queue,
    task_queue,
)
from mpiengine_sdk.relayclient.transport import Channel

__all__ = ["DEAD_LETTERS", "declare_endpoint_queues", "declare_relay_topology"]

#: Arguments of every queue: a rejected message goes to the dead-letter exchange.
DEAD_LETTERS = {"x-dead-letter-exchange": EXCHANGE_DEAD}
#: Dead letters kept for inspection (oldest dropped beyond this).
_DEAD_MAX = 100_000
#: Heartbeats older than this are worthless; they vanish while the relay is down.
_HEARTBEAT_TTL_MS = 60_000


def declare_relay_topology(channel: Channel) -> None:
    """The inbound exchange, the relay's three queues, and the dead-letter exchange/queue."""
    channel.declare_exchange(EXCHANGE_DEAD, "fanout")
    channel.declare_queue(QUEUE_DEAD, arguments={"x-max-length": _DEAD_MAX})
    channel.bind(QUEUE_DEAD, EXCHANGE_DEAD, "")
    # Unroutable messages (an unknown routing key) are dead letters too.
    channel.declare_exchange(EXCHANGE_IN, "direct", arguments={"alternate-exchange": EXCHANGE_DEAD})
    for queue, key, extra in (
        (QUEUE_REQUESTS, KEY_REQUEST, {}),
        (QUEUE_RESULTS, KEY_RESULT, {}),
        (QUEUE_HEARTBEATS, KEY_HEARTBEAT, {"x-message-ttl": _HEARTBEAT_TTL_MS}),
    ):
        channel.declare_queue(queue, arguments={**DEAD_LETTERS, **extra})
        channel.bind(queue, EXCHANGE_IN, key)


def declare_endpoint_queues(channel: Channel, owner: str, endpoint_id: str) -> None:
    """An endpoint's durable task and control queues."""
    channel.declare_queue(task_queue(owner, endpoint_id), arguments=DEAD_LETTERS)
    channel.declare_queue(control_queue(owner, endpoint_id), arguments=DEAD_LETTERS)
