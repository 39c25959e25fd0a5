"""proctree: finding and killing whole process trees, including processes that try to escape."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from mpiengine.runner.proctree import find_tree, group_has_live_member, kill_tree

ENV = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*argv: str, env: dict[str, str] = ENV) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, start_new_session=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:  # a failed test must not leave its tree behind
        if proc.poll() is None:
            kill_tree(proc.pid, grace=0)
        proc.wait()


def pids_from(path: Path, count: int) -> list[psutil.Process]:
    end = time.monotonic() + 15
    while not (path.exists() and len(path.read_text().split()) >= count):
        assert time.monotonic() < end, f"{path} never listed {count} pids"
        time.sleep(0.02)
    return [psutil.Process(int(p)) for p in path.read_text().split()]


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The processes still running (a killed but unreaped zombie does not count)."""
    survivors = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                survivors.append(proc)
        except psutil.NoSuchProcess:
            continue
    for proc in survivors:  # never leave them behind, even when the assertion fails
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return survivors


def test_background_sleepers(spawn, tmp_path: Path) -> None:
    root = spawn(
        "/bin/bash", "-c", "sleep 100 & echo $! >> pids; sleep 100 & echo $! >> pids; wait"
    )
    sleepers = pids_from(tmp_path / "pids", 2)
    assert {p.pid for p in find_tree(root.pid)} == {root.pid, *(p.pid for p in sleepers)}
    killed = kill_tree(root.pid, grace=2.0)
    assert root.wait(timeout=10) == -signal.SIGTERM
    assert {k.pid for k in killed} == {root.pid, *(p.pid for p in sleepers)}
    assert {k.signal for k in killed} == {signal.SIGTERM}
    assert alive(sleepers) == []


def test_survivors_of_sigterm_get_sigkill(spawn, tmp_path: Path) -> None:
    root = spawn("/bin/bash", "-c", "trap '' TERM; sleep 100 & echo $! >> pids; wait")
    sleepers = pids_from(tmp_path / "pids", 1)
    killed = kill_tree(root.pid, grace=0.3)
    assert {k.signal for k in killed} == {signal.SIGKILL}
    assert root.wait(timeout=10) == -signal.SIGKILL
    assert alive(sleepers) == []


DOUBLE_FORK = (
    "import os, sys, time\n"
    "if os.fork() == 0:\n"
    "    if sys.argv[1] == 'setsid': os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        open('pids', 'a').write(f'{os.getpid()}\\n'); time.sleep(100)\n"
    "    os._exit(0)\n"
    "time.sleep(100)\n"
)


def test_double_forked_child_is_found_by_its_session(spawn, tmp_path: Path) -> None:
    root = spawn(sys.executable, "-c", DOUBLE_FORK, "stay")
    (daemon,) = pids_from(tmp_path / "pids", 1)
    assert daemon.ppid() != root.pid  # re-parented: no longer a descendant
    kill_tree(root.pid, grace=1.0)
    root.wait(timeout=10)
    assert alive([daemon]) == []


def test_setsid_daemon_is_found_by_the_marker(spawn, tmp_path: Path) -> None:
    env = {**ENV, "MPIENGINE_TASK_ID": "proctree-marker"}
    root = spawn(sys.executable, "-c", DOUBLE_FORK, "setsid", env=env)
    (daemon,) = pids_from(tmp_path / "pids", 1)
    marker = ("MPIENGINE_TASK_ID", "proctree-marker")
    assert daemon.pid not in {p.pid for p in find_tree(root.pid, session=root.pid)}
    assert daemon.pid in {p.pid for p in find_tree(root.pid, session=root.pid, marker=marker)}
    kill_tree(root.pid, grace=1.0, marker=marker)
    root.wait(timeout=10)
    assert alive([daemon]) == []


def test_survivors_of_a_finished_root_are_found_by_session(spawn, tmp_path: Path) -> None:
    root = spawn("/bin/bash", "-c", "sleep 100 & echo $! > pids")
    (sleeper,) = pids_from(tmp_path / "pids", 1)
    root.wait(timeout=10)
    killed = kill_tree(root.pid, grace=1.0, session=root.pid)
    assert [k.pid for k in killed] == [sleeper.pid]
    assert alive([sleeper]) == []


def test_nothing_to_kill(spawn) -> None:
    root = spawn("/bin/true")
    root.wait(timeout=10)
    assert kill_tree(root.pid, grace=0.1, session=root.pid) == []


@pytest.mark.mpi
def test_mpiexec_with_four_ranks(spawn, tmp_path: Path, mpi: str) -> None:
    root = spawn(mpi, "-n", "4", "/bin/bash", "-c", "echo $$ >> pids; exec sleep 60")
    ranks = pids_from(tmp_path / "pids", 4)
    tree = find_tree(root.pid)
    assert {p.pid for p in ranks} <= {p.pid for p in tree}
    killed = kill_tree(root.pid, grace=2.0)
    root.wait(timeout=10)
    assert {p.pid for p in tree} <= {k.pid for k in killed}
    assert alive(ranks + tree) == []


def test_a_group_of_zombies_has_no_live_member() -> None:
    # A child we do not reap yet stays a zombie in its own process group: killpg(pgid, 0)
    # still finds it, group_has_live_member must not.
    zombie = subprocess.Popen(["true"], start_new_session=True)
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        os.killpg(zombie.pid, 0)  # the group is not empty...
        assert not group_has_live_member(zombie.pid)  # ...but nothing in it lives
        assert group_has_live_member(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait(10)
        zombie.wait(10)
    assert not group_has_live_member(sleeper.pid)
