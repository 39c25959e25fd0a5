"""What ``mpiengine relay status`` shows: the relay processes of a config, whether the broker
answers and what its relay queues hold, the endpoints online, the tasks by state."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from mpiengine.relay.access import endpoint_view
from mpiengine.relay.config import load_relay_config
from mpiengine.relay.daemon import instances, running_pid
from mpiengine.relay.database import redact
from mpiengine.relay.store import RelayStore
from mpiengine_sdk.errors import BackendError
from mpiengine_sdk.relayclient.protocol import (
    QUEUE_DEAD,
    QUEUE_HEARTBEATS,
    QUEUE_REQUESTS,
    QUEUE_RESULTS,
)
from mpiengine_sdk.relayclient.transport import PikaTransport

__all__ = ["relay_status"]

_QUEUES = (QUEUE_REQUESTS, QUEUE_RESULTS, QUEUE_HEARTBEATS, QUEUE_DEAD)


def relay_status(config_path: Path) -> dict[str, Any]:
    """The relay's state as plain data (see ``mpiengine relay status --json``).

    Raises:
        ConfigError: the config cannot be read.
        BackendError: the store cannot be reached.
    """
    config = load_relay_config(config_path)
    url = urlsplit(config.broker_url)
    processes = [
        {"instance": i.name, "pid": pid, "running": pid is not None}
        for i in instances(config_path)
        for pid in [running_pid(i)]
    ]
    broker: dict[str, Any] = {
        "url": redact(config.broker_url),
        "user": url.username or "guest",
        "vhost": unquote(url.path.lstrip("/")) or "/",
        "reachable": False,
        "error": None,
    }
    queues: dict[str, Any] = {}
    try:
        channel = PikaTransport(config.broker_url).connect()
    except BackendError as exc:
        broker["error"] = str(exc)
    else:
        try:
            broker["reachable"] = True
            for name in _QUEUES:
                counts = channel.queue_counts(name)
                queues[name] = (
                    None
                    if counts is None
                    else dict(zip(("messages", "consumers"), counts, strict=True))
                )
        finally:
            channel.close()
    store = RelayStore(config.store_url)
    try:
        now = time.time()
        views = [endpoint_view(r, config.heartbeat_threshold, now) for r in store.endpoints()]
        tasks = store.task_counts()
    finally:
        store.close()
    return {
        "config": str(config_path),
        "processes": processes,
        "broker": broker,
        "queues": queues,
        "store": store.url,
        "endpoints": {
            "total": len(views),
            "online": sum(1 for v in views if v["online"]),
            "list": [{k: v[k] for k in ("id", "name", "owner", "online")} for v in views],
        },
        "tasks": tasks,
    }
