"""Read what a Python task's process left in its sandbox, without unpickling any of it.

The endpoint never unpickles user data: the value and the exception stay dill bytes, passed on
to the SDK, which is the only side that loads them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MAX_RESULT_BYTES", "PythonOutcome", "read_python_outcome"]


@dataclass(frozen=True)
class PythonOutcome:
    """The result files of one Python task.

    Attributes:
        value: dill bytes of the return value; None when the task did not succeed.
        error_type: the exception's type name ("" when there is no error record: the process
            was killed or crashed before writing one; the caller decides what that means).
        error_message: its message.
        error_traceback: the formatted remote traceback.
        error_payload: dill bytes of the exception (b"" when it did not pickle).
    """

    value: bytes | None
    error_type: str = ""
    error_message: str = ""
    error_traceback: str = ""
    error_payload: bytes = b""

    @property
    def succeeded(self) -> bool:
        """Whether the task returned a value."""
        return self.value is not None


#: The largest result (dill bytes) read back: the relay's default payload limit. A larger value
#: would be refused on its way to the user anyway, after costing the endpoint its memory.
MAX_RESULT_BYTES = 100 * 1024 * 1024


def read_python_outcome(sandbox: Path, max_bytes: int = MAX_RESULT_BYTES) -> PythonOutcome:
    """Read ``value.dill``, or ``error.json`` and ``error.dill``, from ``sandbox``.

    A value wins over an error record. An unreadable or malformed ``error.json`` yields
    ``error_type`` "" and a message saying so. A value or error larger than ``max_bytes`` is
    not read: the outcome is a ``TaskFailed`` error record saying so.
    """
    for name in ("value.dill", "error.dill"):
        try:
            size = (sandbox / name).stat().st_size
        except FileNotFoundError:
            continue
        if size > max_bytes:
            return PythonOutcome(
                value=None,
                error_type="TaskFailed",
                error_message=(
                    f"the task's result ({name}) is {size} bytes, over the payload limit of "
                    f"{max_bytes} bytes; return a smaller value, or write the data to a file "
                    "and return its path"
                ),
            )
    try:
        return PythonOutcome(value=(sandbox / "value.dill").read_bytes())
    except FileNotFoundError:
        pass
    try:
        raw = (sandbox / "error.json").read_bytes()
    except FileNotFoundError:
        return PythonOutcome(value=None)
    try:
        record = json.loads(raw)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        return PythonOutcome(value=None, error_message=f"error.json is malformed: {exc}")
    try:
        payload = (sandbox / "error.dill").read_bytes()
    except FileNotFoundError:
        payload = b""
    return PythonOutcome(
        value=None,
        error_type=str(record.get("type", "")),
        error_message=str(record.get("message", "")),
        error_traceback=str(record.get("traceback", "")),
        error_payload=payload,
    )
