"""Admin commands: the broker's vhost, principals and their permissions, endpoints and grants.

Broker users and permissions are made through one seam, :class:`BrokerAdmin` (one method:
run an admin command); :class:`Rabbitmqctl` is the real one. Passwords go to rabbitmqctl on
stdin, never on a command line other users could read in ``ps``.

Each principal gets exactly: configure and read on ``^user\\.<name>\\..*`` (its session queues
and its endpoints' queues), write on the relay's inbound exchange and the dead-letter exchange
(which queue declarations with a dead-letter exchange need). Nothing else: not another user's
queues, not the relay's, not the default exchange.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Sequence
from typing import Protocol

from mpiengine.relay.store import EndpointRecord, RelayStore
from mpiengine_sdk.errors import BackendError, ConfigError
from mpiengine_sdk.relayclient.protocol import EXCHANGE_DEAD, EXCHANGE_IN, check_principal

__all__ = ["BrokerAdmin", "Rabbitmqctl", "RelayAdmin", "permissions"]

#: The store's note of the broker user ``init`` created (``destroy`` removes only that one).
_CREATED_ADMIN = "created_admin_user"


class BrokerAdmin(Protocol):
    """Runs one broker admin command."""

    def run(self, args: Sequence[str], stdin: str | None = None) -> str:
        """Run ``args`` (e.g. ``["add_user", "alice"]``); return its stdout.

        Raises:
            BackendError: the command failed or could not run.
        """


class Rabbitmqctl:
    """The real BrokerAdmin: ``rabbitmqctl -s`` on this host.

    Args:
        executable: the rabbitmqctl command.
        timeout: seconds before a command counts as failed.
    """

    def __init__(self, executable: str = "rabbitmqctl", timeout: float = 60.0) -> None:
        self.executable = executable
        self.timeout = timeout

    def run(self, args: Sequence[str], stdin: str | None = None) -> str:
        """See BrokerAdmin.run."""
        argv = [self.executable, "-s", *args]
        what = " ".join(args[:2])
        try:
            proc = subprocess.run(
                argv, input=stdin, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except FileNotFoundError as exc:
            raise BackendError(
                f"{self.executable} not found: run admin commands on the broker's host "
                "(or install rabbitmq-server)"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise BackendError(f"rabbitmqctl {what} did not finish in {self.timeout} s") from exc
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip()
            raise BackendError(f"rabbitmqctl {what} failed ({proc.returncode}): {detail}")
        return proc.stdout


def permissions(user: str) -> tuple[str, str, str]:
    """The (configure, write, read) permission regexes of a principal."""
    own = rf"^user\.{user}\..*"
    write = "^({})$".format("|".join(n.replace(".", r"\.") for n in (EXCHANGE_IN, EXCHANGE_DEAD)))
    return own, write, own


class RelayAdmin:
    """Creates what the relay serves.

    Args:
        store: the relay's store.
        broker: the admin seam.
        vhost: the relay's virtual host.
        admin_user: the broker user the relay itself connects as.
    """

    def __init__(self, store: RelayStore, broker: BrokerAdmin, vhost: str, admin_user: str):
        self.store = store
        self.broker = broker
        self.vhost = vhost
        self.admin_user = admin_user

    def _lines(self, args: Sequence[str]) -> list[str]:
        return [line.split("\t")[0] for line in self.broker.run(args).splitlines() if line]

    def init(self, admin_password: str | None = None) -> bool:
        """Create the vhost (if missing) and give the relay's admin user all of it; create
        that user first when the broker has none of that name (``destroy`` removes it then).

        Returns:
            True if the admin user was created.

        Raises:
            ConfigError: the admin user must be created but no password was given.
            BackendError: a broker command failed.
        """
        created = False
        if self.admin_user not in self._lines(["list_users"]):
            if not admin_password:
                raise ConfigError(
                    "admin_password",
                    f"the broker has no user {self.admin_user!r}: give its password to create it",
                    "--admin-password-file or --admin-password-stdin",
                )
            self.broker.run(["add_user", self.admin_user], stdin=admin_password)
            self.store.set_meta(_CREATED_ADMIN, self.admin_user)
            created = True
        if self.vhost not in self._lines(["list_vhosts", "name"]):
            self.broker.run(["add_vhost", self.vhost])
        self.broker.run(["set_permissions", "-p", self.vhost, self.admin_user, ".*", ".*", ".*"])
        return created

    def destroy(self) -> list[str]:
        """Remove what ``init`` and ``add-user`` made: every principal's broker user, the admin
        user if ``init`` created it, the vhost (its queues and messages), and the store.

        Returns:
            The broker users removed.

        Raises:
            BackendError: a broker command failed (what was removed stays removed; run it
                again).
        """
        existing = set(self._lines(["list_users"]))
        removed = []
        names = [u.name for u in self.store.users()]
        if self.store.get_meta(_CREATED_ADMIN) == self.admin_user:
            names.append(self.admin_user)
        for name in names:
            if name in existing:
                self.broker.run(["delete_user", name])
                removed.append(name)
        self.delete_vhost()
        self.store.destroy()
        return removed

    def delete_vhost(self) -> None:
        """Delete the vhost and everything in it (queues, messages, permissions)."""
        if self.vhost in self._lines(["list_vhosts", "name"]):
            self.broker.run(["delete_vhost", self.vhost])

    def add_user(
        self,
        name: str,
        password: str | None = None,
        rate: float | None = None,
        burst: float | None = None,
    ) -> str:
        """Create a principal (or reset its password and limits).

        Returns:
            The password (generated when none is given).

        Raises:
            ConfigError: an invalid name, or the relay's own admin user.
        """
        check_principal(name)
        if name == self.admin_user:
            raise ConfigError("user", f"{name!r} is the relay's admin user", "another name")
        secret = password or secrets.token_urlsafe(24)
        verb = "change_password" if name in self._lines(["list_users"]) else "add_user"
        self.broker.run([verb, name], stdin=secret)
        self.broker.run(["set_permissions", "-p", self.vhost, name, *permissions(name)])
        self.store.add_user(name, rate, burst)
        return secret

    def delete_user(self, name: str) -> None:
        """Remove a principal from the broker and the relay."""
        if name in self._lines(["list_users"]):
            self.broker.run(["delete_user", name])
        self.store.delete_user(name)

    def add_endpoint(self, name: str, owner: str, allow: Sequence[str] = ()) -> EndpointRecord:
        """Create (or find) the owner's endpoint ``name`` and share it with ``allow``.

        Raises:
            ConfigError: the owner or a shared user is not a principal.
        """
        for user in (owner, *allow):
            if self.store.user(user) is None:
                raise ConfigError("user", f"{user!r} is not a principal", "add it with add-user")
        record, _ = self.store.add_endpoint(name, owner)
        for user in allow:
            self.store.allow(record.id, user)
        found = self.store.endpoint(record.id)
        assert found is not None
        return found

    def allow(self, endpoint_id: str, user: str, allowed: bool = True) -> EndpointRecord:
        """Share (or stop sharing) an endpoint with a user.

        Raises:
            ConfigError: unknown endpoint or user.
        """
        record = self.store.endpoint(endpoint_id)
        if record is None:
            raise ConfigError("endpoint", f"no endpoint {endpoint_id!r}", "see `relay endpoints`")
        if self.store.user(user) is None:
            raise ConfigError("user", f"{user!r} is not a principal", "add it with add-user")
        self.store.allow(endpoint_id, user, allowed)
        found = self.store.endpoint(endpoint_id)
        assert found is not None
        return found
