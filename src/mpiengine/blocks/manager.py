"""The block manager: batch jobs in, blocks out, between min_blocks and max_blocks.

Three threads meet here, each doing only quick work under one lock:

- the engine thread calls :meth:`BlockManager.on_tick`: it decides (``scaling``) how many
  blocks to request and which idle ones to release, declares lost the blocks whose agent went
  silent, and queues provider calls;
- one worker thread runs those provider calls (sbatch, squeue, scancel: slow, and they may
  fail) and posts their outcome back: a failed submit or status is recorded in the endpoint's
  status and retried with exponential backoff; queued tasks are never touched;
- the agent server thread calls :meth:`on_agent`: a ``hello`` turns a pending job into a
  RemoteBlock offered to the engine (``add_block``), ``done`` reports a task (``report``),
  ``nodes`` reports failed nodes (``fail_node``), ``bye`` loses the block (``lose_block``).

The manager sees the engine only through :class:`~mpiengine.engineport.EnginePort`; it is the
batch endpoint's block source (``attach``, ``on_tick``, ``close``: see mpiengine.endpoint).

A block's life: SUBMITTING (sbatch queued) -> PENDING (job id known) -> CONNECTED (its agent
said hello) -> RELEASING (idle, or the endpoint stops) -> GONE. A job that ends (scancel, lead
node failure, walltime) is seen either by its agent's ``bye``, by missed heartbeats, or by the
status poll, whichever comes first; the engine then retries or fails its running tasks
(``BlockLost``) and the demand brings a replacement.

A block survives the failure of its other nodes (it is submitted so: ``provider``): the engine
excludes each failed node, and once fewer than half its nodes are usable the block goes
CONNECTED -> RETIRING: nothing new starts on it, a replacement is requested, and it is released
when its running tasks have ended.

Everything of a block is kept under ``workdir/blocks/<block_id>/``: its token, the submit
script and the job's stdout/stderr (written by the Parsl provider) and the agent's log.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mpiengine.agent.protocol import ProtocolError, completion_from_dict
from mpiengine.blocks.blockstate import BlockRecord, BlockState
from mpiengine.blocks.jobcommand import job_command
from mpiengine.blocks.provider import BlockProvider, JobView, ProviderFailure
from mpiengine.blocks.remote import AgentServer, RemoteBlock
from mpiengine.blocks.scaling import (
    backoff_delay,
    blocks_to_add,
    blocks_to_release,
    needs_replacement,
)
from mpiengine.config import BlockConfig
from mpiengine.engineport import EnginePort
from mpiengine.launchers import LauncherSpec
from mpiengine.scheduler import BlockInfo

__all__ = ["BlockManager"]

log = logging.getLogger(__name__)


class BlockManager:
    """Obtains, tracks and releases an endpoint's blocks.

    Args:
        cfg: the endpoint config.
        provider: where blocks come from (a ParslProvider in production).
        launcher: the launcher MPI tasks run under on these blocks.
        workdir: the endpoint's directory (block files go to ``workdir/blocks``).
        clock: the engine's clock (monotonic seconds).
    """

    def __init__(
        self,
        cfg: BlockConfig,
        provider: BlockProvider,
        launcher: LauncherSpec,
        workdir: Path,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self._provider = provider
        self._launcher = launcher
        self._blocks_dir = Path(workdir) / "blocks"
        self._blocks_dir.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._blocks: dict[str, BlockRecord] = {}
        self._seq = 0
        self._engine: EnginePort | None = None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="mpiengine-provider")
        self._submit_failures = 0
        self._next_submit = 0.0
        self._status_failures = 0
        self._next_poll = 0.0
        self._poll_busy = False
        self._owed = 0  # replacements for retired blocks, not yet requested
        self._init_done = False
        self._closed = False
        self.last_error = ""
        self.server = AgentServer(
            self.on_agent,
            address=cfg.address,
            port=cfg.port,
            heartbeat_period=cfg.heartbeat_period,
        )

    def attach(self, engine: EnginePort) -> None:
        """The engine that receives blocks and reports (before it starts ticking)."""
        self._engine = engine

    def blocks(self) -> list[BlockRecord]:
        """A snapshot of every block not yet gone, with its failed nodes."""
        excluded = self._engine.excluded_nodes() if self._engine is not None else {}
        with self._lock:
            out = [b.copy() for b in self._blocks.values() if b.state is not BlockState.GONE]
        for b in out:
            b.excluded = excluded.get(b.block_id, {})
        return out

    # -- engine thread -----------------------------------------------------------------------
    def on_tick(self, now: float, engine: EnginePort) -> None:
        """Scale, release and check heartbeats (the engine's ``on_tick`` hook)."""
        if self._closed:
            return
        with self._lock:
            self._check_liveness(now, engine)
            self._retire_degraded(engine)
            self._scale_in(now, engine)
            self._scale_out(now, engine)
            poll = not self._poll_busy and now >= self._next_poll
            if poll:
                self._poll_busy = True
                self._next_poll = now + self.cfg.poll_interval
        if poll:
            self._spawn(self._poll)

    def _scale_out(self, now: float, engine: EnginePort) -> None:
        if now < self._next_submit:
            return
        states = [b.state for b in self._blocks.values()]
        pending = sum(s in (BlockState.SUBMITTING, BlockState.PENDING) for s in states)
        connected = states.count(BlockState.CONNECTED)
        count = blocks_to_add(
            engine.demand(now),
            connected=connected,
            pending=pending,
            nodes_per_block=self.cfg.nodes_per_block,
            min_blocks=self.cfg.min_blocks,
            max_blocks=self.cfg.max_blocks,
        )
        if not self._init_done:
            self._init_done = True
            count = max(count, min(self.cfg.init_blocks, self.cfg.max_blocks - pending - connected))
        # A retiring block does not count against max_blocks: it only finishes its tasks.
        count = max(count, min(self._owed, self.cfg.max_blocks - pending - connected))
        self._owed = max(0, self._owed - count)
        for _ in range(count):
            self._request(now)

    def _retire_degraded(self, engine: EnginePort) -> None:
        """Retire the blocks of which fewer than half the nodes are usable."""
        excluded = engine.excluded_nodes()
        for b in self._blocks.values():
            failed = len(excluded.get(b.block_id, ()))
            if b.state is BlockState.CONNECTED and needs_replacement(len(b.nodes), failed):
                log.warning("block %s (job %s): %d of %d nodes failed; replacing it once its "
                            "tasks end", b.block_id, b.job_id, failed, len(b.nodes))  # fmt: skip
                b.state = BlockState.RETIRING
                self._owed += 1
                engine.retire_block(b.block_id)

    def _scale_in(self, now: float, engine: EnginePort) -> None:
        idle = set(engine.idle_blocks())
        for b in self._blocks.values():
            if b.state is BlockState.RETIRING and b.block_id in idle:
                log.info("releasing retired block %s: its tasks have ended", b.block_id)
                engine.lose_block(b.block_id, "released: replaced (too many nodes failed)")
        connected = [b for b in self._blocks.values() if b.state is BlockState.CONNECTED]
        for b in connected:
            if b.block_id not in idle:
                b.idle_since = None
            elif b.idle_since is None:
                b.idle_since = now
        release = blocks_to_release(
            now,
            {b.block_id: b.idle_since for b in connected if b.idle_since is not None},
            {b.block_id: b.end_time for b in connected},
            connected=len(connected),
            waiting_tasks=engine.waiting,
            min_blocks=self.cfg.min_blocks,
            max_idle_time=self.cfg.max_idle_time,
            margin=1.0,
        )
        for block_id in release:
            log.info("releasing idle block %s", block_id)
            engine.lose_block(block_id, "released: idle")  # no task runs on it: none is lost

    def _check_liveness(self, now: float, engine: EnginePort) -> None:
        for b in list(self._blocks.values()):
            if b.state.attached and now - b.last_seen > self.cfg.heartbeat_threshold:
                self._lost(b, f"no heartbeat from its agent for {now - b.last_seen:.0f} s")
                self._cancel_later(b)
            elif (
                b.state is BlockState.PENDING
                and b.running_since is not None
                and now - b.running_since > self.cfg.agent_connect_timeout
            ):
                self._failed_start(b, "its agent did not connect within agent_connect_timeout")
                self._cancel_later(b)

    # -- requesting and releasing (decided under the lock, run on the worker) -----------------
    def _request(self, now: float) -> None:
        self._seq += 1
        block_id = f"blk{self._seq:04d}-{secrets.token_hex(3)}"
        record = BlockRecord(
            block_id=block_id,
            token=secrets.token_hex(32),
            directory=self._blocks_dir / block_id,
            created=now,
        )
        self._blocks[block_id] = record
        self.server.allow(block_id, record.token)
        self._spawn(self._submit, record)

    def _submit(self, record: BlockRecord) -> None:
        """Worker thread: write the token, submit the job."""
        try:
            record.directory.mkdir(parents=True, exist_ok=True)
            token_file = record.directory / "token"
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(record.token)
            command = job_command(self.cfg, self.server.address, record.block_id, record.directory)
            job_id = self._provider.submit(
                command, record.directory, f"mpiengine.{record.block_id}"
            )
        except Exception as exc:
            failure = (
                exc if isinstance(exc, ProviderFailure) else ProviderFailure("submit", str(exc))
            )
            with self._lock:
                record.state = BlockState.GONE
                self.server.forget(record.block_id)
                self._submit_failures += 1
                delay = backoff_delay(self._submit_failures, self.cfg.max_backoff)
                self._next_submit = self._clock() + delay
            self._error(f"{failure}; retrying in {delay:.0f} s")
            return
        log.info("block %s submitted as job %s", record.block_id, job_id)
        cancel = False
        with self._lock:
            record.job_id = job_id
            if record.state is BlockState.SUBMITTING:
                record.state = BlockState.PENDING
            cancel = self._closed or record.state is BlockState.RELEASING
        if cancel:
            self._cancel_now([record])

    def _cancel_later(self, record: BlockRecord) -> None:
        record.state = BlockState.RELEASING if record.job_id else BlockState.GONE
        if record.job_id:
            self._spawn(self._cancel_now, [record])

    def _cancel_now(self, records: list[BlockRecord]) -> None:
        """Worker (or closing) thread: scancel the jobs; they are gone either way."""
        ids = [r.job_id for r in records if r.job_id]
        try:
            self._provider.cancel(ids)
        except Exception as exc:
            self._error(f"cancelling jobs {ids} failed: {exc}")
        with self._lock:
            for r in records:
                r.state = BlockState.GONE
                self.server.forget(r.block_id)

    def release(self, block_id: str) -> None:
        """The engine closed a block (idle, lost or shutting down): cancel its job."""
        with self._lock:
            record = self._blocks.get(block_id)
            if record is None or record.state in (BlockState.GONE, BlockState.RELEASING):
                return
            self._cancel_later(record)

    # -- status polling (worker thread) ------------------------------------------------------
    def _poll(self) -> None:
        with self._lock:
            watched = [b for b in self._blocks.values() if b.job_id and b.state.has_job]
        try:
            views = self._provider.status([b.job_id for b in watched])
        except Exception as exc:
            with self._lock:
                self._poll_busy = False
                self._status_failures += 1
                delay = backoff_delay(self._status_failures, self.cfg.max_backoff)
                self._next_poll = self._clock() + max(delay, self.cfg.poll_interval)
            self._error(f"{exc}; retrying in {max(delay, self.cfg.poll_interval):.0f} s")
            return
        with self._lock:
            self._poll_busy = False
            self._status_failures = 0
            for b in watched:
                view = views.get(b.job_id)
                if view is not None:
                    self._observe(b, view)
            self._blocks = {k: b for k, b in self._blocks.items() if b.state is not BlockState.GONE}

    def _observe(self, b: BlockRecord, view: JobView) -> None:
        b.job_state = view.state
        if view.state == "RUNNING" and b.running_since is None:
            b.running_since = self._clock()
        if not view.terminal:
            return
        note = f": {view.message}" if view.message else ""
        if b.state.attached:
            self._lost(b, f"job {b.job_id} ended ({view.state}{note})")
        elif b.state is BlockState.PENDING:
            where = view.stderr_path or b.directory
            reason = f"job {b.job_id} ended ({view.state}{note}) before its agent connected"
            self._failed_start(b, f"{reason}; see {where}")
        b.state = BlockState.GONE
        self.server.forget(b.block_id)

    # -- helpers (under the lock) ------------------------------------------------------------
    def _lost(self, b: BlockRecord, reason: str) -> None:
        log.warning("block %s (job %s) lost: %s", b.block_id, b.job_id, reason)
        b.state = BlockState.GONE
        if self._engine is not None:
            self._engine.lose_block(b.block_id, reason)

    def _failed_start(self, b: BlockRecord, reason: str) -> None:
        b.state = BlockState.GONE
        self._submit_failures += 1
        delay = backoff_delay(self._submit_failures, self.cfg.max_backoff)
        self._next_submit = self._clock() + delay
        self._error(f"block {b.block_id}: {reason}; retrying in {delay:.0f} s")

    def _spawn(self, fn: Callable[..., None], *args: Any) -> None:
        """Run a provider call on the worker (dropped once closing: close() cancels all)."""
        try:
            self._worker.submit(fn, *args)
        except RuntimeError:
            log.debug("worker closed; %s skipped", getattr(fn, "__name__", fn))

    def _error(self, message: str) -> None:
        log.error("%s", message)
        self.last_error = message
        if self._engine is not None:
            self._engine.note_error(message)

    # -- agent messages (server thread) ------------------------------------------------------
    def on_agent(self, block_id: str, msg: dict[str, Any]) -> None:
        """Handle an authenticated message from a block's agent."""
        kind = msg["t"]
        engine = self._engine
        if kind == "done":
            try:
                done = completion_from_dict(msg["c"])
            except (ProtocolError, KeyError) as exc:
                log.error("block %s sent a bad completion: %s", block_id, exc)
                return
            if engine is not None:
                engine.report(block_id, done)
        handle: RemoteBlock | None = None
        now = self._clock()
        with self._lock:
            b = self._blocks.get(block_id)
            if b is None or b.state is BlockState.GONE:
                return
            b.last_seen = now
            if kind == "hello" and b.state in (BlockState.SUBMITTING, BlockState.PENDING):
                handle = self._connect(b, msg, now)
            elif kind == "nodes" and b.state.attached and engine is not None:
                self._report_faults(engine, b, msg)
            elif kind == "bye":
                reason = str(msg.get("reason", ""))
                if b.state.attached:
                    self._lost(b, f"its agent exited: {reason}")
                    self._cancel_later(b)
        if kind == "hello":
            self.server.send(block_id, "welcome")
        if handle is not None and engine is not None:
            engine.add_block(handle)

    @staticmethod
    def _report_faults(engine: EnginePort, b: BlockRecord, msg: dict[str, Any]) -> None:
        """Pass an agent's failed nodes to the engine (it ignores repeats and strangers)."""
        try:
            faults = [(str(f["node"]), str(f["state"]), str(f.get("reason") or "")) for f in
                      msg["failed"]]  # fmt: skip
        except (KeyError, TypeError) as exc:
            log.error("block %s sent a bad node report: %s", b.block_id, exc)
            return
        for node, state, reason in faults:
            engine.fail_node(b.block_id, node, f"{state}: {reason}" if reason else state)

    def _connect(self, b: BlockRecord, hello: dict[str, Any], now: float) -> RemoteBlock | None:
        try:
            nodes = tuple(str(n) for n in hello["nodes"])
            started = float(hello.get("started") or time.time())
        except (KeyError, TypeError, ValueError) as exc:
            log.error("block %s sent a bad hello: %s", b.block_id, exc)
            return None
        if self.cfg.provider == "local":
            end_time = None  # the local provider enforces no walltime
        else:
            remaining = self.cfg.walltime_seconds - (time.time() - started)
            end_time = now + remaining - self.cfg.walltime_margin
        if len(nodes) != self.cfg.nodes_per_block:
            log.warning("block %s has %d nodes, the config says %d", b.block_id, len(nodes),
                        self.cfg.nodes_per_block)  # fmt: skip
        cpus = hello.get("cpus")
        if isinstance(cpus, int) and cpus < self.cfg.cores:
            log.warning("block %s: the batch system grants %d cores per node, cores_per_node "
                        "is %d", b.block_id, cpus, self.cfg.cores)  # fmt: skip
        b.job_id = b.job_id or str(hello.get("job_id") or "")
        b.nodes, b.end_time, b.state = nodes, end_time, BlockState.CONNECTED
        self._submit_failures = 0
        self._next_submit = 0.0
        info = BlockInfo(
            block_id=b.block_id,
            nodes=nodes,
            cores_per_node=self.cfg.cores,
            gpus_per_node=self.cfg.gpu_slots,
            end_time=end_time,
        )
        log.info("block %s (job %s) connected: nodes %s", b.block_id, b.job_id, nodes)
        return RemoteBlock(
            info,
            self._launcher,
            lambda: b.job_id,
            self.server,
            self.release,
            binding=self.cfg.binding,
        )

    # -- shutdown ----------------------------------------------------------------------------
    def close(self) -> None:
        """Tell every agent to stop and cancel every job this endpoint started (blocks)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._worker.shutdown(wait=True)  # a submit in flight finishes, then cancels its job
        with self._lock:
            live = [b for b in self._blocks.values() if b.state is not BlockState.GONE]
        for b in live:
            self.server.send(b.block_id, "shutdown")
        self._cancel_now([b for b in live if b.job_id])
        self.server.close()
