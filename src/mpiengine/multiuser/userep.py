"""A user endpoint: the process the manager starts (as root) per (principal, rendered config).

It reads its setup line from stdin, drops to the mapped account for good
(``privileges.drop_privileges``), replaces its environment, makes its private directory
``~/.mpiengine/multiuser/<endpoint>/<key>/`` (0700, the user's), builds its engine (embedded or
batch: blocks are then submitted by this process, as the user) and serves:

- stdin, one JSON object a line: ``{"task": "<encoded task>"}`` or ``{"cancel": "<id>"}``;
- stdout: ``{"ready": {...}}`` once serving (or ``{"error": "..."}`` and exit 1), then
  ``{"result": "<encoded result>"}`` per task update.

EOF on stdin (the manager closed it, or died, even by SIGKILL) ends it: running tasks are
cancelled (their results do not matter any more: the manager never acknowledged those tasks,
so the broker delivers them again) and the engine shuts down.
"""

from __future__ import annotations

import json
import os
import pwd
import sys
import threading
from pathlib import Path
from typing import IO, Any

__all__ = ["main"]


def _emit(out: IO[str], lock: threading.Lock, obj: dict[str, Any]) -> None:
    line = json.dumps(obj, separators=(",", ":")) + "\n"
    with lock:
        out.write(line)
        out.flush()


def main() -> int:
    """Run one user endpoint (see the module docstring); returns the exit status."""
    # The protocol owns the original stdout; anything else printing goes to stderr (the log).
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    lock = threading.Lock()
    try:
        setup = json.loads(sys.stdin.readline())
        account = pwd.getpwnam(str(setup["user"]))
        if account.pw_uid != int(setup["uid"]):
            raise RuntimeError(f"account {account.pw_name!r} changed uid since the mapping")
        backend, allow = _become(account, setup)
    except Exception as exc:  # any setup failure is reported, and nothing runs
        _emit(out, lock, {"error": f"{type(exc).__name__}: {exc}"})
        return 1
    return _serve(backend, allow, out, lock, setup)


def _become(account: pwd.struct_passwd, setup: dict[str, Any]) -> tuple[Any, Any]:
    # Imported while still root: the engine's modules are then loaded whatever the user may
    # read; nothing of the user's runs before the drop.
    from mpiengine.multiuser.allowlist import AllowList
    from mpiengine.multiuser.privileges import drop_privileges, private_dir, user_environment
    from mpiengine.service.backends import make_backend

    if setup["backend"] == "embedded":
        import mpiengine.embedded  # noqa: F401
    else:
        import mpiengine.slurm_endpoint  # noqa: F401
    drop_privileges(account)
    os.environ.clear()
    os.environ.update(user_environment(account, dict(setup.get("environment") or {})))
    home = Path(account.pw_dir)
    private_dir(home / ".mpiengine")
    root = home / ".mpiengine" / "multiuser"
    private_dir(root)
    workdir = private_dir(root / str(setup["endpoint"]) / str(setup["key"]))
    os.chdir(workdir)
    backend = make_backend(str(setup["backend"]), dict(setup["backend_options"]), workdir / "work")
    allow = AllowList.parse(setup["allowlist"]) if setup.get("allowlist") is not None else None
    return backend, allow


def _serve(
    backend: Any, allow: Any, out: IO[str], lock: threading.Lock, setup: dict[str, Any]
) -> int:
    from mpiengine_sdk.errors import AuthorizationError
    from mpiengine_sdk.wire import ResultMessage, TaskKind, decode_task, encode_result

    active: set[str] = set()

    def sink(msg: ResultMessage) -> None:
        if msg.state.terminal:
            active.discard(msg.task_id)
        _emit(out, lock, {"result": encode_result(msg).decode()})

    backend.start(sink)
    _emit(out, lock, {"ready": {"uid": os.getuid(), "pid": os.getpid(), "workdir": os.getcwd()}})
    for line in sys.stdin:
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if "cancel" in item:
            backend.cancel(str(item["cancel"]))
            continue
        task = decode_task(item["task"])
        if allow is not None and task.kind in (TaskKind.PYTHON, TaskKind.MPI_PYTHON):
            try:
                import dill

                allow.check_function(task.task_id, dill.loads(task.payload)[0])
            except AuthorizationError as exc:
                sink(_refused(task.task_id, exc))
                continue
            except Exception as exc:  # an unreadable payload is refused the same way
                sink(_refused(task.task_id, AuthorizationError(f"task {task.task_id}: {exc}")))
                continue
        active.add(task.task_id)
        try:
            backend.submit([task])
        except Exception as exc:
            active.discard(task.task_id)
            sink(_refused(task.task_id, exc))
    for tid in list(active):
        backend.cancel(tid)
    backend.shutdown(wait=True)
    return 0


def _refused(task_id: str, exc: Exception) -> Any:
    from mpiengine_sdk.errors import error_record
    from mpiengine_sdk.wire import error_result

    return error_result(task_id, error_record(exc))


if __name__ == "__main__":
    sys.exit(main())
