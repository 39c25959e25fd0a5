"""What the relay does with endpoints' results and heartbeats.

A result is accepted only from the owner of the endpoint the task was sent to (the broker
validates ``user_id``), so nobody can forge another user's results. It is stored (a duplicate
of an already final task is not stored again) and forwarded to the session queue of the client
that submitted or last fetched it; a client that is gone fetches it later.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from mpiengine.relay.requests import dead_letter
from mpiengine.relay.store import RelayStore
from mpiengine_sdk.relayclient.protocol import ProtocolError, decode_frame, encode_frame
from mpiengine_sdk.relayclient.transport import Channel, Delivery
from mpiengine_sdk.wire import WireError, decode_result

__all__ = ["ResultHandler"]

log = logging.getLogger(__name__)


class ResultHandler:
    """Handles ``relay.results`` and ``relay.heartbeats``."""

    def __init__(self, store: RelayStore) -> None:
        self.store = store

    def _sender_owns(self, delivery: Delivery, header: Mapping[str, Any]) -> str | None:
        endpoint_id = header.get("endpoint_id")
        record = self.store.endpoint(endpoint_id) if isinstance(endpoint_id, str) else None
        if record is None or not delivery.user_id or record.owner != delivery.user_id:
            return None
        return record.id

    def handle_results(self, channel: Channel, delivery: Delivery) -> None:
        """Store and forward one batch of results."""
        try:
            frame = decode_frame(delivery.body)
        except ProtocolError as exc:
            dead_letter(channel, delivery, exc)
            return
        endpoint_id = self._sender_owns(delivery, frame.header)
        if frame.type != "results" or endpoint_id is None:
            claimed = frame.header.get("endpoint_id")
            dead_letter(channel, delivery, f"not a results frame of its own endpoint {claimed!r}")
            return
        routes = self._store(delivery.user_id or "", endpoint_id, frame.lines)
        for session, lines in routes.items():
            body = encode_frame({"type": "results"}, lines)
            channel.publish("", session, body, persistent=False, confirm=False)
        channel.ack(delivery.tag)

    def _store(
        self, sender: str, endpoint_id: str, lines: tuple[bytes, ...]
    ) -> dict[str, list[bytes]]:
        """Record the valid lines; returns the lines to forward, by session queue."""
        decoded = []
        for line in lines:
            try:
                decoded.append((decode_result(line), line))
            except WireError as exc:
                log.error("dropping a malformed result line from %s: %s", sender, exc)
        # The sessions are read under the rows' lock, in the transaction that stores the
        # results: a concurrent fetch (another relay) either moved them first, or sees these.
        rows = self.store.record(
            endpoint_id, [(msg.task_id, msg.state.value, line) for msg, line in decoded]
        )
        routes: dict[str, list[bytes]] = {}
        for msg, line in decoded:
            row = rows.get(msg.task_id)
            if row is None:
                log.error("dropping a result for %s: not a task of %s", msg.task_id, endpoint_id)
            elif row.session and row.fetched is None:
                routes.setdefault(row.session, []).append(line)
        return routes

    def handle_heartbeat(self, channel: Channel, delivery: Delivery) -> None:
        """Record an endpoint's heartbeat (from its owner only)."""
        try:
            frame = decode_frame(delivery.body)
            status = frame.header.get("status")
            if frame.type != "heartbeat" or not isinstance(status, dict):
                raise ProtocolError("not a heartbeat frame with a status object")
            json.dumps(status)
        except (ProtocolError, TypeError, ValueError) as exc:
            dead_letter(channel, delivery, exc)
            return
        endpoint_id = self._sender_owns(delivery, frame.header)
        if endpoint_id is None:
            dead_letter(channel, delivery, "heartbeat from a user who does not own the endpoint")
            return
        self.store.heartbeat(endpoint_id, time.time(), status)
        channel.ack(delivery.tag)
