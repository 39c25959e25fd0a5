"""Multi-user endpoints end to end: real local accounts (ci/users.sh: mu-alice, mu-bob), the
real broker and relay, a manager endpoint service run as root, user endpoints on the embedded
engine as the mapped users.

The manager's admin files (mapping, template, schema, allow-list) are written by the module's
fixture; principals ``alice``/``bob`` map to mu-alice/mu-bob, ``ghost`` to a missing account,
``admin`` to root, ``carol`` to nothing.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from mpiengine.multiuser.allowlist import function_hash
from mpiengine.multiuser.manager import MANAGER_ENGINE
from mpiengine.relay.access import endpoint_view
from mpiengine_sdk import Executor, ShellFunction, ShellResult
from mpiengine_sdk.errors import AuthorizationError, ConfigError
from tests.conftest import REPO, require
from tests.integration.test_relay_e2e import require_broker
from tests.support.relay_harness import EndpointProcess, Principal, RelayHarness, wait_for

pytestmark = [pytest.mark.multiuser, pytest.mark.relay]

USERS = ("mu-alice", "mu-bob")


def _accounts_ready() -> bool:
    if os.geteuid() != 0:
        return False
    missing = [u for u in USERS if not _exists(u)]
    if missing:
        subprocess.run(["bash", str(REPO / "ci" / "users.sh")], check=False)
    return all(_exists(u) for u in USERS)


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def make_whoami() -> Callable[[], tuple[str, int]]:
    """A Python task answering who runs it (nested, so dill sends it by value: the user
    endpoint cannot import this test module)."""

    def whoami_uid() -> tuple[str, int]:
        import os
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name, os.getuid()

    return whoami_uid


def make_other() -> Callable[[], int]:
    """A Python task not on the allow-list."""

    def not_allowed() -> int:
        return 42

    return not_allowed


def user_endpoints(user: str) -> list[psutil.Process]:
    """The user endpoint processes running as ``user``."""
    found = []
    for proc in psutil.process_iter(["username", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if proc.info.get("username") == user and "mpiengine.multiuser.userep" in cmd:
            found.append(proc)
    return found


def processes_of(user: str) -> list[psutil.Process]:
    """Every process of ``user``."""
    return [p for p in psutil.process_iter(["username"]) if p.info.get("username") == user]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayHarness]:
    require(
        _accounts_ready(),
        "root and the local accounts mu-alice, mu-bob",
        "run the tests as root after: bash ci/users.sh",
    )
    require_broker()
    with RelayHarness(tmp_path_factory.mktemp("mu-relay")) as h:
        yield h


@pytest.fixture(scope="module")
def people(harness: RelayHarness) -> dict[str, Principal]:
    return {n: harness.user(n) for n in ("owner", "alice", "bob", "carol", "ghost", "admin")}


def _admin_files(root: Path, tag: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    mapping = [
        {
            "DATA_TYPE": "expression_identity_mapping#1.0.0",
            "mappings": [
                {"source": "{username}", "match": f"t{tag}-(alice|bob|ghost)", "output": "mu-{0}"},
                {"source": "{username}", "match": f"t{tag}-admin", "output": "root"},
            ],
        }
    ]
    (root / "identity_mapping.json").write_text(json.dumps(mapping))
    (root / "user_config_template.yaml.j2").write_text(
        "backend: embedded\n"
        "backend_options:\n"
        "  nodes: {{ nodes | default(2) }}\n"
        "  cores_per_node: 2\n"
        "  kill_grace: 0.5\n"
        "environment:\n"
        "  MU_LABEL: {{ label | default('none') }}\n"
    )
    schema = {
        "type": "object",
        "properties": {
            "nodes": {"type": "integer", "minimum": 1, "maximum": 4},
            "label": {"type": "string", "maxLength": 64},
        },
        "additionalProperties": False,
    }
    (root / "user_config_schema.json").write_text(json.dumps(schema))
    allow = {
        "commands": [
            {"executable": "/usr/bin/id"},
            {"executable": "/usr/bin/sleep"},
            {"executable": "/usr/bin/env"},
            {"executable": "/bin/echo", "args": "hello( .*)?"},
        ],
        "functions": [{"sha256": function_hash(make_whoami())}],
    }
    (root / "allowlist.yaml").write_text(json.dumps(allow))


@pytest.fixture(scope="module")
def manager(harness: RelayHarness, people: dict[str, Principal]) -> Iterator[EndpointProcess]:
    ep = harness.endpoint(
        "mu",
        people["owner"],
        backend=MANAGER_ENGINE,
        backend_options={"idle_timeout": 6.0, "stop_grace": 5.0},
        heartbeat_period=1.0,
        stop_grace=5.0,
    )
    _admin_files(ep.paths.root, harness.tag)
    ep.start()
    for name in ("alice", "bob", "carol", "ghost", "admin"):
        harness.admin.allow(ep.endpoint_id, people[name].name)
    yield ep
    ep.stop()
    wait_for(lambda: not any(user_endpoints(u) for u in USERS), 30, "user endpoints gone")


def executor(manager: EndpointProcess, who: Principal, **user_config: object) -> Executor:
    return Executor(
        endpoint_id=manager.endpoint_id, config=who.client_config, user_config=user_config
    )


def test_each_principal_runs_as_its_own_user(
    manager: EndpointProcess, people: dict[str, Principal]
) -> None:
    results: dict[str, ShellResult] = {}
    for name in ("alice", "bob"):
        with executor(manager, people[name], label="x\nrm -rf ~") as ex:
            who = ex.submit(ShellFunction(["id", "-un"])).result(60)
            uid = ex.submit(ShellFunction(["id", "-u"])).result(60)
            env = ex.submit(ShellFunction(["env"])).result(60)
            py = ex.submit(make_whoami()).result(60)
        account = pwd.getpwnam(f"mu-{name}")
        assert who.stdout == f"mu-{name}\n"
        assert uid.stdout == f"{account.pw_uid}\n"
        assert py == (account.pw_name, account.pw_uid)
        # the injected newline arrived as one inert value, nothing of the manager's env leaked
        lines = env.stdout.splitlines()
        assert "MU_LABEL=x" in lines and "rm -rf ~" in lines
        assert f"HOME={account.pw_dir}" in lines and "MPIENGINE_HOME" not in env.stdout
        sandbox = Path(who.sandbox)
        st = sandbox.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (account.pw_uid, 0o700)
        assert sandbox.is_relative_to(account.pw_dir)
        results[name] = who
    peek = subprocess.run(
        ["runuser", "-u", "mu-bob", "--", "cat", results["alice"].stdout_path],
        capture_output=True,
        text=True,
        check=False,
    )
    assert peek.returncode != 0 and "Permission denied" in peek.stderr


def test_changed_variables_start_a_second_user_endpoint(
    manager: EndpointProcess, people: dict[str, Principal]
) -> None:
    sandboxes = {}
    with executor(manager, people["alice"], label="one") as one:
        with executor(manager, people["alice"], label="two") as two:
            for name, ex in (("one", one), ("two", two), ("one-again", one)):
                result = ex.submit(ShellFunction(["id", "-un"])).result(60)
                assert result.stdout == "mu-alice\n"
                sandboxes[name] = Path(result.sandbox).parents[2]  # <key>/work/tasks/<id>
            mine = [u for u in _status_now(manager) if u["user"] == "mu-alice"]
    assert sandboxes["one"] == sandboxes["one-again"] != sandboxes["two"]
    assert len(mine) >= 2


def _status_now(manager: EndpointProcess) -> list[dict[str, object]]:
    """The user endpoints in the next heartbeat's status."""
    first = _status(manager).get("time")
    wait_for(lambda: _status(manager).get("time") != first, 30, "a fresh heartbeat")
    users = _status(manager).get("user_endpoints")
    return list(users) if isinstance(users, list) else []


def test_refusals_are_distinct_and_start_nothing(
    manager: EndpointProcess, people: dict[str, Principal]
) -> None:
    messages = {}
    for name in ("carol", "ghost", "admin"):
        with executor(manager, people[name]) as ex:
            with pytest.raises(AuthorizationError) as info:
                ex.submit(ShellFunction(["id", "-un"])).result(60)
        messages[name] = str(info.value)
    assert "is not mapped to a local account" in messages["carol"]
    assert "'mu-ghost', which is not a local account" in messages["ghost"]
    assert "(uid 0); a multi-user endpoint never runs tasks as root" in messages["admin"]
    logs = sorted(p.name for p in (manager.paths.root / "user-endpoints").iterdir())
    assert logs and all(n.startswith(("mu-alice-", "mu-bob-")) for n in logs), logs


def test_schema_failure_names_the_variable(
    manager: EndpointProcess, people: dict[str, Principal]
) -> None:
    before = len(list((manager.paths.root / "user-endpoints").iterdir()))
    with executor(manager, people["alice"], nodes=9) as ex:
        with pytest.raises(ConfigError) as info:
            ex.submit(ShellFunction(["id", "-un"])).result(60)
    assert "user_config.nodes" in str(info.value) and "maximum" in str(info.value)
    with executor(manager, people["alice"], queue="debug") as ex:
        with pytest.raises(ConfigError, match=r"user_config\.queue.*additionalProperties"):
            ex.submit(ShellFunction(["id", "-un"])).result(60)
    assert len(list((manager.paths.root / "user-endpoints").iterdir())) == before


def _audit(manager: EndpointProcess) -> list[dict[str, object]]:
    path = manager.paths.root / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_allow_list(manager: EndpointProcess, people: dict[str, Principal]) -> None:
    with executor(manager, people["alice"]) as ex:
        assert ex.submit(ShellFunction(["echo", "hello", "you"])).result(60).stdout == "hello you\n"
        bad = [
            ex.submit(ShellFunction(["echo", "goodbye"]), task_id=f"mu-deny-{time.time_ns()}"),
            ex.submit(ShellFunction(["ls", "/"]), task_id=f"mu-deny-{time.time_ns()}"),
            ex.submit(make_other(), task_id=f"mu-deny-{time.time_ns()}"),
        ]
        for future in bad:
            with pytest.raises(AuthorizationError, match="not on the endpoint's allow-list"):
                future.result(60)
    refused = {e["task_id"] for e in _audit(manager) if e["event"] == "refused"}
    assert {f.task_id for f in bad} <= refused
    assert (manager.paths.root / "audit.log").stat().st_mode & 0o777 == 0o600


def test_audit_of_twenty_tasks_is_complete_and_in_order(
    manager: EndpointProcess, people: dict[str, Principal]
) -> None:
    with executor(manager, people["bob"]) as ex:
        futures = [ex.submit(ShellFunction(["id", "-u"])) for _ in range(20)]
        for f in futures:
            assert f.result(60).returncode == 0
    uid = pwd.getpwnam("mu-bob").pw_uid
    events = _audit(manager)
    for f in futures:
        mine = [e for e in events if e["task_id"] == f.task_id]
        assert [e["event"] for e in mine] == ["received", "started", "running", "ended"]
        assert all(e["principal"] == people["bob"].name for e in mine)
        assert all((e["local_user"], e["uid"]) == ("mu-bob", uid) for e in mine[1:])
        assert mine[-1]["outcome"] == "completed" and mine[-1]["block_id"]
        times = [e["time"] for e in mine]
        assert times == sorted(times)


def test_idle_user_endpoints_stop(manager: EndpointProcess, people: dict[str, Principal]) -> None:
    with executor(manager, people["alice"]) as ex:
        assert ex.submit(ShellFunction(["id", "-un"])).result(60).stdout == "mu-alice\n"
    assert user_endpoints("mu-alice")
    wait_for(lambda: not user_endpoints("mu-alice"), 30, "idle user endpoint stopped")


def test_sigterm_of_the_manager_stops_every_user_endpoint(
    manager: EndpointProcess, people: dict[str, Principal]
) -> None:
    executors = [executor(manager, people[n]) for n in ("alice", "bob")]
    try:
        futures = [ex.submit(ShellFunction(["sleep", "60"])) for ex in executors]
        wait_for(lambda: all(f.running() for f in futures), 60, "both tasks running")
        status = json.loads(manager.paths.status.read_text())
        wait_for(
            lambda: {u["user"] for u in _status(manager).get("user_endpoints", [])} >= set(USERS),
            30,
            "both user endpoints in the heartbeat status",
        )
        assert status["multi_user"] is True
        record = manager.harness.admin.store.endpoint(manager.endpoint_id)
        assert record is not None
        assert endpoint_view(record, 30.0, time.time())["multi_user"] is True
        started = time.monotonic()
        assert manager.stop() == 0
        # service grace (5 s) + the manager's stop_grace (5 s), with room for a loaded host
        assert time.monotonic() - started < 30
        wait_for(lambda: not any(processes_of(u) for u in USERS), 15, "users' processes gone")
        manager.start()
    finally:
        for ex in executors:
            ex.shutdown(wait=False, cancel_futures=True)


def _status(manager: EndpointProcess) -> dict[str, object]:
    try:
        value = json.loads(manager.paths.status.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def test_kill_9_of_the_manager_stops_user_endpoints_and_loses_no_task(
    manager: EndpointProcess, people: dict[str, Principal]
) -> None:
    with executor(manager, people["alice"]) as ex:
        future = ex.submit(ShellFunction(["sleep", "4"]))
        wait_for(lambda: future.running(), 60, "the task running")
        assert user_endpoints("mu-alice")
        manager.kill(signal.SIGKILL)
        wait_for(lambda: not processes_of("mu-alice"), 30, "mu-alice's processes gone")
        manager.start()
        result = future.result(90)
    assert result.returncode == 0
    received = [e for e in _audit(manager) if e["task_id"] == future.task_id]
    assert [e["event"] for e in received].count("received") == 2  # ran again after the kill


def test_unwritable_audit_log_stops_intake(
    manager: EndpointProcess, people: dict[str, Principal]
) -> None:
    log = manager.paths.root / "audit.log"
    saved = log.with_name("audit.log.saved")
    shutil.move(log, saved)
    log.mkdir()
    try:
        with executor(manager, people["bob"]) as ex:
            future = ex.submit(ShellFunction(["id", "-un"]))
            assert manager.proc is not None
            manager.proc.wait(60)
            status = json.loads(manager.paths.status.read_text())
            assert status["state"] == "stopped"
            assert "intake stopped: cannot open the audit log" in status["last_error"]
            assert status["intake"] == "stopped"
            assert not future.done()
            log.rmdir()
            shutil.move(saved, log)
            manager.start()
            assert future.result(60).stdout == "mu-bob\n"
    finally:
        if log.is_dir():
            log.rmdir()
            shutil.move(saved, log)
    assert [e["event"] for e in _audit(manager) if e["task_id"] == future.task_id] == [
        "received",
        "started",
        "running",
        "ended",
    ]
