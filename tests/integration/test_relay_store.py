"""The relay store on SQLite and on a real PostgreSQL server: the same behaviour, and two
stores on one database (two relay processes) never lose a result's route."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpiengine.relay.config import load_relay_config
from mpiengine.relay.database import redact, store_url
from mpiengine.relay.store import EXPIRED, RelayStore, UserRecord
from mpiengine_sdk import ConfigError

pytestmark = pytest.mark.relay

OLD, NEW = "user.alice.s.c1-00000001", "user.alice.s.c1-00000002"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'relay.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(url: str) -> Iterator[RelayStore]:
    s = RelayStore(url)
    s.add_user("alice")
    s.add_user("bob", rate=2.0, burst=4.0)
    yield s
    s.close()


def test_principals_endpoints_and_sharing(store: RelayStore) -> None:
    record, created = store.add_endpoint("ep", "alice")
    again, created_again = store.add_endpoint("ep", "alice")
    assert created and not created_again and again.id == record.id
    store.allow(record.id, "bob")
    store.allow(record.id, "bob")  # twice is once
    shared = store.endpoint(record.id)
    assert shared is not None and shared.allowed == ("bob",) and shared.may_use("bob")
    store.heartbeat(record.id, 123.5, {"nodes": 4})
    seen = store.endpoint(record.id)
    assert seen is not None and (seen.last_seen, seen.status) == (123.5, {"nodes": 4})
    assert [u.name for u in store.users()] == ["alice", "bob"]
    assert store.user("bob") == UserRecord("bob", 2.0, 4.0)
    store.delete_user("bob")
    gone = store.endpoint(record.id)
    assert store.user("bob") is None and gone is not None and gone.allowed == ()


def test_task_life(store: RelayStore) -> None:
    store.admit("alice", "e1", OLD, [("t1", "shell"), ("t2", "python")])
    store.admit("alice", "e1", NEW, [("t1", "shell")])  # another relay's copy: left as it is
    store.mark_queued(["t1", "t2"])
    store.record("e1", [("t1", "running", b"r1")])
    store.record("e1", [("t1", "completed", b"\x00done1"), ("t2", "failed", b"fail2")])
    store.record("e1", [("t1", "running", b"late")])  # a late progress update changes nothing
    assert store.record("e2", [("t1", "completed", b"forged")]) == {}  # not e2's task
    rows = store.rows(["t1", "t2", "zz"])
    assert set(rows) == {"t1", "t2"}
    assert (rows["t1"].state, rows["t1"].result, rows["t1"].session) == (
        "completed",
        b"\x00done1",
        OLD,
    )
    assert store.outstanding("alice", "e1") == [
        ("t1", "shell", "completed"),
        ("t2", "python", "failed"),
    ]
    assert store.task_counts() == {"completed": 1, "failed": 1}
    store.mark_fetched("alice", ["t1"])
    assert [t[0] for t in store.outstanding("alice", "e1")] == ["t2"]


def test_claim_moves_results_but_never_back_to_an_earlier_session(store: RelayStore) -> None:
    store.admit("alice", "e1", OLD, [("t1", "shell"), ("t2", "shell")])
    rows = store.claim("alice", ["t1"], NEW)
    assert rows["t1"].session == NEW
    # A late copy of the first session's request (another relay) leaves it with the new one.
    assert store.claim("alice", ["t1"], OLD)["t1"].session == NEW
    assert store.claim("bob", ["t2"], "user.bob.s.x-00000009")["t2"].session == OLD  # not bob's
    other = "user.alice.s.c2-00000001"  # another client of alice (attach) takes it over
    assert store.claim("alice", ["t1"], other)["t1"].session == other


def test_results_expire_then_disappear(store: RelayStore) -> None:
    store.admit("alice", "e1", "s", [("fetched", "shell"), ("unfetched", "shell"), ("run", "x")])
    store.record("e1", [("fetched", "completed", b"a"), ("unfetched", "completed", b"b")])
    store.mark_fetched("alice", ["fetched"])
    fetched = store.rows(["fetched"])["fetched"].fetched
    assert fetched is not None
    now = fetched + 10
    assert store.expire(now, retention=60, max_age=60) == (0, 0)
    assert store.expire(now + 100, retention=60, max_age=60) == (1, 1)
    rows = store.rows(["fetched", "unfetched", "run"])
    assert "fetched" not in rows and rows["run"].state == "pending"
    assert rows["unfetched"].state == EXPIRED and rows["unfetched"].result is None
    assert store.expire(now + 1000, retention=60, max_age=60) == (1, 0)


def test_two_stores_on_one_database_never_lose_a_route(url: str) -> None:
    """Relay A stores results while relay B moves the same tasks to a new session: each
    result goes to the new session (A saw B's move) or comes back from B's claim."""
    a, b = RelayStore(url), RelayStore(url)
    ids = [f"t{i:04d}" for i in range(400)]
    a.admit("alice", "e1", OLD, [(t, "shell") for t in ids])
    routed: dict[str, str | None] = {}
    claimed: dict[str, bytes | None] = {}

    def results() -> None:
        order = random.Random(1).sample(ids, len(ids))
        for i in range(0, len(order), 20):
            rows = a.record("e1", [(t, "completed", t.encode()) for t in order[i : i + 20]])
            routed.update({t: r.session for t, r in rows.items()})

    def fetches() -> None:
        order = random.Random(2).sample(ids, len(ids))
        for i in range(0, len(order), 20):
            rows = b.claim("alice", order[i : i + 20], NEW)
            claimed.update({t: r.result for t, r in rows.items()})

    threads = [threading.Thread(target=results), threading.Thread(target=fetches)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    a.close()
    b.close()
    assert len(routed) == len(claimed) == len(ids)
    lost = [t for t in ids if routed[t] != NEW and claimed[t] != t.encode()]
    assert not lost, f"{len(lost)} result(s) routed to the old session and not claimed"


def test_destroy_removes_everything(url: str) -> None:
    store = RelayStore(url)
    store.add_user("carol")
    store.admit("carol", "e1", OLD, [("t1", "shell")])
    store.destroy()
    again = RelayStore(url)  # a new, empty store
    assert again.users() == [] and again.rows(["t1"]) == {} and again.task_counts() == {}
    again.close()


def test_store_urls_and_refusals(tmp_path: Path) -> None:
    default = tmp_path / "d.db"
    assert store_url("", default) == f"sqlite:///{default}"
    assert store_url(str(tmp_path / "x.db"), default) == f"sqlite:///{tmp_path / 'x.db'}"
    assert store_url("postgresql://u@h/db", default) == "postgresql://u@h/db"
    assert redact("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    with pytest.raises(ConfigError, match=r"store: 'mysql' is not a store.*postgresql://"):
        store_url("mysql://h/db", default)
    config = tmp_path / "relay.yaml"
    config.write_text("store: mongodb://h/db\n")
    with pytest.raises(ConfigError, match="store: 'mongodb'"):
        load_relay_config(config)
    on_disk = RelayStore(f"sqlite:///{tmp_path / 'sub' / 'relay.db'}")
    on_disk.add_user("alice")
    on_disk.destroy()
    assert not (tmp_path / "sub" / "relay.db").exists()
