"""Multi-user endpoint with Slurm blocks: each user endpoint submits its blocks with sbatch from
its own process, as its mapped user, so the jobs in squeue belong to mu-alice and mu-bob and
their tasks run as those users on the cluster's nodes. Needs root, the accounts (ci/users.sh),
RabbitMQ and the Slurm cluster; under CI=true a missing one fails."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpiengine.multiuser.manager import MANAGER_ENGINE
from mpiengine_sdk import Executor, ShellFunction
from tests.conftest import require
from tests.integration.test_multiuser import _accounts_ready, user_endpoints
from tests.integration.test_relay_e2e import require_broker
from tests.integration.test_slurm_blocks import conf, config
from tests.support.relay_harness import EndpointProcess, Principal, RelayHarness, wait_for

__all__ = ["conf"]

pytestmark = [pytest.mark.multiuser, pytest.mark.relay, pytest.mark.slurm]


def jobs() -> list[tuple[str, str]]:
    """(user, job name) of every job in squeue."""
    out = subprocess.run(
        ["squeue", "-h", "-o", "%u %j"], capture_output=True, text=True, timeout=20, check=True
    ).stdout
    return [tuple(line.split(" ", 1)) for line in out.splitlines() if line]  # type: ignore[misc]


@pytest.fixture(scope="module")
def harness(conf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayHarness]:
    require(_accounts_ready(), "root and the accounts mu-alice, mu-bob", "bash ci/users.sh")
    require_broker()
    with RelayHarness(tmp_path_factory.mktemp("mu-slurm")) as h:
        yield h


@pytest.fixture(scope="module")
def manager(
    harness: RelayHarness, conf: Path
) -> Iterator[tuple[EndpointProcess, dict[str, Principal]]]:
    people = {n: harness.user(n) for n in ("owner", "alice", "bob")}
    ep = harness.endpoint(
        "mu-slurm",
        people["owner"],
        backend=MANAGER_ENGINE,
        backend_options={"stop_grace": 30.0},
        heartbeat_period=1.0,
        stop_grace=5.0,
    )
    root = ep.paths.root
    root.mkdir(parents=True, exist_ok=True)
    mapping = [
        {
            "DATA_TYPE": "expression_identity_mapping#1.0.0",
            "mappings": [
                {"source": "{username}", "match": f"t{harness.tag}-(alice|bob)", "output": "mu-{0}"}
            ],
        }
    ]
    (root / "identity_mapping.json").write_text(json.dumps(mapping))
    # The admin fixes the cluster, the partition and the limits; users choose the block size.
    base = config(nodes_per_block=1, max_blocks=1, cores_per_node=2)
    base.pop("nodes_per_block")
    lines = ["backend: batch", "backend_options:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in base.items()]
    lines += [
        "  nodes_per_block: {{ nodes }}",
        "environment:",
        f"  SLURM_CONF: {json.dumps(str(conf))}",
    ]
    (root / "user_config_template.yaml.j2").write_text("\n".join(lines) + "\n")
    schema = {
        "type": "object",
        "properties": {"nodes": {"type": "integer", "minimum": 1, "maximum": 2}},
        "required": ["nodes"],
        "additionalProperties": False,
    }
    (root / "user_config_schema.json").write_text(json.dumps(schema))
    ep.start()
    for name in ("alice", "bob"):
        harness.admin.allow(ep.endpoint_id, people[name].name)
    yield ep, people
    ep.stop()
    wait_for(lambda: not user_endpoints("mu-alice") and not user_endpoints("mu-bob"), 60, "gone")
    left = [j for j in jobs() if j[1].startswith("mpiengine.") and j[0].startswith("mu-")]
    assert not left, f"batch jobs left: {left}"


def test_blocks_are_submitted_as_each_user(
    manager: tuple[EndpointProcess, dict[str, Principal]],
) -> None:
    ep, people = manager
    executors = {
        n: Executor(
            endpoint_id=ep.endpoint_id, config=people[n].client_config, user_config={"nodes": 1}
        )
        for n in ("alice", "bob")
    }
    try:
        slow = {n: ex.submit(ShellFunction(["sleep", "6"])) for n, ex in executors.items()}
        wait_for(
            lambda: (
                {u for u, name in jobs() if name.startswith("mpiengine.")} >= {"mu-alice", "mu-bob"}
            ),
            120,
            "a block of each user in squeue",
        )
        for name, ex in executors.items():
            who = ex.submit(ShellFunction(["id", "-un"])).result(180)
            assert who.stdout == f"mu-{name}\n"
            assert who.nodes and set(who.nodes) <= {"node1", "node2", "node3", "node4"}
            ended = [
                json.loads(line)
                for line in (ep.paths.root / "audit.log").read_text().splitlines()
                if f'"{who.task_id}"' in line and '"ended"' in line
            ]
            assert ended and ended[0]["job_id"] and ended[0]["local_user"] == f"mu-{name}"
            account_home = os.path.expanduser(f"~mu-{name}")
            assert Path(who.sandbox).is_relative_to(account_home)
            assert Path(who.sandbox).stat().st_uid == Path(account_home).stat().st_uid
            assert slow[name].result(180).returncode == 0
    finally:
        for ex in executors.values():
            ex.shutdown(wait=False, cancel_futures=True)
