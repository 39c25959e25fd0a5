"""The relay process: consume the three relay queues, reconnect when the broker goes away.

Everything runs on one thread: handlers, the store, periodic expiry. Every message is
acknowledged only after its effects are committed (store) and confirmed (forwarded tasks), so a
relay killed at any point loses nothing: the broker redelivers, and the handlers are idempotent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from mpiengine.queues import declare_endpoint_queues, declare_relay_topology
from mpiengine.relay.config import RelayConfig
from mpiengine.relay.ratelimit import RateLimiter
from mpiengine.relay.requests import RequestHandler
from mpiengine.relay.results import ResultHandler
from mpiengine.relay.store import RelayStore
from mpiengine_sdk.errors import AuthenticationError, BackendError, RelayError
from mpiengine_sdk.relayclient.protocol import QUEUE_HEARTBEATS, QUEUE_REQUESTS, QUEUE_RESULTS
from mpiengine_sdk.relayclient.transport import (
    Channel,
    Delivery,
    PikaTransport,
    Transport,
    Unroutable,
)

__all__ = ["RelayService"]

log = logging.getLogger(__name__)


class RelayService:
    """The relay.

    Args:
        config: the relay's settings.
        store: the store (default: the config's ``store`` URL).
        transport: the broker (default: pika to ``config.broker_url``).
    """

    def __init__(
        self,
        config: RelayConfig,
        *,
        store: RelayStore | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.config = config
        self.store = store or RelayStore(config.store_url)
        self.transport = transport or PikaTransport(config.broker_url)
        self.requests = RequestHandler(self.store, config, RateLimiter())
        self.results = ResultHandler(self.store)
        self._stop = threading.Event()
        self._next_sweep = 0.0
        self._online: set[str] = set()

    def stop(self) -> None:
        """Ask ``serve`` to return (thread-safe, signal-safe)."""
        self._stop.set()

    def serve(self, on_ready: Callable[[], None] | None = None) -> None:
        """Run until ``stop``; reconnect with backoff whenever the broker goes away.

        Args:
            on_ready: called once the queues are consumed (the first time only).

        Raises:
            AuthenticationError: the broker refused the relay's credentials.
        """
        delay = 0.2
        while not self._stop.is_set():
            try:
                channel = self.transport.connect()
            except AuthenticationError:
                raise
            except BackendError as exc:
                log.warning("relay: broker unreachable (%s); retrying in %.1f s", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            try:
                self.setup(channel)
                delay = 0.2
                log.info("relay: serving")
                if on_ready is not None:
                    on_ready()
                    on_ready = None
                while not self._stop.is_set():
                    channel.process(0.5)
                    self.sweep()
            except BackendError as exc:  # the broker or the store: the broker redelivers
                log.warning("relay: connection lost (%s); reconnecting", exc)
                channel.close()  # first: the broker hands our unacknowledged messages on
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
            finally:
                channel.close()
        self.store.close()
        log.info("relay: stopped")

    def setup(self, channel: Channel) -> None:
        """Declare the topology and every known endpoint's queues; start consuming."""
        declare_relay_topology(channel)
        for record in self.store.endpoints():
            declare_endpoint_queues(channel, record.owner, record.id)
        prefetch = self.config.prefetch
        for queue, handler in (
            (QUEUE_REQUESTS, self.requests.handle),
            (QUEUE_RESULTS, self.results.handle_results),
            (QUEUE_HEARTBEATS, self.results.handle_heartbeat),
        ):
            channel.consume(queue, self._guarded(channel, handler), prefetch=prefetch)

    def _guarded(
        self, channel: Channel, handler: Callable[[Channel, Delivery], None]
    ) -> Callable[[Delivery], None]:
        def run(delivery: Delivery) -> None:
            try:
                handler(channel, delivery)
            except (RelayError, Unroutable) as exc:
                log.error("relay: refusing a message on %s: %s", delivery.queue, exc)
                channel.reject(delivery.tag, requeue=False)
            except BackendError:
                raise  # the connection is gone: reconnect; the broker redelivers
            except Exception:  # a bug or a message nobody foresaw: never crash the relay
                log.exception("relay: dead-lettering a message on %s", delivery.queue)
                channel.reject(delivery.tag, requeue=False)

        return run

    def sweep(self, now: float | None = None) -> None:
        """Expire results and log endpoints going offline (at most every sweep_interval)."""
        now = time.time() if now is None else now
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(self.config.sweep_interval, self.config.heartbeat_threshold)
        deleted, expired = self.store.expire(
            now, self.config.result_retention, self.config.result_max_age
        )
        if deleted or expired:
            log.info("relay: removed %d fetched task(s), expired %d result(s)", deleted, expired)
        online = {
            r.id
            for r in self.store.endpoints()
            if r.last_seen is not None and now - r.last_seen <= self.config.heartbeat_threshold
        }
        for endpoint_id in self._online - online:
            log.warning("relay: endpoint %s is offline (no heartbeat)", endpoint_id)
        self._online = online
