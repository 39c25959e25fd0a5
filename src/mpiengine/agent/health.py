"""Watch a block's nodes through the batch system and tell which ones failed.

Slurm only (elsewhere the watcher is off; a launcher's own report still counts, see
``mpiengine.nodefail``). Each check asks two things:

- ``squeue -h -j JOB -o %N``: the job's node list. A block is submitted with ``--no-kill``, so
  when one of its nodes fails Slurm keeps the job but takes the node out of it (slurmctld logs
  ``Removing failed node X from JobId``) and kills the steps on it. With ``ReturnToService`` the
  node may be idle again within milliseconds (measured on the CI cluster: 5 ms), so its state
  alone would miss the failure; a node gone from the job's list is failed for this block.
- ``sinfo -h -N -n NODES -o '%N|%T|%E'``: each node's state. ``down``, ``drain`` (``drained``,
  ``draining``), ``fail`` and ``failing`` count as failed: a drained node stays in the job, but
  an administrator drains a node because something is wrong with it.

A command that fails or times out says nothing: no node is declared failed on an error (a busy
slurmctld must not cost a block its nodes). Each node is reported once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mpiengine.agent.slurmcmd import Run, run_command

__all__ = ["FAILED_STATES", "HealthThread", "NodeFault", "NodeWatcher", "failed_state"]

log = logging.getLogger(__name__)

#: Runs an argv with a timeout; returns (returncode, stdout). The seam for tests.
#: Slurm node states (``sinfo %T``, lower case, flags stripped) that mean "do not use".
FAILED_STATES = frozenset({"down", "drain", "drained", "draining", "fail", "failing"})

_TIMEOUT = 10.0


def failed_state(state: str) -> bool:
    """Whether a ``sinfo %T`` state (``down*``, ``idle+drain``, ``draining``...) is a failure.

    A trailing flag (``*`` not responding, ``~`` powered off, ``#``, ``!``, ``%``, ``$``, ``@``,
    ``^``, ``-``) is ignored; a compound state counts when any part does.
    """
    parts = state.lower().rstrip("*~#!%$@^-").split("+")
    return any(part in FAILED_STATES for part in parts)


@dataclass(frozen=True)
class NodeFault:
    """A node of the block that must not be used any more.

    Attributes:
        node: its name.
        state: the batch system's state (``down``, ``drained``, ``removed from job``...).
        reason: the batch system's reason, when it gives one.
    """

    node: str
    state: str
    reason: str = ""

    def describe(self) -> str:
        """``state`` or ``state: reason``."""
        return f"{self.state}: {self.reason}" if self.reason else self.state

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types (the agent's ``nodes`` message)."""
        return {"node": self.node, "state": self.state, "reason": self.reason}


class NodeWatcher:
    """Checks one Slurm job's nodes (thread-safe; checks are serialised).

    Args:
        job_id: the block's Slurm job id (None or "" outside Slurm: the watcher is off).
        nodes: the block's nodes.
        run: runs squeue/sinfo.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        job_id: str | None,
        nodes: Sequence[str],
        run: Run = run_command,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_id = job_id or ""
        self.nodes = tuple(nodes)
        self._run = run
        self._clock = clock
        self._lock = threading.Lock()
        self._faults: dict[str, NodeFault] = {}
        self._job_list = ""  # the last node list squeue gave, as Slurm compresses it
        self._in_job = set(self.nodes)  # that list, expanded
        self._last_start = -math.inf

    @property
    def enabled(self) -> bool:
        """There is a Slurm job to watch."""
        return bool(self.job_id and self.nodes)

    def check(self) -> list[NodeFault]:
        """Ask Slurm now.

        Returns:
            the nodes found failed that no earlier check found, in block order.
        """
        with self._lock:
            return self._check()

    def faults_since(self, when: float) -> list[NodeFault]:
        """Every fault known once a check that started at or after ``when`` (the watcher's
        clock) has run: runs one unless another caller's already did.

        A task that died at ``when`` died of a failure that such a check sees.
        """
        with self._lock:
            if self._last_start < when:
                self._check()
            return list(self._faults.values())

    def _check(self) -> list[NodeFault]:
        if not self.enabled:
            return []
        self._last_start = self._clock()
        found = {**self._removed(), **self._bad_states()}
        new = [found[n] for n in self.nodes if n in found and n not in self._faults]
        for fault in new:
            self._faults[fault.node] = fault
            log.warning("node %s failed: %s", fault.node, fault.describe())
        return new

    def _removed(self) -> dict[str, NodeFault]:
        """The block's nodes that Slurm no longer lists in the job."""
        code, out = self._run(["squeue", "-h", "-j", self.job_id, "-o", "%N"], _TIMEOUT)
        listed = out.strip()
        if code != 0 or not listed:
            return {}  # an error, or the job is gone (its agent hears of that itself)
        if listed != self._job_list:
            code, out = self._run(["scontrol", "show", "hostnames", listed], _TIMEOUT)
            names = out.split()
            if code != 0 or not names:
                return {}
            self._job_list = listed
            self._in_job = set(names)
        return {
            n: NodeFault(n, "removed from job", f"Slurm took it out of job {self.job_id}")
            for n in self.nodes
            if n not in self._in_job
        }

    def _bad_states(self) -> dict[str, NodeFault]:
        code, out = self._run(
            ["sinfo", "-h", "-N", "-n", ",".join(self.nodes), "-o", "%N|%T|%E"], _TIMEOUT
        )
        if code != 0:
            return {}
        found: dict[str, NodeFault] = {}
        for line in out.splitlines():
            fields = line.split("|", 2)
            if len(fields) < 2 or fields[0] not in self.nodes or not failed_state(fields[1]):
                continue
            reason = fields[2].strip() if len(fields) > 2 else ""
            found[fields[0]] = NodeFault(fields[0], fields[1], "" if reason == "none" else reason)
        return found


class HealthThread:
    """Runs :meth:`NodeWatcher.check` every ``interval`` seconds on its own thread and hands
    new faults to ``report`` (called on that thread).

    Args:
        watcher: what to check.
        interval: seconds between checks.
        report: receives each check's new faults (only when there are some).
    """

    def __init__(
        self, watcher: NodeWatcher, interval: float, report: Callable[[list[NodeFault]], None]
    ) -> None:
        self._watcher = watcher
        self._interval = interval
        self._report = report
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mpiengine-health", daemon=True)

    def start(self) -> None:
        """Start checking (nothing happens when the watcher is off)."""
        if self._watcher.enabled:
            self._thread.start()

    def stop(self, wait: float = 1.0) -> None:
        """Stop; wait up to ``wait`` seconds for a check under way (a stuck squeue must not
        hold up an agent that is killing its tasks: the thread is a daemon, and what it
        reports once the agent's mailbox is closed is dropped)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=wait)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                faults = self._watcher.check()
                if faults:
                    self._report(faults)
            except Exception:  # a watcher bug must not end the agent
                log.exception("node check failed")
