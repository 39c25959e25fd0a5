"""What the endpoint and a block agent say to each other over ZeroMQ.

Every message is one JSON object (one zmq frame) with a type ``t``. The agent connects a DEALER
socket whose identity is its block id to the endpoint's ROUTER socket; every agent message
carries the block's secret token, which the endpoint checks before acting on it.

Agent to endpoint:
    ``hello``  nodes, cpus, host, pid, started (epoch): sent on connect (and again until welcomed)
    ``hb``     running, queued: the heartbeat, every ``heartbeat_period`` seconds
    ``done``   c: one task's Completion (its run record's fields, task_id, timed_out,
               cancelled, error, hung)
    ``nodes``  failed: [{node, state, reason}]: nodes the batch system failed (see ``health``)
    ``bye``    reason: the agent is exiting (job cancelled, walltime, endpoint gone)
Endpoint to agent:
    ``welcome`` (the hello was accepted), ``ping`` (the endpoint's heartbeat),
    ``launch`` spec: a LaunchSpec, ``kill`` task_id, ``shutdown`` (end every task and exit).

Nothing is pickled: a LaunchSpec's files travel base64-encoded.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mpiengine.runner.launch import Completion, LaunchSpec
from mpiengine_sdk.wire import run_fields_from

__all__ = [
    "ProtocolError",
    "completion_from_dict",
    "completion_to_dict",
    "decode",
    "encode",
    "launch_from_dict",
    "launch_to_dict",
]


class ProtocolError(ValueError):
    """A message is not valid JSON of the expected shape."""


def encode(kind: str, **fields: Any) -> bytes:
    """One message as bytes."""
    return json.dumps({"t": kind, **fields}, separators=(",", ":")).encode()


def decode(data: bytes) -> dict[str, Any]:
    """One message as a dict with a string ``t``.

    Raises:
        ProtocolError: not a JSON object with a type.
    """
    try:
        msg = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
        raise ProtocolError("not a JSON object with a string 't'")
    return msg


def launch_to_dict(spec: LaunchSpec) -> dict[str, Any]:
    """A LaunchSpec as JSON types."""
    return {
        "task_id": spec.task_id,
        "argv": list(spec.argv),
        "env": dict(spec.env),
        "sandbox": str(spec.sandbox),
        "walltime": spec.walltime,
        "snippet_lines": spec.snippet_lines,
        "files": {k: base64.b64encode(v).decode("ascii") for k, v in spec.files.items()},
        "progress_timeout": spec.progress_timeout,
    }


def launch_from_dict(data: Mapping[str, Any]) -> LaunchSpec:
    """Rebuild a LaunchSpec.

    Raises:
        ProtocolError: a field is missing or mistyped.
    """
    try:
        walltime = data["walltime"]
        progress_timeout = data["progress_timeout"]
        return LaunchSpec(
            task_id=str(data["task_id"]),
            argv=tuple(str(a) for a in data["argv"]),
            env={str(k): str(v) for k, v in data["env"].items()},
            sandbox=Path(data["sandbox"]),
            walltime=None if walltime is None else float(walltime),
            snippet_lines=int(data["snippet_lines"]),
            files={str(k): base64.b64decode(v) for k, v in data["files"].items()},
            progress_timeout=None if progress_timeout is None else float(progress_timeout),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError(f"bad launch spec: {exc!r}") from exc


def completion_to_dict(done: Completion) -> dict[str, Any]:
    """A Completion as JSON types: its run record's fields, then how it ended."""
    return {
        **done.run_fields(),
        "task_id": done.task_id,
        "timed_out": done.timed_out,
        "cancelled": done.cancelled,
        "error": done.error,
        "hung": done.hung,
    }


def completion_from_dict(data: Mapping[str, Any]) -> Completion:
    """Rebuild a Completion.

    Raises:
        ProtocolError: a field is missing or mistyped.
    """
    try:
        return Completion(
            **run_fields_from(data),
            task_id=str(data["task_id"]),
            timed_out=bool(data["timed_out"]),
            cancelled=bool(data["cancelled"]),
            error=str(data["error"]),
            hung=bool(data["hung"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"bad completion: {exc!r}") from exc
