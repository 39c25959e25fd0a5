"""Run task processes: spawn, watch, enforce walltimes, kill whole trees, report once.

One ``TaskRunner`` owns one background thread. The thread sleeps in a selector over a wake pipe
(new commands) and one Linux pidfd per running task (child exits), with a heap of deadlines
(walltimes, kill grace periods) as its timeout: nothing polls. Callers on any thread enqueue
commands and return at once; every started task is reported exactly once, from the runner
thread, as a ``Completion``.

What a task process gets: ``cwd`` = its sandbox, ``env`` = exactly ``LaunchSpec.env`` (nothing
from this process's environment, nothing from another task), stdin ``/dev/null``, stdout and
stderr in ``sandbox/stdout`` and ``sandbox/stderr``, a new session (so its tree can be found
and killed), no inherited file descriptors. It is started by ``spawn`` (one vfork + exec, with
no Popen bookkeeping) and reaped when its pidfd reports the exit.

How a task ends:
1. Its root process exits by itself. Any process left in its process group (``cmd &``) is then
   killed as in 2 before the Completion is sent, so a finished task never leaves work running on
   nodes that are about to be handed to another task. After a non-zero exit (a crashed
   launcher), processes carrying the task's ``MPIENGINE_TASK_ID`` are killed too; after a zero
   exit that scan is skipped (it reads the whole process table), so a daemon that left the
   session of a task that succeeded is not chased.
2. Its walltime expires, or ``kill()`` is called: the whole tree is killed (see ``proctree``):
   SIGTERM, ``kill_grace`` seconds, SIGKILL. A walltime kill reports returncode 124 and
   ``timed_out``; ``kill()`` reports ``cancelled`` with the root's own status.
   With ``progress_timeout``, the sizes of its stdout and stderr files are read (one stat each)
   on the same heap of deadlines; when neither changed for that many seconds the tree is killed
   the same way and the task is reported ``hung`` with returncode 125. A change counts from
   when it is seen, so a task is never taken as hung before it has been silent that long.
3. It cannot be started (missing executable, bad sandbox): ``error`` says why, returncode None.

If this process dies without closing the runner (SIGKILL), a watchdog process (``watchdog``),
which holds the tasks' registrations, kills every tree still running.
"""

from __future__ import annotations

import atexit
import heapq
import logging
import os
import selectors
import signal
import subprocess
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from mpiengine.runner.launch import (
    HUNG_RETURNCODE,
    TASK_MARKER_ENV,
    TIMEOUT_RETURNCODE,
    Completion,
    LaunchSpec,
)
from mpiengine.runner.proctree import TreeKill, group_has_live_member, kill_tree
from mpiengine.runner.sandbox import write_files
from mpiengine.runner.spawn import reap, spawn
from mpiengine.runner.tails import DEFAULT_TAIL_BYTES, tail
from mpiengine.runner.watchdog import Watchdog

__all__ = ["Completion", "LaunchSpec", "TASK_MARKER_ENV", "TIMEOUT_RETURNCODE", "TaskRunner"]

log = logging.getLogger(__name__)

#: Seconds to wait for processes to vanish after SIGKILL before reporting anyway.
_ABANDON_AFTER = 10.0

#: Commands handled per wake-up before the loop looks at exits again.
_BATCH = 16

#: The longest wait between two looks at the output sizes of a task with a progress_timeout.
_PROGRESS_CHECK_MAX = 1.0

_Deadline = Literal["walltime", "grace", "abandon", "progress"]

#: Runners not yet closed; at interpreter exit their task trees are killed, not orphaned.
_LIVE: weakref.WeakSet[TaskRunner] = weakref.WeakSet()


@dataclass(eq=False)
class _Task:
    """The runner thread's record of one task (touched by that thread only)."""

    spec: LaunchSpec
    pid: int = 0  # 0: not started
    pidfd: int = -1
    started: float | None = None
    returncode: int | None = None
    timed_out: bool = False
    hung: bool = False
    #: progress_timeout: (stdout, stderr) sizes last seen, and when they last changed (monotonic).
    output_sizes: tuple[int, int] = (0, 0)
    output_seen: float = 0.0
    cancelled: bool = False
    error: str = ""
    tree: TreeKill | None = None
    #: member pid -> pidfd registered with the selector, while a tree kill waits for them.
    watched: dict[int, int] = field(default_factory=dict)
    done: bool = False


class TaskRunner:
    """Starts task processes and reports each one's end, from one background thread.

    ``on_complete`` is called from the runner thread, exactly once per ``start``; it should
    return quickly (hand the Completion to a queue). ``running()`` no longer counts a task when
    its ``on_complete`` is called, so the callback may start the next one.
    """

    def __init__(
        self,
        on_complete: Callable[[Completion], None],
        *,
        kill_grace: float = 2.0,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
    ) -> None:
        """Start the runner thread.

        Args:
            on_complete: receives every Completion.
            kill_grace: seconds between SIGTERM and SIGKILL when a tree is killed.
            tail_bytes: the byte bound of each stdout/stderr tail.
        """
        self._on_complete = on_complete
        self._kill_grace = kill_grace
        self._tail_bytes = tail_bytes
        self._lock = threading.Lock()
        self._inbox: deque[tuple[str, object]] = deque()
        self._active: set[str] = set()
        self._closed = False
        self._exited = False
        self._wake_pending = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        # Touched by the runner thread only:
        self._tasks: dict[str, _Task] = {}
        self._deadlines: list[tuple[float, int, _Task, _Deadline]] = []
        self._seq = 0
        self._stopping = False
        # Kills the registered trees if this process dies without closing the runner.
        self._watchdog = Watchdog(kill_grace)
        self._thread = threading.Thread(target=self._loop, name="mpiengine-runner", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    # ----- the caller's side (any thread) -----

    def start(self, spec: LaunchSpec) -> None:
        """Start a task; returns at once. Launch failures arrive as a Completion with ``error``.

        Raises:
            ValueError: a task with this id is already running.
            RuntimeError: the runner is closed.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("TaskRunner is closed; create a new one to start tasks")
            if spec.task_id in self._active:
                raise ValueError(f"task {spec.task_id!r} is already running in this runner")
            self._active.add(spec.task_id)
        self._send("start", spec)

    def kill(self, task_id: str) -> bool:
        """Kill a running task's whole tree; its Completion has ``cancelled=True``.

        Returns:
            True if the task was running (or about to start); False if it is unknown or was
            already reported.
        """
        with self._lock:
            if task_id not in self._active:
                return False
        self._send("kill", task_id)
        return True

    def running(self) -> int:
        """How many started tasks have not been reported yet."""
        with self._lock:
            return len(self._active)

    def close(self, kill: bool = True) -> None:
        """Stop accepting tasks and stop the thread once every task is reported.

        Args:
            kill: kill every task still running (reported as cancelled); with False, wait for
                them to end by themselves (walltimes still apply).
        """
        _LIVE.discard(self)
        with self._lock:
            already = self._closed
            self._closed = True
        if not already:
            self._send("close", kill)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _send(self, command: str, arg: object) -> None:
        with self._lock:
            if self._exited:  # nothing left to act on; the wake pipe is closed
                return
            self._inbox.append((command, arg))
            # One wake byte per batch: the thread drains the inbox when it wakes. Written under
            # the lock so it never races with the thread closing the pipe.
            if not self._wake_pending:
                self._wake_pending = True
                os.write(self._wake_w, b"\0")

    # ----- the runner thread -----

    def _loop(self) -> None:
        try:
            while not (self._stopping and not self._tasks):
                timeout = self._deadlines[0][0] - time.monotonic() if self._deadlines else None
                if self._inbox:  # a batch is left over: look at exits, then come back to it
                    timeout = 0
                for key, _ in self._selector.select(None if timeout is None else max(timeout, 0)):
                    if key.data is None:
                        self._read_wake()
                    else:
                        task, pid = key.data
                        self._on_exit(task, pid, key.fd)
                if self._inbox:
                    self._run_commands()
                self._fire_deadlines()
        except BaseException:
            log.critical("task runner thread crashed; running tasks are killed", exc_info=True)
            self._crashed()
            raise
        finally:
            with self._lock:
                self._exited = True
            self._selector.close()
            for fd in (self._wake_r, self._wake_w, self._devnull):
                os.close(fd)
            self._watchdog.close()

    def _crashed(self) -> None:
        """Last resort after a bug in this thread: kill every tree, report every task."""
        with self._lock:
            self._closed = True
        for task in list(self._tasks.values()):
            if task.pid and task.returncode is None:
                kill_tree(task.pid, grace=0, session=task.pid)
                task.returncode = reap(task.pid)
            task.cancelled = True
            task.error = task.error or "the task runner thread crashed (see the log)"
            task.watched.clear()
            task.pidfd = -1
            self._finish(task)

    def _read_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _run_commands(self) -> None:
        with self._lock:
            self._wake_pending = False
            # A bounded batch, so exits are reaped (and reported) while a burst is still being
            # started; the rest stays queued and the loop returns to it without sleeping.
            count = min(len(self._inbox), _BATCH)
            commands = [self._inbox.popleft() for _ in range(count)]
        for command, arg in commands:
            if command == "start":
                assert isinstance(arg, LaunchSpec)
                self._spawn(arg)
            elif command == "kill":
                assert isinstance(arg, str)
                task = self._tasks.get(arg)
                if task is not None and not task.done:
                    task.cancelled = task.cancelled or not (task.timed_out or task.hung)
                    self._begin_kill(task)
            else:
                self._stopping = True
                for task in list(self._tasks.values()):
                    if arg and not (task.timed_out or task.hung):
                        task.cancelled = True
                    if arg:
                        self._begin_kill(task)

    def _spawn(self, spec: LaunchSpec) -> None:
        task = _Task(spec)
        self._tasks[spec.task_id] = task
        try:
            if not spec.argv:
                raise ValueError("argv is empty")
            write_files(spec.sandbox, spec.files)
            task.started = time.time()
            self._watchdog.expect(spec.task_id, spec.env.get(TASK_MARKER_ENV))
            task.pid = self._start_process(spec)
            self._watchdog.started(spec.task_id, task.pid)
        except (OSError, ValueError, TypeError, subprocess.SubprocessError) as exc:
            task.error = f"cannot launch {spec.argv[:1]!r} in {str(spec.sandbox)!r}: {exc}"
            task.started = None
            self._finish(task)
            return
        try:
            task.pidfd = os.pidfd_open(task.pid)
        except OSError as exc:  # out of descriptors: do not leave an unwatched process behind
            os.killpg(task.pid, signal.SIGKILL)
            reap(task.pid)
            task.error = f"cannot watch the started process: {exc}"
            self._finish(task)
            return
        self._selector.register(task.pidfd, selectors.EVENT_READ, (task, task.pid))
        if spec.walltime is not None:
            self._at(time.monotonic() + spec.walltime, task, "walltime")
        if spec.progress_timeout is not None:
            task.output_seen = time.monotonic()  # the output files were just created empty
            self._at(task.output_seen + _progress_period(spec.progress_timeout), task, "progress")

    def _start_process(self, spec: LaunchSpec) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
        out = os.open(f"{spec.sandbox}/stdout", flags, 0o600)
        try:
            err = os.open(f"{spec.sandbox}/stderr", flags, 0o600)
            try:
                return spawn(
                    spec.argv, spec.env, spec.sandbox, stdin=self._devnull, stdout=out, stderr=err
                )
            finally:
                os.close(err)
        finally:
            os.close(out)

    def _on_exit(self, task: _Task, pid: int, fd: int) -> None:
        self._selector.unregister(fd)
        if pid == task.pid and fd == task.pidfd:
            os.close(fd)
            task.pidfd = -1
            task.returncode = reap(pid)
            if task.tree is not None:
                task.tree.exited(pid)
            elif _group_alive(pid) or (task.returncode != 0 and TASK_MARKER_ENV in task.spec.env):
                # Stragglers in the process group (one syscall to check). After a failure, also
                # whatever carries the task's marker: a launcher that crashed leaves its proxies
                # and ranks in sessions of their own (hydra's proxies call setsid).
                self._begin_kill(task)
        else:
            task.watched.pop(pid, None)
            assert task.tree is not None
            task.tree.exited(pid)
        self._maybe_finish(task)

    def _begin_kill(self, task: _Task) -> None:
        if task.tree is not None or not task.pid:
            return
        root = task.pid
        value = task.spec.env.get(TASK_MARKER_ENV)
        marker = (TASK_MARKER_ENV, value) if value else None
        task.tree = TreeKill(root, session=root, marker=marker)
        self._watch(task, task.tree.terminate())
        self._at(time.monotonic() + self._kill_grace, task, "grace")
        self._maybe_finish(task)

    def _watch(self, task: _Task, pidfds: dict[int, int]) -> None:
        for pid, fd in pidfds.items():
            if pid == task.pid:
                continue  # the root has its own pidfd
            task.watched[pid] = fd
            self._selector.register(fd, selectors.EVENT_READ, (task, pid))

    def _at(self, when: float, task: _Task, kind: _Deadline) -> None:
        self._seq += 1
        heapq.heappush(self._deadlines, (when, self._seq, task, kind))

    def _fire_deadlines(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, task, kind = heapq.heappop(self._deadlines)
            if task.done:
                continue
            if kind == "walltime":
                if task.tree is None and task.returncode is None:
                    task.timed_out = True
                    task.cancelled = False
                    self._begin_kill(task)
            elif kind == "progress":
                self._check_progress(task, now)
            elif kind == "grace":
                self._kill_now(task)
            else:
                self._abandon(task)

    def _check_progress(self, task: _Task, now: float) -> None:
        """Kill the task as hung when its output has not changed for its progress_timeout."""
        timeout = task.spec.progress_timeout
        if timeout is None or task.tree is not None or task.returncode is not None:
            return  # already being killed, or its root exited: no more checks
        sizes = _output_sizes(str(task.spec.sandbox))
        if sizes != task.output_sizes:
            task.output_sizes = sizes
            task.output_seen = now
        elif now >= task.output_seen + timeout:  # the same sum as the deadline below
            task.hung = True
            task.cancelled = False
            self._begin_kill(task)
            return
        # The next look: one period on, but not past the moment silence would reach the limit.
        when = min(now + _progress_period(timeout), task.output_seen + timeout)
        self._at(when, task, "progress")

    def _kill_now(self, task: _Task) -> None:
        if task.tree is None or task.done:
            return
        self._watch(task, task.tree.force())
        self._at(time.monotonic() + _ABANDON_AFTER, task, "abandon")
        self._maybe_finish(task)

    def _abandon(self, task: _Task) -> None:
        """Processes outlived SIGKILL by ``_ABANDON_AFTER`` s (stuck in the kernel): report."""
        assert task.tree is not None
        stuck = sorted(task.tree.alive)
        task.error = f"processes {stuck} did not exit {_ABANDON_AFTER:.0f} s after SIGKILL"
        self._finish(task)

    def _maybe_finish(self, task: _Task) -> None:
        if not task.done and task.returncode is not None and not task.watched:
            self._finish(task)

    def _finish(self, task: _Task) -> None:
        task.done = True
        self._release(task)
        self._watchdog.ended(task.spec.task_id)
        spec = task.spec
        sandbox = str(spec.sandbox)
        out, err = f"{sandbox}/stdout", f"{sandbox}/stderr"
        done = Completion(
            task_id=spec.task_id,
            returncode=(
                TIMEOUT_RETURNCODE
                if task.timed_out
                else HUNG_RETURNCODE
                if task.hung
                else task.returncode
            ),
            stdout=tail(out, spec.snippet_lines, self._tail_bytes),
            stderr=tail(err, spec.snippet_lines, self._tail_bytes),
            stdout_path=out,
            stderr_path=err,
            sandbox=sandbox,
            argv=tuple(spec.argv),
            started=task.started,
            ended=time.time(),
            timed_out=task.timed_out,
            cancelled=task.cancelled,
            error=task.error,
            hung=task.hung,
        )
        del self._tasks[spec.task_id]
        if len(self._deadlines) > 64 and len(self._deadlines) > 4 * len(self._tasks):
            # Deadlines of finished tasks are skipped lazily; drop them before they pile up.
            self._deadlines = [d for d in self._deadlines if not d[2].done]
            heapq.heapify(self._deadlines)
        with self._lock:
            self._active.discard(spec.task_id)
        try:
            self._on_complete(done)
        except Exception:
            log.exception("on_complete raised for task %s", spec.task_id)

    def _release(self, task: _Task) -> None:
        """Close the task's descriptors; a root still alive is reaped later, off the books."""
        for fd in task.watched.values():
            self._selector.unregister(fd)
        task.watched.clear()
        if task.tree is not None:
            task.tree.close()
        if task.pidfd >= 0:
            self._selector.unregister(task.pidfd)
            os.close(task.pidfd)
            task.pidfd = -1
            if task.pid:
                threading.Thread(target=reap, args=(task.pid,), daemon=True).start()


@atexit.register
def _close_live_runners() -> None:
    for runner in list(_LIVE):
        runner.close(kill=True)


def _progress_period(timeout: float) -> float:
    """Seconds between two looks at a task's output sizes: a quarter of its progress_timeout,
    at most ``_PROGRESS_CHECK_MAX`` (one stat per file per look)."""
    return min(timeout / 4, _PROGRESS_CHECK_MAX)


def _output_sizes(sandbox: str) -> tuple[int, int]:
    """The sizes of the sandbox's stdout and stderr files (-1 for one that is gone)."""
    sizes = []
    for name in ("stdout", "stderr"):
        try:
            sizes.append(os.stat(f"{sandbox}/{name}").st_size)
        except OSError:
            sizes.append(-1)
    return sizes[0], sizes[1]


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in the process group: one syscall when the
    group is empty (the usual case), a /proc scan only when something is left in it."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return group_has_live_member(pgid)
