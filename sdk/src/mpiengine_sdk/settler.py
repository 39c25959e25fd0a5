"""The Settler: where an Executor's futures are settled, off the backend's threads.

A backend reports results from its own thread (the engine thread of an endpoint in this
process, the relay client's I/O thread). That thread only appends the message to a queue
(:meth:`Settler.put`, no lock); one settling thread per Executor drains the queue, sets results
and runs users' done-callbacks. So a done-callback never runs on the engine or the relay client's
I/O thread, and a slow one never stalls them.

A done-callback that waits on another future (``other.result()`` or ``other.exception()`` on a
TaskFuture) would stall the settling thread, and with it the result it waits for. Before such a
wait, the settling thread hands the queue to a fresh settling thread (:func:`before_wait`), and
ends once its callback returns. Blocking a callback on anything else (a lock,
``concurrent.futures.wait``) delays the results queued behind it, never the engine.
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Settler", "before_wait"]

log = logging.getLogger(__name__)

M = TypeVar("M")

#: The Settler whose queue the current thread drains, if any.
_local = threading.local()


def before_wait() -> None:
    """Called by code about to block on a future: if this thread is settling futures, hand the
    queue to another thread first, so the result waited for can still be settled."""
    settler = getattr(_local, "settler", None)
    if settler is not None:
        settler.hand_over()


class Settler(Generic[M]):
    """One settling thread that applies ``settle`` to each message, in arrival order.

    Args:
        settle: applied to every message; a bound method, held weakly (so an Executor dropped
            without shutdown can be collected; it then calls ``stop``).
        name: the settling thread's name.
    """

    def __init__(self, settle: Callable[[M], None], name: str) -> None:
        self._settle = weakref.WeakMethod(settle)
        self._name = name
        self._inbox: queue.SimpleQueue[M | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stopped = False
        self._drainer = self._spawn()

    def put(self, message: M) -> None:
        """Queue a message (any thread; never blocks). After :meth:`stop` the caller settles
        what is queued itself, so a late message is never lost."""
        self._inbox.put(message)
        if self._stopped:
            self._sweep()

    def stop(self, wait: bool = True) -> None:
        """Settle what is queued, then end the settling thread. Idempotent.

        Args:
            wait: return once the settling thread has ended (not when called from it).
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._inbox.put(None)
        while wait and getattr(_local, "settler", None) is not self:
            drainer = self._drainer
            drainer.join()
            if drainer is self._drainer:
                return

    def hand_over(self) -> None:
        """Start a new settling thread in place of the current one, which is about to block;
        it stops settling once its current message is done."""
        with self._lock:
            if self._drainer is not threading.current_thread():
                return
            self._drainer = self._spawn()
        _local.settler = None

    def _spawn(self) -> threading.Thread:
        thread = threading.Thread(target=self._drain, name=self._name, daemon=True)
        self._drainer = thread  # before start: the new thread checks it
        thread.start()
        return thread

    def _drain(self) -> None:
        me = threading.current_thread()
        _local.settler = self
        get = self._inbox.get
        while True:
            message = get()
            if message is None:
                return
            settle = self._settle()
            if settle is None:
                return  # the Executor is gone: nobody waits for these futures
            try:
                settle(message)
            except Exception:
                log.exception("settling a result failed")
            del settle
            if self._drainer is not me:
                return  # handed over while a callback waited: the new thread carries on

    def _sweep(self) -> None:
        settle = self._settle()
        while settle is not None:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                return
            if message is None:
                # The stop signal, not yet seen by the settling thread: leave it for it
                # (everything queued before it is settled there).
                self._inbox.put(None)
                return
            try:
                settle(message)
            except Exception:
                log.exception("settling a result failed")
