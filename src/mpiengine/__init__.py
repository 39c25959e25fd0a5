"""mpiengine: the endpoint that carves HPC allocations into per-task placements.

The SDK lives in ``mpiengine_sdk``; this package is the engine: scheduler, launchers, runner,
blocks, block agent, relay and CLI.

Exports load lazily: a Python task's process runs ``python -m mpiengine.runner.pyrunner``, which
imports this package first, and must not pay for the whole engine's imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpiengine.embedded import EmbeddedEndpoint
    from mpiengine.engine import Engine, EngineStatus
    from mpiengine.placement import Placement

__version__ = "0.1.0"

__all__ = ["EmbeddedEndpoint", "Engine", "EngineStatus", "Placement"]

_WHERE = {
    "EmbeddedEndpoint": "mpiengine.embedded",
    "Engine": "mpiengine.engine",
    "EngineStatus": "mpiengine.engine",
    "Placement": "mpiengine.placement",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'mpiengine' has no attribute {name!r}")
