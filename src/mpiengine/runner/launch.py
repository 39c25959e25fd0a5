"""What the runner is asked to start (``LaunchSpec``) and what it reports (``Completion``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from mpiengine_sdk.wire import HUNG_RETURNCODE, TIMEOUT_RETURNCODE, RunRecord

__all__ = [
    "Completion",
    "HUNG_RETURNCODE",
    "LaunchSpec",
    "TASK_MARKER_ENV",
    "TIMEOUT_RETURNCODE",
]

#: When ``LaunchSpec.env`` sets this variable, processes carrying it are part of the task's tree
#: even after they left its session (a double-forked daemon), and are killed with it.
TASK_MARKER_ENV = "MPIENGINE_TASK_ID"

_EMPTY: Mapping[str, bytes] = MappingProxyType({})


@dataclass(frozen=True)
class LaunchSpec:
    """One process to start.

    Attributes:
        task_id: the task's id (the key for ``kill`` and the Completion).
        argv: the exact argv; argv[0] is looked up on ``env["PATH"]`` when it has no '/'.
        env: the complete environment of the process.
        sandbox: an existing directory: the process's cwd, where stdout/stderr are written.
        walltime: seconds before the tree is killed (returncode 124); None for no limit.
        progress_timeout: seconds without growth of stdout or stderr before the tree is killed
            as hung (returncode 125); None for no such check.
        snippet_lines: how many trailing lines of stdout/stderr the Completion carries.
        files: relative path -> content, written into the sandbox (mode 0o600) before start.
    """

    task_id: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    sandbox: Path
    walltime: float | None
    snippet_lines: int = 1000
    files: Mapping[str, bytes] = field(default_factory=lambda: _EMPTY)
    progress_timeout: float | None = None


@dataclass(frozen=True, kw_only=True)
class Completion(RunRecord):
    """How one started task ended: its run (a RunRecord) and why it ended.

    The runner fills the run's argv, returncode, tails, paths and times; nodes, ranks and block
    are the endpoint's to add (``mpiengine.outcome``). The returncode is 124
    (``TIMEOUT_RETURNCODE``) after a walltime kill, 125 (``HUNG_RETURNCODE``) after a kill as
    hung, and None when the process could not be started.

    Attributes:
        task_id: the task's id.
        ended: wall-clock end (epoch seconds).
        timed_out: the walltime expired and the tree was killed.
        cancelled: ``kill()`` (or ``close(kill=True)``) ended it.
        error: why the process could not be started (or its tree could not be killed); "" if
            none.
        hung: its output did not grow for ``progress_timeout`` s and the tree was killed.
    """

    task_id: str
    ended: float
    timed_out: bool
    cancelled: bool
    error: str = ""
    hung: bool = False
