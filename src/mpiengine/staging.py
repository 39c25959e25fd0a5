"""File staging for shell and MPI tasks: fsspec URLs into the sandbox before, out after.

A task that names files to stage runs as ``python -m mpiengine.staging SANDBOX -- ARGV...``: this
program reads ``SANDBOX/staging.json`` (``{"in": {path: url}, "out": {glob: url}}``), copies
each input URL to its path in the sandbox, runs ARGV (the launcher line and command, as the
task would have run without staging) as its child, then copies every sandbox file matching each
output glob into its destination URL (a folder), and writes ``SANDBOX/staging-report.json``:
each file's path, URL, bytes and seconds, and the first error naming the file. A failed
stage-in never runs the command. The exit code is the command's, or 1 when staging failed after
a command that exited 0.

Any protocol fsspec knows works (``file://``, ``ftp://``, ``s3://`` with s3fs, ...); the
endpoint needs fsspec (``pip install 'mpiengine[staging]'``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = [
    "REPORT",
    "SPEC",
    "StagingFailed",
    "main",
    "read_report",
    "redact",
    "stage_in",
    "stage_out",
]

#: The staging request, written into the sandbox by the endpoint.
SPEC = "staging.json"
#: What was staged, written by this program.
REPORT = "staging-report.json"


class StagingFailed(Exception):
    """A file could not be staged; the message names it."""


def redact(url: str) -> str:
    """``url`` with the password of its userinfo (``ftp://user:secret@host``) hidden."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.partition("@")
    if not sep or not at or ":" not in userinfo or "/" in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def stage_in(files: dict[str, str], sandbox: Path, report: list[dict[str, Any]]) -> None:
    """Copy each ``url`` to ``sandbox/path``, appending a record per file to ``report``.

    Raises:
        StagingFailed: naming the URL and the problem.
    """
    for path, url in files.items():
        target = sandbox / path
        began = time.monotonic()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fs, remote = _fs(url)
            fs.get_file(remote, str(target))
            size = target.stat().st_size
        except Exception as exc:
            raise StagingFailed(
                f"stage_in of {redact(url)} to {path} failed: {type(exc).__name__}: {exc}"
            ) from exc
        report.append(
            {"path": path, "url": redact(url), "bytes": size, "seconds": time.monotonic() - began}
        )


def stage_out(files: dict[str, str], sandbox: Path, report: list[dict[str, Any]]) -> None:
    """Copy every sandbox file matching each glob into its destination folder URL.

    Raises:
        StagingFailed: a glob matched nothing, or a copy failed; naming the file.
    """
    for pattern, url in files.items():
        matches = sorted(p for p in sandbox.glob(pattern) if p.is_file())
        if not matches:
            raise StagingFailed(f"stage_out: no file in the sandbox matches {pattern!r}")
        fs, folder = _fs(url)
        for local in matches:
            name = local.relative_to(sandbox).as_posix()
            dest = redact(f"{url.rstrip('/')}/{local.name}")
            began = time.monotonic()
            try:
                fs.makedirs(folder, exist_ok=True)
                fs.put_file(str(local), f"{folder.rstrip('/')}/{local.name}")
            except Exception as exc:
                raise StagingFailed(
                    f"stage_out of {name} to {dest} failed: {type(exc).__name__}: {exc}"
                ) from exc
            report.append(
                {
                    "path": name,
                    "url": dest,
                    "bytes": local.stat().st_size,
                    "seconds": time.monotonic() - began,
                }
            )


def read_report(sandbox: Path) -> dict[str, Any] | None:
    """The staging report of a sandbox, None when there is none (or it is unreadable)."""
    try:
        report = json.loads((sandbox / REPORT).read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def _write_report(sandbox: Path, report: dict[str, Any]) -> None:
    tmp = sandbox / (REPORT + ".tmp")
    tmp.write_text(json.dumps(report))
    os.replace(tmp, sandbox / REPORT)


def main(argv: list[str] | None = None) -> int:
    """``SANDBOX -- ARGV...``: stage in, run ARGV, stage out; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m mpiengine.staging SANDBOX -- ARGV...", file=sys.stderr)
        return 2
    sandbox, command = Path(args[0]), args[2:]
    spec = json.loads((sandbox / SPEC).read_text())
    report: dict[str, Any] = {"in": [], "out": [], "error": ""}
    try:
        stage_in(dict(spec.get("in", {})), sandbox, report["in"])
    except StagingFailed as exc:
        report["error"] = str(exc)
        _write_report(sandbox, report)
        print(f"mpiengine: {exc}", file=sys.stderr)
        return 1
    _write_report(sandbox, report)  # a killed command still leaves what came in
    rc = subprocess.call(command)
    try:
        stage_out(dict(spec.get("out", {})), sandbox, report["out"])
    except StagingFailed as exc:
        report["error"] = str(exc)
        print(f"mpiengine: {exc}", file=sys.stderr)
        rc = rc or 1
    _write_report(sandbox, report)
    return rc


if __name__ == "__main__":
    sys.exit(main())
