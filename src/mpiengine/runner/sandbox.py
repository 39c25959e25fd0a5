"""Per-task sandbox directories: safe names, one fresh directory per attempt, one mkdir each.

Layout under a sandbox root::

    ROOT/<task_id>/                first launch of the task: the task's own directory
    ROOT/<task_id>/attempt-2/      a retry (the block was lost, the task is re-run)
    ROOT/<task_id>/attempt-3/      ...

The first launch runs in the task directory itself, so a sandbox costs one ``mkdir`` (no
separate attempt folder until a retry needs one: one directory instead of two, one syscall
instead of five). A retry gets a fresh, empty ``attempt-N`` inside it, so it never
sees (or clobbers) the files of an earlier attempt, and the earlier attempts' stdout/stderr
stay available for post-mortems until ``remove_sandbox`` deletes the whole task directory.
Task ids are checked (``mpiengine.taskid``) before they touch the filesystem; directories are
made relative to the root's descriptor, and an existing ``<task_id>`` is opened with
``O_NOFOLLOW``, so neither a hostile id nor a planted symlink can point a sandbox outside the root.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import threading
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from mpiengine.taskid import validate_task_id

__all__ = [
    "SandboxRoot",
    "create_sandbox",
    "remove_sandbox",
    "task_dir",
    "write_files",
]

_ATTEMPT = re.compile(r"attempt-([1-9][0-9]*)")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _read_umask() -> int:
    """This process's umask, read without changing it (``os.umask`` sets it, which would race
    with other threads creating files); 0o777 (assume the worst) when it cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777


#: Read once: a process sets its umask at start, if ever.
_UMASK = _read_umask()


def task_dir(root: Path, task_id: str) -> Path:
    """Return ``root/<task_id>`` (the first attempt's sandbox, and the parent of the later
    attempts' directories), after validation.

    Raises:
        InvalidTaskId: see ``validate_task_id``.
    """
    return Path(root).resolve() / validate_task_id(task_id)


def create_sandbox(root: Path, task_id: str) -> Path:
    """Create a fresh, empty sandbox for one launch of ``task_id``.

    The first call creates ``root/<task_id>``; later calls (retries) create
    ``root/<task_id>/attempt-2``, ``attempt-3``, ... Directories are created with mode 0o700;
    ``root`` is created if missing (it may itself be a symlink, e.g. to a scratch filesystem).
    To create many sandboxes under one root, keep a ``SandboxRoot`` instead: it resolves the
    root once.

    Args:
        root: the sandbox root.
        task_id: the task's id.

    Returns:
        The new, empty sandbox directory (an absolute, resolved path).

    Raises:
        InvalidTaskId: the id is not a safe name.
        FileExistsError: ``root/<task_id>`` exists but is a symlink or not a directory.
        OSError: the directories cannot be created.
    """
    with SandboxRoot(root) as sandboxes:
        return sandboxes.create(task_id)


class SandboxRoot:
    """A sandbox root held open, to create many sandboxes with a handful of syscalls each.

    The root is created if missing and resolved once, when the object is made; it is then held
    by a directory descriptor, and every directory below it is created and opened relative to
    a descriptor (``mkdirat``/``openat`` with ``O_NOFOLLOW``), so a symlink planted at
    ``<task_id>`` is refused and nothing can redirect a sandbox outside the root, without
    resolving paths again for each task. If the root directory is deleted meanwhile, it is
    created again at its original path.

    Args:
        root: the sandbox root (it may be a symlink, e.g. to a scratch filesystem).

    Raises:
        OSError: the root cannot be created or opened.
    """

    def __init__(self, root: Path) -> None:
        self._root = Path(root)
        self._lock = threading.Lock()
        self._fd = -1
        self._prefix = ""
        self.path = self._open()

    def _open(self) -> Path:
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self._root.resolve()
        fd = os.open(path, _DIR_FLAGS)
        old, self._fd = self._fd, fd
        if old >= 0:
            os.close(old)
        self._prefix = str(path)
        return path

    def __enter__(self) -> SandboxRoot:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the root's descriptor (idempotent)."""
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def create(self, task_id: str) -> Path:
        """Create the next sandbox of ``task_id`` as ``create_sandbox`` does.

        Returns:
            ``<root>/<task_id>`` for the first attempt, ``<root>/<task_id>/attempt-N`` for
            a retry (absolute; under the root as resolved at creation).

        Raises:
            InvalidTaskId, FileExistsError, OSError: as ``create_sandbox``.
        """
        validate_task_id(task_id)
        fd = self._fd
        try:
            name = self._create_in(fd, task_id)
        except FileNotFoundError:  # the root was deleted under us: recreate it, once
            with self._lock:
                if self._fd == fd and fd >= 0:
                    self.path = self._open()
            name = self._create_in(self._fd, task_id)
        if name is None:
            return Path(f"{self._prefix}/{task_id}")
        return Path(f"{self._prefix}/{task_id}/{name}")

    def _create_in(self, root_fd: int, task_id: str) -> str | None:
        """Make the next sandbox: None for the task directory itself (a first attempt),
        else the name of the new attempt directory in it."""
        if root_fd < 0:
            raise ValueError("the sandbox root is closed")
        try:
            os.mkdir(task_id, 0o700, dir_fd=root_fd)
        except FileExistsError:
            pass
        else:
            # A new directory (mkdir never follows a symlink); the usual umask leaves 0o700
            # as it is, so the chmod is rarely needed.
            if _UMASK & 0o700:
                os.chmod(task_id, 0o700, dir_fd=root_fd)
            return None
        try:
            tdir = os.open(task_id, _DIR_FLAGS, dir_fd=root_fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            raise FileExistsError(
                errno.EEXIST,
                "exists but is a symlink or not a directory; refusing to use it",
                f"{self._prefix}/{task_id}",
            ) from exc
        try:
            return _new_attempt(tdir)
        finally:
            os.close(tdir)


def _new_attempt(tdir: int) -> str:
    """Create the next ``attempt-N`` (N >= 2: the task directory itself was the first) in the
    task directory open as ``tdir``; its name."""
    attempt = 2
    while True:
        name = f"attempt-{attempt}"
        try:
            os.mkdir(name, 0o700, dir_fd=tdir)
        except FileExistsError:
            # A retry: continue after the highest existing attempt. mkdir is exclusive, so two
            # concurrent creators never share one directory.
            attempt = max(attempt, _highest_attempt(tdir)) + 1
            continue
        # mkdir's mode is masked by the umask; make it exactly owner-only. The name cannot be
        # swapped for a symlink meanwhile: only this user can write in the 0o700 parent.
        os.chmod(name, 0o700, dir_fd=tdir)
        return name


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


def _highest_attempt(tdir: int) -> int:
    numbers = [0]
    for name in os.listdir(tdir):
        match = _ATTEMPT.fullmatch(name)
        if match:
            numbers.append(int(match.group(1)))
    return max(numbers)
