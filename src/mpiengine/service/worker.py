"""The endpoint service: consume task batches, run them on the engine, publish the results.

One thread (the caller of :meth:`EndpointService.run`, the main thread so signals work) owns
the broker connection; the engine reports results from its own thread through a locked inbox
and a wake-up. The guarantees, in order of the code that keeps them:

- a task batch is acknowledged only when every task in it has a result the broker confirmed
  (``Deliveries``); a crash at any point leaves the batch unacknowledged, so it comes back;
- a result is stored on disk before it is published (``LocalStore``), and unconfirmed ones are
  published again after a reconnect; a task delivered again whose result is stored is answered
  from the store, a task delivered again while it still runs is not started twice;
- ``stop``: no new batches; tasks not yet started go back to the queue at once; running ones
  get ``stop_grace`` seconds, then they are killed and go back too.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from mpiengine.service.backends import backend_status, make_backend
from mpiengine.service.config import EndpointPaths, ServiceConfig
from mpiengine.service.deliveries import Deliveries
from mpiengine.service.outbox import ResultOutbox
from mpiengine.service.store import LocalStore
from mpiengine_sdk.backend import Backend
from mpiengine_sdk.errors import AuthenticationError, BackendError, error_record
from mpiengine_sdk.relayclient.protocol import (
    EXCHANGE_IN,
    KEY_HEARTBEAT,
    ProtocolError,
    control_queue,
    decode_frame,
    encode_frame,
    task_queue,
)
from mpiengine_sdk.relayclient.transport import Channel, Delivery, Transport
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import ResultMessage, TaskMessage, WireError, decode_task, error_result

__all__ = ["EndpointService"]

log = logging.getLogger(__name__)


class EndpointService:
    """A registered endpoint serving its task queue.

    Args:
        config: the endpoint's config (with its ``endpoint_id``).
        paths: its folder.
        transport: the broker, logged in as the endpoint's owner.
        backend: the backend (default: the one ``config.backend`` names).
    """

    def __init__(
        self,
        config: ServiceConfig,
        paths: EndpointPaths,
        *,
        transport: Transport,
        backend: Backend | None = None,
    ) -> None:
        if not config.endpoint_id:
            raise BackendError("the endpoint is not registered yet (no endpoint_id)")
        self.config = config
        self.paths = paths
        self.endpoint_id = config.endpoint_id
        self._transport = transport
        self._backend = backend or make_backend(config.backend, config.backend_options, paths.work)
        self._store: LocalStore | None = None
        self._outbox: ResultOutbox | None = None
        self._deliveries = Deliveries()
        self._lock = threading.Lock()
        self._inbox: list[ResultMessage] = []
        self._active: set[str] = set()
        self._running: dict[str, tuple[str, ...]] = {}
        self._returned: set[str] = set()
        self._channel: Channel | None = None
        self._consumers: list[str] = []
        self._stop = threading.Event()
        self._stop_deadline: float | None = None
        self._done = False
        self._completed = 0
        self._last_error = ""
        self._next_heartbeat = 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    def request_stop(self, grace: float | None = None) -> None:
        """Begin a graceful stop (signal-safe): see the module docstring."""
        if grace is not None:
            self.config = self.config.replace(stop_grace=grace)
        self._stop.set()
        self._wake()

    def run(self) -> None:
        """Serve until stopped; reconnect with backoff whenever the broker goes away.

        Raises:
            AuthenticationError: the broker refused the endpoint's credentials.
        """
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self._store = LocalStore(self.paths.state)
        self._store.prune(time.time() - self.config.keep_results)
        self._outbox = ResultOutbox(
            self._store, self._deliveries, self.endpoint_id, self.config.max_result_bytes
        )
        self._backend.start(self._sink)
        delay = 0.2
        try:
            while not self._done:
                try:
                    channel = self._transport.connect()
                except AuthenticationError:
                    raise
                except BackendError as exc:
                    self._note(f"broker unreachable: {exc}")
                    self._offline_round(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                delay = 0.2
                try:
                    self._serve(channel)
                except BackendError as exc:
                    self._note(f"connection lost: {exc}")
                finally:
                    self._channel = None
                    channel.close()
                    self._deliveries.clear()
        finally:
            self._backend.shutdown(wait=False)
            self._persist()
            self._write_status(self.status("stopped"))
            self._store.close()

    def _note(self, message: str) -> None:
        log.warning("endpoint %s: %s", self.paths.name, message)
        self._last_error = message

    def _offline_round(self, delay: float) -> None:
        self._persist()  # results wait on disk until the broker is back
        self._write_status(self.status())
        if self._stop.is_set():
            self._check_stop(None)
        if not self._done:
            self._stop.wait(delay)

    # -- one connection --------------------------------------------------------------------
    def _serve(self, channel: Channel) -> None:
        owner, eid = self.config.user, self.endpoint_id
        self._consumers = [
            channel.consume(
                task_queue(owner, eid),
                lambda d: self._on_tasks(channel, d),
                prefetch=self.config.prefetch,
            ),
            channel.consume(
                control_queue(owner, eid), lambda d: self._on_control(channel, d), prefetch=16
            ),
        ]
        self._channel = channel
        assert self._outbox is not None
        self._outbox.reload()  # everything the broker has not confirmed yet
        self._next_heartbeat = 0.0
        log.info("endpoint %s: serving %s", self.paths.name, task_queue(owner, eid))
        while True:
            self._persist()
            self._publish(channel)
            self._heartbeat(channel)
            if self._stop.is_set():
                self._check_stop(channel)
                if self._done:
                    self._persist()
                    self._publish(channel)
                    return
            due = self._outbox.next_due(time.monotonic())
            channel.process(0.2 if due is None else min(0.2, due + 0.001))

    def _check_stop(self, channel: Channel | None) -> None:
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + self.config.stop_grace
            grace = self.config.stop_grace
            log.info("endpoint %s: stopping (grace %.0f s)", self.paths.name, grace)
            self._give_back(self._active - set(self._running))
        if channel is not None and self._consumers:
            for tag in self._consumers:
                channel.cancel(tag)
            self._consumers = []
        if not (self._active - self._returned):
            self._done = True
        elif time.monotonic() >= self._stop_deadline:
            log.warning("endpoint %s: grace over; returning running tasks", self.paths.name)
            self._give_back(set(self._active))
            self._done = True

    def _give_back(self, task_ids: set[str]) -> None:
        """Tasks go back to the queue: kill them, drop their CANCELLED results, never ack."""
        self._returned |= task_ids
        for tid in task_ids:
            self._backend.cancel(tid)

    # -- tasks in ----------------------------------------------------------------------------
    def _on_tasks(self, channel: Channel, delivery: Delivery) -> None:
        try:
            frame = decode_frame(delivery.body)
            if frame.type != "tasks":
                raise ProtocolError(f"expected a tasks frame, got {frame.type!r}")
            tasks = [decode_task(line) for line in frame.lines]
        except (ProtocolError, WireError) as exc:
            log.error("endpoint: dead-lettering a malformed task message: %s", exc)
            channel.reject(delivery.tag, requeue=False)
            return
        if self._stop.is_set():
            channel.reject(delivery.tag, requeue=True)
            return
        assert self._store is not None
        ids = [t.task_id for t in tasks]
        sent = self._store.sent_flags(ids)
        cancelled = self._store.cancelled(ids)
        waiting: list[str] = []
        start: list[TaskMessage] = []
        for task in tasks:
            tid = task.task_id
            if sent.get(tid):
                continue  # answered and confirmed before: nothing to wait for
            waiting.append(tid)
            if tid in sent or tid in self._active:
                continue  # its result is on its way, or it runs already
            self._active.add(tid)
            if tid in cancelled:
                self._inject(tid, TaskState.CANCELLED, "TaskCancelled", "cancelled before it ran")
                continue
            start.append(task)
        if self._deliveries.add(delivery.tag, waiting):
            channel.ack(delivery.tag)
        if start:
            self._start(start)

    def _start(self, tasks: Sequence[TaskMessage]) -> None:
        try:
            self._backend.submit(tasks)
        except Exception as exc:  # refused (a single task raises) or an engine failure
            for task in tasks:
                self._sink(error_result(task.task_id, error_record(exc)))

    def _inject(self, task_id: str, state: TaskState, error_type: str, message: str) -> None:
        self._sink(ResultMessage(task_id, state, error_type=error_type, error_message=message))

    def _on_control(self, channel: Channel, delivery: Delivery) -> None:
        try:
            frame = decode_frame(delivery.body)
            ids = frame.header.get("task_ids")
            if frame.type != "cancel" or not isinstance(ids, list):
                raise ProtocolError("expected a cancel frame with task_ids")
            ids = [str(t) for t in ids]
        except ProtocolError as exc:
            log.error("endpoint: dead-lettering a malformed control message: %s", exc)
            channel.reject(delivery.tag, requeue=False)
            return
        assert self._store is not None
        known = self._store.sent_flags(ids)
        for tid in ids:
            if tid in self._active:
                self._backend.cancel(tid)
        self._store.add_cancelled([t for t in ids if t not in self._active and t not in known])
        channel.ack(delivery.tag)

    # -- results out -------------------------------------------------------------------------
    def _sink(self, msg: ResultMessage) -> None:
        """The engine's ResultSink (any thread)."""
        with self._lock:
            wake = not self._inbox
            self._inbox.append(msg)
        if wake:
            self._wake()

    def _wake(self) -> None:
        channel = self._channel
        if channel is not None:
            try:
                channel.call_threadsafe(_nothing)
            except BackendError:
                pass

    def _persist(self) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, []
        if self._outbox is None:
            return
        now = time.monotonic()
        new: list[tuple[str, bytes]] = []
        for msg in inbox:
            tid = msg.task_id
            if msg.state is TaskState.RUNNING:
                if tid in self._active and tid not in self._returned:
                    self._running[tid] = msg.nodes
                    self._outbox.add_progress(msg, now)
                continue
            if not msg.state.terminal or tid not in self._active:
                continue  # progress, or a second report of a finished task
            self._active.discard(tid)
            self._running.pop(tid, None)
            if tid in self._returned:
                self._returned.discard(tid)
                if msg.state is TaskState.CANCELLED:
                    continue  # given back to the queue, not a result
            new.append((tid, self._outbox.encode(msg)))
        self._outbox.add_results(new)
        self._completed += len(new)

    def _publish(self, channel: Channel) -> None:
        if self._outbox is not None:
            self._outbox.publish(channel, self._running, time.monotonic())

    # -- status ------------------------------------------------------------------------------
    def status(self, state: str | None = None) -> dict[str, Any]:
        """What a heartbeat reports: blocks, nodes busy/free, tasks waiting/running, errors."""
        engine = backend_status(self._backend)
        busy: set[str] = set()
        for placed in list(self._running.values()):
            busy.update(placed)
        nodes = int(engine.get("nodes", 0) or 0)
        running = len(self._running)
        return {
            "name": self.paths.name,
            "endpoint_id": self.endpoint_id,
            "pid": os.getpid(),
            "state": state or ("stopping" if self._stop.is_set() else "running"),
            "connected": self._channel is not None,
            "engine": self.config.backend,
            "blocks": int(engine.get("blocks", 0) or 0),
            "nodes": nodes,
            "nodes_busy": len(busy),
            "nodes_free": max(nodes - len(busy), 0),
            "tasks_waiting": max(len(self._active) - running, 0),
            "tasks_running": running,
            "tasks_completed": self._completed,
            "last_error": self._last_error or str(engine.get("last_error", "")),
            "time": time.time(),
            # A multi-user manager's own view (intake, its user endpoints) rides along.
            **{k: engine[k] for k in ("multi_user", "intake", "user_endpoints") if k in engine},
        }

    def _heartbeat(self, channel: Channel) -> None:
        now = time.monotonic()
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + self.config.heartbeat_period
        status = self.status()
        self._write_status(status)
        header = {"type": "heartbeat", "endpoint_id": self.endpoint_id, "status": status}
        channel.publish(
            EXCHANGE_IN, KEY_HEARTBEAT, encode_frame(header), persistent=False, confirm=False
        )

    def _write_status(self, status: dict[str, Any]) -> None:
        tmp = self.paths.status.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(status, indent=1), encoding="utf-8")
            os.replace(tmp, self.paths.status)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.paths.status, exc)


def _nothing() -> None:
    """A wake-up: running any callback makes ``Channel.process`` return."""
