"""Unit tests of the relay's pure pieces: frames, errors on the wire, names and permissions,
the relay store, the rate limiter, delivery bookkeeping, the endpoint's local store, configs."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from mpiengine.relay.admin import RelayAdmin, permissions
from mpiengine.relay.config import RelayConfig, load_relay_config
from mpiengine.relay.ratelimit import RateLimiter
from mpiengine.relay.service import RelayService
from mpiengine.relay.store import EXPIRED, RelayStore
from mpiengine.relay.submit import _stamped
from mpiengine.service.config import EndpointPaths, ServiceConfig, check_name, load_service_config
from mpiengine.service.deliveries import Deliveries
from mpiengine.service.store import LocalStore
from mpiengine_sdk import (
    AuthorizationError,
    BackendError,
    ConfigError,
    PayloadTooLarge,
    RateLimited,
    RelayError,
    ShellFunction,
)
from mpiengine_sdk.client_config import load_client_config, write_client_config
from mpiengine_sdk.errors import error_record
from mpiengine_sdk.relayclient.protocol import (
    ProtocolError,
    check_principal,
    control_queue,
    decode_frame,
    encode_frame,
    error_from_header,
    session_queue,
    task_queue,
)
from mpiengine_sdk.relayclient.transport import PikaTransport
from mpiengine_sdk.spec import ResourceSpec
from mpiengine_sdk.wire import decode_task, encode_task, replace


# -- frames and errors ---------------------------------------------------------------------------
def test_frames_round_trip_with_lines() -> None:
    body = encode_frame({"type": "submit", "endpoint_id": "e"}, [b'{"a":1}', b'{"b":2}'])
    frame = decode_frame(body)
    assert frame.type == "submit" and frame.header["endpoint_id"] == "e"
    assert frame.lines == (b'{"a":1}', b'{"b":2}')
    assert decode_frame(encode_frame({"type": "x"})).lines == ()


@pytest.mark.parametrize(
    "body", [b"", b"\x00garbage", b"[1]", b'{"v":99,"type":"x"}', b'{"v":1}', b'{"v":1,"type":3}']
)
def test_malformed_frames_are_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_frame(body)


@pytest.mark.parametrize(
    "error",
    [
        PayloadTooLarge(20, 10),
        RateLimited(1.5),
        AuthorizationError("no", "forbidden"),
        RelayError("expired", "expired"),
    ],
)
def test_errors_cross_the_wire_whole(error: RelayError) -> None:
    back = error_from_header(json.loads(json.dumps(error_record(error).to_dict())))
    assert type(back) is type(error) and str(back) == str(error) and back.code == error.code


def test_queue_names_and_principals() -> None:
    assert session_queue("alice", "s1") == "user.alice.s.s1"
    assert task_queue("alice", "e1") == "user.alice.ep.e1.tasks"
    assert control_queue("alice", "e1") == "user.alice.ep.e1.control"
    assert check_principal("t1-alice_2") == "t1-alice_2"
    for bad in ("Alice", "1abc", "a.b", "a*", "", "x" * 64):
        with pytest.raises(ConfigError):
            check_principal(bad)


def test_permissions_give_each_user_only_its_own_queues() -> None:
    configure, write, read = permissions("alice")
    for name in (session_queue("alice", "s"), task_queue("alice", "e")):
        assert re.match(configure, name) and re.match(read, name)
    for name in (session_queue("alicebob", "s"), task_queue("bob", "e"), "relay.results"):
        assert not re.match(configure, name) and not re.match(read, name)
    assert re.match(write, "mpiengine.in") and re.match(write, "mpiengine.dead")
    assert not re.match(write, "amq.default") and not re.match(write, "mpiengine.inx")


# -- relay store -----------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> RelayStore:
    s = RelayStore(tmp_path / "relay.db")
    s.add_user("alice")
    s.add_user("bob", rate=2.0, burst=4.0)
    return s


def test_endpoints_and_sharing(store: RelayStore) -> None:
    record, created = store.add_endpoint("ep", "alice")
    again, created_again = store.add_endpoint("ep", "alice")
    assert created and not created_again and again.id == record.id
    assert record.may_use("alice") and not record.may_use("bob")
    store.allow(record.id, "bob")
    shared = store.endpoint(record.id)
    assert shared is not None and shared.may_use("bob") and shared.allowed == ("bob",)
    store.heartbeat(record.id, 123.0, {"nodes": 4})
    seen = store.endpoint(record.id)
    assert seen is not None and seen.last_seen == 123.0 and seen.status == {"nodes": 4}
    assert store.user("bob") is not None and store.user("bob").rate == 2.0  # type: ignore[union-attr]


def test_task_life_in_the_store(store: RelayStore) -> None:
    store.admit("alice", "e1", "user.alice.s.1", [("t1", "shell"), ("t2", "python")])
    assert {r.state for r in store.rows(["t1", "t2"]).values()} == {"pending"}
    store.mark_queued(["t1", "t2"])
    store.record("e1", [("t1", "running", b"r1")])
    store.record("e1", [("t1", "completed", b"done1"), ("t2", "failed", b"fail2")])
    store.record("e1", [("t1", "running", b"late")])  # a late progress update changes nothing
    rows = store.rows(["t1", "t2", "zz"])
    assert set(rows) == {"t1", "t2"}
    assert (rows["t1"].state, rows["t1"].result) == ("completed", b"done1")
    assert store.outstanding("alice", "e1") == [
        ("t1", "shell", "completed"),
        ("t2", "python", "failed"),
    ]
    assert store.outstanding("bob", "e1") == []
    store.claim("alice", ["t1"], "user.alice.s.2")
    store.claim("bob", ["t2"], "user.bob.s.9")  # not bob's: no effect
    rows = store.rows(["t1", "t2"])
    assert rows["t1"].session == "user.alice.s.2" and rows["t2"].session == "user.alice.s.1"
    store.mark_fetched("alice", ["t1"])
    assert [t[0] for t in store.outstanding("alice", "e1")] == ["t2"]


def test_results_expire_then_disappear(store: RelayStore) -> None:
    tasks = [("fetched", "shell"), ("unfetched", "shell"), ("run", "shell")]
    store.admit("alice", "e1", "s", tasks)
    store.record("e1", [("fetched", "completed", b"a"), ("unfetched", "completed", b"b")])
    store.mark_fetched("alice", ["fetched"])
    rows = store.rows(["fetched"])
    assert rows["fetched"].fetched is not None
    now = rows["fetched"].fetched + 10
    assert store.expire(now, retention=60, max_age=60) == (0, 0)
    assert store.expire(now + 100, retention=60, max_age=60) == (1, 1)
    rows = store.rows(["fetched", "unfetched", "run"])
    assert "fetched" not in rows
    assert rows["unfetched"].state == EXPIRED and rows["unfetched"].result is None
    assert rows["run"].state == "pending"  # never expired while unfinished
    assert store.expire(now + 105, retention=60, max_age=60) == (0, 0)  # a tombstone, for now
    assert store.expire(now + 1000, retention=60, max_age=60) == (1, 0)


# -- rate limiter, deliveries, local store ---------------------------------------------------------
def test_rate_limiter_grants_task_by_task() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert limiter.grant("u", 100, None, None) == (100, 0.0)
    assert limiter.grant("u", 3, 2.0, 4.0) == (3, 0.0)
    granted, retry = limiter.grant("u", 3, 2.0, 4.0)
    assert granted == 1 and retry == pytest.approx(0.5)
    now[0] = 1.0
    assert limiter.grant("u", 5, 2.0, 4.0)[0] == 2
    now[0] = 100.0
    assert limiter.grant("u", 10, 2.0, 4.0)[0] == 4  # never beyond the burst


def test_a_delivery_is_acked_when_all_its_tasks_are_settled() -> None:
    deliveries = Deliveries()
    assert deliveries.add(1, []) is True
    assert deliveries.add(2, ["a", "b"]) is False
    assert deliveries.add(3, ["b", "c"]) is False  # b delivered twice
    assert deliveries.settle(["a"]) == []
    assert deliveries.settle(["b"]) == [2]
    assert deliveries.settle(["b"]) == []
    assert deliveries.settle(["c"]) == [3]
    assert len(deliveries) == 0
    deliveries.add(4, ["d"])
    deliveries.clear()
    assert deliveries.settle(["d"]) == []


def test_local_store_keeps_results_until_sent(tmp_path: Path) -> None:
    local = LocalStore(tmp_path / "state.db")
    local.put([("a", b"A"), ("b", b"B")])
    local.put([("a", b"other")])  # the first result stays
    assert local.unsent() == [("a", b"A"), ("b", b"B")]
    local.mark_sent(["a"])
    assert local.sent_flags(["a", "b", "c"]) == {"a": True, "b": False}
    assert local.count_unsent() == 1
    local.add_cancelled(["x"])
    assert local.cancelled(["x", "a"]) == {"x"}
    local.prune(older_than=1e12)
    assert local.sent_flags(["a", "b"]) == {"b": False} and local.cancelled(["x"]) == set()
    many = [f"c{i}" for i in range(1200)]  # more than one IN (...) chunk
    local.add_cancelled(many[::2])
    assert local.cancelled(many) == set(many[::2])


# -- configs -----------------------------------------------------------------------------------
def test_relay_config_refuses_unknown_keys_and_bad_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MPIENGINE_BROKER_URL", raising=False)
    path = tmp_path / "relay.yaml"
    path.write_text("max_payload_bytes: 5\nrate: 2.5\n")
    config = load_relay_config(path)
    assert (config.max_payload_bytes, config.rate) == (5, 2.5)
    monkeypatch.setenv("MPIENGINE_BROKER_URL", "amqp://a:b@h:1/v")
    assert load_relay_config(path).broker_url == "amqp://a:b@h:1/v"
    path.write_text("max_payload: 5\n")
    with pytest.raises(ConfigError, match="unknown relay config key.*max_payload_bytes"):
        load_relay_config(path)
    path.write_text("prefetch: many\n")
    with pytest.raises(ConfigError, match="prefetch"):
        load_relay_config(path)


def test_client_config_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MPIENGINE_RELAY", raising=False)
    path = write_client_config(tmp_path / "c.toml", relay="amqp://h:1/v", user="u", password='p"q')
    assert path.stat().st_mode & 0o777 == 0o600
    config = load_client_config(path)
    assert config.resolved(None, None, None) == ("amqp://h:1/v", "u", 'p"q')
    assert config.resolved("amqp://x:y@h:1/v", None, None) == ("amqp://x:y@h:1/v", "x", "y")
    (tmp_path / "bad.toml").write_text('relay = "x"\nusr = "u"\n')
    with pytest.raises(ConfigError, match="unknown key"):
        load_client_config(tmp_path / "bad.toml")
    secret = tmp_path / "secret"
    secret.write_text("s3\n")
    (tmp_path / "f.toml").write_text(f'user = "u"\npassword_file = "{secret}"\n')
    assert load_client_config(tmp_path / "f.toml").password == "s3"


def test_endpoint_names_and_config(tmp_path: Path) -> None:
    for bad in ("", ".hidden", "a/b", "relay", "embedded", "x" * 65):
        with pytest.raises(ConfigError):
            check_name(bad)
    paths = EndpointPaths("ep", tmp_path / "ep")
    ServiceConfig(user="u", backend="null", backend_options={"nodes": 2}).save(paths.config)
    assert load_service_config(paths.config).backend_options == {"nodes": 2}
    paths.config.write_text("prefetch: 0\n")
    with pytest.raises(ConfigError, match="prefetch"):
        load_service_config(paths.config)
    paths.config.write_text("engin: null\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_service_config(paths.config)
    with pytest.raises(ConfigError, match="configure"):
        load_service_config(tmp_path / "nope" / "endpoint.yaml")


class FakeCtl:
    """The BrokerAdmin seam, recording commands."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str | None]] = []

    def run(self, args: list[str], stdin: str | None = None) -> str:
        self.calls.append((list(args), stdin))
        return "guest\t[administrator]\n" if args[0] == "list_users" else "/\n"


def test_admin_commands_go_through_the_seam(store: RelayStore) -> None:
    ctl = FakeCtl()
    admin = RelayAdmin(store, ctl, "vh", "guest")
    admin.init()
    password = admin.add_user("carol", rate=1.0)
    assert len(password) >= 24
    assert (["add_user", "carol"], password) in ctl.calls  # the password on stdin only
    assert all(password not in " ".join(args) for args, _ in ctl.calls)
    commands = [c for c, _ in ctl.calls]
    assert ["set_permissions", "-p", "vh", "carol", *permissions("carol")] in commands
    with pytest.raises(ConfigError):
        admin.add_user("guest")
    with pytest.raises(ConfigError, match="not a principal"):
        admin.add_endpoint("ep", "nobody")
    record = admin.add_endpoint("ep", "carol", allow=["alice"])
    assert record.allowed == ("alice",)
    assert admin.allow(record.id, "bob").allowed == ("alice", "bob")
    with pytest.raises(ConfigError, match="no endpoint"):
        admin.allow("zz", "bob")


# -- endpoint CLI (no broker needed) ---------------------------------------------------------------
def test_endpoint_cli_configure_list_status_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from mpiengine.cli.endpoint import endpoint

    monkeypatch.setenv("MPIENGINE_HOME", str(tmp_path))
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    runner = CliRunner()
    out = runner.invoke(
        endpoint,
        ["configure", "ep1", "--user", "alice", "--password-file", str(secret), "--nodes", "2"]
        + ["--option", "kill_grace=0.5", "--stop-grace", "3"],
    )
    assert out.exit_code == 0, out.output
    config = load_service_config(tmp_path / "ep1" / "endpoint.yaml")
    assert config.user == "alice" and config.stop_grace == 3
    assert config.backend_options == {"nodes": 2, "kill_grace": 0.5}
    assert (tmp_path / "ep1" / "credentials").stat().st_mode & 0o777 == 0o600
    assert runner.invoke(endpoint, ["configure", "ep1", "--backend", "null"]).exit_code == 0
    assert load_service_config(tmp_path / "ep1" / "endpoint.yaml").user == "alice"  # kept
    listed = runner.invoke(endpoint, ["list"])
    assert listed.output.strip() == "ep1  -  stopped"
    shown = runner.invoke(endpoint, ["status", "ep1"])
    assert "not registered" in shown.output and "stopped" in shown.output
    stopped = runner.invoke(endpoint, ["stop", "ep1"])
    assert "was not running" in stopped.output
    bad = runner.invoke(endpoint, ["configure", "relay"])
    assert bad.exit_code != 0 and "not a valid endpoint name" in bad.output
    missing = runner.invoke(endpoint, ["start", "nope"])
    assert missing.exit_code != 0 and "endpoint configure" in missing.output
    assert runner.invoke(endpoint, ["delete", "ep1"]).exit_code == 0
    assert not (tmp_path / "ep1").exists()


def test_forwarded_task_lines_carry_the_sender_and_nothing_else() -> None:
    task = ShellFunction(["true"]).to_task("t1", (), {}, ResourceSpec(num_ranks=2))
    line = encode_task(task)
    assert decode_task(_stamped(task, line, "bob")) == replace(task, user="bob")
    # A client naming a user, or hiding one behind a duplicate key, gets the sender anyway.
    claimed = encode_task(replace(task, user="alice"))
    assert decode_task(_stamped(decode_task(claimed), claimed, "bob")).user == "bob"
    hidden = line[: -len(b"}")].replace(b'"user":""', b'"user":"alice","user":""') + b"}"
    assert decode_task(hidden).user == ""
    assert decode_task(_stamped(decode_task(hidden), hidden, "bob")).user == "bob"
    spaced = line + b" "  # not the SDK's encoding: encoded again
    assert decode_task(_stamped(decode_task(spaced), spaced, "bob")) == replace(task, user="bob")


def test_an_unreachable_broker_is_logged_with_its_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"amqp://guest:guest@127.0.0.1:{port}/x"
    with pytest.raises(BackendError) as info:
        PikaTransport(url).connect()
    assert str(info.value) == (
        f"cannot reach the broker at 127.0.0.1:{port}/x: "
        "ConnectionRefusedError: [Errno 111] Connection refused"
    )
    relay = RelayService(RelayConfig(broker_url=url, store=str(tmp_path / "relay.db")))
    thread = threading.Thread(target=relay.serve)
    with caplog.at_level(logging.WARNING, logger="mpiengine.relay.service"):
        thread.start()
        deadline = time.monotonic() + 10
        while "broker unreachable" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        relay.stop()
        thread.join(10)
    assert f"127.0.0.1:{port}/x: ConnectionRefusedError: [Errno 111] Connection refused)" in (
        caplog.text
    )
