"""Sandbox retention rules on a fake clock, and gc on real folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpiengine.cli import main
from mpiengine.retention import (
    LEDGER,
    Delivery,
    EndpointRetention,
    Sandbox,
    collect,
    plan,
    read_ledger,
    record_delivery,
    remove_empty_run,
    scan,
)
from mpiengine_sdk import ConfigError
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import ResultMessage

DAY = 86400.0


def box(task_id: str, size: int, delivered_at: float | None, ok: bool = True) -> Sandbox:
    delivery = None if delivered_at is None else Delivery(task_id, delivered_at, ok)
    return Sandbox(Path("/w/tasks") / task_id, task_id, size, delivery)


def ids(sandboxes) -> list[str]:
    return [s.task_id for s in sandboxes]


def test_age_rule_removes_delivered_sandboxes_older_than_max_age_only():
    boxes = [box("old", 10, 0.0), box("young", 10, 5 * DAY), box("running", 10, None)]
    assert ids(plan(boxes, now=7 * DAY, max_age=7 * DAY, max_bytes=None)) == ["old"]
    assert ids(plan(boxes, now=7 * DAY - 1, max_age=7 * DAY, max_bytes=None)) == []
    assert ids(plan(boxes, now=100 * DAY, max_age=7 * DAY, max_bytes=None)) == ["old", "young"]


def test_size_rule_removes_oldest_deliveries_first_until_under_the_limit():
    boxes = [
        box("c", 30, 3.0),
        box("a", 30, 1.0),
        box("running", 50, None),
        box("b", 30, 2.0),
    ]  # 140 bytes in all
    assert ids(plan(boxes, now=10.0, max_age=None, max_bytes=140)) == []
    assert ids(plan(boxes, now=10.0, max_age=None, max_bytes=110)) == ["a"]
    assert ids(plan(boxes, now=10.0, max_age=None, max_bytes=80)) == ["a", "b"]
    # Never a running task's, even when the limit cannot be met without it.
    assert ids(plan(boxes, now=10.0, max_age=None, max_bytes=0)) == ["a", "b", "c"]


def test_age_and_size_rules_together_count_what_age_already_freed():
    boxes = [box("a", 60, 1.0), box("b", 30, 2.0), box("c", 30, 9.0)]
    assert ids(plan(boxes, now=10.0, max_age=8.5, max_bytes=59)) == ["a", "b"]
    assert ids(plan(boxes, now=10.0, max_age=8.5, max_bytes=60)) == ["a"]


def make_sandbox(workdir: Path, task_id: str, size: int) -> Path:
    path = workdir / "tasks" / task_id
    path.mkdir(parents=True)
    (path / "stdout").write_bytes(b"x" * size)
    return path


def deliver(workdir: Path, task_id: str, at: float, ok: bool = True) -> None:
    msg = ResultMessage(
        task_id=task_id,
        state=TaskState.COMPLETED if ok else TaskState.FAILED,
        returncode=0 if ok else 1,
    )
    record_delivery(workdir, msg, now=at)


def test_collect_removes_whole_task_folders_and_reports_what_it_freed(tmp_path):
    old = make_sandbox(tmp_path, "old", 1000)
    young = make_sandbox(tmp_path, "young", 500)
    running = make_sandbox(tmp_path, "running", 2000)
    deliver(tmp_path, "old", 100.0)
    deliver(tmp_path, "young", 900.0, ok=False)
    clock = lambda: 1000.0  # noqa: E731
    dry = collect(tmp_path, max_age=500.0, max_bytes=None, clock=clock, dry_run=True)
    assert ids(dry.removed) == ["old"] and old.exists()
    assert dry.summary(dry_run=True) == "would remove 1 sandboxes, would free 1.0 kB; 2 kept"
    report = collect(tmp_path, max_age=500.0, max_bytes=None, clock=clock)
    assert report.summary() == "removed 1 sandboxes, freed 1.0 kB; 2 kept"
    assert not old.exists() and young.exists() and running.exists()
    report = collect(tmp_path, max_age=None, max_bytes=0, clock=clock)
    assert ids(report.removed) == ["young"] and report.freed == 500
    assert running.exists()  # undelivered: never touched


def test_collect_never_follows_a_symlink_or_touches_foreign_names(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    work = tmp_path / "work"
    (work / "tasks").mkdir(parents=True)
    os.symlink(outside, work / "tasks" / "linked")
    (work / "tasks" / ".hidden").mkdir()
    deliver(work, "linked", 0.0)
    deliver(work, ".hidden", 0.0)
    report = collect(work, max_age=0.0, max_bytes=0, clock=lambda: 10.0)
    assert report.removed == ()
    assert (outside / "precious").read_text() == "keep"
    assert (work / "tasks" / ".hidden").is_dir()


def test_the_ledger_keeps_the_last_delivery_and_skips_bad_lines(tmp_path):
    deliver(tmp_path, "t1", 1.0, ok=False)
    deliver(tmp_path, "t1", 2.0, ok=True)
    with open(tmp_path / LEDGER, "a") as ledger:
        ledger.write("garbage\nt2\tnot-a-time\t1\n")
    assert read_ledger(tmp_path) == {"t1": Delivery("t1", 2.0, True)}


def test_collect_refuses_a_folder_that_is_not_a_work_folder_and_bad_limits(tmp_path):
    with pytest.raises(ConfigError) as info:
        collect(tmp_path, max_age=1.0, max_bytes=None)
    assert str(info.value).startswith(f"workdir: {tmp_path} has no tasks/ folder")
    (tmp_path / "tasks").mkdir()
    with pytest.raises(ConfigError, match=r"^max_age: must be >= 0 seconds, got -1"):
        collect(tmp_path, max_age=-1, max_bytes=None)
    with pytest.raises(ConfigError, match=r"^max_bytes: must be >= 0 bytes, got -5"):
        collect(tmp_path, max_age=None, max_bytes=-5)


def test_an_empty_run_folder_goes_only_once_idle_for_max_age(tmp_path):
    run = tmp_path / "run"
    (run / "tasks").mkdir(parents=True)
    deliver(run, "t", 0.0)
    mtime = (run / LEDGER).stat().st_mtime
    assert not remove_empty_run(run, max_age=60.0, clock=lambda: mtime + 59.0)
    make_sandbox(run, "t", 1)
    assert not remove_empty_run(run, max_age=60.0, clock=lambda: mtime + 61.0)  # not empty
    assert scan(run)
    (run / "tasks" / "t" / "stdout").unlink()
    (run / "tasks" / "t").rmdir()
    assert remove_empty_run(run, max_age=60.0, clock=lambda: mtime + 61.0)
    assert not run.exists()


def test_gc_command_cleans_a_workdir_and_says_what_it_freed(tmp_path):
    make_sandbox(tmp_path, "done", 2000)
    make_sandbox(tmp_path, "live", 10)
    deliver(tmp_path, "done", 0.0)
    runner = CliRunner()
    result = runner.invoke(main, ["gc", "--workdir", str(tmp_path), "--max-age", "0", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"{tmp_path}: would remove 1 sandboxes, would free 2.0 kB; 1 kept",
        "total would free: 2000 bytes",
    ]
    result = runner.invoke(main, ["gc", "--workdir", str(tmp_path), "--max-age", "0"])
    assert result.output.splitlines()[-1] == "total freed: 2000 bytes"
    assert not (tmp_path / "tasks" / "done").exists()
    assert (tmp_path / "tasks" / "live").exists()
    result = runner.invoke(main, ["gc"])
    assert result.exit_code == 2
    assert "name what to clean: --workdir DIR, --endpoint NAME or --embedded" in result.output


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def result(task_id: str, ok: bool = True) -> ResultMessage:
    return ResultMessage(
        task_id=task_id,
        state=TaskState.COMPLETED if ok else TaskState.FAILED,
        returncode=0 if ok else 1,
    )


def test_a_running_endpoint_collects_by_age_at_most_once_per_interval(tmp_path):
    clock = FakeClock(1000.0)
    policy = EndpointRetention(
        tmp_path, keep=True, owned=False, max_age=100.0, interval=10.0, clock=clock
    )
    first = make_sandbox(tmp_path, "first", 10)
    policy.delivered(result("first"))  # t=1000: too soon after start for a collection
    second = make_sandbox(tmp_path, "second", 10)
    clock.now = 1105.0
    running = make_sandbox(tmp_path, "running", 10)
    policy.delivered(result("second", ok=False))  # a collection runs: "first" is 105 s old
    policy.wait()
    assert not first.exists()
    assert second.exists() and running.exists()
    clock.now = 1210.0
    policy.delivered(ResultMessage(task_id="running", state=TaskState.RUNNING))  # no delivery
    policy.wait()
    assert second.exists()  # a progress update starts nothing
    policy.finish()  # keep=True: nothing more at shutdown
    assert second.exists() and running.exists()


def test_retention_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"^sandbox_max_age: must be a number >= 0 or None"):
        EndpointRetention(tmp_path, keep=False, owned=False, max_age=-1)
    with pytest.raises(ConfigError, match=r"^sandbox_max_bytes: .*got '1G'"):
        EndpointRetention(tmp_path, keep=False, owned=False, max_bytes="1G")  # type: ignore[arg-type]


def test_an_endpoint_service_keeps_sandboxes_a_week_unless_told(tmp_path):
    from mpiengine.service.backends import SERVICE_SANDBOX_MAX_AGE, make_backend

    assert SERVICE_SANDBOX_MAX_AGE == 7 * DAY
    embedded = make_backend("embedded", {"nodes": 1}, tmp_path / "a")
    assert embedded._retention.max_age == 7 * DAY  # type: ignore[attr-defined]
    assert embedded._retention.keep  # type: ignore[attr-defined]
    told = make_backend(
        "embedded",
        {"nodes": 1, "sandbox_max_age": None, "sandbox_max_bytes": 10**9},
        tmp_path / "b",
    )
    assert told._retention.max_age is None  # type: ignore[attr-defined]
    assert told._retention.max_bytes == 10**9  # type: ignore[attr-defined]
    batch_options = {"provider": "local", "nodes_per_block": 1, "cores_per_node": 1}
    batch = make_backend("batch", batch_options | {"sandbox_max_bytes": 5}, tmp_path / "c")
    assert batch._retention.max_age == 7 * DAY  # type: ignore[attr-defined]
    assert batch._retention.max_bytes == 5  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"^sandbox_max_age: must be a number >= 0 or None"):
        make_backend("batch", batch_options | {"sandbox_max_age": "soon"}, tmp_path / "d")
