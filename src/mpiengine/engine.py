"""The endpoint core: one thread applies the scheduler's policy to the blocks.

Every change (a submit, a completion, a cancel, a block gained or lost) is an event on one
queue; the engine thread drains the queue, updates the pure scheduler, asks it for placements and
launches them. Nothing else touches the scheduler, so it needs no lock. The public methods are
thread-safe and cheap: they validate in the caller's thread (so a bad task is refused at submit,
with a typed error) and post an event.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpiengine.engineport import BlockHandle, EnginePort
from mpiengine.environment import clean_base_env
from mpiengine.nodefail import LAUNCHER_REASON, failed_node_in, node_failed_result
from mpiengine.outcome import result_from_completion, result_without_run
from mpiengine.placement import Placement
from mpiengine.predict import Kinds, Predictor, task_kinds
from mpiengine.runner.process import Completion
from mpiengine.runner.sandbox import SandboxRoot
from mpiengine.scheduler import BlockShape, Demand, Scheduler, TaskRequest
from mpiengine.taskid import validate_task_id
from mpiengine.taskprep import build_launch, task_request
from mpiengine_sdk.backend import ResultSink
from mpiengine_sdk.errors import MPIEngineError, SubmitError, error_record
from mpiengine_sdk.spec import ResourceSpec
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import ResultMessage, TaskMessage, error_result

__all__ = ["Engine", "EngineStatus"]

log = logging.getLogger(__name__)

#: The shortest wait for a running task's predicted end (seconds).
_WAKE_MIN = 0.01


@dataclass
class _Task:
    msg: TaskMessage
    spec: ResourceSpec
    request: TaskRequest
    state: TaskState = TaskState.QUEUED
    placement: Placement | None = None
    attempts: int = 0
    node_failure: tuple[str, str] | None = None  # (node, reason): killed for it, not yet back
    kinds: Kinds | None = None  # what its runtime teaches (see mpiengine.predict)


@dataclass(frozen=True)
class EngineStatus:
    """A snapshot for heartbeats, ``endpoint status`` and the demo's progress line."""

    blocks: int
    nodes: int
    waiting: int
    running: int
    completed: int
    last_error: str
    #: block id -> {node: why it was excluded}: failed nodes no task is placed on any more.
    excluded_nodes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        out = dict(self.__dict__)
        out["excluded_nodes"] = {b: dict(n) for b, n in self.excluded_nodes.items()}
        return out


class Engine:
    """Schedules tasks onto blocks and reports their results (an EnginePort for block sources).

    Args:
        workdir: the endpoint's working directory; sandboxes go to ``workdir/tasks/<task_id>``.
        sink: receives every ResultMessage (RUNNING progress and terminal results).
        shapes: the block shapes this endpoint can ever offer (a task none can hold is refused
            at submit); a callable is asked each time.
        scheduler: the policy (a default Scheduler if None).
        base_env: the environment tasks start from (default: this process's, cleaned).
        python: the interpreter that runs Python tasks.
        on_tick: called on the engine thread about every ``tick_interval`` seconds with
            ``(now, engine)``: a block source's hook to scale blocks (the engine is passed as
            its :class:`~mpiengine.engineport.EnginePort`).
        predictor: learns runtimes from completed tasks and predicts them for backfill
            (default: one kept in ``workdir/predictions.json``, so it survives a restart).
    """

    def __init__(
        self,
        *,
        workdir: Path,
        sink: ResultSink,
        shapes: Sequence[BlockShape] | Callable[[], Sequence[BlockShape]],
        scheduler: Scheduler | None = None,
        base_env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        on_tick: Callable[[float, EnginePort], None] | None = None,
        tick_interval: float = 1.0,
        predictor: Predictor | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.tasks_dir = self.workdir / "tasks"
        self.tasks_dir.mkdir(parents=True, exist_ok=True)
        # Resolved and held open once: a sandbox then costs a few syscalls, not a path walk.
        self._sandboxes = SandboxRoot(self.tasks_dir)
        self._sink = sink
        self._shapes = shapes
        self._scheduler = scheduler or Scheduler()
        self._predictor = predictor or Predictor(self.workdir / "predictions.json")
        self._base_env = clean_base_env(os.environ if base_env is None else base_env)
        self._python = python
        self._on_tick = on_tick
        self._tick_interval = tick_interval
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._tasks: dict[str, _Task] = {}
        self._active_ids: set[str] = set()
        self._ids_lock = threading.Lock()
        self._blocks: dict[str, BlockHandle] = {}
        # block id -> {node: reason}; replaced whole on change, so readers need no lock.
        self._excluded: dict[str, dict[str, str]] = {}
        self._completed = 0
        self._last_error = ""
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._run, name="mpiengine-engine", daemon=True)
        self._stopping: bool | None = None  # None: running; True/False: stop with wait?
        self._closed = threading.Event()

    # -- thread-safe API -------------------------------------------------------------------
    def start(self) -> None:
        """Start the engine thread."""
        self._thread.start()

    def block_shapes(self) -> list[BlockShape]:
        """The block shapes a task is checked against at submit."""
        shapes = self._shapes() if callable(self._shapes) else self._shapes
        return list(shapes)

    def submit(self, tasks: Sequence[TaskMessage]) -> None:
        """Validate and queue tasks.

        A single task that is refused raises (SubmitError, SpecError, ...); in a batch of
        several, each refused task gets a FAILED result instead and the others are queued.
        """
        if self._stopping is not None or self._closed.is_set():
            raise SubmitError("the endpoint is shutting down; no new task is accepted")
        for task in tasks:
            try:
                item = self._admit(task)
            except MPIEngineError as exc:
                if len(tasks) == 1:
                    raise
                self._sink(error_result(task.task_id, error_record(exc)))
                continue
            self._events.put(("submit", item))

    def _admit(self, task: TaskMessage) -> _Task:
        validate_task_id(task.task_id)
        spec = ResourceSpec.from_dict(task.spec)
        kinds = task_kinds(task, spec)
        estimate, kind = self._predictor.predict(kinds)
        request = task_request(task, spec, time.monotonic(), estimate=estimate, kind=kind)
        self._scheduler.check_fits(request, self.block_shapes())
        with self._ids_lock:
            if task.task_id in self._active_ids:
                raise SubmitError(f"task id {task.task_id!r} is already queued or running")
            self._active_ids.add(task.task_id)
        return _Task(task, spec, request, kinds=kinds)

    def cancel(self, task_id: str) -> None:
        """Drop a queued task or kill a running one; its CANCELLED result follows."""
        self._events.put(("cancel", task_id))

    def add_block(self, handle: BlockHandle) -> None:
        """Offer a new block's nodes to the scheduler."""
        self._events.put(("add_block", handle))

    def lose_block(self, block_id: str, reason: str) -> None:
        """A block vanished: retry its running tasks within budget, else report them LOST."""
        self._events.put(("lose_block", block_id, reason))

    def fail_node(self, block_id: str, node: str, reason: str) -> None:
        """A node of a block failed: place nothing more on it, and kill the tasks running on
        it (all their ranks); each is retried elsewhere within its ``retries``, else reported
        ``NodeFailed``. Repeated or unknown reports are ignored."""
        self._events.put(("fail_node", block_id, node, reason))

    def retire_block(self, block_id: str) -> None:
        """Place nothing more on a block (it is being replaced); its running tasks go on."""
        self._events.put(("retire_block", block_id))

    def excluded_nodes(self) -> dict[str, dict[str, str]]:
        """Failed nodes by block: ``{block_id: {node: reason}}`` (a snapshot)."""
        return {block_id: dict(nodes) for block_id, nodes in self._excluded.items()}

    def report(self, block_id: str, completion: Completion) -> None:
        """A block's runner finished a task (the CompletionSink of every block)."""
        self._events.put(("complete", block_id, completion))

    def note_error(self, message: str) -> None:
        """Record an error for the status (e.g. a provider failure)."""
        self._last_error = message

    def status(self) -> EngineStatus:
        """A snapshot of blocks and task counts."""
        running = sum(1 for t in list(self._tasks.values()) if t.state is TaskState.RUNNING)
        return EngineStatus(
            blocks=len(self._blocks),
            nodes=sum(len(b.info.nodes) for b in list(self._blocks.values())),
            waiting=len(self._tasks) - running,
            running=running,
            completed=self._completed,
            last_error=self._last_error,
            excluded_nodes=self.excluded_nodes(),
        )

    # -- engine thread only (a block source's on_tick; see EnginePort) ------------------------
    def demand(self, now: float) -> Demand:
        """What the waiting tasks need (the scale-out decision's input)."""
        return self._scheduler.demand(now)

    def idle_blocks(self) -> list[str]:
        """Ids of the blocks that run no task (candidates for release), oldest first."""
        return self._scheduler.idle_blocks()

    @property
    def waiting(self) -> int:
        """How many tasks wait for a placement."""
        return self._scheduler.waiting

    @property
    def blocks(self) -> dict[str, BlockHandle]:
        """The current blocks by id (read-only view for the block manager)."""
        return dict(self._blocks)

    @property
    def scheduler(self) -> Scheduler:
        """The policy object (touch it only from ``on_tick``, on the engine thread)."""
        return self._scheduler

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop. With ``wait``, queued and running tasks finish first; else they are
        cancelled (running ones killed). Idempotent."""
        if not self._thread.is_alive():
            if self._thread.ident is None:  # never started: _run's cleanup will not run
                self._sandboxes.close()
            self._closed.set()
            return
        self._events.put(("stop", wait))
        self._thread.join(timeout)

    # -- engine thread ---------------------------------------------------------------------
    def _run(self) -> None:
        next_tick = time.monotonic()
        timeout = self._tick_interval
        try:
            while True:
                try:
                    event = self._events.get(timeout=timeout)
                except queue.Empty:
                    event = None
                while event is not None:
                    self._handle(event)
                    try:
                        event = self._events.get_nowait()
                    except queue.Empty:
                        event = None
                now = time.monotonic()
                if self._on_tick is not None and now >= next_tick:
                    next_tick = now + self._tick_interval
                    self._guard(self._on_tick, now, self)
                if self._stopping is False or (self._stopping and not self._tasks):
                    break
                self._schedule(now)
                self._predictor.save_if_due(now)
                timeout = self._timeout()
        finally:
            self._close_blocks()
            self._sandboxes.close()
            self._predictor.save()
            self._closed.set()

    def _timeout(self) -> float:
        """How long to wait for an event: until the next tick, or sooner when a running task
        would outlive its estimate (the scheduler then moves the head's reservation); not
        sooner than ``_WAKE_MIN``: with tasks of milliseconds, their completions come as
        often, and each event corrects the estimates anyway."""
        wake = self._scheduler.next_wake
        if wake is None:
            return self._tick_interval
        return min(self._tick_interval, max(wake - time.monotonic(), _WAKE_MIN))

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # a hook must never kill the engine thread
            log.exception("engine hook failed")
            self._last_error = f"{type(exc).__name__}: {exc}"

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "submit":
            item: _Task = event[1]
            self._tasks[item.msg.task_id] = item
            self._scheduler.submit(item.request)
        elif kind == "complete":
            self._complete(event[1], event[2])
        elif kind == "cancel":
            self._cancel(event[1])
        elif kind == "add_block":
            handle: BlockHandle = event[1]
            self._blocks[handle.info.block_id] = handle
            self._scheduler.add_block(handle.info)
        elif kind == "lose_block":
            self._lose_block(event[1], event[2])
        elif kind == "fail_node":
            self._fail_node(event[1], event[2], event[3])
        elif kind == "retire_block":
            if event[1] in self._blocks:
                self._scheduler.retire_block(event[1])
        elif kind == "stop":
            self._stop(bool(event[1]))

    def _schedule(self, now: float) -> None:
        for placement in self._scheduler.schedule(now):
            self._launch(placement)

    def _launch(self, placement: Placement) -> None:
        task = self._tasks[placement.task_id]
        block = self._blocks[placement.block_id]
        task.placement = placement
        task.attempts += 1
        task.state = TaskState.RUNNING
        try:
            sandbox = self._sandboxes.create(task.msg.task_id)
            spec = build_launch(
                task.msg,
                task.spec,
                placement,
                mpi_launcher=block.launcher,
                cores_per_node=block.info.cores_per_node,
                sandbox=sandbox,
                base_env=self._base_env,
                python=self._python,
                binding=block.binding,
            )
            block.launch(spec)
        except Exception as exc:  # refuse this task only; the endpoint keeps running
            log.exception("could not launch task %s", task.msg.task_id)
            self._scheduler.release(task.msg.task_id)
            self._finish(
                task,
                result_without_run(
                    task.msg.task_id, TaskState.FAILED, "LaunchError", f"{exc}", nodes=()
                ),
            )
            return
        self._sink(
            ResultMessage(
                task_id=task.msg.task_id,
                state=TaskState.RUNNING,
                nodes=placement.nodes,
                block_id=placement.block_id,
                attempts=task.attempts,
            )
        )

    def _complete(self, block_id: str, done: Completion) -> None:
        task = self._tasks.get(done.task_id)
        if task is None or task.placement is None or task.placement.block_id != block_id:
            return  # already resolved (block lost and retried elsewhere, or cancelled)
        if not (done.cancelled or done.timed_out or done.hung):
            node = failed_node_in(done.stderr, task.placement.nodes)
            if node is not None:  # srun saw the node fail (maybe before the agent did)
                task.node_failure = task.node_failure or (node, LAUNCHER_REASON)
                self._fail_node(block_id, node, LAUNCHER_REASON)
            elif task.node_failure is not None and done.returncode == 0 and not done.error:
                task.node_failure = None  # it ended well before the kill reached it
        self._scheduler.release(done.task_id)
        self._learn(task, done)
        block = self._blocks.get(block_id)
        if task.node_failure is not None:
            self._retry_or_fail(task, done, block.job_id if block else "")
            return
        result = result_from_completion(
            task.msg,
            task.placement,
            done,
            job_id=block.job_id if block else "",
            attempts=task.attempts,
        )
        self._finish(task, result)

    def _learn(self, task: _Task, done: Completion) -> None:
        """Learn the runtime of a task that ended by itself (not killed, not cancelled, not
        failed to start, not under a failed node), and tell the scheduler."""
        if (
            task.kinds is None
            or task.node_failure is not None
            or done.cancelled
            or done.timed_out
            or done.hung
            or done.error
            or done.started is None
        ):
            return
        for kind, seconds in self._predictor.record(task.kinds, done.ended - done.started):
            self._scheduler.set_estimate(kind, seconds)

    def _fail_node(self, block_id: str, node: str, reason: str) -> None:
        block = self._blocks.get(block_id)
        known = self._excluded.get(block_id, {})
        if block is None or node not in block.info.nodes or node in known:
            return
        self._excluded = {**self._excluded, block_id: {**known, node: reason}}
        log.warning("block %s: node %s failed (%s); no task is placed on it any more",
                    block_id, node, reason)  # fmt: skip
        for task_id in self._scheduler.exclude_node(block_id, node):
            task = self._tasks.get(task_id)
            if task is not None and task.node_failure is None:
                # Its slots stay held until its completion: its ranks on the other nodes
                # must be gone before another task gets them.
                task.node_failure = (node, reason)
                block.kill(task_id)

    def _retry_or_fail(self, task: _Task, done: Completion | None, job_id: str) -> None:
        """A task killed by a node failure (its slots already released): again, or NodeFailed."""
        assert task.node_failure is not None and task.placement is not None
        node, reason = task.node_failure
        task_id = task.msg.task_id
        if task.attempts <= task.spec.retries:
            log.warning("node %s failed under task %s: retrying it", node, task_id)
            task.state = TaskState.QUEUED
            task.placement = None
            task.node_failure = None
            self._scheduler.submit(task.request)
            return
        self._finish(
            task,
            node_failed_result(
                task.msg,
                task.placement,
                done,
                node=node,
                reason=reason,
                job_id=job_id,
                attempts=task.attempts,
            ),
        )

    def _finish(self, task: _Task, result: ResultMessage) -> None:
        self._tasks.pop(task.msg.task_id, None)
        with self._ids_lock:
            self._active_ids.discard(task.msg.task_id)
        self._completed += 1
        self._sink(result)

    def _cancel(self, task_id: str) -> None:
        task = self._tasks.get(task_id)
        if task is None:
            return
        if task.state is TaskState.RUNNING and task.placement is not None:
            task.node_failure = None  # cancelled, not retried
            block = self._blocks.get(task.placement.block_id)
            if block is not None:
                block.kill(task_id)  # the runner's Completion (cancelled=True) follows
                return
        self._scheduler.cancel(task_id)
        self._finish(
            task,
            result_without_run(task_id, TaskState.CANCELLED, "TaskCancelled", "cancelled"),
        )

    def _lose_block(self, block_id: str, reason: str) -> None:
        block = self._blocks.pop(block_id, None)
        if block is None:
            return
        lost = self._scheduler.remove_block(block_id)
        self._excluded = {b: n for b, n in self._excluded.items() if b != block_id}
        for task_id in lost:
            task = self._tasks.get(task_id)
            if task is None:
                continue
            if task.node_failure is not None:  # its node failed first: say so
                self._retry_or_fail(task, None, block.job_id)
                continue
            if task.attempts <= task.spec.retries:
                log.warning("block %s lost (%s): retrying task %s", block_id, reason, task_id)
                task.state = TaskState.QUEUED
                task.placement = None
                self._scheduler.submit(task.request)
                continue
            self._finish(
                task,
                result_without_run(
                    task_id,
                    TaskState.LOST,
                    "BlockLost",
                    f"block {block_id} (job {block.job_id or '-'}) was lost: {reason}",
                    block_id=block_id,
                    job_id=block.job_id,
                    nodes=block.info.nodes,
                    attempts=task.attempts,
                ),
            )
        try:
            block.close()
        except Exception:
            log.exception("closing lost block %s failed", block_id)

    def _stop(self, wait: bool) -> None:
        self._stopping = wait
        if wait:
            return
        for task_id in list(self._tasks):
            self._cancel(task_id)

    def _close_blocks(self) -> None:
        for block in list(self._blocks.values()):
            try:
                block.close()
            except Exception:
                log.exception("closing block %s failed", block.info.block_id)
        # Tasks killed by close() above report nothing once the loop is gone: resolve them.
        for task in list(self._tasks.values()):
            self._finish(
                task,
                result_without_run(
                    task.msg.task_id,
                    TaskState.CANCELLED,
                    "TaskCancelled",
                    "the endpoint shut down before the task finished",
                ),
            )
