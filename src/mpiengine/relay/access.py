"""Who may use what: endpoint authorisation and the client's view of an endpoint."""

from __future__ import annotations

from typing import Any

from mpiengine.relay.store import EndpointRecord, RelayStore
from mpiengine_sdk.errors import AuthorizationError

__all__ = ["authorize_endpoint", "endpoint_view"]


def authorize_endpoint(store: RelayStore, user: str, endpoint_id: object) -> EndpointRecord:
    """The endpoint, if it exists and allows ``user``.

    Raises:
        AuthorizationError: unknown endpoint, or the user may not use it (one message for
            both, so a user cannot probe which endpoint ids exist).
    """
    record = store.endpoint(endpoint_id) if isinstance(endpoint_id, str) else None
    if record is None or not record.may_use(user):
        raise AuthorizationError(
            f"endpoint {endpoint_id!r} does not exist or does not allow user {user!r}; ask "
            f"its owner or the relay admin to run `mpiengine relay allow {endpoint_id} {user}`",
            "forbidden",
        )
    return record


def endpoint_view(record: EndpointRecord, threshold: float, now: float) -> dict[str, Any]:
    """An endpoint as clients see it, with ``online`` from its last heartbeat and
    ``multi_user`` when it is a multi-user manager (each principal's tasks run as its own
    local account; its heartbeat says so)."""
    online = record.last_seen is not None and now - record.last_seen <= threshold
    return {
        "id": record.id,
        "name": record.name,
        "owner": record.owner,
        "online": online,
        "multi_user": bool((record.status or {}).get("multi_user")),
        "last_seen": record.last_seen,
        "status": record.status or {},
    }
