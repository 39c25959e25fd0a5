"""The timeline of a real Slurm endpoint: blocks of the CI cluster, tasks on their nodes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mpiengine.cli import main
from mpiengine.retention import read_ledger
from mpiengine.slurm_endpoint import BatchEndpoint
from mpiengine.timeline_store import read_timeline
from mpiengine_sdk import Executor, ResourceSpec, ShellFunction
from tests.integration.test_slurm_blocks import (  # noqa: F401 (conf: the cluster fixture)
    conf,
    config,
    no_jobs_left,
)

pytestmark = pytest.mark.slurm


def test_a_slurm_endpoint_keeps_where_each_task_ran(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    request.getfixturevalue("conf")  # the running cluster, or skip (fail under CI)
    endpoint = BatchEndpoint(config(nodes_per_block=2, max_blocks=2), workdir=tmp_path / "ep")
    ex = Executor(backend=endpoint)
    try:
        wide = ResourceSpec(num_nodes=2, ranks_per_node=1)
        futures = [ex.submit(ShellFunction("sleep 1; hostname")) for _ in range(3)]
        futures.append(ex.submit(ShellFunction("hostname"), resource_spec=wide))
        results = [f.result(timeout=300) for f in futures]
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
        assert no_jobs_left(endpoint), "the endpoint left a batch job behind"
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    records = {r.task_id: r for r in read_timeline(tmp_path / "ep")}
    assert sorted(records) == sorted(f.task_id for f in futures)
    for future, result in zip(futures, results, strict=True):
        record = records[future.task_id]
        assert record.nodes == result.nodes  # where the result says it ran
        assert set(record.nodes) <= {"node1", "node2", "node3", "node4"}
        assert record.block  # the endpoint's block id
        assert record.started == result.started and record.ended == result.ended
        assert record.state == "completed"
    assert len(records[futures[-1].task_id].nodes) == 2
    assert (tmp_path / "ep" / "timeline-excluded.json").exists()  # written at shutdown
    assert read_timeline(tmp_path / "ep").excluded == {}  # no node failed
    # Delivered: gc may remove these sandboxes, and says so.
    assert set(read_ledger(tmp_path / "ep")) == set(records)
    out = tmp_path / "slurm.csv"
    cli = CliRunner().invoke(main, ["timeline", "--workdir", str(tmp_path / "ep"), "-o", str(out)])
    assert cli.output == f"4 tasks; timeline written to {out.resolve()}\n"
