"""An endpoint engine for tests: the embedded engine in a process whose exit is slowed down.

``backend: tests.integration.slow_exit_engine:slow_exit`` with ``exit_delay`` among the backend
options. The delay runs at interpreter exit (``atexit``), after the service has removed its pid
file: the window a loaded machine opens between "pid file gone" and "process exited", made wide
enough that a stop which returns early is caught every time.
"""

from __future__ import annotations

import atexit
import time
from pathlib import Path
from typing import Any

from mpiengine.embedded import EmbeddedEndpoint


def slow_exit(workdir: Path, exit_delay: float, **options: Any) -> EmbeddedEndpoint:
    """The embedded engine; this process then takes ``exit_delay`` s longer to exit."""
    atexit.register(time.sleep, exit_delay)  # a slow exit on purpose, not a wait for an event
    return EmbeddedEndpoint(workdir=workdir, **options)
