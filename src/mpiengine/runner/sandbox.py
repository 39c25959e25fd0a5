"""Per-task sandbox directories: safe names, one fresh directory per attempt.

Layout under a sandbox root::

    ROOT/<task_id>/attempt-1/      first launch of the task
    ROOT/<task_id>/attempt-2/      a retry (the block was lost, the task is re-run)

Every launch gets a fresh, empty ``attempt-N`` directory, so a retry never sees (or clobbers) the
files of an earlier attempt, and the earlier attempt's stdout/stderr stay available for
post-mortems until ``remove_sandbox`` deletes the whole task directory. Task ids are checked
before they touch the filesystem, and the directories are checked again after creation (resolve +
``is_relative_to``, no symlinks), so neither a hostile id nor a planted symlink can point a
sandbox outside the root.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from mpiengine_sdk.errors import InvalidTaskId

__all__ = [
    "create_sandbox",
    "remove_sandbox",
    "task_dir",
    "validate_task_id",
    "write_files",
]

_ALLOWED = (
    "1-128 characters of letters, digits, '_', '.' and '-', not starting with '.' or '-', "
    "without '..'"
)
_TASK_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_ATTEMPT = re.compile(r"attempt-([1-9][0-9]*)")


def validate_task_id(task_id: object) -> str:
    """Check that ``task_id`` is safe to use as a directory name.

    Args:
        task_id: the candidate id.

    Returns:
        The id, unchanged.

    Raises:
        InvalidTaskId: it is not a string of 1-128 ``[A-Za-z0-9_.-]`` characters, starts with
            '.' or '-', or contains '..'.
    """
    if not isinstance(task_id, str):
        raise InvalidTaskId(f"task id must be a string, got {type(task_id).__name__}")
    if _TASK_ID.fullmatch(task_id) is None or ".." in task_id:
        shown = task_id if len(task_id) <= 40 else task_id[:40] + "..."
        raise InvalidTaskId(f"task id {shown!r} is not allowed: use {_ALLOWED}")
    return task_id


def task_dir(root: Path, task_id: str) -> Path:
    """Return ``root/<task_id>`` (the parent of the attempt directories), after validation.

    Raises:
        InvalidTaskId: see ``validate_task_id``.
    """
    return Path(root).resolve() / validate_task_id(task_id)


def create_sandbox(root: Path, task_id: str) -> Path:
    """Create a fresh, empty sandbox for one launch of ``task_id``.

    The first call creates ``root/<task_id>/attempt-1``; later calls (retries) create
    ``attempt-2``, ``attempt-3``, ... Directories are created with mode 0o700; ``root`` is created
    if missing (it may itself be a symlink, e.g. to a scratch filesystem).

    Args:
        root: the sandbox root.
        task_id: the task's id.

    Returns:
        The new attempt directory (an absolute, resolved path).

    Raises:
        InvalidTaskId: the id is not a safe name.
        FileExistsError: ``root/<task_id>`` exists but is a symlink or not a directory.
        OSError: the directories cannot be created.
    """
    base = Path(root)
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    base = base.resolve()
    tdir = task_dir(base, task_id)
    try:
        os.mkdir(tdir, 0o700)
    except FileExistsError:
        pass
    _check_real_dir(tdir, base)
    attempt = 1
    while True:
        sandbox = tdir / f"attempt-{attempt}"
        try:
            os.mkdir(sandbox, 0o700)
        except FileExistsError:
            # A retry: continue after the highest existing attempt. mkdir is exclusive, so two
            # concurrent creators never share one directory.
            attempt = max(attempt, _highest_attempt(tdir)) + 1
            continue
        # mkdir's mode is masked by the umask; make it exactly owner-only.
        os.chmod(sandbox, 0o700)
        _check_real_dir(sandbox, base)
        return sandbox


def remove_sandbox(root: Path, task_id: str) -> None:
    """Delete ``root/<task_id>`` with every attempt in it; a missing directory is not an error.

    Symlinks inside are removed, never followed.

    Raises:
        InvalidTaskId: the id is not a safe name.
        FileExistsError: ``root/<task_id>`` is a symlink or not a directory (left alone).
        OSError: deletion failed.
    """
    base = Path(root).resolve()
    tdir = task_dir(base, task_id)
    try:
        _check_real_dir(tdir, base)
    except FileNotFoundError:
        return
    shutil.rmtree(tdir)


def write_files(sandbox: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` (relative path -> content) into ``sandbox``, mode 0o600.

    Raises:
        ValueError: a path is absolute, empty or contains '..'.
        OSError: a file cannot be written (a symlink in its place is refused, not followed).
    """
    for name, content in files.items():
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"file name {name!r} must be a relative path inside the sandbox")
        path = Path(sandbox, rel)
        if len(rel.parts) > 1:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(path, flags, 0o600)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


def _check_real_dir(path: Path, base: Path) -> None:
    """Refuse ``path`` unless it is a real directory (not a symlink) that resolves under base."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise FileExistsError(
            errno.EEXIST, "exists but is a symlink or not a directory; refusing to use it", path
        )
    if not path.resolve().is_relative_to(base):
        raise FileExistsError(errno.EEXIST, f"resolves outside the sandbox root {base}", path)


def _highest_attempt(tdir: Path) -> int:
    numbers = [0]
    for name in os.listdir(tdir):
        match = _ATTEMPT.fullmatch(name)
        if match:
            numbers.append(int(match.group(1)))
    return max(numbers)
