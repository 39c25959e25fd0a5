"""A block made of this host, presented as K virtual nodes (the embedded default), and the
block source that offers it."""

from __future__ import annotations

from collections.abc import Callable

from mpiengine.binding import Binding
from mpiengine.engineport import BlockHandle, CompletionSink, EnginePort
from mpiengine.launchers import LauncherSpec
from mpiengine.runner.process import Completion, LaunchSpec, TaskRunner
from mpiengine.scheduler import BlockInfo

__all__ = ["LocalBlock", "LocalSource", "virtual_node_names"]


def virtual_node_names(count: int) -> tuple[str, ...]:
    """``vnode0 .. vnode{count-1}``: names MPICH hydra's fork launcher accepts as hosts."""
    return tuple(f"vnode{i}" for i in range(count))


class LocalBlock:
    """This host as ``len(info.nodes)`` virtual nodes; tasks run in-process via a TaskRunner.

    Args:
        info: the block's shape (virtual node names, cores and GPUs per node, no end time).
        launcher: the MPI launcher (``mpich-fork`` places ranks on the virtual nodes).
        sink: receives ``(block_id, completion)`` for every launched task.
        kill_grace: seconds between SIGTERM and SIGKILL when a task is killed.
        gpu_vendor: the GPU vendor whose variable tells each task its GPUs (None: no GPUs).
    """

    def __init__(
        self,
        info: BlockInfo,
        launcher: LauncherSpec,
        sink: CompletionSink,
        *,
        kill_grace: float = 2.0,
        gpu_vendor: str | None = None,
    ) -> None:
        self._info = info
        self._launcher = launcher
        # Virtual nodes share this host: tasks start here and are never pinned to cores.
        self._binding = Binding(gpu_vendor=gpu_vendor, real_nodes=False)
        self._sink = sink
        self._runner = TaskRunner(self._done, kill_grace=kill_grace)

    @property
    def info(self) -> BlockInfo:
        return self._info

    @property
    def launcher(self) -> LauncherSpec:
        return self._launcher

    @property
    def binding(self) -> Binding:
        return self._binding

    @property
    def job_id(self) -> str:
        return ""

    def _done(self, completion: Completion) -> None:
        self._sink(self._info.block_id, completion)

    def launch(self, spec: LaunchSpec) -> None:
        self._runner.start(spec)

    def kill(self, task_id: str) -> None:
        self._runner.kill(task_id)

    def close(self) -> None:
        self._runner.close(kill=True)


class LocalSource:
    """The embedded endpoint's block source: one block, offered once at start.

    Args:
        make_block: builds the block for the engine's completion sink (``engine.report``),
            e.g. ``lambda sink: LocalBlock(info, launcher, sink)``.
    """

    def __init__(self, make_block: Callable[[CompletionSink], BlockHandle]) -> None:
        self._make_block = make_block

    def attach(self, engine: EnginePort) -> None:
        """Make the block and offer it."""
        engine.add_block(self._make_block(engine.report))

    def on_tick(self, now: float, engine: EnginePort) -> None:
        """Nothing to scale: this host is one fixed block."""

    def close(self) -> None:
        """Nothing to release: the engine closed the block when it stopped."""
