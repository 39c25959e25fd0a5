"""Kill a task's whole process tree: the launcher, its children, and whatever they spawned.

A task starts as the leader of its own session (``start_new_session=True``). Its tree is found
in one scan of the process table (``/proc/PID/stat``; members are then held as psutil
processes) as the union of:

1. the root and its descendants by parent pid (this includes children that called ``setsid``
   while their parent is alive);
2. every process still in the root's session, and their descendants (this includes
   double-forked children that were re-parented to init, and the survivors of a root that has
   already exited; the kernel never reuses a pid while it names a live session);
3. when a ``marker`` (an environment entry such as ``MPIENGINE_TASK_ID=<id>``) is given, every
   process of this user whose initial environment carries it, and their descendants (this finds
   a classic daemon that double-forked *and* called setsid: nothing else links it to the task
   short of a cgroup).

A kill then (a) stops the tree with SIGSTOP, rescanning until no new process appears, so a
forking loop cannot outrun it; (b) sends SIGTERM and SIGCONT, letting launchers (mpiexec, srun)
tear down their remote ranks; (c) after a grace period, rescans and sends SIGKILL to every
survivor. Each process is held by a pidfd from the moment it is found, so a signal never reaches
an unrelated process that reused a pid, and an event loop can wait for the exits without polling.
``TreeKill`` exposes these steps to such a loop; ``kill_tree`` runs them synchronously.
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import psutil

__all__ = ["KilledProcess", "TreeKill", "find_tree", "group_has_live_member", "kill_tree"]

#: Rescans while freezing or killing before giving up on a tree that keeps growing.
_MAX_ROUNDS = 20
#: How long ``kill_tree`` waits after SIGKILL before reporting (a process stuck in the kernel).
_KILL_WAIT = 5.0


@dataclass(frozen=True)
class KilledProcess:
    """A process that a tree kill signalled.

    Attributes:
        pid: its pid.
        name: its command name when it was found.
        signal: the strongest signal it was sent (SIGTERM, or SIGKILL if it outlived the grace).
    """

    pid: int
    name: str
    signal: int


def find_tree(
    root_pid: int, *, session: int | None = None, marker: tuple[str, str] | None = None
) -> list[psutil.Process]:
    """Return the processes of a task's tree (see the module docstring for what that is).

    Args:
        root_pid: the task's first process (it may already have exited).
        session: the task's session id (the root's pid when it was started in a new session).
        marker: an environment entry ``(name, value)`` carried by the task's processes.

    Returns:
        The live, non-zombie members, excluding this process and its ancestors.
    """
    table = _proc_table()
    needle = b"\0" + f"{marker[0]}={marker[1]}".encode() + b"\0" if marker else b""
    children: dict[int, list[int]] = defaultdict(list)
    seeds: list[int] = []
    for pid, (ppid, sid, zombie) in table.items():
        children[ppid].append(pid)
        if zombie:
            continue
        if pid == root_pid or sid == session or (needle and _has_env(pid, needle)):
            seeds.append(pid)
    exclude = _ancestors(table, os.getpid())
    found: set[int] = set()
    while seeds:
        pid = seeds.pop()
        if pid not in found and pid not in exclude:
            found.add(pid)
            seeds.extend(children.get(pid, ()))
    members = []
    for pid in sorted(found):
        if table[pid][2]:
            continue
        try:
            members.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    return members


def group_has_live_member(pgid: int) -> bool:
    """Whether a process that is not a zombie is left in process group ``pgid``.

    ``killpg(pgid, 0)`` also counts zombies. srun forks a helper that outlives it by a moment
    and is reparented to init, which reaps slowly in containers: without this check every
    srun task would pay a full tree kill (environment scan included) for a dead process. Stops
    at the first live member.
    """
    return any(pgrp == pgid and state != b"Z" for _, state, _, pgrp, _ in _proc_stats())


def _proc_table() -> dict[int, tuple[int, int, bool]]:
    """``{pid: (ppid, session, is_zombie)}`` of every process.

    psutil's process iteration costs about 50 us per process; a kill scans the table a few
    times, on a login node with thousands of processes, from the runner's only thread.
    """
    return {pid: (ppid, session, state == b"Z") for pid, state, ppid, _, session in _proc_stats()}


def _proc_stats() -> Iterator[tuple[int, bytes, int, int, int]]:
    """``(pid, state, ppid, pgrp, session)`` of every process, one read of /proc/PID/stat each."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:  # exited since listdir
            continue
        # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(b")") + 2 :].split(b" ", 4)
        yield int(entry), fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def _ancestors(table: dict[int, tuple[int, int, bool]], pid: int) -> set[int]:
    chain = set()
    while pid > 0 and pid not in chain:
        chain.add(pid)
        pid = table[pid][0] if pid in table else 0
    return chain


def _has_env(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return needle in b"\0" + fh.read() + b"\0"
    except OSError:  # another user's process, or gone
        return False


@dataclass
class _Member:
    proc: psutil.Process
    pidfd: int
    name: str
    signal: int = 0
    exited: bool = False


class TreeKill:
    """One kill of one process tree, in steps an event loop can drive.

    Call ``terminate()`` once, wait (for the returned pidfds, up to a grace period), then
    ``force()`` if ``alive`` is not empty, and wait again. Tell the object about each exit with
    ``exited(pid)``. ``close()`` releases the pidfds. Not thread-safe: use it from one thread.
    """

    def __init__(
        self, root_pid: int, *, session: int | None = None, marker: tuple[str, str] | None = None
    ) -> None:
        """Prepare to kill the tree of ``root_pid`` (see ``find_tree`` for the arguments)."""
        self.root_pid = root_pid
        self._session = session
        self._marker = marker
        self._members: dict[int, _Member] = {}
        self._handed_out: set[int] = set()

    @property
    def alive(self) -> set[int]:
        """Pids of members not yet known to have exited."""
        return {pid for pid, m in self._members.items() if not m.exited}

    def terminate(self) -> dict[int, int]:
        """Freeze the tree, then send SIGTERM and SIGCONT to every member.

        Returns:
            ``{pid: pidfd}`` of the members found; each pidfd becomes readable when its process
            exits. The pidfds stay owned by this object.
        """
        for _ in range(_MAX_ROUNDS):
            new = self._adopt()
            for member in new:
                self._send(member, signal.SIGSTOP, record=False)
            if not new:
                break
        for member in self._members.values():
            self._send(member, signal.SIGTERM)
        for member in self._members.values():
            self._send(member, signal.SIGCONT, record=False)
        return self._hand_out()

    def force(self) -> dict[int, int]:
        """Rescan and send SIGKILL to every member still alive, including late-comers.

        Returns:
            ``{pid: pidfd}`` of members found since the last call (to wait for as well).
        """
        for _ in range(_MAX_ROUNDS):
            new = self._adopt()
            for member in self._members.values():
                if not member.exited and member.signal != signal.SIGKILL:
                    self._send(member, signal.SIGKILL)
            if not new:
                break
        return self._hand_out()

    def exited(self, pid: int) -> None:
        """Record that member ``pid`` exited (its pidfd became readable) and close its pidfd."""
        member = self._members.get(pid)
        if member is not None and not member.exited:
            member.exited = True
            os.close(member.pidfd)

    def killed(self) -> list[KilledProcess]:
        """Every member that was sent SIGTERM or SIGKILL, by pid."""
        return [
            KilledProcess(pid, m.name, m.signal)
            for pid, m in sorted(self._members.items())
            if m.signal
        ]

    def close(self) -> None:
        """Close every pidfd still open (the processes are not signalled again)."""
        for pid in self.alive:
            self.exited(pid)

    def _adopt(self) -> list[_Member]:
        """Scan for members not yet known; hold each by a pidfd (checked against pid reuse)."""
        new: list[_Member] = []
        for proc in find_tree(self.root_pid, session=self._session, marker=self._marker):
            if proc.pid in self._members:
                continue
            try:
                pidfd = os.pidfd_open(proc.pid)
            except OSError:  # exited since the scan
                continue
            # The pid could have been reused between the scan and pidfd_open: psutil compares
            # the start time it saw with the current one.
            if not proc.is_running():
                os.close(pidfd)
                continue
            try:
                name = proc.name()
            except psutil.Error:
                name = "?"
            member = _Member(proc, pidfd, name)
            self._members[proc.pid] = member
            new.append(member)
        return new

    def _send(self, member: _Member, sig: int, *, record: bool = True) -> None:
        if member.exited:
            return
        try:
            signal.pidfd_send_signal(member.pidfd, sig)
        except ProcessLookupError:  # already exited; its pidfd will say so
            return
        except PermissionError:  # not ours to signal (a setuid program)
            return
        if record:
            member.signal = sig

    def _hand_out(self) -> dict[int, int]:
        out = {
            pid: m.pidfd
            for pid, m in self._members.items()
            if pid not in self._handed_out and not m.exited
        }
        self._handed_out.update(out)
        return out


def kill_tree(
    root_pid: int,
    *,
    grace: float = 2.0,
    session: int | None = None,
    marker: tuple[str, str] | None = None,
) -> list[KilledProcess]:
    """Kill a process tree synchronously: SIGTERM, wait up to ``grace`` s, SIGKILL survivors.

    Waits on pidfds (no polling). A root that is the caller's child is left as a zombie for the
    caller to reap (``Popen.wait``).

    Args:
        root_pid: the tree's root.
        grace: seconds between SIGTERM and SIGKILL.
        session: the tree's session id; defaults to ``root_pid`` when the root is alive and is
            a session leader.
        marker: an environment entry carried by the tree's processes (see ``find_tree``).

    Returns:
        The processes that were signalled, with the strongest signal each received.
    """
    if session is None:
        try:
            session = root_pid if os.getsid(root_pid) == root_pid else None
        except OSError:
            session = None
    tree = TreeKill(root_pid, session=session, marker=marker)
    try:
        with selectors.DefaultSelector() as sel:
            _wait(sel, tree, tree.terminate(), grace)
            if tree.alive:
                _wait(sel, tree, tree.force(), _KILL_WAIT)
        return tree.killed()
    finally:
        tree.close()


def _wait(
    sel: selectors.BaseSelector, tree: TreeKill, pidfds: dict[int, int], timeout: float
) -> None:
    """Register ``pidfds`` (adding to those already registered) and wait until every member
    exited or ``timeout`` passed."""
    for pid, fd in pidfds.items():
        sel.register(fd, selectors.EVENT_READ, pid)
    deadline = time.monotonic() + timeout
    while tree.alive:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for key, _ in sel.select(remaining):
            sel.unregister(key.fd)
            tree.exited(key.data)
