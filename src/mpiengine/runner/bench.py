"""Measure the runner against this machine's raw fork/exec rate.

``python -m mpiengine.runner.bench [N [DIR]]`` prints, for N trivial tasks (``/bin/true``):

- the raw rate: ``subprocess.Popen`` + ``wait`` in a loop (one at a time, then two threads);
- the runner's rate: N tasks started at once through one ``TaskRunner``;
- the round-trip overhead: one task at a time, start -> on_complete, minus a raw Popen + wait
  that also writes stdout/stderr files into a fresh sandbox (file creation is part of the job,
  and on some filesystems it costs as much as the fork/exec).

Sandboxes are created beforehand (that is the caller's cost, not the runner's).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mpiengine.runner.process import Completion, LaunchSpec, TaskRunner
from mpiengine.runner.sandbox import create_sandbox

_ENV = {"PATH": "/usr/bin:/bin"}
_TRUE = ("/bin/true",)


def _raw(n: int, sandbox: Path) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.Popen(_TRUE, cwd=sandbox, env=_ENV, start_new_session=True).wait()
    return n / (time.perf_counter() - t0)


def _raw_files_once(sandbox: Path) -> float:
    """One raw Popen + wait that, like the runner, writes stdout/stderr into a new sandbox."""
    t0 = time.perf_counter()
    with open(sandbox / "stdout", "wb") as out, open(sandbox / "stderr", "wb") as err:
        subprocess.Popen(
            _TRUE, cwd=sandbox, env=_ENV, stdout=out, stderr=err, start_new_session=True
        ).wait()
    return time.perf_counter() - t0


def _raw_parallel(n: int, sandbox: Path, threads: int) -> float:
    def one(_: int) -> int:
        return subprocess.Popen(_TRUE, cwd=sandbox, env=_ENV, start_new_session=True).wait()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(n)))
    return n / (time.perf_counter() - t0)


def _runner_rate(n: int, root: Path) -> float:
    sandboxes = [create_sandbox(root, f"rate-{i}") for i in range(n)]
    left = threading.Semaphore(0)

    def done(c: Completion) -> None:
        assert c.returncode == 0, c
        left.release()

    runner = TaskRunner(done)
    try:
        t0 = time.perf_counter()
        for i, sandbox in enumerate(sandboxes):
            runner.start(LaunchSpec(f"rate-{i}", _TRUE, _ENV, sandbox, 60.0))
        for _ in range(n):
            left.acquire()
        return n / (time.perf_counter() - t0)
    finally:
        runner.close()


def _round_trips(n: int, root: Path) -> list[float]:
    finished = threading.Event()
    runner = TaskRunner(lambda c: finished.set())
    times = []
    try:
        for i in range(n):
            sandbox = create_sandbox(root, f"rt-{i}")
            finished.clear()
            t0 = time.perf_counter()
            runner.start(LaunchSpec(f"rt-{i}", _TRUE, _ENV, sandbox, 60.0))
            finished.wait()
            times.append(time.perf_counter() - t0)
    finally:
        runner.close()
    return times


def main(n: int = 2000, where: str | None = None) -> None:
    """Run the measurements and print them; sandboxes go to a temporary directory in ``where``.

    The default is /dev/shm when it exists: creating a file on a virtual machine's disk can
    cost more than a fork/exec, and that is the filesystem's cost, not the runner's.
    """
    if where is None and Path("/dev/shm").is_dir():
        where = "/dev/shm"
    print(f"sandboxes in {where or tempfile.gettempdir()}")
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        root = Path(tmp)
        one = create_sandbox(root, "raw")
        raw = _raw(n, one)
        raw2 = _raw_parallel(n, one, 2)
        rate = _runner_rate(n, root)
        raw_rt = [_raw_files_once(create_sandbox(root, f"raw-{i}")) for i in range(200)]
        raw_files = n / sum(_raw_files_once(create_sandbox(root, f"rawf-{i}")) for i in range(n))
        rt = _round_trips(200, root)
    med_raw, med_rt = statistics.median(raw_rt), statistics.median(rt)
    print(f"raw Popen+wait, sequential:  {raw:7.0f} tasks/s")
    print(f"raw Popen+wait, 2 threads:   {raw2:7.0f} tasks/s")
    print(f"raw, with stdout/stderr files: {raw_files:5.0f} tasks/s (sequential)")
    print(f"TaskRunner, {n} at once:    {rate:7.0f} tasks/s")
    print(
        "round trip (both write stdout/stderr files): "
        f"raw {med_raw * 1e3:.3f} ms, runner {med_rt * 1e3:.3f} ms, "
        f"overhead {(med_rt - med_raw) * 1e3:.3f} ms (medians of 200)"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000, *sys.argv[2:3])
