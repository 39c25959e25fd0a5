"""The block agent: runs on a batch job's lead node and starts the tasks the endpoint sends.

One thread owns the zmq DEALER socket (identity = block id) and a mailbox; the TaskRunner's
thread hands finished tasks to the mailbox. The loop:

- sends ``hello`` (nodes, cores, start time) until the endpoint answers ``welcome``, then a
  heartbeat every ``heartbeat_period`` seconds;
- starts each ``launch`` in its sandbox under its walltime, at most ``max_launches`` launcher
  processes at a time (more wait in FIFO order, so a burst of srun steps cannot flood
  slurmctld); a task's env is the job's own environment (SLURM_JOB_ID, worker_init's PATH, ...)
  overlaid with the task's variables, so ``srun`` starts a step inside this allocation;
- watches the job's nodes through Slurm every ``node_check_interval`` seconds (see ``health``)
  and reports a failed one (``nodes``); a task that ends badly is reported only after a fresh
  check, so the endpoint hears of the node that killed it before it hears of the task;
- after a walltime or cancel kill, cancels any srun step of the task still listed by Slurm
  before reporting it (see ``steps``), so its nodes are really free when the endpoint reuses
  them;
- exits when told to (``shutdown``), on SIGTERM (the job was cancelled or reached its walltime:
  the signal handler only sets the reason), or when nothing came from the endpoint for
  ``grace`` seconds. Exiting kills every task (the whole process tree, and so every srun
  step), reports what it can and says ``bye``: no allocation is left running for nobody.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import zmq

from mpiengine.agent.health import HealthThread, NodeFault, NodeWatcher
from mpiengine.agent.mailbox import Mailbox
from mpiengine.agent.nodes import discover_nodes, local_cpus
from mpiengine.agent.protocol import (
    ProtocolError,
    completion_to_dict,
    decode,
    encode,
    launch_from_dict,
)
from mpiengine.agent.steps import SrunSteps
from mpiengine.environment import clean_base_env
from mpiengine.runner.launch import Completion, LaunchSpec
from mpiengine.runner.process import TaskRunner

__all__ = ["Agent", "AgentOptions"]

log = logging.getLogger(__name__)

#: Return codes of a launcher killed by SIGHUP, SIGKILL or SIGTERM (directly, or as a shell's
#: 128 + n), which is how a job's end reaches its steps.
_KILLED_BY_JOB_END = frozenset({-1, -9, -15, 129, 137, 143})
#: Seconds such a result is held back, waiting for the agent's own stop signal.
_HOLD_SIGNALLED = 1.0


@dataclass(frozen=True)
class AgentOptions:
    """How an agent connects and behaves.

    Attributes:
        connect: the endpoint's zmq address, ``tcp://HOST:PORT``.
        block_id: the endpoint's id of this block (the zmq identity).
        token: the block's secret, sent with every message.
        heartbeat_period: seconds between heartbeats.
        grace: seconds without any message from the endpoint before the agent ends its tasks
            and exits.
        max_launches: launcher processes run at once; more launches wait.
        kill_grace: seconds between SIGTERM and SIGKILL when a task is killed.
        nodes: node discovery: ``auto``, ``slurm``, ``pbs`` or ``local``.
        node_check_interval: seconds between checks of the block's nodes (Slurm only).
    """

    connect: str
    block_id: str
    token: str
    heartbeat_period: float = 2.0
    grace: float = 30.0
    max_launches: int = 64
    kill_grace: float = 2.0
    nodes: str = "auto"
    node_check_interval: float = 5.0


def _not_run(spec: LaunchSpec, error: str = "") -> Completion:
    """The Completion of a task that never started (cancelled while waiting, or refused)."""
    return Completion(
        task_id=spec.task_id,
        returncode=None,
        stdout="",
        stderr="",
        stdout_path="",
        stderr_path="",
        sandbox=str(spec.sandbox),
        argv=spec.argv,
        started=None,
        ended=time.time(),
        timed_out=False,
        cancelled=not error,
        error=error,
    )


class Agent:
    """One block's agent. Build it, then call :meth:`run` (it returns when the agent exits).

    Args:
        opts: connection and limits.
        env: the job's environment (default: this process's).
        nodes: the block's nodes (default: discovered from ``env``).
        steps: srun step naming and cleanup (default: for ``SLURM_JOB_ID``).
        watcher: checks the block's nodes (default: through Slurm, for ``SLURM_JOB_ID``).
    """

    def __init__(
        self,
        opts: AgentOptions,
        *,
        env: Mapping[str, str] | None = None,
        nodes: tuple[str, ...] | None = None,
        steps: SrunSteps | None = None,
        watcher: NodeWatcher | None = None,
    ) -> None:
        self.opts = opts
        self._env = dict(os.environ if env is None else env)
        self.nodes = nodes if nodes is not None else discover_nodes(self._env, opts.nodes)
        self._job_id = self._env.get("SLURM_JOB_ID") or self._env.get("PBS_JOBID") or ""
        self._steps = steps or SrunSteps(self._env.get("SLURM_JOB_ID"))
        self._watcher = watcher or NodeWatcher(self._env.get("SLURM_JOB_ID"), self.nodes)
        self._health = HealthThread(self._watcher, opts.node_check_interval, self._post_faults)
        self._base_env = clean_base_env(self._env)
        self._stop_reason: str | None = None
        self._waiting: deque[LaunchSpec] = deque()
        self._specs: dict[str, LaunchSpec] = {}  # started, not yet reported
        self._cleanups: list[threading.Thread] = []
        self._welcomed = False

    def stop(self, reason: str) -> None:
        """Ask the loop to end every task and exit (safe from a signal handler)."""
        if self._stop_reason is None:
            self._stop_reason = reason

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> str:
        """Connect, serve the endpoint, and clean up.

        Returns:
            why the agent stopped.
        """
        ctx: zmq.Context[Any] = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.opts.block_id.encode())
        sock.setsockopt(zmq.LINGER, 2000)  # flush the last results and the bye
        sock.connect(self.opts.connect)
        self._sock = sock
        self._mailbox = Mailbox(ctx)
        self._runner = TaskRunner(self._on_complete, kill_grace=self.opts.kill_grace)
        started = float(self._env.get("MPIENGINE_BLOCK_START") or time.time())
        self._hello = {
            "nodes": list(self.nodes),
            "cpus": local_cpus(self._env),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "job_id": self._job_id,
            "started": started,
        }
        log.info("agent %s: nodes %s, connecting to %s", self.opts.block_id, self.nodes,
                 self.opts.connect)  # fmt: skip
        try:
            self._serve()
        finally:
            reason = self._stop_reason or "agent loop failed"
            self._shutdown(reason)
            sock.close()
            ctx.term()
        return reason

    def _send(self, kind: str, **fields: Any) -> None:
        self._sock.send(encode(kind, token=self.opts.token, **fields))

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._mailbox.socket, zmq.POLLIN)
        period = self.opts.heartbeat_period
        last_heard = time.monotonic()
        next_beat = last_heard
        while self._stop_reason is None:
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + period
                if self._welcomed:
                    self._send("hb", running=len(self._specs), queued=len(self._waiting))
                else:
                    self._send("hello", **self._hello)
            # Wake at least twice a second so a signal's stop request is seen promptly.
            timeout = max(0.0, min(next_beat - now, 0.5))
            events = dict(poller.poll(int(timeout * 1000)))
            if self._sock in events:
                last_heard = time.monotonic()
                self._read_endpoint()
            # Once stopping, results wait until the bye is out: the endpoint must lose the block
            # (retry or fail its tasks) before it sees tasks that the job's end killed.
            if self._mailbox.socket in events and self._stop_reason is None:
                for data in self._mailbox.receive_all():
                    self._forward(data)
            silent = time.monotonic() - last_heard
            if silent > self.opts.grace:
                self.stop(f"no word from the endpoint for {silent:.0f} s")

    def _read_endpoint(self) -> None:
        while True:
            try:
                data = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._handle(decode(data))
            except ProtocolError as exc:
                log.error("bad message from the endpoint: %s", exc)

    def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg["t"]
        if kind == "welcome":
            if not self._welcomed:  # the endpoint knows the block now: node reports count
                self._health.start()
            self._welcomed = True
        elif kind == "launch":
            self._launch(launch_from_dict(msg["spec"]))
        elif kind == "kill":
            self._kill(str(msg["task_id"]))
        elif kind == "shutdown":
            self.stop("the endpoint released the block")
        elif kind != "ping":
            log.warning("unknown message type %r", kind)

    # -- tasks -------------------------------------------------------------------------------
    def _launch(self, spec: LaunchSpec) -> None:
        # The job's environment (SLURM_JOB_ID: srun makes a step of this job) under the task's.
        spec = dataclasses.replace(spec, env={**self._base_env, **spec.env})
        spec = self._steps.tag(spec)
        if spec.task_id in self._specs or any(w.task_id == spec.task_id for w in self._waiting):
            self._report(_not_run(spec, f"task {spec.task_id} is already running on this block"))
            return
        self._waiting.append(spec)
        self._start_waiting()

    def _start_waiting(self) -> None:
        while self._waiting and len(self._specs) < self.opts.max_launches:
            spec = self._waiting.popleft()
            self._specs[spec.task_id] = spec
            try:
                self._runner.start(spec)
            except (ValueError, RuntimeError) as exc:
                del self._specs[spec.task_id]
                self._report(_not_run(spec, str(exc)))

    def _kill(self, task_id: str) -> None:
        for spec in self._waiting:
            if spec.task_id == task_id:
                self._waiting.remove(spec)
                self._report(_not_run(spec))
                return
        self._runner.kill(task_id)

    def _on_complete(self, done: Completion) -> None:
        """Runner thread: report now, or after cancelling the task's leftover srun steps."""
        self._cleanups = [t for t in self._cleanups if t.is_alive()]
        if self._stop_reason is not None:
            self._post(done)  # the job ends with this agent, and every step with it
            return
        if (done.timed_out or done.hung or done.cancelled) and self._steps.job_id:
            thread = threading.Thread(target=self._clean_then_post, args=(done,), daemon=True)
        elif done.returncode in _KILLED_BY_JOB_END:
            # When Slurm ends the job it signals every process of it; srun may die of it just
            # before this agent's own SIGTERM arrives. Hold such a result briefly, so that a
            # stop it announces is reported (bye: block lost, task retried) before it.
            thread = threading.Timer(_HOLD_SIGNALLED, self._post, args=(done,))
            thread.daemon = True
        elif self._watcher.enabled and (done.returncode != 0 or "srun: error" in done.stderr):
            # Maybe a node died under it: a fresh node check goes out before the result.
            thread = threading.Thread(
                target=self._check_then_post, args=(done, time.monotonic()), daemon=True
            )
        else:
            self._post(done)
            return
        self._cleanups.append(thread)
        thread.start()

    def _post(self, done: Completion) -> None:
        self._mailbox.post(encode("done", c=completion_to_dict(done)))

    def _post_faults(self, faults: list[NodeFault]) -> None:
        self._mailbox.post(encode("nodes", failed=[f.as_dict() for f in faults]))

    def _check_then_post(self, done: Completion, ended: float) -> None:
        try:
            faults = self._watcher.faults_since(ended)
            if faults:  # all known ones: the endpoint ignores repeats
                self._post_faults(faults)
        finally:
            self._post(done)

    def _clean_then_post(self, done: Completion) -> None:
        try:
            self._steps.cancel(done.task_id)
        finally:
            self._mailbox.post(encode("done", c=completion_to_dict(done)))

    def _forward(self, data: bytes) -> None:
        """Loop thread: a finished task frees a launch slot; its result goes to the endpoint,
        as does a node report."""
        msg = decode(data)
        if msg["t"] == "nodes":
            self._send("nodes", failed=msg["failed"])
            return
        self._specs.pop(msg["c"]["task_id"], None)
        self._send("done", c=msg["c"])
        self._start_waiting()

    def _report(self, done: Completion) -> None:
        self._send("done", c=completion_to_dict(done))

    def _shutdown(self, reason: str) -> None:
        log.warning("agent %s stopping: %s", self.opts.block_id, reason)
        self._send("bye", reason=reason)  # first: the tasks killed below are the block's loss
        self._health.stop()
        waiting, self._waiting = list(self._waiting), deque()
        for spec in waiting:
            self._report(_not_run(spec))
        self._runner.close(kill=True)  # kills every tree; completions go to the mailbox
        for thread in self._cleanups:
            thread.join(timeout=15)
        for data in self._mailbox.receive_all():
            msg = decode(data)
            if msg["t"] == "done":
                self._send("done", c=msg["c"])
        self._mailbox.close()
