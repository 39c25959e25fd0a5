"""What the relay does with each request on ``relay.requests``.

Every request is authenticated by its broker-validated ``user_id`` (a principal the relay
knows), then authorised (the endpoint allows the user; a task id belongs to the user). Answers
go to the request's ``reply_to``, and only when that queue belongs to the same user, so nobody
can make the relay write into someone else's queue.

Types: ``hello`` and ``status`` (the endpoint and the relay's limits), ``submit`` (a batch of
tasks), ``fetch`` (stored results, and re-route future ones to this session; with
``"unknown": "report"`` unknown ids are listed in the answer, not failed), ``fetched``
(start the retention clock), ``cancel``, ``list`` (a user's outstanding tasks), ``register``
(an endpoint asks for its id).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mpiengine.queues import declare_endpoint_queues
from mpiengine.relay.access import authorize_endpoint, endpoint_view
from mpiengine.relay.config import RelayConfig
from mpiengine.relay.ratelimit import RateLimiter
from mpiengine.relay.store import RelayStore
from mpiengine.relay.submit import SubmitHandler
from mpiengine_sdk.errors import (
    AuthenticationError,
    RelayError,
    error_record,
)
from mpiengine_sdk.relayclient.protocol import (
    Frame,
    ProtocolError,
    control_queue,
    decode_frame,
    encode_frame,
    task_queue,
    user_prefix,
)
from mpiengine_sdk.relayclient.transport import Channel, Delivery

__all__ = ["RequestHandler", "dead_letter"]

log = logging.getLogger(__name__)

Handler = Callable[[Channel, str, Frame, str | None], Mapping[str, Any] | None]


def dead_letter(channel: Channel, delivery: Delivery, reason: object) -> None:
    """Log a malformed message and reject it to the dead-letter queue."""
    log.error(
        "dead-lettering a malformed message on %s from %s: %s",
        delivery.queue,
        delivery.user_id or "<no user_id>",
        reason,
    )
    channel.reject(delivery.tag, requeue=False)


def _ids(header: Mapping[str, Any], key: str = "task_ids") -> list[str]:
    value = header.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"{key} must be a list of strings")
    return value


class RequestHandler:
    """Handles ``relay.requests``.

    Args:
        store: the relay's store.
        config: limits and thresholds.
        limiter: the per-user rate limiter.
    """

    def __init__(self, store: RelayStore, config: RelayConfig, limiter: RateLimiter) -> None:
        self.store = store
        self.config = config
        self.submits = SubmitHandler(store, config, limiter)
        self._handlers: dict[str, Handler] = {
            "hello": self._hello,
            "status": self._hello,
            "submit": self.submits.handle,
            "fetch": self._fetch,
            "fetched": self._fetched,
            "cancel": self._cancel,
            "list": self._list,
            "register": self._register,
        }

    def handle(self, channel: Channel, delivery: Delivery) -> None:
        """Process one request; malformed ones are dead-lettered, refusals answered."""
        try:
            frame = decode_frame(delivery.body)
            handler = self._handlers.get(frame.type)
            if handler is None:
                raise ProtocolError(f"unknown request type {frame.type!r}")
        except ProtocolError as exc:
            dead_letter(channel, delivery, exc)
            return
        cid = frame.header.get("cid")
        try:
            user = self._authenticate(delivery)
            reply_to = self._reply_queue(user, delivery.reply_to)
            answer = handler(channel, user, frame, reply_to)
        except RelayError as exc:
            log.warning("refused %s from %s: %s", frame.type, delivery.user_id, exc)
            # An unauthenticated sender only gets an answer to a request id it chose, never
            # results: it cannot use the relay to write task ids into another user's queue.
            refused = {"ok": False, "error": error_record(exc).to_dict()}
            self._answer(channel, delivery.reply_to, cid, refused)
        except ProtocolError as exc:
            dead_letter(channel, delivery, exc)
            return
        else:
            if cid is not None:
                self._answer(channel, reply_to, cid, {"ok": True, **(answer or {})})
        channel.ack(delivery.tag)

    def _authenticate(self, delivery: Delivery) -> str:
        user = delivery.user_id
        if not user:
            raise AuthenticationError(
                "the request carries no user_id; connect with your own relay credentials "
                "(the SDK sets it, and the broker checks it)",
                "unauthenticated",
            )
        if self.store.user(user) is None:
            raise AuthenticationError(
                f"user {user!r} is not a relay principal; ask the relay admin to run "
                f"`mpiengine relay add-user {user}`",
                "unauthenticated",
            )
        return user

    def _reply_queue(self, user: str, reply_to: str | None) -> str | None:
        if reply_to and reply_to.startswith(user_prefix(user)):
            return reply_to
        if reply_to:
            log.warning("ignoring reply_to %r of user %s: not the user's queue", reply_to, user)
        return None

    def _answer(
        self, channel: Channel, queue: str | None, cid: object, header: Mapping[str, Any]
    ) -> None:
        if not queue or not isinstance(cid, str):
            return
        body = encode_frame({"type": "reply", "cid": cid, **header})
        channel.publish("", queue, body, persistent=False, confirm=False)

    # -- request types -----------------------------------------------------------------------
    def _hello(
        self, channel: Channel, user: str, frame: Frame, reply_to: str | None
    ) -> Mapping[str, Any]:
        record = authorize_endpoint(self.store, user, frame.header.get("endpoint_id"))
        principal = self.store.user(user)
        rate = principal.rate if principal and principal.rate else self.config.rate
        return {
            "user": user,
            "endpoint": endpoint_view(record, self.config.heartbeat_threshold, time.time()),
            "limits": {"max_payload_bytes": self.config.max_payload_bytes, "rate": rate},
        }

    def _fetch(
        self, channel: Channel, user: str, frame: Frame, reply_to: str | None
    ) -> Mapping[str, Any]:
        ids = _ids(frame.header)
        if reply_to is None:
            return {}
        report = frame.header.get("unknown") == "report"
        lines, unknown = self.submits.stored_results(user, ids, reply_to, report_unknown=report)
        for i in range(0, len(lines), 1000):
            body = encode_frame({"type": "results"}, lines[i : i + 1000])
            channel.publish("", reply_to, body, persistent=False, confirm=False)
        return {"count": len(lines), "unknown": unknown} if report else {"count": len(lines)}

    def _fetched(
        self, channel: Channel, user: str, frame: Frame, reply_to: str | None
    ) -> Mapping[str, Any]:
        self.store.mark_fetched(user, _ids(frame.header))
        return {}

    def _cancel(
        self, channel: Channel, user: str, frame: Frame, reply_to: str | None
    ) -> Mapping[str, Any]:
        rows = self.store.rows(_ids(frame.header))
        by_endpoint: dict[str, list[str]] = {}
        for row in rows.values():
            if row.user == user:
                by_endpoint.setdefault(row.endpoint_id, []).append(row.task_id)
        for endpoint_id, ids in by_endpoint.items():
            record = self.store.endpoint(endpoint_id)
            if record is None:
                continue
            body = encode_frame({"type": "cancel", "task_ids": ids})
            channel.publish("", control_queue(record.owner, record.id), body)
        return {}

    def _list(
        self, channel: Channel, user: str, frame: Frame, reply_to: str | None
    ) -> Mapping[str, Any]:
        record = authorize_endpoint(self.store, user, frame.header.get("endpoint_id"))
        wanted = frame.header.get("task_ids")
        ids: Sequence[str] | None = None if wanted is None else _ids(frame.header)
        return {"tasks": self.store.outstanding(user, record.id, ids)}

    def _register(
        self, channel: Channel, user: str, frame: Frame, reply_to: str | None
    ) -> Mapping[str, Any]:
        name = frame.header.get("name")
        if not isinstance(name, str) or not name or len(name) > 128:
            raise ProtocolError("register needs a name (1-128 characters)")
        record, created = self.store.add_endpoint(name, user)
        declare_endpoint_queues(channel, record.owner, record.id)
        if created:
            log.info("registered endpoint %s (%s) of %s", record.id, name, user)
        return {
            "endpoint_id": record.id,
            "task_queue": task_queue(record.owner, record.id),
            "control_queue": control_queue(record.owner, record.id),
            "heartbeat_threshold": self.config.heartbeat_threshold,
            "max_payload_bytes": self.config.max_payload_bytes,
        }
