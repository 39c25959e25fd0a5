"""Where a dispatched task's CPU goes: bare fork/exec against the embedded endpoint, same run.

For N trivial tasks (``true``) run each way, alternated ``--repeat`` times, it prints the rate and
the CPU time per task of this process and of the reaped children (``os.times()``):

- ``bare``: ``subprocess.run(["true"])`` from 2 threads, nothing else (the limit bench_core's
  dispatch goal is a fraction of);
- ``sandbox``: the same, each run first making a folder and its stdout/stderr files and running
  there (what any system that keeps a per-task sandbox must do at least);
- ``mpiengine``: the SDK Executor on an embedded endpoint of 16 one-core virtual nodes.

Bare fork/exec from two threads keeps both cores of a 2-core host busy, so every microsecond a
system adds per task costs rate in proportion; this prints how many it adds, and where (parent or
children).

    python benchmarks/bench_dispatch_cpu.py [--tasks 2000] [--repeat 3] [--workdir /dev/shm]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def measure(count: int, fn: Callable[[], None]) -> tuple[float, float, float]:
    """(tasks/s, parent CPU us per task, children CPU us per task) of one call of ``fn``."""
    before = os.times()
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    after = os.times()
    parent = (after.user - before.user + after.system - before.system) / count * 1e6
    children = (
        after.children_user - before.children_user + after.children_system - before.children_system
    ) / count * 1e6  # fmt: skip
    return count / elapsed, parent, children


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    args = parser.parse_args()
    n = args.tasks

    from mpiengine_sdk.executor import Executor
    from mpiengine_sdk.functions import ShellFunction
    from mpiengine_sdk.spec import ResourceSpec

    root = Path(tempfile.mkdtemp(prefix="bench-dispatch-cpu-", dir=args.workdir))
    executor = Executor(nodes=16, cores_per_node=1, workdir=root / "engine")
    true = ShellFunction(["true"])
    one = ResourceSpec(num_nodes=1, ranks_per_node=1)

    def bare() -> None:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda _: subprocess.run(["true"], check=False), range(n)))

    def sandbox() -> None:
        box = root / "sandbox"
        shutil.rmtree(box, ignore_errors=True)
        box.mkdir()

        def run(i: int) -> int:
            folder = box / f"t{i}"
            folder.mkdir(mode=0o700)
            with open(folder / "stdout", "wb") as out, open(folder / "stderr", "wb") as err:
                return subprocess.run(["true"], stdout=out, stderr=err, cwd=folder).returncode

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(run, range(n)))

    def engine() -> None:
        for future in [executor.submit(true, resource_spec=one) for _ in range(n)]:
            future.result()

    try:
        engine()  # warm-up: imports, first sandboxes
        print(f"{n} x `true` each way, {args.repeat} rounds; sandboxes in {root}")
        print(f"{'':12s} {'tasks/s':>8s} {'parent us':>10s} {'children us':>12s} {'total us':>9s}")
        for _ in range(args.repeat):
            rows = {}
            for name, fn in (("bare", bare), ("sandbox", sandbox), ("mpiengine", engine)):
                rows[name] = measure(n, fn)
                rate, parent, children = rows[name]
                total = parent + children
                print(f"{name:12s} {rate:8.0f} {parent:10.0f} {children:12.0f} {total:9.0f}")
            ratio = rows["mpiengine"][0] / rows["bare"][0]
            floor = rows["sandbox"][0] / rows["bare"][0]
            print(f"  mpiengine / bare {ratio:.2f}x; sandbox alone / bare {floor:.2f}x")
    finally:
        executor.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
