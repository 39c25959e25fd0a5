"""Benchmark a multi-user endpoint against a single-user one, in one run.

Needs root (the manager forks user endpoints and drops to the users), the local accounts
mu-alice and mu-bob (``bash ci/users.sh``) and RabbitMQ (``bash ci/rabbitmq.sh``). Starts a
throwaway relay with:

- ``single``: a plain endpoint service on the embedded engine (4 virtual nodes x 4 cores);
- ``multi``: a manager endpoint whose template gives every user endpoint the same engine.

Measures:

- first result of a new principal: a principal's first submit (``id -un``) until its result,
  which includes mapping, rendering, starting the user endpoint (fork, privilege drop, engine)
  and the task; each principal is new (``--principals`` of them, mapped alternately to
  mu-alice and mu-bob), p50 and max;
- steady state: throughput (``--tasks`` trivial tasks at once) and sequential latency p50/p95,
  single vs multi (a warm user endpoint), and the overhead of multi in percent and ms.

    python benchmarks/bench_multiuser.py [--tasks 2000 --samples 200 --principals 6] [--quick]
                                         [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The relay harness lives with the tests (tests/support/), imported from the repository.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_relay import measure  # noqa: E402

from mpiengine.multiuser.manager import MANAGER_ENGINE  # noqa: E402
from mpiengine_sdk import Executor, ShellFunction  # noqa: E402
from tests.support.relay_harness import RelayHarness  # noqa: E402

ENGINE = {"nodes": 4, "cores_per_node": 4}


def admin_files(root: Path, tag: str) -> None:
    """Mapping (benchNa -> mu-alice, benchNb -> mu-bob), template and schema. (The mapping
    language has no character classes: ``.``, ``?``, ``*``, ``|`` and groups only.)"""
    root.mkdir(parents=True, exist_ok=True)
    rules = [
        {"source": "{username}", "match": f"t{tag}-bench.*a", "output": "mu-alice"},
        {"source": "{username}", "match": f"t{tag}-bench.*b", "output": "mu-bob"},
    ]
    doc = [{"DATA_TYPE": "expression_identity_mapping#1.0.0", "mappings": rules}]
    (root / "identity_mapping.json").write_text(json.dumps(doc))
    (root / "user_config_template.yaml.j2").write_text(
        "backend: embedded\nbackend_options:\n  nodes: 4\n  cores_per_node: 4\n"
    )
    (root / "user_config_schema.json").write_text('{"type": "object"}')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000, help="throughput tasks")
    parser.add_argument("--samples", type=int, default=200, help="latency samples")
    parser.add_argument("--principals", type=int, default=6, help="new principals (first result)")
    parser.add_argument("--quick", action="store_true", help="small counts (smoke test)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.samples, args.principals = 200, 20, 2
    if os.geteuid() != 0:
        print("bench_multiuser: needs root (the manager drops to the mapped users)")
        return 2
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-mu-") as tmp, RelayHarness(Path(tmp)) as h:
        owner = h.user("owner")
        single = h.endpoint("single", owner, backend_options=ENGINE).start()
        with Executor(endpoint_id=single.endpoint_id, config=owner.client_config) as ex:
            s_tput, s_p50, s_p95 = measure(ex, args.tasks, args.samples)
        multi = h.endpoint("multi", owner, backend=MANAGER_ENGINE, heartbeat_period=1.0)
        admin_files(multi.paths.root, h.tag)
        multi.start()
        firsts = []
        for i in range(args.principals):
            who = h.user(f"bench{i}{'ab'[i % 2]}")
            h.admin.allow(multi.endpoint_id, who.name)
            with Executor(endpoint_id=multi.endpoint_id, config=who.client_config) as ex:
                start = time.perf_counter()
                out = ex.submit(ShellFunction(["id", "-un"])).result(120).stdout
                firsts.append((time.perf_counter() - start) * 1000)
                assert out == ("mu-alice\n" if i % 2 == 0 else "mu-bob\n"), out
                if i == 0:  # steady state on this (now warm) user endpoint
                    m_tput, m_p50, m_p95 = measure(ex, args.tasks, args.samples)
        multi.stop()
        single.stop()
    figures = {
        "first_result_p50_ms": statistics.median(firsts),
        "first_result_max_ms": max(firsts),
        "single_tasks_per_s": s_tput,
        "single_p50_ms": s_p50,
        "single_p95_ms": s_p95,
        "multi_tasks_per_s": m_tput,
        "multi_p50_ms": m_p50,
        "multi_p95_ms": m_p95,
        "throughput_overhead_pct": (s_tput / m_tput - 1) * 100,
        "latency_overhead_ms": m_p50 - s_p50,
    }
    print(
        f"first result of a new principal ({len(firsts)}): p50 "
        f"{figures['first_result_p50_ms']:.0f} ms, max {figures['first_result_max_ms']:.0f} ms"
    )
    print(f"{'endpoint':8} {'tasks/s':>9} {'p50 ms':>8} {'p95 ms':>8}")
    print(f"{'single':8} {s_tput:9.0f} {s_p50:8.2f} {s_p95:8.2f}")
    print(f"{'multi':8} {m_tput:9.0f} {m_p50:8.2f} {m_p95:8.2f}")
    print(
        f"overhead: throughput {figures['throughput_overhead_pct']:+.1f}%, "
        f"p50 latency {figures['latency_overhead_ms']:+.2f} ms"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
