"""Deprecated alias of :mod:`mpiengine_sdk.relayclient` (the relay client's old name).

Only the public names resolve here, each with a DeprecationWarning naming its new home.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["RelayBackend", "attach"]

_NEW = {
    "RelayBackend": "mpiengine_sdk.relayclient.RelayBackend",
    "attach": "mpiengine_sdk.relayclient.attach",
}


def __getattr__(name: str) -> Any:
    if name not in _NEW:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"mpiengine_sdk.remote is deprecated: use {_NEW[name]}",
        DeprecationWarning,
        stacklevel=2,
    )
    from mpiengine_sdk import relayclient

    return getattr(relayclient, name)
