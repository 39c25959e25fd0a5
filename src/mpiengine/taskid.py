"""The task-id rule: which ids are safe, checked by every side that receives one.

A task id names a sandbox directory and a row in the relay's store, so the relay (on submit),
the engine (on submit), the runner's sandboxes and retention all apply this one rule.
"""

from __future__ import annotations

import re

from mpiengine_sdk.errors import InvalidTaskId

__all__ = ["validate_task_id"]

_ALLOWED = (
    "1-128 characters of letters, digits, '_', '.' and '-', not starting with '.' or '-', "
    "without '..'"
)
_TASK_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def validate_task_id(task_id: object) -> str:
    """Check that ``task_id`` is safe to use as a directory name.

    Args:
        task_id: the candidate id.

    Returns:
        The id, unchanged.

    Raises:
        InvalidTaskId: it is not a string of 1-128 ``[A-Za-z0-9_.-]`` characters, starts with
            '.' or '-', or contains '..'.
    """
    if not isinstance(task_id, str):
        raise InvalidTaskId(f"task id must be a string, got {type(task_id).__name__}")
    if _TASK_ID.fullmatch(task_id) is None or ".." in task_id:
        shown = task_id if len(task_id) <= 40 else task_id[:40] + "..."
        raise InvalidTaskId(f"task id {shown!r} is not allowed: use {_ALLOWED}")
    return task_id
