"""Nothing keeps running that nobody owns.

- kill -9 of a process holding an embedded Executor: its running task's processes (the session
  and a setsid daemon carrying the task's marker) are gone within 5 s;
- the same for the endpoint service (embedded engine behind the real relay);
- ``mpiengine endpoint stop`` returns only once the service process has exited, its tasks and
  its watchdog with it;
- a normal shutdown (``shutdown()``, or interpreter exit) leaves no watchdog behind.

A process counts as gone when it is absent or a zombie (this host's PID 1 reaps slowly).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from mpiengine.cli.endpoint import endpoint as endpoint_cli
from mpiengine_sdk import Executor, ShellFunction
from tests.conftest import REPO
from tests.integration.test_relay_e2e import require_broker
from tests.support.relay_harness import Principal, RelayHarness

WATCHDOG = "mpiengine.runner.watchdog"
#: How long a killed owner's tasks may outlive it (the issue's promise).
PROMISE = 5.0

# Run by a child process: an embedded Executor runs TASK; "ready" once submitted, then it
# waits for a line on stdin ("exit": leave without shutdown; nothing: stay until killed).
OWNER = """
import sys
from mpiengine_sdk import Executor, ShellFunction
ex = Executor(nodes=1, cores_per_node=1, workdir=sys.argv[2], kill_grace=0.5)
future = ex.submit(ShellFunction(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
"""


def gone(pid: int) -> bool:
    """Absent or a zombie (State Z in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` every 20 ms; returns the seconds it took. Fails after ``timeout``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.02)
    return time.monotonic() - start


def marked_task(folder: Path) -> str:
    """A script that starts a setsid daemon (its own session, only the task's marker links it
    to the task), writes both pids (written then renamed: never read half-written), sleeps."""
    pids, tmp = shlex.quote(str(folder / "pids")), shlex.quote(str(folder / "pids.tmp"))
    return f"setsid sleep 300 & echo $$ $! > {tmp} && mv {tmp} {pids}; exec sleep 300"


def read_pids(folder: Path, timeout: float = 60.0) -> list[int]:
    path = folder / "pids"
    wait_until(path.exists, timeout, "the task wrote its pids")
    pids = [int(p) for p in path.read_text().split()]
    assert len(pids) == 2 and not any(gone(p) for p in pids)
    return pids


def watchdogs_of(pid: int) -> set[int]:
    """Pids of the watchdog processes that are children of ``pid``."""
    found = set()
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.Error):
            if WATCHDOG in child.cmdline():
                found.add(child.pid)
    return found


def kill_all(pids: list[int]) -> None:
    """Never leave test processes behind, even when an assertion failed."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def owner_process(tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(script: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", OWNER, script, str(tmp_path / "ep")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # a broken pipe to a killed owner
                    pipe.close()


def test_kill_9_of_an_embedded_executor_kills_its_running_task(
    tmp_path: Path, owner_process: Callable[[str], subprocess.Popen[str]]
) -> None:
    owner = owner_process(marked_task(tmp_path))
    pids = read_pids(tmp_path)
    (watchdog,) = watchdogs_of(owner.pid)
    try:
        owner.kill()
        owner.wait(30)
        took = wait_until(lambda: all(gone(p) for p in pids), PROMISE, "task processes gone")
        print(f"task processes gone {took:.2f} s after the owner's SIGKILL")
        wait_until(lambda: gone(watchdog), 30, "the watchdog exited after its kill")
    finally:
        kill_all([*pids, watchdog])


def test_interpreter_exit_leaves_no_task_and_no_watchdog(
    tmp_path: Path, owner_process: Callable[[str], subprocess.Popen[str]]
) -> None:
    owner = owner_process(marked_task(tmp_path))
    pids = read_pids(tmp_path)
    (watchdog,) = watchdogs_of(owner.pid)
    try:
        assert owner.stdin is not None
        owner.stdin.write("exit\n")
        owner.stdin.flush()
        assert owner.wait(60) == 0
        # The exit path (atexit) kills the task and closes the watchdog before the process ends.
        assert [p for p in [*pids, watchdog] if not gone(p)] == []
    finally:
        kill_all([*pids, watchdog])


def test_shutdown_reaps_the_watchdog(tmp_path: Path) -> None:
    before = watchdogs_of(os.getpid())
    ex = Executor(nodes=1, cores_per_node=1, workdir=tmp_path / "ep", kill_grace=0.5)
    try:
        result = ex.submit(ShellFunction(["true"])).result(60)
        assert result.returncode == 0
        (watchdog,) = watchdogs_of(os.getpid()) - before
    finally:
        ex.shutdown(wait=True)
    assert not psutil.pid_exists(watchdog)  # exited and reaped, not even a zombie


# ----- the endpoint service, behind the real relay -----


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayHarness]:
    require_broker()
    with RelayHarness(tmp_path_factory.mktemp("orphans")) as h:
        yield h


@pytest.fixture(scope="module")
def owner(harness: RelayHarness) -> Principal:
    return harness.user("owner")


ENGINE = {"nodes": 1, "cores_per_node": 1, "kill_grace": 0.5}


@pytest.mark.relay
def test_kill_9_of_the_endpoint_service_kills_its_running_task(
    harness: RelayHarness, owner: Principal, tmp_path: Path
) -> None:
    ep = harness.endpoint("ep-kill9", owner, backend_options=ENGINE, heartbeat_period=1.0)
    ep.start()
    ex = Executor(endpoint_id=ep.endpoint_id, config=owner.client_config)
    pids: list[int] = []
    try:
        ex.submit(ShellFunction(marked_task(tmp_path)))
        pids = read_pids(tmp_path)
        (watchdog,) = watchdogs_of(ep.pid)
        pids.append(watchdog)
        ep.kill(signal.SIGKILL)
        took = wait_until(lambda: all(gone(p) for p in pids[:2]), PROMISE, "task processes gone")
        print(f"task processes gone {took:.2f} s after the service's SIGKILL")
        wait_until(lambda: gone(watchdog), 30, "the watchdog exited after its kill")
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
        kill_all(pids)


@pytest.mark.relay
def test_endpoint_stop_returns_once_the_process_exited(
    harness: RelayHarness, owner: Principal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The service's exit takes 2 s more after its pid file is gone (see slow_exit_engine).
    ep = harness.endpoint(
        "ep-stop",
        owner,
        backend="tests.integration.slow_exit_engine:slow_exit",
        backend_options={**ENGINE, "exit_delay": 2.0},
        heartbeat_period=1.0,
        stop_grace=0.5,
    )
    for key, value in harness.env.items():
        if key.startswith("MPIENGINE_"):
            monkeypatch.setenv(key, value)
    # Started detached by another process, as a user would: its parent is then not this test,
    # so nothing here reaps it and an exited endpoint may stay a zombie for a while.
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    subprocess.run(
        [sys.executable, "-m", "mpiengine", "endpoint", "start", "ep-stop"] + ["--detach"],
        env={**harness.env, "PYTHONPATH": pythonpath},  # the engine module is under tests/
        check=True,
        capture_output=True,
        timeout=120,
    )
    pid = int(ep.paths.pid.read_text())
    pids = [pid]
    ex = Executor(endpoint_id=ep.endpoint_id, config=owner.client_config)
    try:
        ex.submit(ShellFunction(marked_task(tmp_path)))
        pids += read_pids(tmp_path)
        pids += watchdogs_of(pid)
        assert len(pids) == 4
        stopped = CliRunner().invoke(endpoint_cli, ["stop", "ep-stop"])
        left = [p for p in pids if not gone(p)]  # right when stop returned: no waiting
        assert stopped.exit_code == 0 and "stopped" in stopped.output, stopped.output
        assert left == [], f"still running when stop returned: {left} of {pids}"
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
        kill_all(pids)
