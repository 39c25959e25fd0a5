"""spawn/reap: the direct fork/exec path and its Popen fallback behave the same."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpiengine.runner import spawn as spawn_mod
from mpiengine.runner.spawn import reap, spawn

PATH = f"{Path(sys.executable).parent}:/usr/bin:/bin"


@pytest.fixture(params=["direct", "popen"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "popen":
        monkeypatch.setattr(spawn_mod, "_fork_exec", None)
    yield request.param


def run(tmp_path: Path, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        pid = spawn(argv, env or {"PATH": PATH}, tmp_path, stdin=null, stdout=out, stderr=out)
    finally:
        os.close(out)
        os.close(null)
    return reap(pid), (tmp_path / "out").read_text()


def test_exact_env_cwd_and_new_session(tmp_path: Path, mode: str) -> None:
    script = 'echo "$PWD $ONLY $HOME"; ps -o sid= -p $$; echo $$; ls /proc/self/fd'
    code, out = run(tmp_path, "bash", "-c", script, env={"PATH": PATH, "ONLY": "me"})
    assert code == 0
    head, sid, pid, *fds = out.splitlines()
    assert head == f"{tmp_path} me "
    assert sid.strip() == pid  # session leader
    assert sorted(fds) == ["0", "1", "2", "3"]  # stdio and ls's own directory descriptor


def test_returncodes_match_popen(tmp_path: Path, mode: str) -> None:
    assert run(tmp_path, "bash", "-c", "exit 7")[0] == 7
    assert run(tmp_path, "bash", "-c", "kill -TERM $$")[0] == -signal.SIGTERM


def test_failures_raise_like_popen(tmp_path: Path, mode: str) -> None:
    with pytest.raises(FileNotFoundError, match="no-such-program-mpiengine"):
        run(tmp_path, "no-such-program-mpiengine")
    with pytest.raises(FileNotFoundError, match="No such file"):
        run(tmp_path, "/nonexistent/program")
    with pytest.raises(PermissionError):
        run(tmp_path, str(tmp_path / "out"))  # not executable
    with pytest.raises(FileNotFoundError, match="absent"):
        spawn(["/bin/true"], {"PATH": PATH}, tmp_path / "absent", stdin=0, stdout=1, stderr=2)
    with pytest.raises(ValueError, match="argv is empty"):
        spawn([], {}, tmp_path, stdin=0, stdout=1, stderr=2)
    with pytest.raises(ValueError, match="variable name"):
        spawn(["/bin/true"], {"A=B": "c"}, tmp_path, stdin=0, stdout=1, stderr=2)


def test_reap_without_blocking(tmp_path: Path, mode: str) -> None:
    pid = spawn(["sleep", "30"], {"PATH": PATH}, tmp_path, stdin=0, stdout=1, stderr=2)
    try:
        assert reap(pid, block=False) is None
    finally:
        os.kill(pid, signal.SIGKILL)
        assert reap(pid) == -signal.SIGKILL
