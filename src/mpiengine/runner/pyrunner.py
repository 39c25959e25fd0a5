"""Run one Python task in its own process.

``python -m mpiengine.runner.pyrunner [--mpi] [--return-all] SANDBOX``

Reads ``SANDBOX/task.dill`` (dill bytes of ``(fn, args, kwargs)``) and calls ``fn``. Writes, by
tmp file + rename so a reader never sees half a file:

- ``value.dill``: dill bytes of the return value, on success (exit code 0);
- ``error.json`` (``{"type", "message", "traceback"}``) and, when the exception pickles,
  ``error.dill``, when the task raised (exit code 1). A return value dill cannot serialise is
  reported as type ``SerializationError``.

With ``--mpi`` every rank calls ``fn(MPI.COMM_WORLD, *args, **kwargs)``; results and exceptions
are gathered to rank 0, the only rank that writes files: ``value.dill`` holds rank 0's value,
or the list of every rank's value with ``--return-all``; ``error.json`` names the failing ranks
(``"ranks"``) and carries the lowest failing rank's exception. Each failing rank also prints its
traceback to its stderr.

A rank that raises while the others wait in a collective inside ``fn`` must not leave them
waiting until the walltime. After ``fn`` every rank enters a non-blocking barrier on a private
duplicate of the communicator (so it cannot be confused with ``fn``'s own collectives). A rank
that failed waits for that barrier at most ``--abort-after`` seconds (default 5): if every rank
arrives, the outcomes are gathered as above; if not, it writes its own ``error.json`` (when it
can reach the sandbox) and calls ``MPI_Abort``, which ends every rank.

This module imports nothing from the engine but dill (and mpi4py with ``--mpi``): it runs once
per Python task, and its start-up time is the task's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import dill

__all__ = ["main"]

#: Module names whose exception types are reported by their bare name.
_BARE_MODULES = ("builtins", "mpiengine_sdk.errors")


def main(argv: list[str] | None = None) -> int:
    """Run the task in the sandbox named by ``argv`` and return the process's exit code."""
    parser = argparse.ArgumentParser(prog="python -m mpiengine.runner.pyrunner")
    parser.add_argument("--mpi", action="store_true", help="run on every MPI rank (mpi4py)")
    parser.add_argument("--return-all", action="store_true", help="with --mpi: every rank's value")
    parser.add_argument(
        "--abort-after",
        type=float,
        default=5.0,
        help="with --mpi: seconds a failed rank waits for the others before MPI_Abort",
    )
    parser.add_argument("sandbox", type=Path)
    opts = parser.parse_args(argv)
    try:
        if opts.mpi:
            return _run_mpi(opts.sandbox, opts.return_all, opts.abort_after)
        return _run_single(opts.sandbox)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _run_single(sandbox: Path) -> int:
    outcome = _call(_read_task(sandbox), None)
    if outcome[0] == "ok":
        _write(sandbox, "value.dill", outcome[1])
        return 0
    _write_error(sandbox, outcome[1], outcome[2])
    return 1


def _run_mpi(sandbox: Path, return_all: bool, abort_after: float) -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    # Rank 0 reads the task and broadcasts it: the sandbox need not be on a shared filesystem.
    task = comm.bcast(_read_task(sandbox) if rank == 0 else None, root=0)
    control = comm.Dup()  # our own barrier and gather never match fn's collectives
    outcome = _call(task, comm, keep_value=rank == 0 or return_all)
    arrived = control.Ibarrier()
    if outcome[0] == "err" and not _wait(arrived, abort_after):
        # Others are still inside fn (most likely blocked in a collective this rank left).
        info = dict(outcome[1])
        info["message"] = (
            f"rank {rank} failed while other ranks were still running (aborted after "
            f"{abort_after:g} s); rank {rank}: {info['message']}"
        )
        info["ranks"] = [rank]
        try:
            _write_error(sandbox, info, outcome[2])
        except OSError:
            pass  # not on this node's filesystem: the traceback on stderr is the record
        sys.stderr.flush()
        comm.Abort(1)
    arrived.Wait()
    outcomes = control.gather(outcome, root=0)
    if rank != 0 or outcomes is None:
        return 0  # rank 0 reports for everyone (a non-zero rank exit would make mpiexec abort)
    failed = [(r, o) for r, o in enumerate(outcomes) if o[0] == "err"]
    if failed:
        info, payload = _merge_failures(failed)
        _write_error(sandbox, info, payload)
        return 1
    if not return_all:
        _write(sandbox, "value.dill", outcomes[0][1])
        return 0
    try:
        data = dill.dumps([dill.loads(o[1]) for o in outcomes])
    except Exception as exc:
        info, payload = _describe(_serialization_error("the list of rank values", exc))
        _write_error(sandbox, info, payload)
        return 1
    _write(sandbox, "value.dill", data)
    return 0


def _wait(request: Any, seconds: float) -> bool:
    """Whether the non-blocking ``request`` completes within ``seconds`` (polled)."""
    deadline = time.monotonic() + seconds
    while not request.Test():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def _read_task(sandbox: Path) -> bytes | BaseException:
    try:
        return (sandbox / "task.dill").read_bytes()
    except OSError as exc:
        return exc


def _call(task: bytes | BaseException, comm: Any, *, keep_value: bool = True) -> tuple[Any, ...]:
    """Load and call the task; ``("ok", value bytes)`` or ``("err", info, payload)``."""
    try:
        if isinstance(task, BaseException):
            raise task
        fn, args, kwargs = dill.loads(task)
        value = fn(*args, **kwargs) if comm is None else fn(comm, *args, **kwargs)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are task failures too
        traceback.print_exception(exc, file=sys.stderr)
        return ("err", *_describe(exc))
    if not keep_value:
        return ("ok", b"")
    try:
        return ("ok", dill.dumps(value))
    except Exception as exc:
        error = _serialization_error(f"the return value ({type(value).__qualname__})", exc)
        print(error, file=sys.stderr)
        return ("err", *_describe(error))


def _serialization_error(what: str, cause: Exception) -> BaseException:
    message = (
        f"{what} cannot be serialised with dill: {type(cause).__name__}: {cause}; "
        "return plain data (numbers, strings, lists, dicts, arrays)"
    )
    error: BaseException
    try:
        from mpiengine_sdk.errors import SerializationError

        error = SerializationError(message)
    except ImportError:  # the task's environment lacks the SDK: report the name all the same
        error = type("SerializationError", (TypeError,), {"__module__": "builtins"})(message)
    error.__cause__ = cause
    return error


def _describe(exc: BaseException) -> tuple[dict[str, Any], bytes]:
    """The error.json record of ``exc`` and its dill bytes (b"" when it does not pickle)."""
    cls = type(exc)
    module = cls.__module__
    name = cls.__qualname__ if module in _BARE_MODULES else f"{module}.{cls.__qualname__}"
    try:
        message = str(exc)
    except Exception:
        message = f"<{name}: str() failed>"
    info = {
        "type": name,
        "message": message,
        "traceback": "".join(traceback.format_exception(exc)),
    }
    try:
        payload = dill.dumps(exc)
    except Exception:
        payload = b""
    return info, payload


def _merge_failures(failed: list[tuple[int, tuple[Any, ...]]]) -> tuple[dict[str, Any], bytes]:
    ranks = [r for r, _ in failed]
    first_rank, (_, info, payload) = failed[0]
    label = f"rank {first_rank}" if len(ranks) == 1 else f"ranks {ranks}"
    merged = {
        "type": info["type"],
        "message": f"{label} failed; rank {first_rank}: {info['message']}",
        "traceback": "".join(f"--- rank {r} ---\n{o[1]['traceback']}" for r, o in failed),
        "ranks": ranks,
    }
    return merged, payload


def _write_error(sandbox: Path, info: dict[str, Any], payload: bytes) -> None:
    if payload:
        _write(sandbox, "error.dill", payload)
    _write(sandbox, "error.json", json.dumps(info).encode())


def _write(sandbox: Path, name: str, data: bytes) -> None:
    """Write ``sandbox/name`` atomically: a reader sees the whole file or none."""
    tmp = sandbox / f".{name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, sandbox / name)


if __name__ == "__main__":
    sys.exit(main())
