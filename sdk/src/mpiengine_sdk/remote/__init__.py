"""Deprecated alias of :mod:`mpiengine_sdk.relayclient` (the relay client's old name).

Only the public names resolve here, each with a DeprecationWarning naming its new form.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpiengine_sdk.executor import Executor
    from mpiengine_sdk.future import TaskFuture

__all__ = ["RelayBackend", "attach"]

_NEW = {
    "RelayBackend": "mpiengine_sdk.relayclient.RelayBackend",
    "attach": "Executor.attach(task_ids)",
}


def __getattr__(name: str) -> Any:
    if name not in _NEW:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"mpiengine_sdk.remote.{name} is deprecated: use {_NEW[name]}",
        DeprecationWarning,
        stacklevel=2,
    )
    if name == "attach":
        return _attach
    from mpiengine_sdk import relayclient

    return relayclient.RelayBackend


def _attach(executor: Executor, task_ids: Iterable[str] | None = None) -> list[TaskFuture]:
    """Deprecated: ``executor.attach(task_ids)``, which this calls."""
    return executor.attach(task_ids)
