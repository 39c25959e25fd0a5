"""Progress on long work: the SDK's progress() and mpiengine run's live line (terminal only)."""

from __future__ import annotations

import concurrent.futures
import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
import threading

import mpiengine_sdk
from mpiengine_sdk.progressbar import Counts, count, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def futures_in_every_state():
    queued, running, done, failed, cancelled = (concurrent.futures.Future() for _ in range(5))
    running.set_running_or_notify_cancel()
    done.set_result(1)
    failed.set_exception(ValueError("x"))
    cancelled.cancel()
    return [queued, running, done, failed, cancelled]


def test_count_sorts_futures_by_state():
    assert count(futures_in_every_state()) == Counts(queued=1, running=1, done=1, failed=2)
    assert Counts(1, 2, 3, 4).line() == "queued 1 running 2 done 3 failed 4"


def test_progress_yields_each_future_as_it_completes_and_draws_on_a_terminal():
    futures = [concurrent.futures.Future() for _ in range(3)]
    futures[0].set_result("first")
    screen = Terminal()
    seen = []
    for future in progress(futures, desc="work", file=screen):
        seen.append(future)
        if len(seen) == 1:  # the rest finish while the caller is looking at the first
            threading.Thread(target=futures[2].set_result, args=("x",)).start()
            threading.Thread(target=futures[1].set_exception, args=(KeyError("k"),)).start()
    assert seen[0] is futures[0]
    assert sorted(map(id, seen)) == sorted(map(id, futures))
    text = screen.getvalue()
    assert "work: 3/3" in text
    assert "queued 0 running 0 done 2 failed 1" in text
    assert "elapsed 00:0" in text


def test_progress_is_quiet_when_not_on_a_terminal():
    future = concurrent.futures.Future()
    future.set_result(1)
    log = io.StringIO()
    assert list(progress([future], file=log)) == [future]
    assert log.getvalue() == ""


def test_progress_is_the_sdk_top_level_helper():
    assert mpiengine_sdk.progress is progress


def run_cli(stderr_on_terminal: bool) -> tuple[int, str, str]:
    argv = [sys.executable, "-c", "from mpiengine.cli import main; main()", "run"]
    argv += ["--virtual-nodes", "1", "--", "sleep", "1.2"]
    if not stderr_on_terminal:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        return proc.returncode, proc.stdout, proc.stderr
    controller, terminal = pty.openpty()
    # a real terminal's size: 24 rows, 100 columns
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=terminal, text=True) as proc:
        os.close(terminal)
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        out = proc.stdout.read() if proc.stdout else ""
        rc = proc.wait(timeout=120)
    os.close(controller)
    return rc, out, b"".join(chunks).decode(errors="replace")


def test_mpiengine_run_shows_a_live_line_on_a_terminal_only():
    rc, out, err = run_cli(stderr_on_terminal=True)
    assert rc == 0, err
    assert "returncode 0" in out
    assert "mpiengine run: 0/1" in err
    assert "mpiengine run: 1/1" in err
    assert "done 1 failed 0" in err
    rc, out, err = run_cli(stderr_on_terminal=False)
    assert rc == 0, err
    assert "returncode 0" in out
    assert "mpiengine run" not in err
    assert err == ""
