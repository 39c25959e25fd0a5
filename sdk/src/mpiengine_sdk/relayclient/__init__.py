"""The relay client: submit through a relay (RabbitMQ) to an endpoint on a login node.

``Executor(endpoint_id=..., relay=...)`` constructs a :class:`RelayBackend`; the API is the
embedded default's. Tasks outlive the client: ``Executor.attach(task_ids)`` re-attaches futures
to them, from this or another process.
"""

from __future__ import annotations

from mpiengine_sdk.relayclient.client import RelayBackend

__all__ = ["RelayBackend"]
