"""RelayBackend: the Executor's backend in remote mode (SDK -> relay -> endpoint).

One I/O thread owns the broker connection. ``submit`` only encodes and appends to an outbox;
the I/O thread sends whatever the outbox holds as one batch message (so a loop of submits
becomes few messages without any added delay), with publisher confirms. Results arrive on a
per-connection session queue and are handed to the Executor's sink; a result whose task is no
longer outstanding (a duplicate of at-least-once delivery) is dropped, so one result per task
id reaches the user.

After a lost connection the thread reconnects on a new session queue, resends the batches the
broker had not confirmed (the relay ignores task ids it already has) and sends what was queued
meanwhile. Then it asks the relay for every outstanding task, which routes their results to
the new session, but asks for each task only once the broker has confirmed its submit: before,
the relay cannot know it. An "unknown task" answer for a task submitted here can still come
(another relay process may hold its submit); it is asked again with backoff, for
``unknown_retry_for`` seconds, never taken for the task's result. Tasks outlive the client:
``list_tasks`` and ``follow`` (behind ``Executor.attach``) route their results to this client
from another process. This client deals in messages only: the Executor owns the futures.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpiengine_sdk.backend import ResultSink
from mpiengine_sdk.client_config import load_client_config
from mpiengine_sdk.errors import (
    AuthenticationError,
    BackendError,
    ExecutorShutdown,
    PayloadTooLarge,
    RelayError,
)
from mpiengine_sdk.relayclient.protocol import (
    EXCHANGE_DEAD,
    EXCHANGE_IN,
    KEY_REQUEST,
    ProtocolError,
    decode_frame,
    encode_frame,
    error_from_header,
    failed_result,
    session_queue,
)
from mpiengine_sdk.relayclient.transport import Channel, Delivery, PikaTransport, Transport
from mpiengine_sdk.wire import ResultMessage, TaskKind, TaskMessage, WireError, decode_result
from mpiengine_sdk.wire import encode_task as _encode_task

__all__ = ["RelayBackend"]

log = logging.getLogger(__name__)

_MiB = 1024 * 1024
#: Seconds a "fetched" acknowledgement may wait to be batched with others.
_FETCHED_DELAY = 0.2
#: Task ids per "fetch" request the client sends on its own.
_ASK_BATCH = 2000
#: Backoff between asks for a task the relay does not know yet: from ... to ... seconds.
_ASK_MIN, _ASK_MAX = 0.2, 5.0


@dataclass
class _Reply:
    event: threading.Event = field(default_factory=threading.Event)
    header: Mapping[str, Any] | None = None


#: A message to publish, and the ids of the tasks it submits (none for a request).
_Out = tuple[bytes, tuple[str, ...]]


class RelayBackend:
    """Submit through a relay (implements the SDK's Backend protocol).

    Args:
        endpoint_id: the endpoint to run tasks on.
        relay: the broker URL (``amqp://[user:password@]host:port/vhost``); None reads the
            client config (``MPIENGINE_RELAY``, then ``~/.mpiengine/client.toml``).
        user: the principal; overrides the URL's and the config's.
        password: its password.
        config: a client config file to read instead of the default one.
        transport: an explicit broker transport (tests); overrides the above.
        batch_max_tasks: the most tasks in one submit message.
        batch_max_bytes: the most bytes in one submit message (a bigger task goes alone).
        reply_timeout: seconds to wait for the relay to answer a request (hello, list...).
        unknown_retry_for: seconds to keep asking, after a reconnect, for a task submitted
            here that the relay does not know yet; then its future fails with a RelayError.

    Raises:
        AuthenticationError: no user is configured.
    """

    def __init__(
        self,
        endpoint_id: str,
        relay: str | None = None,
        *,
        user: str | None = None,
        password: str | None = None,
        config: str | Path | None = None,
        transport: Transport | None = None,
        batch_max_tasks: int = 2000,
        batch_max_bytes: int = 8 * _MiB,
        reply_timeout: float = 15.0,
        unknown_retry_for: float = 120.0,
    ) -> None:
        if transport is None:
            url, name, secret = load_client_config(config).resolved(relay, user, password)
            if not name:
                raise AuthenticationError(
                    "no relay user configured: pass user= and password=, put them in the relay "
                    "URL, or write a client config (mpiengine relay add-user NAME "
                    "--client-config ~/.mpiengine/client.toml)",
                    "unauthenticated",
                )
            transport = PikaTransport(url, user=name, password=secret)
        self.endpoint_id = endpoint_id
        self.user = transport.user
        self._transport = transport
        self._batch_tasks = batch_max_tasks
        self._batch_bytes = batch_max_bytes
        self._reply_timeout = reply_timeout
        self._unknown_retry_for = unknown_retry_for
        self._lock = threading.Lock()
        self._outstanding: dict[str, TaskKind] = {}
        self._followed: set[str] = set()  # attached here: results for the sink, not submitted
        self._tasks: list[tuple[str, bytes]] = []
        self._frames: list[_Out] = []  # requests, then unsent ones after a failure
        self._unconfirmed: set[str] = set()  # submitted here; the broker has not confirmed it
        self._ask: dict[str, float] = {}  # task id -> when to ask the relay for its state
        self._unknown_since: dict[str, float] = {}  # when the relay first said "unknown"
        self._asks: set[str] = set()  # request ids of those asks
        self._client = uuid.uuid4().hex
        self._sessions = 0
        self._fetched: list[str] = []
        self._fetched_due = 0.0
        self._replies: dict[str, _Reply] = {}
        self._sink: ResultSink | None = None
        self._channel: Channel | None = None
        self._queue = ""
        self._closing = threading.Event()
        self._connected = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mpiengine-relay", daemon=True)
        #: The relay's limits (``max_payload_bytes``, ...), from its answer to hello.
        self.limits: dict[str, Any] = {}
        #: The endpoint as the relay last saw it (name, online, status), from hello.
        self.endpoint: dict[str, Any] = {}

    # -- Backend protocol ------------------------------------------------------------------
    def start(self, sink: ResultSink) -> None:
        """Connect, and check with the relay that this user may use the endpoint.

        Raises:
            AuthenticationError: the broker refused the credentials.
            AuthorizationError: the endpoint does not exist or does not allow this user.
            BackendError: the broker or the relay cannot be reached.
        """
        self._sink = sink
        self._thread.start()
        if not self._connected.wait(30) or self._failure is not None:
            self._closing.set()
            failure = self._failure or BackendError("could not connect to the broker within 30 s")
            raise failure
        try:
            reply = self.request({"type": "hello", "endpoint_id": self.endpoint_id})
        except BaseException:
            self.shutdown(wait=False)
            raise
        self.limits = dict(reply.get("limits", {}))
        self.endpoint = dict(reply.get("endpoint", {}))

    def submit(self, tasks: Sequence[TaskMessage]) -> None:
        """Queue tasks for the next batch message.

        Raises:
            PayloadTooLarge: a single task is over the relay's limit (in a batch, that task
                gets a FAILED result instead).
            BackendError: the connection thread has stopped.
        """
        self._check_alive()
        limit = int(self.limits.get("max_payload_bytes", 0)) or None
        accepted: list[tuple[TaskMessage, bytes]] = []
        for task in tasks:
            body = _encode_task(task)
            if limit is not None and len(body) > limit:
                exc = PayloadTooLarge(len(body), limit)
                if len(tasks) == 1:
                    raise exc
                self._emit(failed_result(task.task_id, exc))
                continue
            accepted.append((task, body))
        with self._lock:
            # Wake the I/O thread only when the outbox was empty: it takes everything queued
            # until it flushes, so a loop of submits costs one wake-up, not one per task.
            wake = not self._tasks
            for task, body in accepted:
                self._outstanding[task.task_id] = task.kind
                self._unconfirmed.add(task.task_id)
                self._tasks.append((task.task_id, body))
        if wake:
            self._wake()

    def cancel(self, task_id: str) -> None:
        """Ask the endpoint to cancel a task (best effort; the outcome comes as a result)."""
        self._send({"type": "cancel", "task_ids": [task_id]})

    def shutdown(self, wait: bool = True) -> None:
        """Send what is queued, then close. Outstanding tasks keep running on the endpoint;
        ``Executor.attach`` finds them later. Idempotent."""
        self._closing.set()
        self._wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(30)
        with self._lock:
            unsent = len(self._tasks)
        if unsent:
            log.warning("%d task(s) were never sent: the relay connection was down", unsent)

    # -- remote-mode extras ----------------------------------------------------------------
    def request(self, header: Mapping[str, Any], timeout: float | None = None) -> Mapping[str, Any]:
        """Send a request to the relay and wait for its answer.

        Raises:
            RelayError: the relay refused (AuthorizationError, ...).
            BackendError: no answer within ``timeout`` (default ``reply_timeout``).
        """
        self._check_alive()
        cid = uuid.uuid4().hex
        slot = _Reply()
        with self._lock:
            self._replies[cid] = slot
            self._frames.append((encode_frame({**header, "cid": cid}), ()))
        self._wake()
        wait = self._reply_timeout if timeout is None else timeout
        if not slot.event.wait(wait) or slot.header is None:
            with self._lock:
                self._replies.pop(cid, None)
            raise BackendError(
                f"the relay did not answer {header.get('type')!r} within {wait:.0f} s; "
                "is `mpiengine relay serve` running?"
            )
        if not slot.header.get("ok"):
            raise error_from_header(slot.header.get("error", {}))
        return slot.header

    def list_tasks(self, task_ids: Sequence[str] | None) -> list[tuple[str, TaskKind]]:
        """The tasks to attach, with their kinds (for ``Executor.attach``).

        Args:
            task_ids: these tasks (one the relay does not list comes back as a Python task:
                following it brings the relay's refusal); None for every task of this user on
                this endpoint whose result has not been fetched yet.

        Raises:
            RelayError, BackendError: as ``request``.
        """
        wanted = None if task_ids is None else list(task_ids)
        reply = self.request({"type": "list", "endpoint_id": self.endpoint_id, "task_ids": wanted})
        kinds = {str(t[0]): str(t[1]) for t in reply.get("tasks", [])}
        ids = wanted if wanted is not None else list(kinds)
        return [(tid, TaskKind(kinds.get(tid, TaskKind.PYTHON.value))) for tid in ids]

    def follow(self, task_ids: Sequence[str]) -> None:
        """Deliver these tasks' results to the sink, resolved at once for finished ones; an
        unknown, expired or foreign task id gets a FAILED result with a RelayError."""
        if not task_ids:
            return
        with self._lock:
            self._followed.update(task_ids)
        self._send({"type": "fetch", "task_ids": list(task_ids)})

    def status(self) -> dict[str, Any]:
        """The endpoint's last heartbeat as the relay saw it: ``online``, ``status``...

        Raises:
            RelayError, BackendError: as ``request``.
        """
        reply = self.request({"type": "status", "endpoint_id": self.endpoint_id})
        return dict(reply.get("endpoint", {}))

    # -- any thread ------------------------------------------------------------------------
    def _check_alive(self) -> None:
        if self._closing.is_set():
            raise ExecutorShutdown("the relay backend is shut down")
        if not self._thread.is_alive():
            raise BackendError(f"the relay connection thread has stopped: {self._failure}")

    def _send(self, header: Mapping[str, Any]) -> None:
        with self._lock:
            self._frames.append((encode_frame(header), ()))
        self._wake()

    def _wake(self) -> None:
        channel = self._channel
        if channel is not None:
            try:
                channel.call_threadsafe(_nothing)
            except BackendError:
                pass  # the I/O loop notices on its next round

    def _emit(self, msg: ResultMessage) -> None:
        sink = self._sink
        if sink is not None:
            sink(msg)

    # -- I/O thread ------------------------------------------------------------------------
    def _run(self) -> None:
        first, delay = True, 0.1
        while not self._closing.is_set():
            try:
                channel = self._transport.connect()
            except BackendError as exc:
                if first:  # fail start() fast: wrong password, no broker
                    self._failure = exc
                    self._connected.set()
                    return
                log.warning("relay: cannot reconnect (%s); retrying in %.1f s", exc, delay)
                self._closing.wait(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.1
            try:
                self._serve(channel, resume=not first)
            except BackendError as exc:
                log.warning("relay: connection lost (%s); reconnecting", exc)
            except Exception as exc:  # never die silently: submit() reports it
                log.exception("relay: connection thread failed")
                self._failure = exc
                self._closing.set()
            finally:
                self._channel = None
                channel.close()
            first = False

    def _serve(self, channel: Channel, *, resume: bool) -> None:
        # Numbered sessions: the relay never routes a task back to an earlier one of ours.
        self._sessions += 1
        queue = session_queue(self.user, f"{self._client}-{self._sessions:08d}")
        channel.declare_queue(
            queue,
            durable=False,
            exclusive=True,
            arguments={"x-dead-letter-exchange": EXCHANGE_DEAD},
        )
        channel.consume(queue, lambda d: self._on_message(channel, d), prefetch=256)
        self._queue = queue
        self._channel = channel
        if resume:
            self._resume()
        self._connected.set()
        while True:
            closing = self._closing.is_set()  # read first: the last flush sends everything
            self._flush(channel)
            if closing:
                return
            channel.process(0.1)

    def _resume(self) -> None:
        """Route every outstanding task's results to the new session: ask for the tasks
        submitted here once their submits are confirmed (``_flush``), for the others (attached
        ones) at once."""
        now = time.monotonic()
        with self._lock:
            self._asks.clear()  # answers to the old session's asks never come
            self._ask.update(dict.fromkeys(self._outstanding, now))
            others = [t for t in self._followed if t not in self._outstanding]
        if others:
            self._send({"type": "fetch", "task_ids": others})

    def _flush(self, channel: Channel) -> None:
        now = time.monotonic()
        with self._lock:
            tasks, self._tasks = self._tasks, []
            frames, self._frames = self._frames, []
            fetched: list[str] = []
            # "fetched" only starts the relay's retention clock: batch it, off the hot path.
            if self._fetched and (
                self._closing.is_set() or len(self._fetched) >= 1000 or now >= self._fetched_due
            ):
                fetched, self._fetched = self._fetched, []
        if fetched:
            frames.append((encode_frame({"type": "fetched", "task_ids": fetched}), ()))
        frames.extend(self._batches(tasks))
        self._publish(channel, frames)
        if self._ask:  # after the submits above are confirmed
            self._publish(channel, self._due_asks(now))

    def _publish(self, channel: Channel, frames: list[_Out]) -> None:
        for i, (body, submitted) in enumerate(frames):
            try:
                channel.publish(EXCHANGE_IN, KEY_REQUEST, body, reply_to=self._queue)
            except BackendError:
                with self._lock:  # resend after reconnecting, before anything newer
                    self._frames[:0] = frames[i:]
                raise
            if submitted:  # confirmed: the relay will see these tasks
                with self._lock:
                    self._unconfirmed.difference_update(submitted)

    def _due_asks(self, now: float) -> list[_Out]:
        """Fetch requests for the tasks due to be asked for whose submits are confirmed; the
        relay answers which ones it does not know (``_on_asked``)."""
        with self._lock:
            due = [t for t, at in self._ask.items() if at <= now and t not in self._unconfirmed]
            for tid in due:
                del self._ask[tid]
            due = [t for t in due if t in self._outstanding]
            cids = [uuid.uuid4().hex for _ in range(0, len(due), _ASK_BATCH)]
            self._asks.update(cids)
        return [
            (encode_frame({"type": "fetch", "task_ids": ids, "cid": cid, "unknown": "report"}), ())
            for cid, ids in zip(cids, _chunked(due, _ASK_BATCH), strict=True)
        ]

    def _batches(self, tasks: list[tuple[str, bytes]]) -> list[_Out]:
        header = {"type": "submit", "endpoint_id": self.endpoint_id}
        frames: list[_Out] = []
        batch: list[bytes] = []
        ids: list[str] = []
        size = 0
        for tid, body in tasks:
            if batch and (len(batch) >= self._batch_tasks or size + len(body) > self._batch_bytes):
                frames.append((encode_frame(header, batch), tuple(ids)))
                batch, ids, size = [], [], 0
            batch.append(body)
            ids.append(tid)
            size += len(body) + 1
        if batch:
            frames.append((encode_frame(header, batch), tuple(ids)))
        return frames

    def _on_message(self, channel: Channel, delivery: Delivery) -> None:
        try:
            frame = decode_frame(delivery.body)
            if frame.type == "results":
                for line in frame.lines:
                    self._deliver(decode_result(line))
            elif frame.type == "reply":
                self._on_reply(frame.header)
            else:
                raise ProtocolError(f"unexpected message type {frame.type!r}")
        except (ProtocolError, WireError) as exc:
            log.error("relay: dead-lettering a malformed message on %s: %s", delivery.queue, exc)
            channel.reject(delivery.tag, requeue=False)
            return
        channel.ack(delivery.tag)

    def _on_reply(self, header: Mapping[str, Any]) -> None:
        cid = str(header.get("cid"))
        with self._lock:
            slot = self._replies.pop(cid, None)
            asked = cid in self._asks
            self._asks.discard(cid)
        if asked:
            unknown = header.get("unknown")
            self._on_asked([str(t) for t in unknown] if isinstance(unknown, list) else [])
        if slot is not None:
            slot.header = header
            slot.event.set()

    def _on_asked(self, unknown: list[str]) -> None:
        """The relay does not know these tasks (yet): ask again later, with backoff; a task
        still unknown after ``unknown_retry_for`` seconds fails with a RelayError."""
        now = time.monotonic()
        lost: list[str] = []
        with self._lock:
            for tid in unknown:
                if tid not in self._outstanding:
                    continue  # its result came meanwhile
                waited = now - self._unknown_since.setdefault(tid, now)
                if waited >= self._unknown_retry_for:
                    lost.append(tid)
                else:  # the gaps double: 0.2, 0.2, 0.4, 0.8, ... 5 s
                    self._ask[tid] = now + min(max(waited, _ASK_MIN), _ASK_MAX)
        for tid in lost:
            exc = RelayError(
                f"the relay does not know task {tid!r}, although the broker confirmed its "
                f"submit and the relay was asked for it during {self._unknown_retry_for:.0f} s: "
                "the relay's store lost it (reset, or restored from a backup?); submit it again",
                "unknown_task",
            )
            self._deliver(failed_result(tid, exc))

    def _deliver(self, msg: ResultMessage) -> None:
        tid = msg.task_id
        with self._lock:
            mine = tid in self._outstanding or tid in self._followed
            if msg.state.terminal:
                self._followed.discard(tid)
                self._outstanding.pop(tid, None)
                self._ask.pop(tid, None)
                self._unknown_since.pop(tid, None)
                if not self._fetched:
                    self._fetched_due = time.monotonic() + _FETCHED_DELAY
                self._fetched.append(tid)
        if mine:
            try:
                self._emit(msg)
            except Exception:  # the sink's failure must not kill the connection thread
                log.exception("relay: the result sink failed for task %s", tid)


def _nothing() -> None:
    """A wake-up: running any callback makes ``Channel.process`` return."""


def _chunked(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
