"""Identity mapping: a relay principal (the broker-verified user name) to a local account.

The mapping file is a JSON list of Globus Connect Server identity-mapping documents (expression
rules and external commands), read by PyPI ``globus-identity-mapping``; the first mapper with a
result wins.
External commands get ``-c mpiengine -s <endpoint>`` (Globus's connector and storage gateway
options). The identity given to the mappers is ``{"id": U, "username": P}`` for principal P,
where U is a UUID derived from P (the library's external-command protocol wants a UUID id).
The file is read again when its mtime or size changes; an invalid new file keeps the previous
mapping and logs why.
"""

from __future__ import annotations

import json
import logging
import pwd
import threading
import uuid
from pathlib import Path
from typing import Any

from globus_identity_mapping.loader import load_mappers

from mpiengine_sdk.errors import AuthorizationError, ConfigError

__all__ = ["IdentityMap", "load_mapping_documents"]

log = logging.getLogger(__name__)


#: Namespace of the UUIDs derived from principal names.
_NAMESPACE = uuid.UUID("6f1c2c1e-8a7e-4c55-9d36-0c61b6a3f0d2")


def identity_of(principal: str) -> dict[str, str]:
    """The identity document the mappers see for ``principal``."""
    return {"id": str(uuid.uuid5(_NAMESPACE, principal)), "username": principal}


def load_mapping_documents(path: Path, endpoint: str = "mpiengine") -> list[Any]:
    """The mappers of a mapping file (``endpoint``: passed to external commands as ``-s``).

    Raises:
        ConfigError: unreadable, not a JSON list of mapping documents, or a document the
            library refuses (naming its index and why).
    """
    try:
        docs = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(str(path), f"cannot read the identity mapping: {exc}") from exc
    if not isinstance(docs, list) or not docs or not all(isinstance(d, dict) for d in docs):
        raise ConfigError(
            str(path),
            "the identity mapping must be a non-empty JSON list of mapping documents",
            "expression_identity_mapping#1.0.0 / external_identity_mapping#1.0.0 documents",
        )
    try:
        mappers = load_mappers(docs, connector="mpiengine", storage_gateway=endpoint)
    except Exception as exc:  # the library raises ValueError subclasses and marshmallow errors
        raise ConfigError(str(path), f"invalid mapping document: {exc}") from exc
    if len(mappers) != len(docs):
        raise ConfigError(str(path), "a mapping document has an unknown DATA_TYPE")
    return mappers


class IdentityMap:
    """Maps principals to local accounts, re-reading the file when it changes.

    Args:
        path: the mapping file.
        endpoint: the endpoint's name (``-s`` of external commands).

    Raises:
        ConfigError: the file is invalid at construction (a later invalid version is logged
            and ignored).
    """

    def __init__(self, path: Path, endpoint: str = "mpiengine") -> None:
        self.path = path
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._mappers = load_mapping_documents(path, endpoint)

    def _stat(self) -> tuple[int, int]:
        try:
            st = self.path.stat()
        except OSError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    def _reload(self) -> None:
        stamp = self._stat()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._mappers = load_mapping_documents(self.path, self.endpoint)
            log.info("identity mapping %s reloaded", self.path)
        except ConfigError as exc:
            log.error(
                "identity mapping %s changed but is invalid; keeping the old one: %s",
                self.path,
                exc,
            )

    def local_name(self, principal: str) -> str | None:
        """The local name the first matching mapper gives, or None."""
        identity = identity_of(principal)
        with self._lock:
            self._reload()
            mappers = list(self._mappers)
        for mapper in mappers:
            try:
                name = mapper.map_identity(identity)
            except Exception as exc:  # an external command that failed: no mapping from it
                log.warning("identity mapper failed for %r: %s", principal, exc)
                continue
            if name:
                return str(name)
        return None

    def account(self, principal: str) -> pwd.struct_passwd:
        """The local account of ``principal``.

        Raises:
            AuthorizationError: no mapping, a name with no local account, or a mapping to
                uid 0 (each with its own sentence).
        """
        name = self.local_name(principal)
        if name is None:
            raise AuthorizationError(
                f"principal {principal!r} is not mapped to a local account by this endpoint's "
                "identity mapping; ask the endpoint's admin",
                "unmapped",
            )
        try:
            account = pwd.getpwnam(name)
        except KeyError:
            raise AuthorizationError(
                f"principal {principal!r} maps to {name!r}, which is not a local account on "
                "this host; ask the endpoint's admin",
                "no_account",
            ) from None
        if account.pw_uid == 0:
            raise AuthorizationError(
                f"principal {principal!r} maps to {name!r} (uid 0); a multi-user endpoint never "
                "runs tasks as root",
                "root_refused",
            )
        return account
