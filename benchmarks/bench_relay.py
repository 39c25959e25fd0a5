"""Benchmark the relay path against the embedded default, in one run.

Starts a throwaway relay on the local RabbitMQ (``bash ci/rabbitmq.sh``) with one principal and
two endpoint services, then measures, for trivial tasks:

- submit-to-result throughput: N tasks submitted at once, until every future is resolved;
- sequential round-trip latency: submit one, wait for its result, repeat (p50/p95).

Rows:

- ``embedded``: ``Executor()`` in this process (4 virtual nodes x 4 cores), shell ``true``;
- ``relay+embedded``: the same engine behind the relay (SDK -> relay -> endpoint service);
- ``relay+null``: an endpoint whose engine completes every task at once: what the relay itself
  sustains (SDK, relay, endpoint service and RabbitMQ all on this host).

Goals (this 2-core host): relay throughput >= 2,000 tasks/s, p50 latency <= 10 ms.

    python benchmarks/bench_relay.py [--tasks 20000 --engine-tasks 2000 --samples 200]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mpiengine.relay.harness import RelayHarness
from mpiengine_sdk import Executor, ShellFunction

GOAL_TPUT = 2000.0
GOAL_P50_MS = 10.0
ENGINE = {"nodes": 4, "cores_per_node": 4}


def throughput(ex: Executor, n: int) -> float:
    """Tasks per second for ``n`` trivial tasks submitted at once."""
    fn = ShellFunction(["true"])
    start = time.perf_counter()
    futures = [ex.submit(fn) for _ in range(n)]
    done, pending = concurrent.futures.wait(futures, timeout=600)
    elapsed = time.perf_counter() - start
    if pending or any(f.exception() for f in done):
        raise RuntimeError(f"{len(pending)} tasks unfinished or failed")
    return n / elapsed


def latency(ex: Executor, samples: int) -> tuple[float, float]:
    """p50 and p95 in ms of one trivial task's submit-to-result, one at a time."""
    fn = ShellFunction(["true"])
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        ex.submit(fn).result(60)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def measure(ex: Executor, n: int, samples: int) -> tuple[float, float, float]:
    """Warm up, then (throughput, p50, p95)."""
    for _ in range(20):
        ex.submit(ShellFunction(["true"])).result(60)
    p50, p95 = latency(ex, samples)
    return throughput(ex, n), p50, p95


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20000, help="throughput tasks (relay+null)")
    parser.add_argument("--engine-tasks", type=int, default=2000, help="tasks on real engines")
    parser.add_argument("--samples", type=int, default=200, help="latency samples")
    args = parser.parse_args()
    rows: dict[str, tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        root = Path(tmp)
        with Executor(**ENGINE, workdir=root / "embedded") as ex:
            rows["embedded"] = measure(ex, args.engine_tasks, args.samples)
        with RelayHarness(root / "relay") as harness:
            user = harness.user("bench")
            real = harness.endpoint("real", user, engine_options=ENGINE).start()
            null = harness.endpoint("null", user, engine="null").start()
            with Executor(endpoint_id=real.endpoint_id, config=user.client_config) as ex:
                rows["relay+embedded"] = measure(ex, args.engine_tasks, args.samples)
            with Executor(endpoint_id=null.endpoint_id, config=user.client_config) as ex:
                rows["relay+null"] = measure(ex, args.tasks, args.samples)
    print(f"{'path':16} {'tasks/s':>9} {'p50 ms':>8} {'p95 ms':>8}")
    for name, (tput, p50, p95) in rows.items():
        print(f"{name:16} {tput:9.0f} {p50:8.2f} {p95:8.2f}")
    base = rows["embedded"]
    for name in ("relay+embedded", "relay+null"):
        tput, p50, _ = rows[name]
        print(f"ratio {name}/embedded: throughput x{tput / base[0]:.2f}, p50 x{p50 / base[1]:.2f}")
    tput, p50, _ = rows["relay+null"]
    ok = tput >= GOAL_TPUT and p50 <= GOAL_P50_MS
    verdict = "PASS" if ok else "FAIL"
    print(f"relay goals (>= {GOAL_TPUT:.0f} tasks/s, p50 <= {GOAL_P50_MS:.0f} ms): {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
