"""Sandbox names and directories: nothing escapes the root, every attempt is fresh."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpiengine.runner import sandbox
from mpiengine.runner.sandbox import (
    SandboxRoot,
    create_sandbox,
    remove_sandbox,
    write_files,
)
from mpiengine.taskid import validate_task_id
from mpiengine_sdk.errors import InvalidTaskId

BAD_IDS = ["../x", "/abs", "a/b", ".hidden", "", "x" * 200, "-rf", "a..b", "..", ".", "a\0b", "a b"]


@pytest.mark.parametrize("task_id", BAD_IDS)
def test_unsafe_ids_are_refused_with_what_is_allowed(tmp_path: Path, task_id: str) -> None:
    with pytest.raises(InvalidTaskId, match="letters, digits"):
        validate_task_id(task_id)
    with pytest.raises(InvalidTaskId):
        create_sandbox(tmp_path / "root", task_id)
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["root"])


def test_non_string_id_is_refused() -> None:
    with pytest.raises(InvalidTaskId, match="string"):
        validate_task_id(42)


@pytest.mark.parametrize("task_id", ["a", "A_1", "task-0001.retry", "x" * 128, "0", "_"])
def test_safe_ids_pass_unchanged(task_id: str) -> None:
    assert validate_task_id(task_id) == task_id


@given(st.text(max_size=140))
def test_any_accepted_id_is_one_plain_path_component(task_id: str) -> None:
    try:
        validate_task_id(task_id)
    except InvalidTaskId:
        return
    assert 1 <= len(task_id) <= 128
    assert Path(task_id).name == task_id and os.sep not in task_id
    assert not task_id.startswith((".", "-")) and ".." not in task_id


def test_create_gives_private_fresh_attempt_directories(tmp_path: Path) -> None:
    root = tmp_path / "tasks"
    first = create_sandbox(root, "t1")
    assert first == (root / "t1").resolve()  # the first attempt: the task's own directory
    assert stat.S_IMODE(first.stat().st_mode) == 0o700
    (first / "stdout").write_text("attempt 1 output")
    second = create_sandbox(root, "t1")
    assert second == first / "attempt-2" and list(second.iterdir()) == []
    assert stat.S_IMODE(second.stat().st_mode) == 0o700
    assert (first / "stdout").read_text() == "attempt 1 output"  # kept for post-mortems
    assert create_sandbox(root, "t1").name == "attempt-3"


def test_a_retry_never_takes_a_name_the_task_wrote(tmp_path: Path) -> None:
    first = create_sandbox(tmp_path, "t")
    (first / "attempt-2").mkdir()  # the task's own file, by chance
    (first / "attempt-2" / "data").write_text("mine")
    retry = create_sandbox(tmp_path, "t")
    assert retry.name == "attempt-3" and list(retry.iterdir()) == []
    assert (first / "attempt-2" / "data").read_text() == "mine"


def test_a_directory_left_by_an_earlier_endpoint_makes_the_next_launch_a_retry(
    tmp_path: Path,
) -> None:
    (tmp_path / "t").mkdir(mode=0o700)
    (tmp_path / "t" / "stdout").write_text("before the restart")
    with SandboxRoot(tmp_path) as sandboxes:
        again = sandboxes.create("t")
    assert again == (tmp_path / "t" / "attempt-2").resolve() and list(again.iterdir()) == []


def test_a_first_sandbox_is_one_mkdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    for name in ("mkdir", "open", "chmod", "close"):
        real = getattr(os, name)

        def spy(*args: object, _real=real, _name=name, **kw: object) -> object:
            calls.append(_name)
            return _real(*args, **kw)

        monkeypatch.setattr(os, name, spy)
    with SandboxRoot(tmp_path) as sandboxes:
        calls.clear()
        sandboxes.create("t")
        assert calls == ["mkdir"] if not sandbox._UMASK & 0o700 else ["mkdir", "chmod"]


def test_an_unusual_umask_still_gives_owner_only_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "root").mkdir()
    old = os.umask(0o277)  # no write for the owner: mkdir(0o700) would make 0o500
    try:
        assert sandbox._read_umask() == 0o277
        monkeypatch.setattr(sandbox, "_UMASK", 0o277)
        first = create_sandbox(tmp_path / "root", "t")
        second = create_sandbox(tmp_path / "root", "t")
    finally:
        os.umask(old)
    assert stat.S_IMODE(first.stat().st_mode) == 0o700
    assert stat.S_IMODE(second.stat().st_mode) == 0o700


def test_root_may_be_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "scratch").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "scratch")
    sandbox = create_sandbox(tmp_path / "link", "t")
    assert sandbox.is_relative_to((tmp_path / "scratch").resolve())


def test_a_planted_symlink_is_refused_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "victim").symlink_to(outside)
    with pytest.raises(FileExistsError, match="symlink"):
        create_sandbox(root, "victim")
    with pytest.raises(FileExistsError, match="symlink"):
        remove_sandbox(root, "victim")
    assert list(outside.iterdir()) == []
    assert outside.is_dir()


def test_remove_deletes_every_attempt_and_tolerates_missing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    create_sandbox(root, "t")
    sandbox = create_sandbox(root, "t")
    outside = tmp_path / "keep.txt"
    outside.write_text("keep")
    (sandbox / "link").symlink_to(outside)
    remove_sandbox(root, "t")
    assert not (root / "t").exists()
    assert outside.read_text() == "keep"
    remove_sandbox(root, "t")  # already gone: fine
    with pytest.raises(InvalidTaskId):
        remove_sandbox(root, "../root")


def test_write_files_stays_inside_and_is_private(tmp_path: Path) -> None:
    sandbox = create_sandbox(tmp_path, "t")
    write_files(sandbox, {"task.dill": b"\x80data", "sub/dir/hostfile": b"n1\n"})
    assert (sandbox / "task.dill").read_bytes() == b"\x80data"
    assert (sandbox / "sub" / "dir" / "hostfile").read_text() == "n1\n"
    assert stat.S_IMODE((sandbox / "task.dill").stat().st_mode) == 0o600
    for bad in ["../escape", "/etc/passwd", "", "a/../../b"]:
        with pytest.raises(ValueError, match="relative path"):
            write_files(sandbox, {bad: b"x"})
    (sandbox / "planted").symlink_to(tmp_path / "target")
    with pytest.raises(OSError):
        write_files(sandbox, {"planted": b"x"})
    assert not (tmp_path / "target").exists()
