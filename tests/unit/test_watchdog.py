"""The runner's watchdog: its protocol, what it kills at EOF (and what not), restarts, forks.

Processes count as gone when absent or zombies (this host's PID 1 reaps slowly).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from mpiengine.runner import watchdog
from mpiengine.runner.watchdog import _field, _read_registry, _unfield

PATH = "/usr/bin:/bin"
WATCHDOG = "mpiengine.runner.watchdog"

# A runner's owner, driven line by line on stdin:
#   start ID  -> starts a task (a setsid daemon carrying the marker, then `sleep`); prints its
#                sandbox, where the task writes "pids" (root, daemon);
#   fork      -> forks a child that only waits (it inherits the runner's state); prints its pid.
OWNER = """
import os, signal, sys
from pathlib import Path
from mpiengine.runner.process import LaunchSpec, TaskRunner
from mpiengine.runner.sandbox import create_sandbox
root = Path(sys.argv[1])
runner = TaskRunner(lambda c: None, kill_grace=0.5)
script = "setsid sleep 300 & echo $$ $! > pids.tmp && mv pids.tmp pids; exec sleep 300"
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "start":
        sandbox = create_sandbox(root, arg)
        env = {"PATH": "/usr/bin:/bin", "MPIENGINE_TASK_ID": arg}
        runner.start(LaunchSpec(arg, ("/bin/bash", "-c", script), env, sandbox, None))
        print(sandbox, flush=True)
    elif cmd == "fork":
        pid = os.fork()
        if pid == 0:
            signal.pause()
            os._exit(0)
        print(pid, flush=True)
"""


def gone(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.02)


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


class Owner:
    """The OWNER script as a child process."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", OWNER, str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pids: list[int] = []  # every process to end at close

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def start(self, task_id: str) -> list[int]:
        pids_file = Path(self.ask(f"start {task_id}")) / "pids"
        wait_until(pids_file.exists, 60, f"task {task_id} wrote its pids")
        pids = [int(p) for p in pids_file.read_text().split()]
        self.pids += pids
        return pids

    def live_watchdogs(self) -> list[int]:
        found = []
        for child in psutil.Process(self.proc.pid).children():
            try:  # a killed watchdog not yet reaped is a zombie: it has no cmdline any more
                if WATCHDOG in child.cmdline():
                    found.append(child.pid)
            except (psutil.ZombieProcess, psutil.NoSuchProcess):
                continue
        return found

    def watchdog(self) -> int:
        wait_until(lambda: len(self.live_watchdogs()) == 1, 30, "one live watchdog")
        found = self.live_watchdogs()
        assert len(found) == 1, found
        self.pids += found
        return found[0]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(30)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        kill_all(self.pids)


@pytest.fixture
def owner(tmp_path: Path) -> Iterator[Owner]:
    handle = Owner(tmp_path)
    try:
        yield handle
    finally:
        handle.close()


# ----- the protocol -----


@pytest.mark.parametrize("text", ["task-1", "a b", "%41", "é\nx", "", "t\x00"])
def test_fields_round_trip_without_spaces_or_newlines(text: str) -> None:
    field = _field(text)
    assert _unfield(field) == text
    assert field and " " not in field and "\n" not in field and field.isprintable()


def test_the_registry_is_what_is_left_at_eof() -> None:
    lines = [
        "t a marker-a",
        "p a 100",
        "p b 200",  # no marker: found by its session only
        "t c marker-c",  # never spawned (or the owner died before the pid line)
        "t d marker-d",
        "p d 400",
        "- d",  # reported: not touched
        "p e 5",  # cut short by the owner's death: ignored
    ]
    data = "\n".join(lines).encode()
    assert _read_registry(io.BytesIO(data)) == {
        "a": ("marker-a", 100),
        "b": ("", 200),
        "c": ("marker-c", 0),
    }


# ----- the watchdog process, fed by hand -----


def _sleeper(marker: str | None = None) -> subprocess.Popen[bytes]:
    env = {"PATH": PATH, **({"MPIENGINE_TASK_ID": marker} if marker else {})}
    return subprocess.Popen(["sleep", "300"], env=env, start_new_session=True)


def _feed(lines: list[str]) -> tuple[int, bytes]:
    """Run a watchdog that reads ``lines``, then EOF (its owner is gone); its status and
    stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", WATCHDOG, "0.5", str(os.getpid())],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, err = proc.communicate("".join(f"{line}\n" for line in lines).encode(), timeout=60)
    return proc.returncode, err


def test_at_eof_it_kills_registered_trees_and_leaves_reported_ones() -> None:
    by_pid, by_marker, reported = _sleeper(), _sleeper("only-a-marker"), _sleeper()
    try:
        status, err = _feed(
            [
                f"p one {by_pid.pid}",
                "t two only-a-marker",  # killed through the marker alone
                f"p three {reported.pid}",
                "- three",
            ]
        )
        assert status == 0
        assert by_pid.wait(10) == -signal.SIGTERM
        assert by_marker.wait(10) == -signal.SIGTERM
        assert reported.poll() is None  # reported before EOF: not the watchdog's any more
        assert b"killed 2 process(es) of 2 task(s)" in err
    finally:
        for p in (by_pid, by_marker, reported):
            p.kill()
            p.wait(10)


def test_sigterm_does_not_end_it_before_its_job() -> None:
    task = _sleeper()
    proc = subprocess.Popen(
        [sys.executable, "-m", WATCHDOG, "0.5", str(os.getpid())],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        term = 1 << (signal.SIGTERM - 1)
        wait_until(lambda: _ignored(proc.pid) & term != 0, 60, "the watchdog ignores SIGTERM")
        proc.send_signal(signal.SIGTERM)  # as a tree kill that reached it with its owner
        _, err = proc.communicate(f"p t {task.pid}\n".encode(), timeout=60)
        assert proc.returncode == 0 and b"killed 1 process(es)" in err
        assert task.wait(10) == -signal.SIGTERM
    finally:
        for p in (task, proc):
            p.kill()
            p.wait(10)


def _ignored(pid: int) -> int:
    """The process's mask of ignored signals (SigIgn in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    return 0


def test_nothing_registered_means_a_quiet_exit() -> None:
    assert _feed([]) == (0, b"")


# ----- the watchdog beside a real runner -----


def test_a_killed_watchdog_is_replaced_and_told_every_running_task(owner: Owner) -> None:
    first = owner.start("first")
    killed = owner.watchdog()
    os.kill(killed, signal.SIGKILL)
    # Once it is dead (its pipe's read end closed), the next registration finds the pipe
    # broken and starts a new watchdog; before that, the write would still succeed.
    wait_until(lambda: gone(killed), 30, "the first watchdog died")
    second = owner.start("second")
    replacement = owner.watchdog()
    owner.proc.kill()
    owner.proc.wait(30)
    wait_until(lambda: all(gone(p) for p in first + second), 5, "both tasks killed")
    wait_until(lambda: gone(replacement), 30, "the replacement watchdog exited")


def test_a_forked_child_does_not_keep_the_watchdog_waiting(owner: Owner) -> None:
    task = owner.start("task")
    owner.pids.append(int(owner.ask("fork")))  # it would hold the pipe's write end open
    owner.watchdog()
    owner.proc.kill()
    owner.proc.wait(30)
    wait_until(lambda: all(gone(p) for p in task), 5, "the task killed")


def test_closing_the_handle_without_a_start_does_nothing() -> None:
    handle = watchdog.Watchdog(1.0)
    handle.ended("never-started")
    handle.close()
    assert handle.pid is None
