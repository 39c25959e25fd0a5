"""What runs an endpoint's tasks: a Backend chosen by name (``backend:``) in the endpoint's
config.

- ``embedded``: ``mpiengine.embedded.EmbeddedEndpoint``: this host as virtual nodes.
- ``batch``: ``mpiengine.slurm_endpoint.BatchEndpoint``: blocks from a batch system (Slurm,
  PBS Pro, or this host) through Parsl's providers. Its options are the endpoint config's keys
  (``site-configs/block.schema.json``), or ``config: PATH`` naming a YAML file of them;
  either way they are validated when the service starts.
- ``null``: completes every task at once without running it (measures the relay alone).
- ``package.module:factory``: any callable taking ``workdir=`` and the backend options and
  returning a Backend (a Slurm-backed one plugs in here). A ``status()`` method, if it has
  one, feeds the heartbeats.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dill

from mpiengine_sdk.backend import Backend, ResultSink
from mpiengine_sdk.errors import ConfigError
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import ResultMessage, TaskKind, TaskMessage

__all__ = ["SERVICE_SANDBOX_MAX_AGE", "NullBackend", "backend_status", "make_backend"]

_NONE = dill.dumps(None)


class NullBackend:
    """A Backend that reports every task COMPLETED at once (returncode 0, value None)."""

    def __init__(self, **_options: Any) -> None:
        self._sink: ResultSink | None = None
        self._done = 0
        self._lock = threading.Lock()

    def start(self, sink: ResultSink) -> None:
        """Remember the sink."""
        self._sink = sink

    def submit(self, tasks: Sequence[TaskMessage]) -> None:
        """Complete the tasks."""
        assert self._sink is not None
        for task in tasks:
            python = task.kind in (TaskKind.PYTHON, TaskKind.MPI_PYTHON)
            self._sink(
                ResultMessage(
                    task_id=task.task_id,
                    state=TaskState.COMPLETED,
                    returncode=None if python else 0,
                    argv=task.argv,
                    value=_NONE if python else b"",
                    num_ranks=1,
                )
            )
        with self._lock:
            self._done += len(tasks)

    def cancel(self, task_id: str) -> None:
        """Nothing runs, so nothing to cancel."""

    def shutdown(self, wait: bool = True) -> None:
        """Nothing to stop."""

    def status(self) -> dict[str, Any]:
        """Counts only."""
        return {"blocks": 0, "nodes": 0, "waiting": 0, "running": 0, "completed": self._done}


#: An endpoint service removes a delivered task's sandbox a week after delivery unless its
#: backend options say otherwise (``sandbox_max_age``: seconds, or null to keep them).
SERVICE_SANDBOX_MAX_AGE = 7 * 24 * 3600.0


def make_backend(backend: str, options: Mapping[str, Any], workdir: Path) -> Backend:
    """Build the backend an endpoint config names.

    Args:
        backend: ``embedded``, ``batch``, ``null`` or ``package.module:factory``.
        options: its keyword arguments (the config's ``backend_options``).
        workdir: the service's work folder (task sandboxes), unless the options name one.

    Raises:
        ConfigError: unknown backend, a factory that cannot be imported, or bad options.
    """
    if backend == "null":
        return NullBackend(**options)
    if backend == "embedded":
        from mpiengine.embedded import EmbeddedEndpoint

        opts = dict(options)
        opts.setdefault("workdir", workdir)
        opts.setdefault("sandbox_max_age", SERVICE_SANDBOX_MAX_AGE)
        try:
            return EmbeddedEndpoint(**opts)
        except TypeError as exc:
            raise ConfigError("backend_options", str(exc)) from exc
    if backend == "batch":
        return _batch_backend(options, workdir)
    module_name, _, attr = backend.partition(":")
    if not module_name or not attr:
        raise ConfigError(
            "backend",
            f"unknown backend {backend!r}",
            "embedded, batch, null, or package.module:factory",
        )
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("backend", f"cannot load {backend!r}: {exc}") from exc
    made: Backend = factory(workdir=workdir, **options)
    return made


def _batch_backend(options: Mapping[str, Any], workdir: Path) -> Backend:
    """A BatchEndpoint from inline config keys or ``config: PATH`` (not both)."""
    from mpiengine.config import load_config
    from mpiengine.slurm_endpoint import BatchEndpoint

    opts = dict(options)
    # Retention is the service's, not the batch config's: taken out before the config is checked.
    max_age = opts.pop("sandbox_max_age", SERVICE_SANDBOX_MAX_AGE)
    max_bytes = opts.pop("sandbox_max_bytes", None)
    path = opts.pop("config", None)
    if path is not None and opts:
        raise ConfigError(
            "backend_options",
            f"either config: PATH or inline keys, not both (got config and {sorted(opts)})",
        )
    config = load_config(Path(str(path)).expanduser() if path is not None else opts)
    # The sandboxes and blocks/ go to the service's own work/ folder unless the config names one.
    return BatchEndpoint(
        config,
        workdir=workdir if config.workdir is None else None,
        sandbox_max_age=max_age,
        sandbox_max_bytes=max_bytes,
    )


def backend_status(backend: Backend) -> dict[str, Any]:
    """The backend's own status (blocks, nodes, waiting, running, ...) when it offers one."""
    status = getattr(backend, "status", None)
    if status is None:
        return {}
    value = status()
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    return dict(value) if isinstance(value, Mapping) else {}
