"""The manager backend of a multi-user endpoint: it never runs a task itself.

Configured as the endpoint service's backend (``mpiengine endpoint configure NAME --multi-user``
writes ``backend: mpiengine.multiuser.manager:ManagerBackend``), in a service run as root (or
an account with CAP_SETUID/CAP_SETGID). For each task, in this order:

1. audit ``received`` (if the audit log cannot be written: intake stops, see below);
2. map the relay-verified principal (``task.user``) to a local account (``mapping``);
3. check the allow-list (commands and scripts here; functions in the user endpoint);
4. validate the task's user variables against the schema and render the admin's template;
5. hand the task to the user endpoint of (principal, rendered config), starting it if needed
   (``userep``: a child process that drops to the account for good), audit ``started``.

A refusal at 2-4 is a FAILED result with ``AuthorizationError`` (mapping, allow-list) or
``ConfigError`` (user variables, template) whose message names the cause, audited ``refused``;
no user endpoint starts. Results from user endpoints are audited (``running``, ``ended``) and
passed on.

Audit failure: the manager holds every task it has not handed on, reports ``intake stopped``
in its status, and asks its service to stop (SIGTERM to itself): the service gives the held
tasks back to the queue, so nothing runs unaudited and nothing is lost.

User endpoints stop after ``idle_timeout`` seconds without tasks; ``shutdown`` closes their
stdin (they cancel and exit), then SIGKILLs their process groups after ``stop_grace``. A
manager killed with SIGKILL closes their stdin by dying: they stop too (not adopted on
restart); the tasks they ran were never acknowledged by the service, so the broker delivers
them again to the restarted manager.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pwd
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mpiengine.multiuser.allowlist import AllowList
from mpiengine.multiuser.audit import AuditError, AuditLog
from mpiengine.multiuser.mapping import IdentityMap
from mpiengine.multiuser.template import UserConfigTemplate
from mpiengine_sdk.backend import ResultSink
from mpiengine_sdk.errors import AuthorizationError, BackendError, ConfigError, error_record
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import ResultMessage, TaskMessage, decode_result, encode_task, error_result

__all__ = ["ManagerBackend", "UserEndpoint"]

log = logging.getLogger(__name__)


@dataclass
class _Task:
    principal: str
    account: pwd.struct_passwd
    endpoint: UserEndpoint


@dataclass
class UserEndpoint:
    """One user endpoint process (see ``userep``) and what the manager knows of it."""

    key: str
    principal: str
    account: pwd.struct_passwd
    proc: subprocess.Popen[str]
    tasks: set[str] = field(default_factory=set)
    last_active: float = field(default_factory=time.monotonic)
    ready: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    _out: queue.SimpleQueue[str | None] = field(default_factory=queue.SimpleQueue)

    def send(self, obj: Mapping[str, Any]) -> None:
        """Queue one line for its stdin (a writer thread sends it; never blocks)."""
        self._out.put(json.dumps(obj, separators=(",", ":")) + "\n")

    def close(self) -> None:
        """Close its stdin after what is queued: it cancels its tasks and exits."""
        self._out.put(None)

    def writer(self) -> None:
        """The writer thread's loop."""
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            while (line := self._out.get()) is not None:
                stdin.write(line)
                stdin.flush()
        except (OSError, ValueError):
            pass  # it exited; the reader reports that
        finally:
            with contextlib.suppress(OSError, ValueError):
                stdin.close()


class ManagerBackend:
    """A Backend that maps, checks and forwards tasks to per-user endpoints.

    Args:
        workdir: the service's work folder; the admin's files are found beside it (in the
            endpoint's folder) unless given as absolute paths.
        mapping: the identity mapping file (JSON list of mapping documents).
        template: ``user_config_template.yaml.j2``.
        schema: ``user_config_schema.json``.
        audit_log: the audit log (created 0600).
        allowlist: the allow-list file (YAML); None or a missing default file: no allow-list.
        policy_keys: engine options a rendered user config may not set.
        idle_timeout: seconds a user endpoint without tasks lives on.
        stop_grace: seconds user endpoints get to exit at shutdown before SIGKILL.
        python: the interpreter user endpoints run on.
        on_halt: called once when the audit log fails (default: SIGTERM to this process, which
            stops the endpoint service gracefully).

    Raises:
        ConfigError: a file is missing or invalid, or the audit log cannot be opened.
    """

    def __init__(
        self,
        *,
        workdir: Path,
        mapping: str = "identity_mapping.json",
        template: str = "user_config_template.yaml.j2",
        schema: str = "user_config_schema.json",
        audit_log: str = "audit.log",
        allowlist: str | None = "allowlist.yaml",
        policy_keys: Sequence[str] = ("workdir",),
        idle_timeout: float = 600.0,
        stop_grace: float = 10.0,
        python: str = sys.executable,
        on_halt: Callable[[], None] | None = None,
    ) -> None:
        root = Path(workdir).parent
        self.name = root.name
        self._root = root

        def at(p: str) -> Path:
            return Path(p) if os.path.isabs(p) else root / p

        self.identity = IdentityMap(at(mapping), self.name)
        self.template = UserConfigTemplate.from_files(at(template), at(schema), policy_keys)
        allow_path = at(allowlist) if allowlist else None
        self.allowlist = (
            AllowList.load(allow_path) if allow_path is not None and allow_path.exists() else None
        )
        try:
            self.audit = AuditLog(at(audit_log))
        except AuditError as exc:
            raise ConfigError("audit_log", str(exc)) from exc
        self.idle_timeout = idle_timeout
        self.stop_grace = stop_grace
        self.python = python
        self._on_halt = on_halt or (lambda: os.kill(os.getpid(), signal.SIGTERM))
        self._sink: ResultSink | None = None
        self._lock = threading.RLock()
        self._endpoints: dict[str, UserEndpoint] = {}
        self._tasks: dict[str, _Task] = {}
        self._held: set[str] = set()
        self._intake_error = ""
        self._closed = threading.Event()
        self._started = 0
        self._monitor: threading.Thread | None = None

    # -- Backend -----------------------------------------------------------------------------
    def start(self, sink: ResultSink) -> None:
        """Remember the sink; start the idle monitor."""
        self._sink = sink
        self._monitor = threading.Thread(target=self._watch_idle, name="mu-idle", daemon=True)
        self._monitor.start()

    def submit(self, tasks: Sequence[TaskMessage]) -> None:
        """Map, check and forward each task (see the module docstring); never raises for one
        task's refusal (that task gets a FAILED result)."""
        for task in tasks:
            with self._lock:
                self._take(task)

    def cancel(self, task_id: str) -> None:
        """Cancel a held task at once, or ask its user endpoint to cancel it."""
        with self._lock:
            if task_id in self._held:
                self._held.discard(task_id)
                self._emit(
                    ResultMessage(
                        task_id,
                        TaskState.CANCELLED,
                        error_type="TaskCancelled",
                        error_message="cancelled before it ran",
                    )
                )
                return
            entry = self._tasks.get(task_id)
        if entry is not None:
            entry.endpoint.send({"cancel": task_id})

    def shutdown(self, wait: bool = True) -> None:
        """Stop every user endpoint: close its stdin, SIGKILL its group after the grace."""
        self._closed.set()
        with self._lock:
            endpoints = list(self._endpoints.values())
            self._endpoints.clear()
        for ep in endpoints:
            ep.close()
        deadline = time.monotonic() + self.stop_grace
        for ep in endpoints:
            try:
                ep.proc.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                log.warning("user endpoint of %s did not exit in time: killing it", ep.principal)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(ep.proc.pid, signal.SIGKILL)
                ep.proc.wait()

    def status(self) -> dict[str, Any]:
        """Counts, the user endpoints, and whether intake is stopped (``last_error``)."""
        with self._lock:
            return {
                "blocks": 0,
                "nodes": 0,
                "multi_user": True,
                "intake": "stopped" if self._intake_error else "open",
                "user_endpoints": [
                    {
                        "principal": e.principal,
                        "user": e.account.pw_name,
                        "pid": e.proc.pid,
                        "tasks": len(e.tasks),
                    }
                    for e in self._endpoints.values()
                ],
                "user_endpoints_started": self._started,
                "last_error": self._intake_error,
            }

    # -- intake ------------------------------------------------------------------------------
    def _take(self, task: TaskMessage) -> None:
        tid, principal = task.task_id, task.user
        if self._intake_error:
            self._held.add(tid)
            return
        try:
            self.audit.write("received", task_id=tid, principal=principal)
        except AuditError as exc:
            self._halt(exc)
            self._held.add(tid)
            return
        account: pwd.struct_passwd | None = None
        try:
            account = self.identity.account(principal)
            if self.allowlist is not None:
                self.allowlist.check_command(task)
            config = self.template.render(task.user_config, self._reserved(principal, account))
        except (AuthorizationError, ConfigError) as exc:
            self._refuse(task, account, exc)
            return
        key = hashlib.sha256(
            json.dumps([principal, account.pw_uid, config], sort_keys=True).encode()
        ).hexdigest()[:16]
        ep = self._endpoints.get(key)
        if ep is None or ep.proc.poll() is not None:
            ep = self._spawn(key, principal, account, config)
        ep.tasks.add(tid)
        ep.last_active = time.monotonic()
        self._tasks[tid] = _Task(principal, account, ep)
        try:
            self.audit.write(
                "started",
                task_id=tid,
                principal=principal,
                local_user=account.pw_name,
                uid=account.pw_uid,
            )
        except AuditError as exc:
            ep.tasks.discard(tid)
            del self._tasks[tid]
            self._halt(exc)
            self._held.add(tid)
            return
        ep.send({"task": encode_task(task).decode()})

    @staticmethod
    def _reserved(principal: str, account: pwd.struct_passwd) -> dict[str, Any]:
        user = {
            "name": account.pw_name,
            "uid": account.pw_uid,
            "gid": account.pw_gid,
            "home": account.pw_dir,
        }
        return {"user": user, "principal": principal}

    def _refuse(self, task: TaskMessage, account: pwd.struct_passwd | None, exc: Exception) -> None:
        outcome = f"{type(exc).__name__}: {exc}"
        try:
            self.audit.write(
                "refused",
                task_id=task.task_id,
                principal=task.user,
                local_user=account.pw_name if account else "",
                uid=account.pw_uid if account else None,
                outcome=outcome,
            )
        except AuditError as err:
            self._halt(err)
        self._emit(error_result(task.task_id, error_record(exc)))

    def _halt(self, exc: AuditError) -> None:
        if self._intake_error:
            return
        self._intake_error = f"intake stopped: {exc}"
        log.error("multi-user endpoint %s: %s", self.name, self._intake_error)
        self._on_halt()

    def render_for(self, principal: str, variables: Mapping[str, Any]) -> dict[str, Any]:
        """The config a principal's user endpoint would get (``endpoint render-config``).

        Raises:
            AuthorizationError, ConfigError: as a submit would be refused.
        """
        account = self.identity.account(principal)
        return self.template.render(variables, self._reserved(principal, account))

    # -- user endpoints ----------------------------------------------------------------------
    def _spawn(
        self, key: str, principal: str, account: pwd.struct_passwd, config: Mapping[str, Any]
    ) -> UserEndpoint:
        logs = self._root / "user-endpoints"
        logs.mkdir(mode=0o700, exist_ok=True)
        err = open(logs / f"{account.pw_name}-{key}.log", "a", encoding="utf-8")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                [self.python, "-m", "mpiengine.multiuser.userep"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
                cwd="/",
                start_new_session=True,
                close_fds=True,
            )
        finally:
            err.close()
        ep = UserEndpoint(key, principal, account, proc)
        ep.send(
            {
                "user": account.pw_name,
                "uid": account.pw_uid,
                "endpoint": self.name,
                "key": key,
                "backend": config["backend"],
                "backend_options": config["backend_options"],
                "environment": config["environment"],
                "allowlist": self.allowlist.as_dict() if self.allowlist is not None else None,
            }
        )
        self._endpoints[key] = ep
        self._started += 1
        threading.Thread(target=ep.writer, name=f"mu-w-{key}", daemon=True).start()
        threading.Thread(target=self._reader, args=(ep,), name=f"mu-r-{key}", daemon=True).start()
        log.info(
            "user endpoint %s for %s as %s (uid %d): pid %d",
            key,
            principal,
            account.pw_name,
            account.pw_uid,
            proc.pid,
        )
        return ep

    def _reader(self, ep: UserEndpoint) -> None:
        stdout: IO[str] | None = ep.proc.stdout
        assert stdout is not None
        for line in stdout:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if "result" in item:
                self._on_result(ep, decode_result(item["result"]))
            elif "ready" in item:
                ep.ready = dict(item["ready"])
            elif "error" in item:
                ep.error = str(item["error"])
        code = ep.proc.wait()
        with self._lock:
            if self._endpoints.get(ep.key) is ep:
                del self._endpoints[ep.key]
            lost = [t for t in ep.tasks if t in self._tasks]
            ep.tasks.clear()
        if self._closed.is_set():
            return  # shutting down: the service gives these tasks back
        why = ep.error or f"it exited with status {code}"
        text = (
            f"the user endpoint of {ep.principal!r} as {ep.account.pw_name!r} could not run "
            f"the task: {why}"
        )
        config = ep.error.startswith("ConfigError")
        error = error_record(ConfigError("", text) if config else BackendError(text))
        for tid in lost:
            self._on_result(ep, error_result(tid, error))

    def _on_result(self, ep: UserEndpoint, msg: ResultMessage) -> None:
        with self._lock:
            entry = self._tasks.get(msg.task_id)
            if entry is not None and msg.state.terminal:
                del self._tasks[msg.task_id]
                ep.tasks.discard(msg.task_id)
                ep.last_active = time.monotonic()
        if entry is not None and (msg.state is TaskState.RUNNING or msg.state.terminal):
            refused = msg.error_type == "AuthorizationError" and "allow-list" in msg.error_message
            event = "refused" if refused else ("ended" if msg.state.terminal else "running")
            outcome = (
                msg.state.value if not msg.error_type else (f"{msg.state.value} {msg.error_type}")
            )
            try:
                self.audit.write(
                    event,
                    task_id=msg.task_id,
                    principal=entry.principal,
                    local_user=entry.account.pw_name,
                    uid=entry.account.pw_uid,
                    block_id=msg.block_id,
                    job_id=msg.job_id,
                    outcome=outcome,
                )
            except AuditError as exc:
                with self._lock:
                    self._halt(exc)  # the result still goes out: it already ran
        self._emit(msg)

    def _emit(self, msg: ResultMessage) -> None:
        assert self._sink is not None
        self._sink(msg)

    def _watch_idle(self) -> None:
        while not self._closed.wait(min(1.0, max(self.idle_timeout / 4, 0.05))):
            now = time.monotonic()
            with self._lock:
                idle = [
                    e
                    for e in self._endpoints.values()
                    if not e.tasks and now - e.last_active >= self.idle_timeout
                ]
                for e in idle:
                    del self._endpoints[e.key]
            for e in idle:
                log.info("user endpoint of %s idle: stopping it", e.principal)
                e.close()


#: The engine name ``endpoint configure --multi-user`` writes.
MANAGER_ENGINE = "mpiengine.multiuser.manager:ManagerBackend"


def render_offline(name: str, principal: str, variables: Any) -> dict[str, Any]:
    """What ``endpoint render-config`` prints: the config endpoint ``name``'s manager would
    give ``principal``'s user endpoint for ``variables`` (nothing is started).

    Raises:
        ConfigError: not a multi-user endpoint, a bad admin file, or variables failing the
            schema or the template.
        AuthorizationError: the principal would be refused by the identity mapping.
    """
    from mpiengine.service.config import EndpointPaths, load_service_config

    paths = EndpointPaths.of(name)
    config = load_service_config(paths.config)
    if config.backend != MANAGER_ENGINE:
        raise ConfigError("backend", f"endpoint {name!r} is not a multi-user endpoint")
    options = {k: v for k, v in config.backend_options.items() if k in _FILE_OPTIONS}
    identity = IdentityMap(_at(paths.root, options.get("mapping", "identity_mapping.json")), name)
    template = UserConfigTemplate.from_files(
        _at(paths.root, options.get("template", "user_config_template.yaml.j2")),
        _at(paths.root, options.get("schema", "user_config_schema.json")),
        config.backend_options.get("policy_keys", ("workdir",)),
    )
    account = identity.account(principal)
    return template.render(variables, ManagerBackend._reserved(principal, account))


_FILE_OPTIONS = ("mapping", "template", "schema")


def _at(root: Path, p: str) -> Path:
    return Path(p) if os.path.isabs(p) else root / p
