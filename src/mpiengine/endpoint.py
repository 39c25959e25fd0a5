"""An endpoint in this process: the engine plus a block source (implements the SDK's Backend).

Where blocks come from is the only thing that differs between endpoints:

- the embedded endpoint (``mpiengine.embedded``): this host as one block of virtual nodes
  (:class:`~mpiengine.blocks.local.LocalSource`);
- the batch endpoint (``mpiengine.slurm_endpoint``): blocks from Slurm, PBS Pro or this host
  through a Parsl provider, each running the block agent
  (:class:`~mpiengine.blocks.manager.BlockManager`).

Everything else is here, once: the engine's start and stop, each result noted for sandbox
retention and the timeline before it reaches the SDK's sink, and submit, cancel and status.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from mpiengine.engine import Engine, EngineStatus
from mpiengine.engineport import EnginePort
from mpiengine.retention import EndpointRetention
from mpiengine.scheduler import BlockShape
from mpiengine.timeline_store import TimelineStore
from mpiengine_sdk.backend import ResultSink
from mpiengine_sdk.errors import BackendError, TaskTooLarge
from mpiengine_sdk.wire import ResultMessage, TaskMessage

__all__ = ["BlockSource", "Endpoint"]


class BlockSource(Protocol):
    """Where an endpoint's blocks come from; it sees the engine only as an EnginePort."""

    def attach(self, engine: EnginePort) -> None:
        """Take the engine, before it starts; offer blocks to it now or later."""

    def on_tick(self, now: float, engine: EnginePort) -> None:
        """Scale: called on the engine thread about every tick interval."""

    def close(self) -> None:
        """Release what is left (called once the engine has stopped)."""


class Endpoint:
    """An engine and its block source, started and stopped together.

    Args:
        workdir: the endpoint's directory (sandboxes go to ``tasks/``; it must exist).
        source: makes the block source at :meth:`start` (a block manager binds its socket
            then, not when the endpoint is built).
        shape: the shape of every block the source offers; a task it cannot hold is refused
            at submit.
        retention: what happens to delivered tasks' sandboxes (see mpiengine.retention).
        base_env: gives, at start, the environment tasks start from.
        tick_interval: seconds between two calls of the source's ``on_tick``.
        size_knob: the setting a user changes for larger blocks, named in a TaskTooLarge
            refusal (None: the engine's, ``nodes_per_block``).
    """

    #: How errors name this endpoint ("the endpoint is not started").
    what = "the endpoint"

    def __init__(
        self,
        workdir: Path,
        *,
        source: Callable[[], BlockSource],
        shape: BlockShape,
        retention: EndpointRetention,
        base_env: Callable[[], Mapping[str, str]],
        tick_interval: float = 1.0,
        size_knob: str | None = None,
    ) -> None:
        self.workdir = workdir
        self._make_source = source
        self._shape = shape
        self._retention = retention
        self._base_env = base_env
        self._tick_interval = tick_interval
        self._size_knob = size_knob
        self._timeline = TimelineStore(workdir)
        self._engine: Engine | None = None
        self._source: BlockSource | None = None

    def start(self, sink: ResultSink) -> None:
        """Start the engine and the block source; results go to ``sink``.

        Raises:
            BackendError: already started.
        """
        if self._engine is not None:
            raise BackendError(f"{self.what} is already started")
        retention, timeline = self._retention, self._timeline

        def deliver(msg: ResultMessage) -> None:
            # Noted first (the user may shut down on seeing it): the ledger lets retention and
            # `mpiengine gc` remove delivered tasks' sandboxes (never a running one's); the
            # timeline lets `mpiengine timeline` draw the run.
            retention.delivered(msg)
            timeline.finished(msg)
            sink(msg)

        source = self._make_source()
        engine = Engine(
            workdir=self.workdir,
            sink=deliver,
            shapes=[self._shape],
            base_env=self._base_env(),
            on_tick=source.on_tick,
            tick_interval=self._tick_interval,
        )
        source.attach(engine)
        engine.start()
        self._engine, self._source = engine, source

    def _require(self) -> Engine:
        if self._engine is None:
            raise BackendError(f"{self.what} is not started")
        return self._engine

    def submit(self, tasks: Sequence[TaskMessage]) -> None:
        """Validate and queue tasks (see Engine.submit)."""
        engine = self._require()
        self._timeline.submitted(tasks)
        try:
            engine.submit(tasks)
        except TaskTooLarge as exc:
            if self._size_knob is None:
                raise
            raise TaskTooLarge(exc.requested, exc.largest, knob=self._size_knob) from exc

    def cancel(self, task_id: str) -> None:
        """Cancel a queued or running task."""
        self._require().cancel(task_id)

    def status(self) -> EngineStatus:
        """Blocks, nodes, task counts, failed (excluded) nodes and the last error."""
        return self._require().status()

    def shutdown(self, wait: bool = True) -> None:
        """Stop the engine (with ``wait``, let queued and running tasks finish), apply the
        sandbox retention, then close the block source. Idempotent."""
        if self._engine is not None:
            self._engine.shutdown(wait=wait)
            self._retention.finish()  # waits for a collection under way
        if self._source is not None:
            self._source.close()
