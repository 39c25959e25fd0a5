"""End a runner's task trees when the process that owns the runner dies: a watchdog process.

Tasks run in sessions of their own, so nothing links them to the process that started them (an
embedded ``Executor``, the endpoint service, a block agent). When that process is killed with
SIGKILL, its ``atexit`` hooks never run and its tasks would keep running, unowned; the endpoint's
tasks are then delivered again and would run twice at once.

How it works:

1. A ``TaskRunner`` starts one watchdog process, at its first task (``python -m
   mpiengine.runner.watchdog GRACE OWNER_PID``), in a session of its own (a signal to the
   owner's process group does not reach it), cwd ``/``. Its stdin is the read end of a pipe;
   the owner holds the only write end (``O_CLOEXEC``, so no exec'd child keeps it; closed in
   forked children).
2. The runner thread registers each task on that pipe, one ``write(2)`` per event, atomic
   (shorter than ``PIPE_BUF``): ``t ID MARKER`` *before* the spawn (so a task carrying its
   ``MPIENGINE_TASK_ID`` marker is covered even if the owner dies between fork and the next
   line), ``p ID PID`` after it (the root's pid is also its session id), ``- ID`` once reported.
3. EOF on the pipe means every holder of the write end is gone. The kernel closes the descriptors
   of a process however it ends, so EOF comes after SIGKILL as after a clean exit. The watchdog
   then kills every tree still registered, found as ``proctree`` finds them (the session and
   descendants, and every process carrying the marker): SIGTERM, ``GRACE`` seconds, SIGKILL.
   After a normal shutdown nothing is registered and it exits at once; ``close()`` waits for that.

Why not ``PR_SET_PDEATHSIG``: it fires when the *thread* that forked the child exits (here the
runner thread, or whichever thread started it), not the process, and it reaches only that direct
child, never a task's descendants in other sessions. A pipe's EOF belongs to the process.

If the watchdog itself dies (someone killed it), the next write fails with EPIPE; the owner then
starts another one and registers every running task with it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import selectors
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from mpiengine.runner.launch import TASK_MARKER_ENV
from mpiengine.runner.spawn import reap, spawn

if TYPE_CHECKING:
    from mpiengine.runner.proctree import TreeKill

__all__ = ["Watchdog", "main"]

log = logging.getLogger(__name__)

#: Pipe capacity asked for: a burst of registrations (about 150 bytes per task) must not block
#: the runner thread while a new watchdog is still importing (the default is 64 KiB).
_PIPE_SIZE = 1 << 20
#: Watchdogs started again after dying, per runner, before giving up (and saying so).
_MAX_RESTARTS = 5
#: Seconds the watchdog waits for killed processes after SIGKILL.
_KILL_WAIT = 5.0

#: Live owner-side handles, whose write ends a forked child must not keep open.
_OWNED: weakref.WeakSet[Watchdog] = weakref.WeakSet()


def _field(text: str) -> str:
    """A task id or marker as one space-free, printable field (hex when it is not already)."""
    if text.isprintable() and " " not in text and not text.startswith("%") and text:
        return text
    return "%" + text.encode("utf-8", "surrogateescape").hex()


def _unfield(field: str) -> str:
    if field.startswith("%"):
        return bytes.fromhex(field[1:]).decode("utf-8", "surrogateescape")
    return field


class Watchdog:
    """The owner's handle on one watchdog process (started lazily, at the first ``expect``).

    Not thread-safe: call it from one thread (the runner thread).

    Args:
        kill_grace: seconds between SIGTERM and SIGKILL when the watchdog kills the trees.
    """

    def __init__(self, kill_grace: float) -> None:
        self._grace = kill_grace
        self._fd = -1
        self._pid = 0
        #: Held from the start, so waiting for the exit never follows a reused pid.
        self._pidfd = -1
        self._restarts = 0
        self._disabled = False
        #: task id -> (marker field or "", root pid or 0): what to register again after a restart.
        self._tasks: dict[str, tuple[str, int]] = {}
        _OWNED.add(self)

    @property
    def pid(self) -> int | None:
        """The watchdog process's pid, or None when none runs."""
        return self._pid or None

    def expect(self, task_id: str, marker: str | None) -> None:
        """Register a task about to be spawned (before the fork) with its marker, if any."""
        if not marker:
            return  # without a marker there is nothing to find before the pid is known
        key, mark = _field(task_id), _field(marker)
        self._tasks[task_id] = (mark, 0)
        self._write(f"t {key} {mark}\n".encode())

    def started(self, task_id: str, pid: int) -> None:
        """Register the root pid (and session id) of a spawned task."""
        mark = self._tasks.get(task_id, ("", 0))[0]
        self._tasks[task_id] = (mark, pid)
        self._write(f"p {_field(task_id)} {pid}\n".encode())

    def ended(self, task_id: str) -> None:
        """Forget a task (it was reported): the watchdog will not touch its tree."""
        if self._tasks.pop(task_id, None) is not None:
            self._write(f"- {_field(task_id)}\n".encode())

    def close(self, timeout: float = 10.0) -> None:
        """Close the pipe; wait up to ``timeout`` s for the watchdog to exit, and reap it.

        Tasks still registered are killed by the watchdog (nobody owns them any more).
        """
        _OWNED.discard(self)
        if self._fd < 0:
            return
        os.close(self._fd)
        pid, pidfd = self._pid, self._pidfd
        self._fd, self._pid, self._pidfd = -1, 0, -1
        try:
            exited = _wait_exit(pidfd, timeout)
        finally:
            os.close(pidfd)
        if not exited:
            log.warning("watchdog %d still runs %.0f s after its owner closed it", pid, timeout)
            threading.Thread(target=reap, args=(pid,), daemon=True).start()
            return
        reap(pid)

    def _write(self, line: bytes) -> None:
        """Send one line; never raises (a task that was started must still be watched)."""
        if self._fd < 0 and not self._start():
            return
        try:
            os.write(self._fd, line)
        except BrokenPipeError:  # the watchdog died: start another, tell it everything again
            self._restart()
        except OSError as exc:
            log.error("cannot write to the task watchdog (%s)", exc)

    def _start(self) -> bool:
        if self._disabled:
            return False
        try:
            self._fd, self._pid, self._pidfd = _launch(self._grace)
        except (OSError, ValueError) as exc:
            self._disabled = True
            log.error("cannot start the task watchdog (%s): tasks may outlive a killed owner", exc)
            return False
        return True

    def _restart(self) -> None:
        old = self._pid
        os.close(self._fd)
        os.close(self._pidfd)
        self._fd, self._pid, self._pidfd = -1, 0, -1
        status = reap(old)
        self._restarts += 1
        if self._restarts > _MAX_RESTARTS:
            self._disabled = True
            log.error("task watchdog died %d times; giving up", self._restarts)
            return
        log.warning("task watchdog %d died (status %s); starting another", old, status)
        lines = [f"p {_field(t)} {pid}\n" for t, (_, pid) in self._tasks.items() if pid]
        lines += [f"t {_field(t)} {mark}\n" for t, (mark, _) in self._tasks.items() if mark]
        if self._start():
            _write_all(self._fd, "".join(lines).encode())

    def _forget(self) -> None:
        """In a forked child: drop the inherited write end, so it cannot hold off the EOF."""
        for fd in (self._fd, self._pidfd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd, self._pid, self._pidfd, self._disabled = -1, 0, -1, True
        self._tasks.clear()


def _forget_all_in_child() -> None:
    for handle in list(_OWNED):
        handle._forget()


os.register_at_fork(after_in_child=_forget_all_in_child)


def _launch(grace: float) -> tuple[int, int, int]:
    """Start a watchdog process; returns (the pipe's write end, its pid, a pidfd on it)."""
    read, write = os.pipe2(os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):  # capped by /proc/sys/fs/pipe-max-size
            fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        argv = [sys.executable, "-m", __name__, repr(grace), str(os.getpid())]
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            err = 2 if _is_open(2) else null  # its report goes to the owner's stderr (or log)
            pid = spawn(argv, _watchdog_env(), "/", stdin=read, stdout=null, stderr=err)
        finally:
            os.close(null)
    except BaseException:
        os.close(write)
        raise
    finally:
        os.close(read)
    try:
        return write, pid, os.pidfd_open(pid)
    except OSError:
        os.close(write)  # EOF with nothing registered: it exits at once
        reap(pid)
        raise


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _watchdog_env() -> dict[str, str]:
    """This process's environment, with the directory holding this ``mpiengine`` first on the
    import path, so ``-m`` finds the same code whatever the caller's working directory."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _wait_exit(pidfd: int, timeout: float) -> bool:
    """Whether the process held by ``pidfd`` exited (a zombie counts) within ``timeout`` s."""
    with selectors.DefaultSelector() as sel:
        sel.register(pidfd, selectors.EVENT_READ)
        return bool(sel.select(timeout))


# ----- the watchdog process -----


def _read_registry(stream: Iterable[bytes]) -> dict[str, tuple[str, int]]:
    """Read registrations until EOF; returns task id -> (marker, root pid) still registered."""
    tasks: dict[str, tuple[str, int]] = {}
    for raw in stream:
        if not raw.endswith(b"\n"):
            break  # a line cut short by the owner's death; nothing after it
        parts = raw.decode("ascii", "replace").split()
        if len(parts) < 2:
            continue
        op, key = parts[0], parts[1]
        if op == "-":
            tasks.pop(key, None)
            continue
        mark, pid = tasks.get(key, ("", 0))
        if op == "t" and len(parts) == 3:
            tasks[key] = (parts[2], pid)
        elif op == "p" and len(parts) == 3 and parts[2].isdigit():
            tasks[key] = (mark, int(parts[2]))
    return tasks


def _kill_all(tasks: dict[str, tuple[str, int]], grace: float) -> int:
    """Kill every registered tree at once (SIGTERM, ``grace`` s, SIGKILL); returns how many
    processes were signalled."""
    # Imported only now: psutil is most of a watchdog's start-up time and memory, and most
    # watchdogs never kill anything.
    from mpiengine.runner.proctree import TreeKill

    trees = []
    for mark, pid in tasks.values():
        marker = (TASK_MARKER_ENV, _unfield(mark)) if mark else None
        trees.append(TreeKill(pid, session=pid or None, marker=marker))
    with selectors.DefaultSelector() as sel:
        for tree in trees:
            _register(sel, tree, tree.terminate())
        _wait(sel, trees, grace)
        for tree in trees:
            _register(sel, tree, tree.force())
        _wait(sel, trees, _KILL_WAIT)
    killed = sum(len(tree.killed()) for tree in trees)
    for tree in trees:
        tree.close()
    return killed


def _register(sel: selectors.BaseSelector, tree: TreeKill, pidfds: dict[int, int]) -> None:
    for pid, fd in pidfds.items():
        sel.register(fd, selectors.EVENT_READ, (tree, pid))


def _wait(sel: selectors.BaseSelector, trees: list[TreeKill], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(tree.alive for tree in trees):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        for key, _ in sel.select(remaining):
            sel.unregister(key.fd)
            tree, pid = key.data
            tree.exited(pid)


def main(argv: list[str]) -> int:
    """The watchdog process: ``python -m mpiengine.runner.watchdog GRACE OWNER_PID``, with
    registrations on stdin. Returns the exit status (0; 2 for bad arguments)."""
    try:
        grace, owner = float(argv[0]), int(argv[1])
    except (IndexError, ValueError):
        print("usage: python -m mpiengine.runner.watchdog GRACE OWNER_PID", file=sys.stderr)
        return 2
    # It ends by EOF (or SIGKILL) only: a tree kill that reaches it with its owner (an Executor
    # inside a task) must not end it before it has killed that owner's own tasks.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    tasks = _read_registry(sys.stdin.buffer)
    if not tasks:
        return 0  # a normal shutdown: every task was reported
    killed = _kill_all(tasks, grace)
    print(
        f"mpiengine watchdog: owner pid {owner} is gone; killed {killed} process(es) of "
        f"{len(tasks)} task(s) it left running",
        file=sys.stderr,
        flush=True,
    )
    return 0


if __name__ == "__main__":
    # os._exit: no interpreter teardown, so the owner's close() is not kept waiting for it.
    os._exit(main(sys.argv[1:]))
