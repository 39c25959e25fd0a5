"""Start one task process: argv + exact environment, cwd, stdio, a new session, no other fds.

``subprocess.Popen`` spends about 150 us of Python per start (it re-encodes the environment
item by item, joins argv[0] with every ``PATH`` directory, keeps bookkeeping for ``wait``), all
while holding the GIL that the engine's other threads need. On the interpreters whose private
``_posixsubprocess.fork_exec`` signature is known (CPython 3.11), ``spawn`` calls that
same primitive (vfork + exec, as Popen does without ``preexec_fn``) directly, with the
environment encoded in one pass and the ``PATH`` candidates cached; elsewhere it uses Popen.
Either way the child sees the same thing, and a failed exec raises the same ``OSError``.

The caller owns the returned pid: it must reap it (``reap`` or ``os.waitpid``).
"""

from __future__ import annotations

import builtins
import functools
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["reap", "spawn"]

_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()

_fork_exec: Any = None
if sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11):
    try:
        from _posixsubprocess import fork_exec as _fork_exec
    except ImportError:  # pragma: no cover - a CPython build without it
        _fork_exec = None

#: Popen objects of children started through the fallback, until they are reaped (so Popen's
#: own bookkeeping does not reap them behind the runner's back).
_POPENS: dict[int, subprocess.Popen[bytes]] = {}


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path | str,
    *,
    stdin: int,
    stdout: int,
    stderr: int,
) -> int:
    """Start ``argv`` in a new session and return its pid.

    Args:
        argv: the argv; argv[0] is looked up on ``env["PATH"]`` when it has no '/'.
        env: the complete environment.
        cwd: the working directory.
        stdin: descriptor for the child's stdin.
        stdout: descriptor for the child's stdout.
        stderr: descriptor for the child's stderr.

    Returns:
        The child's pid (the caller reaps it).

    Raises:
        OSError: the program or the directory is missing, not executable, ...
        ValueError: argv is empty, or an environment name contains '='.
    """
    if not argv:
        raise ValueError("argv is empty")
    if _fork_exec is None:
        return _spawn_popen(argv, env, cwd, stdin, stdout, stderr)
    args = [os.fsencode(a) for a in argv]
    env_list = _env_list(env)
    candidates = _candidates(args[0], env.get("PATH"))
    cwd_s = os.fsdecode(cwd)
    sys.audit("subprocess.Popen", argv[0], list(argv), cwd_s, env)  # as Popen would
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            pid: int = _fork_exec(
                args, candidates, True, (err_w,), cwd_s, env_list,
                stdin, -1, -1, stdout, -1, stderr, err_r, err_w,
                True, True, -1, None, None, None, -1, None, True,
            )  # fmt: skip
        finally:
            os.close(err_w)
        # The child writes here only when exec fails; exec closes it (CLOEXEC) on success.
        report = _read_all(err_r)
    finally:
        os.close(err_r)
    if report:
        os.waitpid(pid, 0)  # the child exited with 255 right after writing the report
        raise _child_error(report, argv[0], cwd_s)
    return pid


def reap(pid: int, block: bool = True) -> int | None:
    """Reap a child started by ``spawn``: its returncode (negative: killed by that signal).

    Args:
        pid: the child's pid.
        block: wait for it to exit; else return None when it is still running.

    Returns:
        The returncode, or None (not exited, with ``block=False``).
    """
    popen = _POPENS.get(pid)
    if popen is not None:
        code = popen.wait() if block else popen.poll()
        if code is not None:
            _POPENS.pop(pid, None)
        return code
    try:
        done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): Popen reports 0 too
        return 0
    if done == 0:
        return None
    return os.waitstatus_to_exitcode(status)


#: Encoded ``NAME=value`` entries by (name, value): most of every task's environment is the
#: endpoint's own, the same for each task. Bounded: emptied when full.
_ENCODED: dict[tuple[str, str], bytes] = {}
_ENCODED_MAX = 8192


def _env_list(env: Mapping[str, str]) -> list[bytes]:
    """``NAME=value`` entries encoded as ``os.fsencode`` does (half the time, cached)."""
    cache = _ENCODED
    if len(cache) > _ENCODED_MAX:
        cache.clear()
    out = []
    for item in env.items():
        entry = cache.get(item)
        if entry is None:
            name, value = item
            if "=" in name:
                raise ValueError(f"illegal environment variable name {name!r}")
            entry = cache[item] = f"{name}={value}".encode(_FS_ENCODING, _FS_ERRORS)
        out.append(entry)
    return out


@functools.lru_cache(maxsize=256)
def _candidates(program: bytes, path: str | None) -> tuple[bytes, ...]:
    """The paths exec tries, in order, as ``os.execvpe`` and Popen build them."""
    if os.path.dirname(program):
        return (program,)
    dirs = os.get_exec_path({} if path is None else {"PATH": path})
    return tuple(os.path.join(os.fsencode(d), program) for d in dirs)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 50000):
        chunks.append(chunk)
    return b"".join(chunks)


def _child_error(report: bytes, program: str, cwd: str) -> Exception:
    """Rebuild the exception the child reported (``name:hex errno:description``), as Popen."""
    try:
        name, hex_errno, message = report.split(b":", 2)
        kind = getattr(builtins, name.decode("ascii"), subprocess.SubprocessError)
        text = message.decode(errors="replace")
    except ValueError:
        return subprocess.SubprocessError(f"bad exception data from child: {report!r}")
    if isinstance(kind, type) and issubclass(kind, OSError) and hex_errno:
        number = int(hex_errno, 16)
        # "noexec": the child failed before exec, i.e. in chdir.
        where = cwd if text == "noexec" else program
        return kind(number, os.strerror(number) if number else text, where)
    if isinstance(kind, type) and issubclass(kind, Exception):
        return kind(text)
    return subprocess.SubprocessError(text)


def _spawn_popen(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path | str,
    stdin: int,
    stdout: int,
    stderr: int,
) -> int:
    popen = subprocess.Popen(
        list(argv),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=dict(env),
        start_new_session=True,
        close_fds=True,
    )
    _POPENS[popen.pid] = popen
    return popen.pid
