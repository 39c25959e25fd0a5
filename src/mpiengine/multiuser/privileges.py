"""Dropping root for good, in the user endpoint process, before it reads any task.

Order (why): supplementary groups and the gid first, while we still may change them; then all
three uids; then prove it cannot be undone (``setuid(0)`` must fail) or abort. Then a clean
environment, umask 077 and the user's own 0700 directory.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

__all__ = ["PrivilegeError", "drop_privileges", "user_environment"]


class PrivilegeError(RuntimeError):
    """The process could not become the user, or could become root again."""


def drop_privileges(account: pwd.struct_passwd) -> None:
    """Become ``account`` irreversibly (real, effective and saved ids; its groups only).

    Raises:
        PrivilegeError: uid 0 asked for, a step failed, or root is still reachable afterwards.
    """
    uid, gid = account.pw_uid, account.pw_gid
    if uid == 0:
        raise PrivilegeError("refusing to run a user endpoint as uid 0")
    try:
        # Always (root or a service account with CAP_SETGID): the manager's own supplementary
        # groups must not survive into the user's process.
        os.setgroups([])
        os.initgroups(account.pw_name, gid)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot become {account.pw_name!r}: {exc}") from exc
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise PrivilegeError(f"ids after the drop are {os.getresuid()}/{os.getresgid()}")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError("setuid(0) succeeded after the privilege drop")
    extra = set(os.getgroups()) - set(_member_gids(account))
    if extra:
        raise PrivilegeError(f"groups {sorted(extra)} survived the drop")
    os.umask(0o077)


def _member_gids(account: pwd.struct_passwd) -> list[int]:
    return os.getgrouplist(account.pw_name, account.pw_gid)


def user_environment(account: pwd.struct_passwd, extra: dict[str, str]) -> dict[str, str]:
    """The whole environment of a user endpoint: the user's own names, a plain PATH, and the
    admin's ``extra`` variables (e.g. SLURM_CONF); nothing inherited from the manager."""
    env = {
        "HOME": account.pw_dir,
        "USER": account.pw_name,
        "LOGNAME": account.pw_name,
        "SHELL": account.pw_shell or "/bin/sh",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
    }
    env.update(extra)
    return env


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) as the current user, and make ``path`` itself 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path
