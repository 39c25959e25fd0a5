"""Identity, access and hostile input on the real broker.

Unauthenticated, unauthorised and cross-user requests are refused with typed errors (by the
broker where it can, by the relay otherwise); an oversize payload is refused with
PayloadTooLarge; a malformed message on any queue is dead-lettered and logged, and every
process keeps running.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pika
import pika.exceptions
import pytest
from click.testing import CliRunner

from mpiengine.cli.relay import relay as relay_cli
from mpiengine_sdk import (
    AuthenticationError,
    AuthorizationError,
    Executor,
    PayloadTooLarge,
    RateLimited,
    ShellFunction,
)
from mpiengine_sdk.relayclient import RelayBackend
from mpiengine_sdk.relayclient.protocol import (
    EXCHANGE_DEAD,
    EXCHANGE_IN,
    decode_frame,
    encode_frame,
    task_queue,
)
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import ResultMessage, TaskKind, TaskMessage, decode_result, encode_result
from mpiengine_sdk.wire import encode_task as encode_task_message
from tests.integration.test_relay_e2e import require_broker
from tests.support.relay_harness import EndpointProcess, Principal, RelayHarness, wait_for

pytestmark = pytest.mark.relay

LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayHarness]:
    require_broker()
    root = tmp_path_factory.mktemp("security")
    with RelayHarness(root, relay_options={"max_payload_bytes": LIMIT}) as h:
        yield h


@pytest.fixture(scope="module")
def alice(harness: RelayHarness) -> Principal:
    return harness.user("alice")


@pytest.fixture(scope="module")
def bob(harness: RelayHarness) -> Principal:
    return harness.user("bob")


@pytest.fixture(scope="module")
def endpoint(harness: RelayHarness, alice: Principal) -> Iterator[EndpointProcess]:
    ep = harness.endpoint("ep-a", alice, backend="null", heartbeat_period=1.0)
    ep.start()
    yield ep
    ep.stop()


@pytest.fixture(scope="module")
def bob_endpoint(harness: RelayHarness, bob: Principal) -> str:
    return harness.admin.add_endpoint("ep-b", bob.name).id


def _connect(harness: RelayHarness, user: str, password: str) -> pika.BlockingConnection:
    params = pika.URLParameters(f"amqp://{user}:{password}@127.0.0.1:5672/{harness.vhost}")
    params.socket_timeout = 5
    return pika.BlockingConnection(params)


def _raw_request(
    harness: RelayHarness,
    who: Principal,
    header: dict[str, object],
    lines: tuple[bytes, ...] = (),
    *,
    user_id: str | None,
    want: str = "reply",
) -> dict[str, object] | list[ResultMessage]:
    """Publish a request as ``who`` (``user_id`` as given), return the relay's answer."""
    conn = _connect(harness, who.name, who.password)
    try:
        ch = conn.channel()
        queue = f"user.{who.name}.s.{uuid.uuid4().hex}"
        ch.queue_declare(queue, exclusive=True, arguments={"x-dead-letter-exchange": EXCHANGE_DEAD})
        props = pika.BasicProperties(user_id=user_id, reply_to=queue)
        body = encode_frame({**header, "cid": "c1"}, lines)
        ch.basic_publish(EXCHANGE_IN, "request", body, props)
        for _method, _props, answer in ch.consume(queue, inactivity_timeout=15):
            assert answer is not None, "the relay did not answer"
            frame = decode_frame(answer)
            if frame.type == want == "reply":
                return dict(frame.header)
            if frame.type == want == "results":
                return [decode_result(line) for line in frame.lines]
        raise AssertionError("unreachable")
    finally:
        conn.close()


def test_wrong_password_is_refused(harness: RelayHarness, alice: Principal, endpoint) -> None:
    with pytest.raises(AuthenticationError, match="refused user"):
        Executor(
            endpoint_id=endpoint.endpoint_id, relay=harness.url, user=alice.name, password="no"
        )


def test_a_request_without_user_id_is_unauthenticated(
    harness: RelayHarness, alice: Principal, endpoint: EndpointProcess
) -> None:
    answer = _raw_request(
        harness, alice, {"type": "hello", "endpoint_id": endpoint.endpoint_id}, user_id=None
    )
    assert isinstance(answer, dict) and answer["ok"] is False
    error = answer["error"]
    assert isinstance(error, dict) and error["type"] == "AuthenticationError"
    assert "no user_id" in str(error["message"])


def test_a_forged_user_id_is_refused_by_the_broker(
    harness: RelayHarness, alice: Principal, bob: Principal
) -> None:
    conn = _connect(harness, bob.name, bob.password)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        forged = pika.BasicProperties(user_id=alice.name)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.basic_publish(EXCHANGE_IN, "request", encode_frame({"type": "hello"}), forged)
        assert info.value.reply_code == 406 and "user_id" in info.value.reply_text
    finally:
        conn.close()


def test_another_users_endpoint_is_refused_until_shared(
    harness: RelayHarness, bob: Principal, endpoint: EndpointProcess
) -> None:
    with pytest.raises(AuthorizationError, match="does not allow user"):
        Executor(endpoint_id=endpoint.endpoint_id, config=bob.client_config)
    harness.admin.allow(endpoint.endpoint_id, bob.name)
    try:
        with Executor(endpoint_id=endpoint.endpoint_id, config=bob.client_config) as ex:
            assert ex.submit(ShellFunction(["true"])).result(30).returncode == 0
    finally:
        harness.admin.allow(endpoint.endpoint_id, bob.name, allowed=False)
    with pytest.raises(AuthorizationError):
        Executor(endpoint_id=endpoint.endpoint_id, config=bob.client_config)


def test_a_user_never_sees_another_users_tasks(
    alice: Principal, bob: Principal, endpoint: EndpointProcess, bob_endpoint: str
) -> None:
    with Executor(endpoint_id=endpoint.endpoint_id, config=alice.client_config) as ex:
        mine = ex.submit(ShellFunction(["true"]))
        mine.result(30)
    with Executor(endpoint_id=bob_endpoint, config=bob.client_config) as ex:
        assert mine.task_id not in {f.task_id for f in ex.attach()}
        (theirs,) = ex.attach([mine.task_id])
        with pytest.raises(AuthorizationError, match="another user's"):
            theirs.result(30)
        # The same task id cannot be taken over either.
        stolen = ex.submit(ShellFunction(["true"]), task_id=mine.task_id)
        with pytest.raises(Exception, match="already taken"):
            stolen.result(30)


def test_the_broker_keeps_users_out_of_each_others_queues(
    harness: RelayHarness, bob: Principal, endpoint: EndpointProcess
) -> None:
    alice_queue = task_queue(endpoint.owner.name, endpoint.endpoint_id)
    for attempt in (
        lambda ch: ch.basic_consume(alice_queue, lambda *a: None),
        lambda ch: ch.queue_declare(f"user.{endpoint.owner.name}.s.mine", exclusive=True),
        lambda ch: ch.queue_purge(alice_queue),
    ):
        conn = _connect(harness, bob.name, bob.password)
        try:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                attempt(conn.channel())
            assert info.value.reply_code == 403
        finally:
            conn.close()
    # Nor can anyone bypass the relay through the default exchange.
    conn = _connect(harness, bob.name, bob.password)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.basic_publish("", alice_queue, b"x", pika.BasicProperties(user_id=bob.name))
        assert info.value.reply_code == 403
    finally:
        conn.close()


def test_oversize_payloads_are_refused(
    harness: RelayHarness, alice: Principal, endpoint: EndpointProcess
) -> None:
    big = "x" * (LIMIT + 1)
    with Executor(endpoint_id=endpoint.endpoint_id, config=alice.client_config) as ex:
        with pytest.raises(PayloadTooLarge, match="the limit is 1048576 bytes") as info:
            ex.submit(len, big)
        assert info.value.limit == LIMIT and info.value.size > LIMIT
    # A client that skips the check meets the relay's.
    task = TaskMessage("big-1", TaskKind.SHELL, {}, argv=("echo", big))
    results = _raw_request(
        harness,
        alice,
        {"type": "submit", "endpoint_id": endpoint.endpoint_id},
        (encode_task_message(task),),
        user_id=alice.name,
        want="results",
    )
    assert isinstance(results, list)
    (refused,) = results
    assert refused.task_id == "big-1" and refused.state is TaskState.FAILED
    assert refused.error_type == "PayloadTooLarge"


def test_rate_limits_answer_with_rate_limited(
    harness: RelayHarness, endpoint: EndpointProcess
) -> None:
    carol = harness.user("carol", rate=5, burst=5)
    harness.admin.allow(endpoint.endpoint_id, carol.name)
    with Executor(endpoint_id=endpoint.endpoint_id, config=carol.client_config) as ex:
        first = [ex.submit(ShellFunction(["true"])) for _ in range(20)]
        wait_for(lambda: all(f.done() for f in first), 30, "first wave")
        second = [ex.submit(ShellFunction(["true"])) for _ in range(20)]
        wait_for(lambda: all(f.done() for f in second), 30, "second wave")
    limited = [f.exception() for f in first + second if f.exception() is not None]
    assert limited and all(isinstance(e, RateLimited) for e in limited)
    assert all(e.retry_after > 0 for e in limited if isinstance(e, RateLimited))
    assert 5 <= sum(f.exception() is None for f in first) <= 7  # the burst, plus the refill


def test_malformed_messages_are_dead_lettered(
    harness: RelayHarness, alice: Principal, endpoint: EndpointProcess
) -> None:
    backend = RelayBackend(endpoint.endpoint_id, config=alice.client_config)
    with Executor(backend=backend) as ex:
        before = harness.dead_letters()
        conn = _connect(harness, alice.name, alice.password)
        try:
            ch = conn.channel()
            props = pika.BasicProperties(user_id=alice.name)
            for key in ("request", "result", "heartbeat", "no-such-key"):
                ch.basic_publish(EXCHANGE_IN, key, b"\x00not a frame", props)
            forged = encode_result(ResultMessage("nope", TaskState.COMPLETED))
            header = {"type": "results", "endpoint_id": "not-alices"}
            ch.basic_publish(EXCHANGE_IN, "result", encode_frame(header, [forged]), props)
        finally:
            conn.close()
        admin = pika.BlockingConnection(
            pika.URLParameters(f"amqp://guest:guest@127.0.0.1:5672/{harness.vhost}")
        )
        try:
            ch = admin.channel()
            queue = task_queue(alice.name, endpoint.endpoint_id)
            ch.basic_publish("", queue, b"{broken")
            ch.basic_publish("", queue.replace(".tasks", ".control"), b'{"v":1,"type":"zz"}')
            ch.basic_publish("", backend._queue, b"garbage for the client")
        finally:
            admin.close()
        wait_for(lambda: harness.dead_letters() >= before + 8, 30, "8 dead letters")
        assert harness.relay_proc is not None and harness.relay_proc.poll() is None
        assert endpoint.proc is not None and endpoint.proc.poll() is None
        assert ex.submit(ShellFunction(["true"])).result(30).returncode == 0
    log = (harness.root / "relay.log").read_text()
    assert "dead-lettering a malformed message on relay.requests" in log


def test_admin_cli(harness: RelayHarness, endpoint: EndpointProcess) -> None:
    runner = CliRunner()
    config = ["--config", str(harness.config_path)]
    name = f"t{harness.tag}-dave"
    out = runner.invoke(relay_cli, ["add-user", name, *config])
    assert out.exit_code == 0, out.output
    assert "password: " in out.output
    try:
        lonely = harness.admin.add_endpoint("ep-lonely", endpoint.owner.name)
        shared = runner.invoke(relay_cli, ["allow", endpoint.endpoint_id, name, *config])
        assert shared.exit_code == 0 and name in shared.output
        listed = runner.invoke(relay_cli, ["endpoints", *config]).output.splitlines()
        assert f"{lonely.id}  ep-lonely  owner={endpoint.owner.name}  offline  shared=-" in listed
        record = harness.admin.store.endpoint(endpoint.endpoint_id)
        assert record is not None and name in record.allowed
        (line,) = [x for x in listed if x.startswith(f"{endpoint.endpoint_id}  ")]
        assert line.endswith("  online  shared=" + ",".join(record.allowed))  # names, no quotes
        bad = runner.invoke(relay_cli, ["add-user", "Not Valid", *config])
        assert bad.exit_code != 0 and "not a valid user name" in bad.output
    finally:
        gone = runner.invoke(relay_cli, ["delete-user", name, *config])
        assert gone.exit_code == 0
