"""The embedded endpoint keeps sandboxes only when asked, or for failed tasks."""

from __future__ import annotations

from pathlib import Path

from mpiengine_sdk import Executor, ShellFunction


def add(a, b):
    return a + b


def runs(home: Path) -> list[Path]:
    root = home / "embedded"
    return sorted(root.iterdir()) if root.is_dir() else []


def test_a_fresh_workdir_is_removed_when_every_task_succeeded(tmp_path, monkeypatch):
    monkeypatch.setenv("MPIENGINE_HOME", str(tmp_path))
    with Executor(nodes=2) as ex:
        shell = ex.submit(ShellFunction("echo hi")).result(timeout=120)
        assert ex.submit(add, 1, 2).result(timeout=120) == 3
        assert Path(shell.sandbox).is_dir()  # there while the executor runs
    assert runs(tmp_path) == []


def test_failed_tasks_sandboxes_stay_and_successful_ones_go(tmp_path, monkeypatch):
    monkeypatch.setenv("MPIENGINE_HOME", str(tmp_path))
    with Executor(nodes=2) as ex:
        good = ex.submit(ShellFunction("echo fine")).result(timeout=120)
        bad = ex.submit(ShellFunction("echo broken >&2; exit 3")).result(timeout=120)
    assert not Path(good.sandbox).exists()
    assert Path(bad.stderr_path).read_text() == "broken\n"
    (run,) = runs(tmp_path)
    assert sorted(p.name for p in (run / "tasks").iterdir()) == [bad.task_id]


def test_a_given_workdir_or_keep_sandboxes_keeps_everything(tmp_path, monkeypatch):
    with Executor(nodes=2, workdir=tmp_path / "mine") as ex:
        kept = ex.submit(ShellFunction("echo kept")).result(timeout=120)
    assert Path(kept.stdout_path).read_text() == "kept\n"
    monkeypatch.setenv("MPIENGINE_HOME", str(tmp_path / "home"))
    with Executor(nodes=2, keep_sandboxes=True) as ex:
        also = ex.submit(ShellFunction("echo also")).result(timeout=120)
    assert Path(also.stdout_path).read_text() == "also\n"
