"""Task states: one documented enum with a terminal set."""

from __future__ import annotations

import enum

__all__ = ["TERMINAL_STATES", "TaskState"]


class TaskState(enum.StrEnum):
    """Where a task is in its life.

    The value is the wire spelling. A task moves PENDING -> QUEUED -> RUNNING -> one terminal
    state; CANCELLED and FAILED can also follow PENDING or QUEUED directly.
    """

    #: Accepted by the SDK, not yet acknowledged by the endpoint.
    PENDING = "pending"
    #: Held by the endpoint's scheduler, waiting for free nodes/cores.
    QUEUED = "queued"
    #: Launched on a placement; its process tree is alive.
    RUNNING = "running"
    #: The process ran to its end. Any exit code, zero or not: a shell task that exits 3 is
    #: COMPLETED with returncode 3, as a batch system would report it.
    COMPLETED = "completed"
    #: The task could not produce a result: launch failure, a Python task that raised, an
    #: endpoint-side error. Not used for a non-zero exit (that is COMPLETED).
    FAILED = "failed"
    #: The walltime expired and the whole process tree was killed (returncode 124). Distinct from
    #: FAILED because the task may simply need more time: resubmit with a longer walltime.
    TIMEOUT = "timeout"
    #: Its stdout and stderr did not grow for the spec's ``progress_timeout`` seconds, so it was
    #: taken as hung and its whole process tree was killed as at a walltime (returncode 125).
    HUNG = "hung"
    #: Cancelled by the user, before or while running.
    CANCELLED = "cancelled"
    #: The block running it was lost (cancelled, node failure, block walltime) and the task's
    #: retry budget is spent.
    LOST = "lost"

    @property
    def terminal(self) -> bool:
        """True when the task will never change state again."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {
        TaskState.COMPLETED,
        TaskState.FAILED,
        TaskState.TIMEOUT,
        TaskState.HUNG,
        TaskState.CANCELLED,
        TaskState.LOST,
    }
)
