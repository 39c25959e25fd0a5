"""Run, stop and find relay processes: the library behind ``mpiengine relay serve [--detach]``
and ``relay stop``.

A relay process is an *instance* of one config; its pid file and log sit beside the config
(``relay-<instance>.pid``, ``relay-<instance>.log``). Several instances of one config serve one
broker and one (PostgreSQL) store at once, as competing consumers. A pid counts only while that
process runs (a zombie has exited) and its command line is a relay's ``serve``, so a recycled
pid is not mistaken for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mpiengine import detach
from mpiengine_sdk.errors import BackendError, ConfigError

__all__ = [
    "DEFAULT_INSTANCE",
    "RelayInstance",
    "claim_pid_file",
    "instances",
    "release_pid_file",
    "running_pid",
    "start_detached",
    "stop_relay",
]

log = logging.getLogger(__name__)

DEFAULT_INSTANCE = "main"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class RelayInstance:
    """One relay process of a config: where its pid file, log and ready signal are.

    Raises:
        ConfigError: the instance name is not 1-32 characters of ``[a-z0-9_-]``.
    """

    config: Path
    name: str = DEFAULT_INSTANCE

    def __post_init__(self) -> None:
        if _NAME.fullmatch(self.name) is None:
            raise ConfigError(
                "instance", f"{self.name!r} is not a valid instance name", "[a-z0-9][a-z0-9_-]*"
            )

    def _file(self, suffix: str) -> Path:
        return self.config.parent / f"relay-{self.name}.{suffix}"

    @property
    def pid(self) -> Path:
        """The pid file (present while the process runs)."""
        return self._file("pid")

    @property
    def log(self) -> Path:
        """The log file of a detached process."""
        return self._file("log")

    @property
    def ready(self) -> Path:
        """Written with the pid once the process serves (for ``start_detached``)."""
        return self._file("ready")


def instances(config: Path) -> list[RelayInstance]:
    """The instances of ``config`` with a pid file, by name."""
    found = []
    for path in sorted(config.parent.glob("relay-*.pid")):
        name = path.name[len("relay-") : -len(".pid")]
        if _NAME.fullmatch(name):
            found.append(RelayInstance(config, name))
    return found


def _alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie waits for its parent to reap it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def running_pid(instance: RelayInstance) -> int | None:
    """The pid of the instance's running process, or None."""
    try:
        pid = int(instance.pid.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    args = [a.decode(errors="replace") for a in cmdline]
    if "relay" in args and "serve" in args and any("mpiengine" in a for a in args):
        return pid if _alive(pid) else None
    return None


def claim_pid_file(instance: RelayInstance) -> None:
    """Write this process's pid (``relay serve``).

    Raises:
        ConfigError: the instance runs already.
    """
    other = running_pid(instance)
    if other is not None and other != os.getpid():
        raise ConfigError(
            "instance",
            f"relay {instance.name} is already running (pid {other})",
            "another --instance name for another relay process of this config",
        )
    instance.pid.parent.mkdir(parents=True, exist_ok=True)
    instance.pid.write_text(f"{os.getpid()}\n")


def release_pid_file(instance: RelayInstance) -> None:
    """Remove the pid file if it is this process's."""
    with contextlib.suppress(OSError, ValueError):
        if int(instance.pid.read_text().strip()) == os.getpid():
            instance.pid.unlink()


def start_detached(instance: RelayInstance, timeout: float = 60.0) -> int:
    """Start ``relay serve`` for the instance in the background (its own session, output
    appended to its log).

    Returns:
        Its pid, once it serves.

    Raises:
        ConfigError: the instance runs already.
        BackendError: it exited or did not serve within ``timeout`` (the log's tail says why).
    """
    other = running_pid(instance)
    if other is not None:
        raise ConfigError("instance", f"relay {instance.name} is already running (pid {other})")
    config = instance.config.resolve()
    instance.ready.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "mpiengine", "relay", "serve", "--config"]
    argv += [str(config), "--instance", instance.name, "--ready-file", str(instance.ready)]
    pid = detach.spawn(argv, instance.log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if instance.ready.read_text().strip() == str(pid):
                instance.ready.unlink(missing_ok=True)
                return pid
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            raise BackendError(
                f"relay {instance.name} exited ({code}):\n{detach.log_tail(instance.log)}"
            )
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    tail = detach.log_tail(instance.log)
    raise BackendError(f"relay {instance.name} did not serve within {timeout:.0f} s:\n{tail}")


def stop_relay(instance: RelayInstance, grace: float = 15.0) -> bool:
    """Stop the instance: SIGTERM (it finishes the message at hand and closes; the broker
    hands what it had not acknowledged to the other relays), SIGKILL after ``grace`` seconds.
    Returns only once the process has exited (a zombie not yet reaped counts as exited).

    Returns:
        False if it was not running.

    Raises:
        BackendError: it still runs 30 s after SIGKILL (stuck in the kernel).
    """
    pid = running_pid(instance)
    if pid is None:
        return False
    stopped = detach.stop(
        pid,
        what=f"relay {instance.name}",
        still_ours=lambda: running_pid(instance) == pid,
        wait=lambda: grace,
    )
    if not stopped:
        return False
    with contextlib.suppress(OSError, ValueError):
        if int(instance.pid.read_text().strip()) == pid:  # left behind by a SIGKILL
            instance.pid.unlink()
    return True
