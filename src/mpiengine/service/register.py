"""Registration: an endpoint asks the relay for its id (once, at its first start)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from mpiengine.queues import DEAD_LETTERS
from mpiengine_sdk.errors import BackendError
from mpiengine_sdk.relayclient.protocol import (
    EXCHANGE_IN,
    KEY_REQUEST,
    ProtocolError,
    decode_frame,
    encode_frame,
    error_from_header,
    session_queue,
)
from mpiengine_sdk.relayclient.transport import Delivery, Transport

__all__ = ["register"]


def register(transport: Transport, name: str, timeout: float = 15.0) -> Mapping[str, Any]:
    """Register endpoint ``name`` of the transport's user with the relay.

    Returns:
        The relay's answer: ``endpoint_id``, ``task_queue``, ``control_queue``...

    Raises:
        AuthenticationError, AuthorizationError: refused by the broker or the relay.
        BackendError: no answer within ``timeout`` seconds.
    """
    channel = transport.connect()
    try:
        queue = session_queue(transport.user, uuid.uuid4().hex)
        channel.declare_queue(queue, durable=False, exclusive=True, arguments=DEAD_LETTERS)
        cid = uuid.uuid4().hex
        answer: dict[str, Any] = {}

        def on_reply(delivery: Delivery) -> None:
            try:
                header = decode_frame(delivery.body).header
            except ProtocolError:
                header = {}
            if header.get("cid") == cid:
                answer.update(header)
            channel.ack(delivery.tag)

        channel.consume(queue, on_reply, prefetch=8)
        body = encode_frame({"type": "register", "name": name, "cid": cid})
        channel.publish(EXCHANGE_IN, KEY_REQUEST, body, reply_to=queue)
        deadline = time.monotonic() + timeout
        while not answer and time.monotonic() < deadline:
            channel.process(0.1)
    finally:
        channel.close()
    if not answer:
        raise BackendError(
            f"the relay did not answer the registration of {name!r} within {timeout:.0f} s; "
            "is `mpiengine relay serve` running?"
        )
    if not answer.get("ok"):
        raise error_from_header(answer.get("error", {}))
    return answer
