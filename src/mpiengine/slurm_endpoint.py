"""An endpoint whose blocks come from a batch system (Slurm, PBS Pro, or this host).

``BatchEndpoint`` is an :class:`~mpiengine.endpoint.Endpoint`, like ``EmbeddedEndpoint``; the
difference is where blocks come from: the :class:`~mpiengine.blocks.manager.BlockManager`
obtains them through a Parsl provider, starts ``mpiengine agent`` in each job, and offers their
nodes to the engine as agents connect. Tasks submitted before any block exists wait (a task
larger than the configured block shape is refused at submit); the demand they create is what
makes the manager request blocks.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from mpiengine.blocks.blockstate import BlockRecord
from mpiengine.blocks.manager import BlockManager
from mpiengine.blocks.provider import BlockProvider, make_provider
from mpiengine.config import BlockConfig, load_config
from mpiengine.endpoint import Endpoint
from mpiengine.launchers import load_launcher
from mpiengine.retention import EndpointRetention
from mpiengine.scheduler import BlockShape
from mpiengine_sdk.errors import BackendError

__all__ = ["BatchEndpoint"]

#: Runs first in every block's job: its start time bounds the block's end (walltime).
_BLOCK_START = "export MPIENGINE_BLOCK_START=$(date +%s)"


class BatchEndpoint(Endpoint):
    """An endpoint with blocks from a batch system (implements the SDK's Backend protocol): an
    :class:`~mpiengine.endpoint.Endpoint` whose block source is a BlockManager.

    Args:
        config: an BlockConfig, a mapping or a YAML path (validated at load).
        workdir: the endpoint's directory (default: the config's ``workdir``, else a fresh one
            under ``MPIENGINE_HOME``/endpoints). Sandboxes go to ``tasks/``, block files to
            ``blocks/``.
        provider: where blocks come from (default: the Parsl provider the config names).
        tick_interval: seconds between the block manager's scaling decisions.
        sandbox_max_age: while running, remove a delivered task's sandbox this many seconds
            after delivery; None: never (see mpiengine.retention).
        sandbox_max_bytes: while running, keep all sandboxes under this many bytes, removing
            delivered ones oldest first; None: no limit.

    Raises:
        ConfigError: the config is invalid.
    """

    def __init__(
        self,
        config: BlockConfig | dict[str, Any] | str | Path,
        *,
        workdir: str | Path | None = None,
        provider: BlockProvider | None = None,
        tick_interval: float = 0.5,
        sandbox_max_age: float | None = None,
        sandbox_max_bytes: int | None = None,
    ) -> None:
        self.config = config if isinstance(config, BlockConfig) else load_config(config)
        cfg = self.config
        chosen = workdir if workdir is not None else cfg.workdir
        path = Path(chosen).expanduser() if chosen is not None else _fresh_workdir()
        path.mkdir(parents=True, exist_ok=True)
        self._launcher = load_launcher(
            cfg.launcher_name, executable=cfg.launcher_executable, options=cfg.launcher_options
        )
        self._provider = provider or make_provider(cfg, worker_init=_BLOCK_START)
        shape = BlockShape(
            num_nodes=cfg.nodes_per_block,
            cores_per_node=cfg.cores,
            gpus_per_node=cfg.gpu_slots,
            walltime=None if cfg.provider == "local" else float(cfg.walltime_seconds),
        )
        retention = EndpointRetention(
            path,
            keep=True,
            owned=False,
            max_age=sandbox_max_age,
            max_bytes=sandbox_max_bytes,
        )
        self._manager: BlockManager | None = None
        super().__init__(
            path,
            source=self._open_manager,
            shape=shape,
            retention=retention,
            # A task's environment is its batch job's (the agent's), not this process's; the
            # engine only adds the task's own variables.
            base_env=dict,
            tick_interval=tick_interval,
        )

    @classmethod
    def from_site(
        cls,
        name: str | Path,
        *,
        workdir: str | Path | None = None,
        provider: BlockProvider | None = None,
        tick_interval: float = 0.5,
        **overrides: Any,
    ) -> BatchEndpoint:
        """An endpoint on a named machine: ``BatchEndpoint.from_site("polaris", account=...)``.

        Args:
            name: a machine of ``site-configs/`` (``mpiengine sites list``) or a site file.
            workdir, provider, tick_interval: as for the constructor.
            overrides: ``queue``, ``account`` and endpoint config keys; they win over the
                site's values (see :func:`mpiengine.sites.site_config`).

        Raises:
            ConfigError: an unknown machine, a missing account the site requires, a queue
                the site does not have, or any value the endpoint config refuses.
        """
        from mpiengine.sites import site_config

        return cls(
            site_config(name, **overrides),
            workdir=workdir,
            provider=provider,
            tick_interval=tick_interval,
        )

    def _open_manager(self) -> BlockManager:
        """The block source, made at start: it binds the agents' socket."""
        self._manager = BlockManager(self.config, self._provider, self._launcher, self.workdir)
        return self._manager

    @property
    def manager(self) -> BlockManager:
        """The block manager (after start)."""
        if self._manager is None:
            raise BackendError("the endpoint is not started")
        return self._manager

    def blocks(self) -> list[BlockRecord]:
        """Every block not yet gone: state, job id, nodes, failed (excluded) nodes, end time."""
        return self.manager.blocks()

    def shutdown(self, wait: bool = True) -> None:
        """Stop the engine (with ``wait``, let tasks finish), then cancel every block's job.
        The failed nodes are kept for the timeline's picture first; the sandboxes are kept."""
        if self._engine is not None:
            self._timeline.note_excluded(self._engine.status().excluded_nodes)
        super().shutdown(wait)


def _fresh_workdir() -> Path:
    home = Path(os.environ.get("MPIENGINE_HOME", Path.home() / ".mpiengine"))
    root = home / "endpoints"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=root))
