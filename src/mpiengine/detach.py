"""Detached service processes: the endpoint service's and the relay's ``--detach`` and ``stop``.

``spawn`` starts a command in its own session with its output appended to a log; ``stop`` ends
one by pid and returns only once it has exited. Both services keep their own pid files and
readiness checks; what they share is here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
from collections.abc import Callable
from pathlib import Path

from mpiengine_sdk.errors import BackendError

__all__ = ["log_tail", "spawn", "stop"]

log = logging.getLogger(__name__)

#: Seconds a process may take to vanish after SIGKILL before ``stop`` gives up on it.
_AFTER_KILL = 30.0


def spawn(argv: list[str], log_path: Path, mode: int = 0o600) -> int:
    """Start ``argv`` in its own session, output appended to ``log_path``; returns its pid.

    posix_spawn, not Popen: the service outlives this process, and a Popen object would
    complain when it is collected with its child still running.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        actions = [
            (os.POSIX_SPAWN_DUP2, null, 0),
            (os.POSIX_SPAWN_DUP2, out, 1),
            (os.POSIX_SPAWN_DUP2, out, 2),
        ]
        return os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=actions, setsid=True)
    finally:
        os.close(out)
        os.close(null)


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log, or "" when it cannot be read."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop(pid: int, *, what: str, still_ours: Callable[[], bool], wait: Callable[[], float]) -> bool:
    """SIGTERM ``pid``, SIGKILL it if it outlives ``wait()`` seconds; return once it exited.

    The process is followed through a pidfd, so a pid reused after it exited is never
    signalled; a zombie not yet reaped counts as exited, and one that is this process's child
    (``--detach`` then ``stop`` in one process) is reaped.

    Args:
        pid: the process, as its pid file says.
        what: how log lines and errors name it (``endpoint 'x'``, ``relay a``).
        still_ours: whether the pid file still names ``pid`` (checked once the pidfd is held).
        wait: called once the process is known to be ours, before SIGTERM: the grace to give.

    Returns:
        False if it was no longer running.

    Raises:
        BackendError: it still runs 30 s after SIGKILL (stuck in the kernel).
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if not still_ours():  # it exited (and the pid was reused) before pidfd_open
            return False
        grace = wait()
        _signal(pidfd, signal.SIGTERM)
        if not _exited(pidfd, pid, grace):
            log.warning("%s (pid %d) did not stop in %.0f s: killing it", what, pid, grace)
            _signal(pidfd, signal.SIGKILL)
            if not _exited(pidfd, pid, _AFTER_KILL):
                raise BackendError(f"{what} (pid {pid}) did not exit after SIGKILL")
    finally:
        os.close(pidfd)
    return True


def _signal(pidfd: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # exited already; the pidfd says so
        signal.pidfd_send_signal(pidfd, sig)


def _exited(pidfd: int, pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for the process behind ``pidfd`` to exit (the pidfd becomes
    readable when it is a zombie); reap it if it is this process's child."""
    with selectors.DefaultSelector() as sel:
        sel.register(pidfd, selectors.EVENT_READ)
        if not sel.select(timeout):
            return False
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return True
