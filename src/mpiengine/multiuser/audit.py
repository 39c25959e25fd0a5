"""The audit log: append-only, mode 0600, one JSON line per task event.

Events: ``received`` (the manager took the task), ``started`` (handed to the user endpoint),
``running`` (its process started), ``ended`` (a terminal state; ``outcome`` says which),
``refused`` (mapping, allow-list or user config; ``outcome`` says why). Each line has the
time, principal, local user and uid, task id, block and job id, and outcome.

The file is opened for each line (``O_APPEND | O_NOFOLLOW``), so a log that was removed,
replaced or made unwritable is noticed at the next event: :class:`AuditError` is raised and the
manager stops taking tasks rather than run them unaudited.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

__all__ = ["AuditError", "AuditLog"]


class AuditError(OSError):
    """The audit log cannot be written."""


class AuditLog:
    """Appends audit lines to ``path`` (created 0600 if missing).

    Raises:
        AuditError: (construction and ``write``) the file cannot be opened for appending, is
            not a regular file, or a write failed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._append(b"")

    def _append(self, data: bytes) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise AuditError(f"cannot open the audit log {self.path}: {exc}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise AuditError(f"the audit log {self.path} is not a regular file")
            if stat.S_IMODE(st.st_mode) != 0o600:
                os.fchmod(fd, 0o600)
            if data and os.write(fd, data) != len(data):
                raise AuditError(f"short write to the audit log {self.path}")
        except AuditError:
            raise
        except OSError as exc:
            raise AuditError(f"cannot write the audit log {self.path}: {exc}") from exc
        finally:
            os.close(fd)

    def write(
        self,
        event: str,
        *,
        task_id: str,
        principal: str,
        local_user: str = "",
        uid: int | None = None,
        block_id: str = "",
        job_id: str = "",
        outcome: str = "",
    ) -> None:
        """Append one event line (one ``write`` call, so concurrent lines never interleave).

        Raises:
            AuditError: the line could not be written.
        """
        line = {
            "time": round(time.time(), 6),
            "event": event,
            "principal": principal,
            "local_user": local_user,
            "uid": uid,
            "task_id": task_id,
            "block_id": block_id,
            "job_id": job_id,
            "outcome": outcome,
        }
        data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
        with self._lock:
            self._append(data)
