"""The endpoint service: a long-lived process on a login node that takes tasks from its relay
queue (outbound connections only), runs them on a backend and sends the results back.

See ``docs/relay.md`` and ``mpiengine endpoint --help``.
"""

from __future__ import annotations

from mpiengine.service.backends import NullBackend, make_backend
from mpiengine.service.config import EndpointPaths, ServiceConfig, load_service_config
from mpiengine.service.worker import EndpointService

__all__ = [
    "EndpointPaths",
    "EndpointService",
    "NullBackend",
    "ServiceConfig",
    "load_service_config",
    "make_backend",
]
