"""The agent's one seam to Slurm's client commands (squeue, sinfo, scancel).

Both the step cleanup (``steps``) and the node-health watcher (``health``) run Slurm commands
through a ``Run``; tests give them a fake with the same signature instead of patching
``subprocess``.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable

__all__ = ["Run", "run_command"]

log = logging.getLogger(__name__)

#: Runs an argv with a timeout; returns (returncode, stdout).
Run = Callable[[list[str], float], tuple[int, str]]


def run_command(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run ``argv``; its return code and stdout, or ``(-1, "")`` when it could not run or
    timed out (logged): a failing command is never mistaken for an answer."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("%s failed: %s", argv[0], exc)
        return -1, ""
    return proc.returncode, proc.stdout
