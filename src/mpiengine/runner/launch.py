"""What the runner is asked to start (``LaunchSpec``) and what it reports (``Completion``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

__all__ = [
    "Completion",
    "HUNG_RETURNCODE",
    "LaunchSpec",
    "TASK_MARKER_ENV",
    "TIMEOUT_RETURNCODE",
]

#: Returncode reported for a task killed at its walltime (as coreutils ``timeout`` does).
TIMEOUT_RETURNCODE = 124
#: Returncode reported for a task killed as hung: its stdout and stderr did not grow for its
#: ``progress_timeout``. Next to 124, and not a code a shell gives itself (126: not executable,
#: 127: not found, 128+N: killed by signal N).
HUNG_RETURNCODE = 125
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


@dataclass(frozen=True)
class Completion:
    """How one started task ended.

    Attributes:
        task_id: the task's id.
        returncode: the exit status (negative: killed by that signal); 124 after a walltime
            kill; 125 after a kill as hung; None when the process could not be started.
        stdout: the last ``snippet_lines`` lines of stdout, bounded in bytes.
        stderr: the same for stderr.
        stdout_path: the full stdout file.
        stderr_path: the full stderr file.
        sandbox: the sandbox directory.
        argv: the argv that was launched.
        started: wall-clock start (epoch seconds); None when it never started.
        ended: wall-clock end (epoch seconds).
        timed_out: the walltime expired and the tree was killed.
        cancelled: ``kill()`` (or ``close(kill=True)``) ended it.
        error: why the process could not be started (or its tree could not be killed); "" if
            none.
        hung: its output did not grow for ``progress_timeout`` s and the tree was killed.
    """

    task_id: str
    returncode: int | None
    stdout: str
    stderr: str
    stdout_path: str
    stderr_path: str
    sandbox: str
    argv: tuple[str, ...]
    started: float | None
    ended: float
    timed_out: bool
    cancelled: bool
    error: str = ""
    hung: bool = False
