"""Run records for tests: a whole Completion with a field or two changed."""

from __future__ import annotations

from typing import Any

from mpiengine.runner.launch import Completion

__all__ = ["completion"]


def completion(**changes: Any) -> Completion:
    """A finished task ``t`` (``a``, rc 0, ran from 1.0 to 2.0 in ``/s``) with ``changes``."""
    fields: dict[str, Any] = {
        "task_id": "t",
        "returncode": 0,
        "stdout": "o",
        "stderr": "e",
        "stdout_path": "/o",
        "stderr_path": "/e",
        "sandbox": "/s",
        "argv": ("a",),
        "started": 1.0,
        "ended": 2.0,
        "timed_out": False,
        "cancelled": False,
    }
    return Completion(**(fields | changes))
