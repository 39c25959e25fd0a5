"""An in-memory broker with the Transport interface, for unit tests.

It keeps the semantics the relay code relies on: direct and fanout exchanges and the default
exchange, alternate exchanges, durable and exclusive queues, per-consumer prefetch, acks,
requeue of unacknowledged deliveries when a connection closes, dead-lettering on reject,
``mandatory`` returns, and the broker-set ``user_id``. ``restart()`` drops every connection
(their next call raises BackendError) and every non-durable queue, as a broker restart does.
Permissions are not modelled: the integration tests check the real broker's.

Deliveries run on the thread that calls ``process`` of the channel that consumes them.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from mpiengine_sdk.errors import AuthenticationError, BackendError
from mpiengine_sdk.relayclient.transport import Delivery, OnMessage, Unroutable

__all__ = ["FakeBroker", "FakeChannel", "FakeTransport"]


@dataclass(frozen=True)
class _Message:
    body: bytes
    user_id: str | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    redelivered: bool = False


@dataclass
class _Queue:
    name: str
    durable: bool
    owner: FakeChannel | None
    arguments: dict[str, Any]
    ready: collections.deque[_Message] = field(default_factory=collections.deque)


@dataclass
class _Consumer:
    tag: str
    queue: str
    callback: OnMessage
    prefetch: int
    unacked: set[int] = field(default_factory=set)


class FakeBroker:
    """The broker. ``passwords``: user -> password; None accepts anyone."""

    def __init__(self, passwords: Mapping[str, str] | None = None) -> None:
        self.passwords = dict(passwords) if passwords is not None else None
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.exchanges: dict[str, tuple[str, dict[str, Any], list[tuple[str, str]]]] = {}
        self.queues: dict[str, _Queue] = {}
        self.channels: list[FakeChannel] = []
        self.down = False

    def transport(self, user: str, password: str = "") -> FakeTransport:
        """A transport logging in as ``user``."""
        return FakeTransport(self, user, password)

    def ready(self, queue: str) -> list[bytes]:
        """The bodies waiting in a queue."""
        with self.lock:
            return [m.body for m in self.queues[queue].ready]

    def inject(self, exchange: str, routing_key: str, body: bytes, **props: Any) -> None:
        """Publish as nobody in particular (``user_id`` etc. as given): a hostile client."""
        with self.lock:
            self.route(exchange, routing_key, _Message(body, **props), mandatory=False)

    def restart(self) -> None:
        """Drop every connection and every non-durable queue."""
        with self.lock:
            for channel in list(self.channels):
                channel.drop()
            self.queues = {n: q for n, q in self.queues.items() if q.durable}
            self.changed.notify_all()

    def route(self, exchange: str, key: str, msg: _Message, *, mandatory: bool) -> None:
        """Deliver into queues (called with the lock held)."""
        if exchange == "":
            targets = [key] if key in self.queues else []
        elif exchange in self.exchanges:
            kind, args, bindings = self.exchanges[exchange]
            targets = [q for q, k in bindings if kind == "fanout" or k == key]
            if not targets and "alternate-exchange" in args:
                self.route(args["alternate-exchange"], key, msg, mandatory=mandatory)
                return
        else:
            raise BackendError(f"NOT_FOUND - no exchange {exchange!r}")
        if not targets and mandatory:
            raise Unroutable(f"publish to {exchange or 'queue'} {key!r}: no such queue")
        for name in targets:
            self.queues[name].ready.append(msg)
        self.changed.notify_all()

    def dead_letter(self, queue: _Queue, msg: _Message) -> None:
        """Route a rejected message to its queue's dead-letter exchange (lock held)."""
        exchange = queue.arguments.get("x-dead-letter-exchange")
        if exchange:
            self.route(exchange, queue.name, replace(msg, redelivered=False), mandatory=False)


class FakeTransport:
    """Connects to a FakeBroker as one user."""

    def __init__(self, broker: FakeBroker, user: str, password: str = "") -> None:
        self.broker = broker
        self._user = user
        self._password = password

    @property
    def user(self) -> str:
        """The principal."""
        return self._user

    def connect(self) -> FakeChannel:
        """Open a connection (see Transport.connect)."""
        broker = self.broker
        with broker.lock:
            if broker.down:
                raise BackendError("cannot reach the broker: it is down")
            if broker.passwords is not None and broker.passwords.get(self._user) != self._password:
                raise AuthenticationError(f"the broker refused user {self._user!r}")
            channel = FakeChannel(broker, self._user)
            broker.channels.append(channel)
            return channel


class FakeChannel:
    """One connection to the FakeBroker (see Channel)."""

    def __init__(self, broker: FakeBroker, user: str) -> None:
        self.broker = broker
        self.user = user
        self.open = True
        self._tags = itertools.count(1)
        self._consumers: dict[str, _Consumer] = {}
        self._unacked: dict[int, tuple[_Queue, _Message, _Consumer]] = {}
        self._calls: collections.deque[Callable[[], None]] = collections.deque()

    def _check(self) -> None:
        if not self.open:
            raise BackendError("the connection to the broker was lost")

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        reply_to: str | None = None,
        correlation_id: str | None = None,
        persistent: bool = True,
        confirm: bool = True,
        mandatory: bool = False,
    ) -> None:
        """See Channel.publish."""
        with self.broker.lock:
            self._check()
            msg = _Message(bytes(body), self.user, reply_to, correlation_id)
            self.broker.route(exchange, routing_key, msg, mandatory=mandatory)

    def consume(self, queue: str, on_message: OnMessage, *, prefetch: int) -> str:
        """See Channel.consume."""
        with self.broker.lock:
            self._check()
            if queue not in self.broker.queues:
                raise BackendError(f"NOT_FOUND - no queue {queue!r}")
            tag = f"ctag{next(self._tags)}"
            self._consumers[tag] = _Consumer(tag, queue, on_message, prefetch)
            return tag

    def cancel(self, consumer: str) -> None:
        """See Channel.cancel."""
        with self.broker.lock:
            self._check()
            self._consumers.pop(consumer, None)

    def ack(self, tag: int) -> None:
        """See Channel.ack."""
        with self.broker.lock:
            self._check()
            _queue, _msg, consumer = self._unacked.pop(tag)
            consumer.unacked.discard(tag)
            self.broker.changed.notify_all()

    def reject(self, tag: int, *, requeue: bool) -> None:
        """See Channel.reject."""
        with self.broker.lock:
            self._check()
            queue, msg, consumer = self._unacked.pop(tag)
            consumer.unacked.discard(tag)
            if requeue:
                queue.ready.appendleft(replace(msg, redelivered=True))
            else:
                self.broker.dead_letter(queue, msg)
            self.broker.changed.notify_all()

    def declare_queue(
        self,
        name: str,
        *,
        durable: bool = True,
        exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """See Channel.declare_queue."""
        with self.broker.lock:
            self._check()
            existing = self.broker.queues.get(name)
            if existing is None:
                owner = self if exclusive else None
                self.broker.queues[name] = _Queue(name, durable, owner, dict(arguments or {}))
            elif existing.owner is not None and existing.owner is not self:
                raise BackendError(f"RESOURCE_LOCKED - queue {name!r} is exclusive")

    def declare_exchange(
        self, name: str, kind: str, *, arguments: Mapping[str, Any] | None = None
    ) -> None:
        """See Channel.declare_exchange."""
        with self.broker.lock:
            self._check()
            self.broker.exchanges.setdefault(name, (kind, dict(arguments or {}), []))

    def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        """See Channel.bind."""
        with self.broker.lock:
            self._check()
            bindings = self.broker.exchanges[exchange][2]
            if (queue, routing_key) not in bindings:
                bindings.append((queue, routing_key))

    def queue_counts(self, name: str) -> tuple[int, int] | None:
        """See Channel.queue_counts."""
        with self.broker.lock:
            self._check()
            queue = self.broker.queues.get(name)
            if queue is None:
                return None
            consumers = sum(
                1 for ch in self.broker.channels for c in ch._consumers.values() if c.queue == name
            )
            return len(queue.ready), consumers

    def _next(self) -> tuple[_Consumer, Delivery] | Callable[[], None] | None:
        if self._calls:
            return self._calls.popleft()
        for consumer in list(self._consumers.values()):
            queue = self.broker.queues.get(consumer.queue)
            if queue is None or not queue.ready or len(consumer.unacked) >= consumer.prefetch:
                continue
            msg = queue.ready.popleft()
            tag = next(self._tags)
            consumer.unacked.add(tag)
            self._unacked[tag] = (queue, msg, consumer)
            delivery = Delivery(
                tag,
                msg.body,
                queue.name,
                msg.user_id,
                msg.reply_to,
                msg.correlation_id,
                msg.redelivered,
            )
            return consumer, delivery
        return None

    def process(self, timeout: float) -> None:
        """Run callbacks and deliveries that are ready; wait up to ``timeout`` for one."""
        with self.broker.lock:
            self._check()
            item = self._next()
            if item is None and timeout > 0:
                self.broker.changed.wait(timeout)
                self._check()
                item = self._next()
        while item is not None:
            if isinstance(item, tuple):
                item[0].callback(item[1])
            else:
                item()
            with self.broker.lock:
                self._check()
                item = self._next()

    def call_threadsafe(self, fn: Callable[[], None]) -> None:
        """See Channel.call_threadsafe."""
        with self.broker.lock:
            self._check()
            self._calls.append(fn)
            self.broker.changed.notify_all()

    def drop(self) -> None:
        """The connection is gone: requeue unacknowledged deliveries, drop exclusive queues."""
        with self.broker.lock:
            if not self.open:
                return
            self.open = False
            for tag, (queue, msg, _consumer) in sorted(self._unacked.items(), reverse=True):
                if self.broker.queues.get(queue.name) is queue:
                    queue.ready.appendleft(replace(msg, redelivered=True))
                del self._unacked[tag]
            for name, queue in list(self.broker.queues.items()):
                if queue.owner is self:
                    del self.broker.queues[name]
            if self in self.broker.channels:
                self.broker.channels.remove(self)
            self.broker.changed.notify_all()

    def close(self) -> None:
        """See Channel.close."""
        self.drop()
