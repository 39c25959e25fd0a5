"""The one seam between mpiengine and the broker.

The SDK client, the relay and the endpoint service reach RabbitMQ only through a
:class:`Transport` (``connect()``) and the :class:`Channel` it returns: a few AMQP verbs, no
pika types. :class:`PikaTransport` is the real one; ``mpiengine_sdk.relayclient.fake`` has an
in-memory broker with the same interface for unit tests.

A Channel is used from one thread (the one that connected) except ``call_threadsafe``. Any
broker failure surfaces as BackendError (the connection is then unusable: reconnect);
a refused login as AuthenticationError; a refused resource as AuthorizationError.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from mpiengine_sdk.errors import AuthenticationError, AuthorizationError, BackendError

__all__ = [
    "CONTENT_TYPE",
    "Channel",
    "Delivery",
    "OnMessage",
    "PikaTransport",
    "Transport",
    "Unroutable",
    "describe",
]

CONTENT_TYPE = "application/x-mpiengine-frame"


class Unroutable(BackendError):
    """A mandatory message matched no queue (the queue does not exist)."""


@dataclass(frozen=True)
class Delivery:
    """One message received from a queue.

    Attributes:
        tag: the delivery tag, for ``ack``/``reject`` on the same channel.
        body: the message body.
        queue: the queue it came from.
        user_id: the broker-validated sender (None when the sender set none).
        reply_to: where the sender wants answers.
        correlation_id: the sender's request id.
        redelivered: the broker delivered it before (to a consumer that did not ack).
    """

    tag: int
    body: bytes
    queue: str
    user_id: str | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    redelivered: bool = False


OnMessage = Callable[[Delivery], None]


class Channel(Protocol):
    """An open connection to the broker (one AMQP connection, used from one thread)."""

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
        """Publish, stamped with this connection's user id; with ``confirm`` return only once
        the broker has taken responsibility (persisted, for persistent messages).

        Raises:
            Unroutable: ``mandatory`` and no queue matched.
            BackendError: the broker refused it or the connection is lost.
        """

    def consume(self, queue: str, on_message: OnMessage, *, prefetch: int) -> str:
        """Start consuming with at most ``prefetch`` unacknowledged deliveries; returns a tag."""

    def cancel(self, consumer: str) -> None:
        """Stop a consumer; its unacknowledged deliveries stay unacknowledged."""

    def ack(self, tag: int) -> None:
        """Acknowledge one delivery."""

    def reject(self, tag: int, *, requeue: bool) -> None:
        """Reject one delivery: back to its queue, or (``requeue=False``) dead-lettered."""

    def declare_queue(
        self,
        name: str,
        *,
        durable: bool = True,
        exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Declare a queue (idempotent with the same arguments)."""

    def declare_exchange(
        self, name: str, kind: str, *, arguments: Mapping[str, Any] | None = None
    ) -> None:
        """Declare a durable exchange."""

    def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        """Bind a queue to an exchange."""

    def queue_counts(self, name: str) -> tuple[int, int] | None:
        """``(messages ready, consumers)`` of a queue; None when there is no such queue."""

    def process(self, timeout: float) -> None:
        """Dispatch deliveries and threadsafe callbacks for up to ``timeout`` seconds."""

    def call_threadsafe(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the channel's thread during ``process`` (callable from any thread)."""

    def close(self) -> None:
        """Close the connection; unacknowledged deliveries return to their queues."""


class Transport(Protocol):
    """Opens channels to one broker as one user."""

    @property
    def user(self) -> str:
        """The principal this transport logs in as."""

    def connect(self) -> Channel:
        """Open a connection.

        Raises:
            AuthenticationError: the broker refused the user name or password.
            BackendError: the broker is unreachable.
        """


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    import pika.exceptions as pex

    try:
        yield
    except pex.UnroutableError as exc:
        raise Unroutable(f"{what}: no such queue") from exc
    except pex.ChannelClosedByBroker as exc:
        if exc.reply_code == 403:
            raise AuthorizationError(
                f"{what}: the broker refused access ({exc.reply_text})", "access_refused"
            ) from exc
        raise BackendError(f"{what}: the broker closed the channel ({exc.reply_text})") from exc
    except (pex.AMQPError, OSError) as exc:
        raise BackendError(f"{what}: {describe(exc)}") from exc


def describe(exc: BaseException) -> str:
    """``Type: reason`` of the error pika wraps in ``exc`` (its wrappers' own text is empty:
    ``AMQPConnectionError()`` around a refused TCP connection says nothing by itself)."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "exception", None)  # pika's connection-workflow errors
        if not isinstance(inner, BaseException) and exc.args:
            inner = exc.args[0]
        if not isinstance(inner, BaseException) or (str(exc) and not str(inner)):
            break
        exc = inner
    reason = str(exc) or (repr(exc.args) if exc.args else "no reason given")
    return f"{type(exc).__name__}: {reason}"


class PikaTransport:
    """The real transport: pika's BlockingConnection.

    Args:
        url: ``amqp://[user:password@]host:port/vhost``.
        user: the user name (overrides the URL's).
        password: the password (overrides the URL's).
        heartbeat: AMQP heartbeat seconds (how fast a dead peer is noticed).
        connect_timeout: seconds to wait for the broker when connecting.
    """

    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        password: str | None = None,
        heartbeat: int = 20,
        connect_timeout: float = 5.0,
    ) -> None:
        import pika

        params = pika.URLParameters(url)
        if user is not None or password is not None:
            creds = params.credentials
            params.credentials = pika.PlainCredentials(
                user if user is not None else creds.username,
                password if password is not None else creds.password,
            )
        params.heartbeat = heartbeat
        params.blocked_connection_timeout = 60
        params.socket_timeout = connect_timeout
        params.stack_timeout = connect_timeout + 5
        params.connection_attempts = 1
        self._params = params
        self.url = url

    @property
    def user(self) -> str:
        """The principal this transport logs in as."""
        return str(self._params.credentials.username)

    @property
    def vhost(self) -> str:
        """The virtual host."""
        return str(self._params.virtual_host)

    def connect(self) -> Channel:
        """Open a connection (see Transport.connect)."""
        import pika
        import pika.exceptions as pex

        where = f"{self._params.host}:{self._params.port}/{self.vhost}"
        try:
            conn = pika.BlockingConnection(self._params)
        except (pex.ProbableAuthenticationError, pex.AuthenticationError) as exc:
            raise AuthenticationError(
                f"the broker at {where} refused user {self.user!r}: wrong user name or "
                "password (ask the relay admin for credentials)",
                "unauthenticated",
            ) from exc
        except pex.ProbableAccessDeniedError as exc:
            raise AuthorizationError(
                f"user {self.user!r} may not use vhost {self.vhost!r} on {where}",
                "access_refused",
            ) from exc
        except (pex.AMQPError, OSError) as exc:
            raise BackendError(f"cannot reach the broker at {where}: {describe(exc)}") from exc
        with _mapped("open channel"):
            return _PikaChannel(conn, self.user)


class _PikaChannel:
    """A BlockingConnection with a confirm-mode channel (publish, consume, ack) and a plain
    channel for publishes that need no confirm."""

    def __init__(self, conn: Any, user: str) -> None:
        self._conn = conn
        self._user = user
        self._ch = conn.channel()
        self._ch.confirm_delivery()
        self._fast: Any = None

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
        import pika

        props = pika.BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=2 if persistent else 1,
            user_id=self._user,
            reply_to=reply_to,
            correlation_id=correlation_id,
        )
        with _mapped(f"publish to {exchange or 'queue'} {routing_key!r}"):
            if confirm:
                self._ch.basic_publish(exchange, routing_key, body, props, mandatory=mandatory)
                return
            if self._fast is None:
                self._fast = self._conn.channel()
            self._fast.basic_publish(exchange, routing_key, body, props)

    def consume(self, queue: str, on_message: OnMessage, *, prefetch: int) -> str:
        """See Channel.consume."""

        def callback(_ch: Any, method: Any, props: Any, body: bytes) -> None:
            on_message(
                Delivery(
                    tag=method.delivery_tag,
                    body=body,
                    queue=queue,
                    user_id=props.user_id,
                    reply_to=props.reply_to,
                    correlation_id=props.correlation_id,
                    redelivered=bool(method.redelivered),
                )
            )

        with _mapped(f"consume {queue!r}"):
            self._ch.basic_qos(prefetch_count=prefetch)
            return str(self._ch.basic_consume(queue, callback))

    def cancel(self, consumer: str) -> None:
        """See Channel.cancel."""
        with _mapped("cancel consumer"):
            self._ch.basic_cancel(consumer)

    def ack(self, tag: int) -> None:
        """See Channel.ack."""
        with _mapped("ack"):
            self._ch.basic_ack(tag)

    def reject(self, tag: int, *, requeue: bool) -> None:
        """See Channel.reject."""
        with _mapped("reject"):
            self._ch.basic_reject(tag, requeue=requeue)

    def declare_queue(
        self,
        name: str,
        *,
        durable: bool = True,
        exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """See Channel.declare_queue."""
        with _mapped(f"declare queue {name!r}"):
            self._ch.queue_declare(
                name,
                durable=durable,
                exclusive=exclusive,
                auto_delete=exclusive,
                arguments=dict(arguments or {}),
            )

    def declare_exchange(
        self, name: str, kind: str, *, arguments: Mapping[str, Any] | None = None
    ) -> None:
        """See Channel.declare_exchange."""
        with _mapped(f"declare exchange {name!r}"):
            self._ch.exchange_declare(
                name, exchange_type=kind, durable=True, arguments=dict(arguments or {})
            )

    def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        """See Channel.bind."""
        with _mapped(f"bind {queue!r}"):
            self._ch.queue_bind(queue, exchange, routing_key=routing_key)

    def queue_counts(self, name: str) -> tuple[int, int] | None:
        """See Channel.queue_counts (a passive declare on a channel of its own: the broker
        closes the channel that asks for a queue that does not exist)."""
        import pika.exceptions as pex

        with _mapped(f"inspect queue {name!r}"):
            channel = self._conn.channel()
            try:
                ok = channel.queue_declare(name, passive=True)
            except pex.ChannelClosedByBroker as exc:
                if exc.reply_code == 404:
                    return None
                raise
            channel.close()
            return int(ok.method.message_count), int(ok.method.consumer_count)

    def process(self, timeout: float) -> None:
        """See Channel.process."""
        with _mapped("process events"):
            self._conn.process_data_events(time_limit=timeout)

    def call_threadsafe(self, fn: Callable[[], None]) -> None:
        """See Channel.call_threadsafe."""
        with _mapped("wake"):
            self._conn.add_callback_threadsafe(fn)

    def close(self) -> None:
        """See Channel.close."""
        with contextlib.suppress(Exception):
            if self._conn.is_open:
                self._conn.close()
