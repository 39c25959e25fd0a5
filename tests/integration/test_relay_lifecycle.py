"""The admin's lifecycle of a relay on the real broker, through the CLI in real processes:
``relay init`` (options or prompts), ``serve --detach`` (two instances), ``status``, ``stop``,
``destroy``."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import mpiengine.cli.relay
from mpiengine.cli.relay import relay as relay_cli
from mpiengine.relay.config import load_relay_config
from mpiengine.relay.daemon import RelayInstance, instances, running_pid, stop_relay
from mpiengine_sdk import BackendError, Executor, ShellFunction
from tests.integration.test_relay_e2e import require_broker
from tests.support.relay_harness import RelayHarness

pytestmark = pytest.mark.relay


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[RelayHarness]:
    """Names, principals and endpoints of a throwaway relay whose relay the CLI makes."""
    require_broker()
    h = RelayHarness(tmp_path)  # not entered: no vhost, no relay process yet
    admin_user = f"t{h.tag}-relay"
    try:
        yield h
    finally:
        for instance in instances(h.config_path):  # never leave a relay behind
            stop_relay(instance, grace=5)
        h.close()
        with contextlib.suppress(BackendError):
            if admin_user in h.admin.broker.run(["list_users"]):
                h.admin.broker.run(["delete_user", admin_user])


def _cli(
    h: RelayHarness, *args: str, stdin: str = "", config: Path | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "mpiengine", "relay", *args]
    argv += ["--config", str(config or h.config_path)]
    return subprocess.run(
        argv, input=stdin, env=h.env, capture_output=True, text=True, timeout=120, check=False
    )


def _exited(pid: int) -> bool:
    """Gone, or a zombie (PID 1 reaps slowly here)."""
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


def _vhosts(h: RelayHarness) -> list[str]:
    return h.admin.broker.run(["list_vhosts", "name"]).split()


@pytest.mark.slow
def test_init_serve_status_stop_destroy(harness: RelayHarness, tmp_path: Path) -> None:
    h = harness
    admin_user = f"t{h.tag}-relay"
    off = _cli(h, "init", config=tmp_path / "none.yaml")
    assert off.returncode == 2 and "--broker-url is needed (no terminal" in off.stderr

    h.config_path.unlink()  # the harness wrote one; init writes its own
    options = ["--broker-url", "amqp://127.0.0.1:5672", "--vhost", h.vhost]
    options += ["--store", f"sqlite:///{h.root / 'relay.db'}"]  # the harness's principals
    made = _cli(
        h, "init", *options, "--admin-user", admin_user, "--admin-password-stdin", stdin="pw-1\n"
    )
    assert made.returncode == 0, made.stderr
    assert f"vhost {h.vhost} ready; broker user {admin_user} created" in made.stdout
    assert h.config_path.stat().st_mode & 0o777 == 0o600
    written = h.config_path.read_text()
    assert load_relay_config(h.config_path).broker_url == (
        f"amqp://{admin_user}:pw-1@127.0.0.1:5672/{h.vhost}"
    )
    wrong = _cli(h, "init", "--admin-password-stdin", stdin="not-it\n")
    assert wrong.returncode == 1 and f"the broker refused user '{admin_user}'" in wrong.stderr
    assert h.config_path.read_text() == written  # left as it was

    main = _cli(h, "serve", "--detach")
    assert main.returncode == 0, main.stderr
    pid = int(re.fullmatch(r"relay main running \(pid (\d+)\)\n", main.stdout)[1])  # type: ignore[index]
    second = _cli(h, "serve", "--detach", "--instance", "second")
    assert second.returncode == 0, second.stderr
    pid2 = running_pid(RelayInstance(h.config_path, "second"))
    again = _cli(h, "serve", "--detach")
    assert again.returncode == 1 and f"relay main is already running (pid {pid})" in again.stderr

    alice = h.user("alice")
    ep = h.endpoint("ep", alice, backend="null", heartbeat_period=0.5).start()
    with Executor(endpoint_id=ep.endpoint_id, config=alice.client_config) as ex:
        assert [ex.submit(ShellFunction(["true"])).result(30).returncode for _ in range(3)] == [
            0
        ] * 3
    shown = _cli(h, "status")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout
    assert f"relay     main running, pid {pid}; second running, pid {pid2}\n" in lines
    assert f"as {admin_user}: reachable" in lines and ":***@" in lines and "pw-1" not in lines
    assert re.search(r"queues    relay\.requests \d+ \(2 consumers\)", lines), lines
    assert "endpoints 1 (1 online)\n" in lines and "tasks     completed 3\n" in lines
    info = json.loads(_cli(h, "status", "--json").stdout)
    assert [p["running"] for p in info["processes"]] == [True, True]
    assert info["queues"]["relay.results"]["consumers"] == 2 and info["tasks"] == {"completed": 3}

    ep.stop()
    stopped = _cli(h, "stop", "--instance", "second")
    assert stopped.stdout == "relay second stopped\n" and _exited(pid2)  # type: ignore[arg-type]
    stopped = _cli(h, "stop")
    assert stopped.stdout == "relay main stopped\n" and _exited(pid)
    assert _cli(h, "stop").stdout == "relay main was not running\n"
    assert _cli(h, "status").stdout.startswith("relay     stopped\n")

    refused = _cli(h, "destroy")  # no terminal to confirm on
    assert refused.returncode == 1 and "Aborted" in refused.stderr and h.vhost in _vhosts(h)
    gone = _cli(h, "destroy", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert (
        f"relay destroyed: vhost {h.vhost}, broker users {alice.name}, {admin_user}" in gone.stdout
    )
    users = h.admin.broker.run(["list_users"])
    assert h.vhost not in _vhosts(h) and admin_user not in users and alice.name not in users
    assert not (h.root / "relay.db").exists() and h.config_path.exists()


def test_destroy_refuses_a_running_relay_unless_forced(harness: RelayHarness) -> None:
    h = harness
    h.admin.init()  # guest, as the harness's config says
    assert _cli(h, "serve", "--detach").returncode == 0
    pid = running_pid(RelayInstance(h.config_path))
    refused = _cli(h, "destroy", "--yes")
    assert (
        refused.returncode == 1
        and f"relay main (pid {pid}) is running; stop it first" in refused.stderr
    )
    forced = _cli(h, "destroy", "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
    assert pid is not None and _exited(pid) and h.vhost not in _vhosts(h)
    assert "guest" in h.admin.broker.run(["list_users"])  # not init's: never removed


def test_init_asks_on_a_terminal(harness: RelayHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    h = harness
    monkeypatch.setattr(mpiengine.cli.relay, "_is_terminal", lambda: True)
    h.config_path.unlink()
    admin_user = f"t{h.tag}-relay"
    answers = f"amqp://127.0.0.1:5672\n{h.vhost}\n{admin_user}\npw-2\n"
    out = CliRunner().invoke(relay_cli, ["init", "--config", str(h.config_path)], input=answers)
    assert out.exit_code == 0, out.output
    assert "broker URL [amqp://127.0.0.1:5672]: " in out.output and "pw-2" not in out.output
    assert "admin user [mpiengine-relay]: " in out.output and "admin password: " in out.output
    assert load_relay_config(h.config_path).broker_url.startswith(f"amqp://{admin_user}:pw-2@")
    assert h.vhost in _vhosts(h)
