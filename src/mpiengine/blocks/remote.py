"""Batch blocks, seen from the endpoint: the agents' socket and a BlockHandle per block.

:class:`AgentServer` owns one zmq ROUTER socket (bound to the configured address, 127.0.0.1 by
default) and one thread. It checks every agent message's token against the block's secret
(``hmac.compare_digest``) before handing it to the block manager, pings every agent that said
hello once per heartbeat period (the agent exits when the pings stop), and sends what other
threads post through its mailbox (launch, kill, shutdown), so a launch costs one inproc hop and
one TCP message, with no polling interval.

:class:`RemoteBlock` is the engine's handle on one connected block: ``launch``/``kill`` become
messages to its agent, ``close`` tells the agent to end its tasks and asks the manager to
release the batch job.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from mpiengine.agent.mailbox import Mailbox
from mpiengine.agent.protocol import ProtocolError, decode, encode, launch_to_dict
from mpiengine.binding import REAL_NODES, Binding
from mpiengine.launchers import LauncherSpec
from mpiengine.runner.launch import LaunchSpec
from mpiengine.scheduler import BlockInfo

__all__ = ["AgentHandler", "AgentServer", "RemoteBlock"]

log = logging.getLogger(__name__)

#: Called on the server thread with ``(block_id, message)`` for every authenticated message.
AgentHandler = Callable[[str, dict[str, Any]], None]


class AgentServer:
    """The endpoint's side of the agent link.

    Args:
        handler: receives authenticated agent messages (must return quickly).
        address: the interface to bind.
        port: the port (0: any free one).
        heartbeat_period: seconds between pings to each agent.
    """

    def __init__(
        self,
        handler: AgentHandler,
        *,
        address: str = "127.0.0.1",
        port: int = 0,
        heartbeat_period: float = 2.0,
    ) -> None:
        self._handler = handler
        self._period = heartbeat_period
        self._tokens: dict[str, bytes] = {}
        self._greeted: set[str] = set()
        self._lock = threading.Lock()
        self._context: zmq.Context[Any] = zmq.Context()
        self._router = self._context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 1000)  # flush the last shutdowns on close
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a gone agent raises
        if port:
            self._router.bind(f"tcp://{address}:{port}")
            self.port = port
        else:
            self.port = self._router.bind_to_random_port(f"tcp://{address}")
        self.address = f"tcp://{address}:{self.port}"
        self._mailbox = Mailbox(self._context)
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="mpiengine-agents", daemon=True)
        self._thread.start()

    def allow(self, block_id: str, token: str) -> None:
        """Accept messages from this block's agent when they carry ``token``."""
        with self._lock:
            self._tokens[block_id] = token.encode()

    def forget(self, block_id: str) -> None:
        """Drop a block: its agent's messages are ignored and it is not pinged any more."""
        with self._lock:
            self._tokens.pop(block_id, None)
            self._greeted.discard(block_id)

    def send(self, block_id: str, kind: str, **fields: Any) -> None:
        """Send a message to a block's agent (any thread; dropped if the agent is gone)."""
        self._mailbox.post(block_id.encode() + b"\n" + encode(kind, **fields))

    def close(self) -> None:
        """Stop the thread and close the socket."""
        self._stopping = True
        self._mailbox.post(b"")
        self._thread.join(timeout=10)

    # -- the server thread -------------------------------------------------------------------
    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._mailbox.socket, zmq.POLLIN)
        next_ping = time.monotonic() + self._period
        try:
            while not self._stopping:
                timeout = max(0.0, next_ping - time.monotonic())
                events = dict(poller.poll(int(timeout * 1000) + 1))
                if self._router in events:
                    self._receive()
                if self._mailbox.socket in events:
                    for item in self._mailbox.receive_all():
                        self._deliver(item)
                if time.monotonic() >= next_ping:
                    next_ping = time.monotonic() + self._period
                    with self._lock:
                        greeted = list(self._greeted)
                    for block_id in greeted:
                        self._transmit(block_id, encode("ping"))
        except Exception:
            log.exception("the agent server thread failed")
        finally:
            self._mailbox.close()
            self._router.close()
            self._context.term()

    def _receive(self) -> None:
        while True:
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                continue
            block_id = frames[0].decode(errors="replace")
            try:
                msg = decode(frames[1])
            except ProtocolError as exc:
                log.warning("bad message from %r: %s", block_id, exc)
                continue
            with self._lock:
                expected = self._tokens.get(block_id)
            token = str(msg.pop("token", "")).encode()
            if expected is None or not hmac.compare_digest(token, expected):
                log.warning("refused a %r message for block %r: unknown block or bad token",
                            msg["t"], block_id)  # fmt: skip
                continue
            if msg["t"] == "hello":
                with self._lock:
                    self._greeted.add(block_id)
            try:
                self._handler(block_id, msg)
            except Exception:
                log.exception("handling %r from block %s failed", msg["t"], block_id)

    def _deliver(self, item: bytes) -> None:
        if not item:
            return  # the wake-up from close()
        block_id, _, payload = item.partition(b"\n")
        self._transmit(block_id.decode(), payload)

    def _transmit(self, block_id: str, payload: bytes) -> None:
        try:
            self._router.send_multipart([block_id.encode(), payload], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # unroutable (agent gone) or its queue is full
            log.debug("cannot send to block %s: %s", block_id, exc)


class RemoteBlock:
    """A connected batch block (a BlockHandle): tasks go to its agent.

    Args:
        info: its nodes, cores, GPUs and end time.
        launcher: the launcher MPI tasks run under.
        job_id: returns the batch job id (known once the submit call returned).
        server: the agent link.
        on_close: called with the block id when the engine closes the block (release the job).
        binding: the nodes' GPU vendor and tiles.
    """

    def __init__(
        self,
        info: BlockInfo,
        launcher: LauncherSpec,
        job_id: Callable[[], str],
        server: AgentServer,
        on_close: Callable[[str], None],
        binding: Binding = REAL_NODES,
    ) -> None:
        self._info = info
        self._launcher = launcher
        self._binding = binding
        self._job_id = job_id
        self._server = server
        self._on_close = on_close

    @property
    def info(self) -> BlockInfo:
        return self._info

    @property
    def launcher(self) -> LauncherSpec:
        return self._launcher

    @property
    def binding(self) -> Binding:
        return self._binding

    @property
    def job_id(self) -> str:
        return self._job_id()

    def launch(self, spec: LaunchSpec) -> None:
        self._server.send(self._info.block_id, "launch", spec=launch_to_dict(spec))

    def kill(self, task_id: str) -> None:
        self._server.send(self._info.block_id, "kill", task_id=task_id)

    def close(self) -> None:
        # Release first: the agent's bye must find the block already releasing, not lost.
        self._on_close(self._info.block_id)
        self._server.send(self._info.block_id, "shutdown")
