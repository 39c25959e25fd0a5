"""Smoke test of benchmarks/bench_multiuser.py: it runs on the real broker with the real
accounts, every principal's first task reports its own user (asserted inside the benchmark),
and it prints and writes every figure. No timing is asserted (the host may be loaded)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, require
from tests.integration.test_multiuser import _accounts_ready
from tests.integration.test_relay_e2e import require_broker

pytestmark = [pytest.mark.multiuser, pytest.mark.relay, pytest.mark.slow]


def test_bench_multiuser_quick(tmp_path: Path) -> None:
    require(_accounts_ready(), "root and the accounts mu-alice, mu-bob", "bash ci/users.sh")
    require_broker()
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_multiuser.py"), "--quick"]
        + ["--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    assert figures["first_result_p50_ms"] > 0 and figures["multi_tasks_per_s"] > 0
    assert figures["single_tasks_per_s"] > 0
    assert "first result of a new principal (2)" in proc.stdout
