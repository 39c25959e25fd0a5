"""Benchmark the relay path against the embedded default, in one run.

Starts throwaway relays on the local RabbitMQ (``bash ci/rabbitmq.sh``) and PostgreSQL
(``bash ci/postgres.sh``; ``--postgres URL``), each with one principal and endpoint services,
then measures, for trivial tasks:

- submit-to-result throughput: N tasks submitted at once, until every future is resolved;
- sequential round-trip latency: submit one, wait for its result, repeat (p50/p95).

Rows:

- ``embedded``: ``Executor()`` in this process (4 virtual nodes x 4 cores), shell ``true``;
- ``relay+embedded``: the same engine behind the relay (SDK -> relay -> endpoint service);
- ``relay+null``: an endpoint whose engine completes every task at once: what the relay path
  itself sustains (SDK, relay, endpoint service and RabbitMQ all on this host), with the relay's
  store on SQLite and on PostgreSQL, served by one relay process and by two (competing
  consumers on one broker and one store).

Goals (this 2-core host): relay throughput >= 2,000 tasks/s, p50 latency <= 10 ms (one relay
process, SQLite: the default set-up).

    python benchmarks/bench_relay.py [--tasks 20000 --engine-tasks 2000 --samples 200]
                                     [--postgres postgresql://user@host/db]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from mpiengine_sdk import Executor, ShellFunction

# The relay harness lives with the tests (tests/support/), imported from the repository.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.relay_harness import RelayHarness  # noqa: E402

GOAL_TPUT = 2000.0
GOAL_P50_MS = 10.0
ENGINE = {"nodes": 4, "cores_per_node": 4}
POSTGRES = os.environ.get(
    "MPIENGINE_TEST_POSTGRES", "postgresql://mpiengine:mpiengine@127.0.0.1:5432/mpiengine_test"
)
Row = tuple[float, float, float]


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


@contextlib.contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    """A store URL whose tables land in a fresh schema, dropped afterwards."""
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        try:
            yield f"{url}?options={quote(f'-csearch_path={schema}')}"
        finally:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def relay_path(root: Path, store: str, n: int, samples: int) -> tuple[Row, Row]:
    """relay+null on ``store`` with one relay process, then with a second one beside it."""
    with RelayHarness(root, relay_options={"store": store}) as harness:
        user = harness.user("bench")
        null = harness.endpoint("null", user, backend="null").start()
        with Executor(endpoint_id=null.endpoint_id, config=user.client_config) as ex:
            one = measure(ex, n, samples)
        harness.start_relay(instance="second")
        with Executor(endpoint_id=null.endpoint_id, config=user.client_config) as ex:
            two = measure(ex, n, samples)
    return one, two


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20000, help="throughput tasks (relay+null)")
    parser.add_argument("--engine-tasks", type=int, default=2000, help="tasks on real engines")
    parser.add_argument("--samples", type=int, default=200, help="latency samples")
    parser.add_argument("--postgres", default=POSTGRES, help="PostgreSQL database for the store")
    args = parser.parse_args()
    rows: dict[tuple[str, str, str], Row] = {}
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        root = Path(tmp)
        with Executor(**ENGINE, workdir=root / "embedded") as ex:
            rows["embedded", "-", "-"] = measure(ex, args.engine_tasks, args.samples)
        with RelayHarness(root / "relay") as harness:
            user = harness.user("bench")
            real = harness.endpoint("real", user, backend_options=ENGINE).start()
            with Executor(endpoint_id=real.endpoint_id, config=user.client_config) as ex:
                rows["relay+embedded", "sqlite", "1"] = measure(ex, args.engine_tasks, args.samples)
        sqlite = f"sqlite:///{root / 'null-sqlite' / 'relay.db'}"
        one, two = relay_path(root / "null-sqlite", sqlite, args.tasks, args.samples)
        rows["relay+null", "sqlite", "1"], rows["relay+null", "sqlite", "2"] = one, two
        with postgres_schema(args.postgres) as pg:
            one, two = relay_path(root / "null-pg", pg, args.tasks, args.samples)
        rows["relay+null", "postgresql", "1"], rows["relay+null", "postgresql", "2"] = one, two
    print(f"{'path':16} {'store':11} {'relays':>6} {'tasks/s':>9} {'p50 ms':>8} {'p95 ms':>8}")
    for (name, store, relays), (tput, p50, p95) in rows.items():
        print(f"{name:16} {store:11} {relays:>6} {tput:9.0f} {p50:8.2f} {p95:8.2f}")
    base = rows["embedded", "-", "-"]
    for key in (("relay+embedded", "sqlite", "1"), ("relay+null", "sqlite", "1")):
        tput, p50, _ = rows[key]
        print(
            f"ratio {key[0]}/embedded: throughput x{tput / base[0]:.2f}, p50 x{p50 / base[1]:.2f}"
        )
    tput, p50, _ = rows["relay+null", "sqlite", "1"]
    ok = tput >= GOAL_TPUT and p50 <= GOAL_P50_MS
    verdict = "PASS" if ok else "FAIL"
    print(f"relay goals (>= {GOAL_TPUT:.0f} tasks/s, p50 <= {GOAL_P50_MS:.0f} ms): {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
