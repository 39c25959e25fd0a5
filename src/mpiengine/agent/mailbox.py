"""A zmq inproc mailbox: any thread posts bytes; the thread that owns a zmq loop receives them.

zmq sockets must not be shared between threads, so each posting thread gets its own PUSH socket
(thread-local) connected to the owner's PULL socket, which the owner polls beside its network
socket: a post wakes the loop at once, with no polling interval added to a launch.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import zmq

__all__ = ["Mailbox"]

_names = itertools.count()


class Mailbox:
    """Create it on the owner thread; poll :attr:`socket`; :meth:`post` from anywhere.

    Args:
        context: the zmq context shared by the owner and the posters.
    """

    def __init__(self, context: zmq.Context[Any]) -> None:
        self._context = context
        self.address = f"inproc://mpiengine-mailbox-{next(_names)}"
        self.socket: zmq.Socket[Any] = context.socket(zmq.PULL)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(self.address)
        self._local = threading.local()
        self._pushers: list[zmq.Socket[Any]] = []
        self._lock = threading.Lock()
        self._closed = False

    def post(self, data: bytes) -> None:
        """Hand ``data`` to the owner thread (dropped once the mailbox is closed)."""
        push: zmq.Socket[Any] | None = getattr(self._local, "push", None)
        with self._lock:
            if self._closed:
                return
            if push is None:
                push = self._context.socket(zmq.PUSH)
                push.setsockopt(zmq.LINGER, 0)
                push.connect(self.address)
                self._local.push = push
                self._pushers.append(push)
            push.send(data)

    def receive_all(self) -> list[bytes]:
        """Everything posted so far (owner thread only)."""
        out: list[bytes] = []
        while True:
            try:
                out.append(self.socket.recv(zmq.NOBLOCK))
            except zmq.Again:
                return out

    def close(self) -> None:
        """Close every socket (owner thread, after its loop ended)."""
        with self._lock:
            self._closed = True
            for push in self._pushers:
                push.close(linger=0)
            self._pushers.clear()
        self.socket.close(linger=0)
