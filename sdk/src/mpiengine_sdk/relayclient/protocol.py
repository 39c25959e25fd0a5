"""The relay protocol: names on the broker, message frames, and errors on the wire.

Every message body is a *frame*: one JSON header line (an object with ``"v"`` and ``"type"``),
then zero or more lines, each a wire-encoded TaskMessage or ResultMessage
(``mpiengine_sdk.wire``). Compact JSON never contains a raw newline, so a batch of N tasks is
parsed once per task, not twice (a JSON list of JSON strings would be).

Broker names (one vhost, ``mpiengine`` by default):

- ``mpiengine.in`` (direct exchange): everything sent to the relay; routing key ``request``
  (clients and endpoints), ``result`` (endpoints' results), ``heartbeat``. Unroutable messages
  go to its alternate exchange, the dead-letter exchange.
- ``relay.requests`` / ``relay.results`` / ``relay.heartbeats``: the relay's durable queues.
- ``user.<name>.*``: everything a principal may read or declare: its clients' session queues
  ``user.<name>.s.<session>`` and its endpoints' queues ``user.<name>.ep.<id>.tasks`` and
  ``.control``. Broker permissions give each user exactly its own prefix.
- ``mpiengine.dead`` (fanout exchange and queue): where malformed messages are dead-lettered.

Identity is the AMQP ``user_id`` property: RabbitMQ refuses a message whose ``user_id`` is not
the connection's user, so the relay trusts it and nothing in the body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mpiengine_sdk import errors
from mpiengine_sdk.errors import MPIEngineError, RelayError, error_from_record, error_record
from mpiengine_sdk.wire import ErrorRecord, ResultMessage, error_result

__all__ = [
    "DEFAULT_BROKER_URL",
    "DEFAULT_VHOST",
    "EXCHANGE_DEAD",
    "EXCHANGE_IN",
    "KEY_HEARTBEAT",
    "KEY_REQUEST",
    "KEY_RESULT",
    "PROTOCOL_VERSION",
    "QUEUE_DEAD",
    "QUEUE_HEARTBEATS",
    "QUEUE_REQUESTS",
    "QUEUE_RESULTS",
    "Frame",
    "ProtocolError",
    "check_principal",
    "control_queue",
    "decode_frame",
    "encode_frame",
    "error_from_header",
    "failed_result",
    "session_queue",
    "task_queue",
    "user_prefix",
]

PROTOCOL_VERSION = 1
DEFAULT_VHOST = "mpiengine"
DEFAULT_BROKER_URL = f"amqp://127.0.0.1:5672/{DEFAULT_VHOST}"

EXCHANGE_IN = "mpiengine.in"
EXCHANGE_DEAD = "mpiengine.dead"
QUEUE_DEAD = "mpiengine.dead"
QUEUE_REQUESTS = "relay.requests"
QUEUE_RESULTS = "relay.results"
QUEUE_HEARTBEATS = "relay.heartbeats"
KEY_REQUEST = "request"
KEY_RESULT = "result"
KEY_HEARTBEAT = "heartbeat"

#: Principal names: they become broker user names and queue-name prefixes inside permission
#: regexes, so only characters that need no escaping there.
_PRINCIPAL = re.compile(r"[a-z][a-z0-9_-]{0,62}")


class ProtocolError(ValueError):
    """A message is not a valid frame (bad header, wrong version, bad line)."""


def check_principal(name: str) -> str:
    """Return ``name`` if it is a valid principal (user) name.

    Raises:
        ConfigError: it is not 1-63 characters of ``[a-z0-9_-]`` starting with a letter.
    """
    if not isinstance(name, str) or _PRINCIPAL.fullmatch(name) is None:
        raise errors.ConfigError(
            "user", f"{name!r} is not a valid user name", "[a-z][a-z0-9_-]{0,62}"
        )
    return name


def user_prefix(user: str) -> str:
    """The queue-name prefix that belongs to ``user``."""
    return f"user.{user}."


def session_queue(user: str, session: str) -> str:
    """A client's (or endpoint's) reply queue for one connection."""
    return f"{user_prefix(user)}s.{session}"


def task_queue(owner: str, endpoint_id: str) -> str:
    """The durable queue of an endpoint's task batches."""
    return f"{user_prefix(owner)}ep.{endpoint_id}.tasks"


def control_queue(owner: str, endpoint_id: str) -> str:
    """The durable queue of an endpoint's control messages (cancel)."""
    return f"{user_prefix(owner)}ep.{endpoint_id}.control"


@dataclass(frozen=True)
class Frame:
    """A decoded message: its header and its encoded task/result lines."""

    header: Mapping[str, Any]
    lines: tuple[bytes, ...] = ()

    @property
    def type(self) -> str:
        """The header's ``type``."""
        return str(self.header["type"])


def encode_frame(header: Mapping[str, Any], lines: Sequence[bytes] = ()) -> bytes:
    """Encode a frame; ``header`` must have a ``type``, the version is added."""
    head = json.dumps({"v": PROTOCOL_VERSION, **header}, separators=(",", ":")).encode()
    if not lines:
        return head
    return b"\n".join([head, *lines])


def decode_frame(body: bytes) -> Frame:
    """Decode a frame.

    Raises:
        ProtocolError: the header is not a JSON object with this version and a string type.
    """
    head, _, rest = body.partition(b"\n")
    try:
        header = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"frame header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError("frame header must be a JSON object")
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            f"frame has protocol version {header.get('v')!r}; this side speaks {PROTOCOL_VERSION}"
        )
    if not isinstance(header.get("type"), str):
        raise ProtocolError("frame header has no string 'type'")
    lines = tuple(rest.split(b"\n")) if rest else ()
    return Frame(header, lines)


def error_from_header(data: Mapping[str, Any]) -> RelayError:
    """Rebuild the RelayError a reply's ``error`` describes.

    The relay sends the refusal's structured error (``error_record(exc).to_dict()``); one that
    is not a RelayError comes back as a plain RelayError with its message and ``code`` field.
    """
    record = ErrorRecord.from_dict(data)
    exc = error_from_record(record)
    if isinstance(exc, RelayError):
        return exc
    message = record.message or "the relay refused the request"
    return RelayError(message, str(record.fields.get("code", "relay_error")))


def failed_result(task_id: str, exc: MPIEngineError) -> ResultMessage:
    """A FAILED result standing for a refusal; the SDK rebuilds ``exc`` from it."""
    return error_result(task_id, error_record(exc))
