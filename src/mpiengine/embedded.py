"""The embedded endpoint: ``Executor()`` with nothing configured.

This host becomes one block of K virtual nodes; MPI tasks start through the PyPI ``mpich``
wheel's hydra ``mpiexec`` (``-launcher fork``), which places each virtual node's ranks on this
host. No broker, no batch system; the scheduler, runner, launcher and sandbox code are the same
as in production.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mpiengine.binding import Binding
from mpiengine.blocks.local import LocalBlock, LocalSource, virtual_node_names
from mpiengine.endpoint import Endpoint
from mpiengine.launchers import load_launcher
from mpiengine.retention import EndpointRetention
from mpiengine.scheduler import BlockInfo, BlockShape
from mpiengine_sdk.errors import ConfigError

__all__ = ["DEFAULT_CORES_PER_NODE", "DEFAULT_NODES", "EmbeddedEndpoint", "find_mpiexec"]

#: Virtual nodes when none are configured (``MPIENGINE_NODES`` overrides).
DEFAULT_NODES = 4
#: Cores per virtual node (``MPIENGINE_CORES_PER_NODE`` overrides). Virtual: tasks share the
#: host's real cores, so this bounds how many sub-node tasks pack onto one virtual node.
DEFAULT_CORES_PER_NODE = 4


def find_mpiexec() -> str | None:
    """The MPICH wheel's ``mpiexec`` beside this interpreter, else the first on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpiexec")


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(name, f"must be a positive integer, got {value!r}", "1, 2, 3, ...")
    return value


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return _positive(name, int(raw))
    except ValueError as exc:
        raise ConfigError(name, f"must be a positive integer, got {raw!r}") from exc


class EmbeddedEndpoint(Endpoint):
    """An in-process endpoint (implements the SDK's Backend protocol): an
    :class:`~mpiengine.endpoint.Endpoint` whose one block is this host.

    Args:
        nodes: virtual nodes (default ``MPIENGINE_NODES`` or 4).
        cores_per_node: cores per virtual node (default ``MPIENGINE_CORES_PER_NODE`` or 4).
        gpus_per_node: GPUs per virtual node (default 0).
        gpu_vendor: ``nvidia``, ``amd`` or ``intel``: each task and rank sees its placed GPUs
            through that vendor's variable (default: nvidia when gpus_per_node > 0).
        workdir: where sandboxes go; a fresh directory under ``MPIENGINE_HOME`` (default
            ``~/.mpiengine``) ``/embedded/`` if None. Sandboxes in a given workdir are kept;
            in a fresh one, those of tasks that succeeded are removed at shutdown (and the
            folder, when nothing is left), failed tasks' stay (see mpiengine.retention).
        keep_sandboxes: keep every sandbox, even in a fresh workdir.
        sandbox_max_age: while running, remove a delivered task's sandbox this many seconds
            after delivery (an endpoint service's engine option); None: never.
        sandbox_max_bytes: while running, keep all sandboxes under this many bytes by
            removing delivered ones, oldest first; None: no limit.
        mpiexec: the MPICH hydra ``mpiexec`` to use (default: the mpich wheel's).
        kill_grace: seconds between SIGTERM and SIGKILL when a task is killed.

    Raises:
        ConfigError: a value is out of range.
    """

    what = "the embedded endpoint"

    def __init__(
        self,
        nodes: int | None = None,
        cores_per_node: int | None = None,
        gpus_per_node: int = 0,
        gpu_vendor: str | None = None,
        workdir: str | Path | None = None,
        mpiexec: str | None = None,
        kill_grace: float = 2.0,
        keep_sandboxes: bool = False,
        sandbox_max_age: float | None = None,
        sandbox_max_bytes: int | None = None,
    ) -> None:
        n = (
            _positive("nodes", nodes)
            if nodes is not None
            else _env_int("MPIENGINE_NODES", DEFAULT_NODES)
        )
        cores = (
            _positive("cores_per_node", cores_per_node)
            if cores_per_node is not None
            else _env_int("MPIENGINE_CORES_PER_NODE", DEFAULT_CORES_PER_NODE)
        )
        if (
            isinstance(gpus_per_node, bool)
            or not isinstance(gpus_per_node, int)
            or gpus_per_node < 0
        ):
            raise ConfigError("gpus_per_node", f"must be an integer >= 0, got {gpus_per_node!r}")
        if gpu_vendor is None and gpus_per_node > 0:
            gpu_vendor = "nvidia"
        vendor = Binding(gpu_vendor=gpu_vendor).gpu_vendor  # validated
        chosen = Path(workdir) if workdir is not None else _fresh_workdir()
        retention = EndpointRetention(
            chosen,
            keep=workdir is not None or keep_sandboxes,
            owned=workdir is None,
            max_age=sandbox_max_age,
            max_bytes=sandbox_max_bytes,
        )
        self.mpiexec = mpiexec or find_mpiexec() or "mpiexec"
        self._info = BlockInfo(
            block_id="local",
            nodes=virtual_node_names(n),
            cores_per_node=cores,
            gpus_per_node=gpus_per_node,
            end_time=None,
        )
        launcher = load_launcher("mpich-fork", executable=self.mpiexec)
        source = LocalSource(
            lambda sink: LocalBlock(
                self._info, launcher, sink, kill_grace=kill_grace, gpu_vendor=vendor
            )
        )
        super().__init__(
            chosen,
            source=lambda: source,
            shape=BlockShape(num_nodes=n, cores_per_node=cores, gpus_per_node=gpus_per_node),
            retention=retention,
            base_env=_task_env,
            size_knob=(
                "the embedded endpoint's size: Executor(nodes=N, cores_per_node=C), "
                "or endpoint configure NAME --nodes N"
            ),
        )

    @property
    def nodes(self) -> tuple[str, ...]:
        """The virtual node names."""
        return self._info.nodes

    @property
    def cores_per_node(self) -> int:
        """Cores per virtual node."""
        return self._info.cores_per_node


def _task_env() -> dict[str, str]:
    """This process's environment, with its import path, so Python tasks can unpickle
    functions defined in the submitter's own modules (the embedded endpoint shares its host)."""
    env = dict(os.environ)
    default = {os.path.realpath(p) for p in sys.path if p.startswith((sys.prefix, sys.base_prefix))}
    extra = [p for p in sys.path if p and os.path.isdir(p) and os.path.realpath(p) not in default]
    if env.get("PYTHONPATH"):
        extra.append(env["PYTHONPATH"])
    if extra:
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(extra))
    return env


def _fresh_workdir() -> Path:
    home = Path(os.environ.get("MPIENGINE_HOME", Path.home() / ".mpiengine"))
    root = home / "embedded"
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.mkdtemp(prefix=f"{stamp}-", dir=root))
