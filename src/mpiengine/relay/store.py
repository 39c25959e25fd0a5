"""The relay's embedded store (SQLite): principals, endpoints, access, task states, results.

One connection per process; the relay uses it from its one thread, admin commands open their
own (WAL mode lets both work on one file). Every batch message is one transaction.

A task row lives from its submit until its result has been fetched and ``retention`` has
passed, or, unfetched, until ``max_age`` after completion, when its result is dropped and the
row says ``expired`` (kept as a tombstone for another ``max(max_age, retention)``, so a
late fetch gets a clear answer instead of "unknown").
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpiengine_sdk.states import TERMINAL_STATES, TaskState

__all__ = ["EXPIRED", "EndpointRecord", "RelayStore", "TaskRow", "UserRecord"]

#: The state of a task whose unfetched result was dropped after ``max_age``.
EXPIRED = "expired"
#: Before the relay has the broker's confirm that the endpoint queue holds the task.
PENDING = TaskState.PENDING.value
_FINAL = {s.value for s in TERMINAL_STATES} | {EXPIRED}
_FINAL_ARGS = tuple(sorted(_FINAL))  # the parameters of "state NOT IN (...)", once
_NOT_FINAL = f"state NOT IN ({','.join('?' * len(_FINAL_ARGS))})"
_CHUNK = 500  # host parameters per IN (...) query, well under SQLite's limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, created REAL NOT NULL, rate REAL, burst REAL);
CREATE TABLE IF NOT EXISTS endpoints (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, owner TEXT NOT NULL, created REAL NOT NULL,
    last_seen REAL, status TEXT, UNIQUE (owner, name));
CREATE TABLE IF NOT EXISTS access (
    endpoint_id TEXT NOT NULL, user TEXT NOT NULL, PRIMARY KEY (endpoint_id, user));
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY, user TEXT NOT NULL, endpoint_id TEXT NOT NULL, kind TEXT NOT NULL,
    state TEXT NOT NULL, session TEXT, submitted REAL NOT NULL, completed REAL, fetched REAL,
    result BLOB);
CREATE INDEX IF NOT EXISTS tasks_by_user ON tasks (user, endpoint_id);
CREATE INDEX IF NOT EXISTS tasks_by_completed ON tasks (completed);
CREATE INDEX IF NOT EXISTS tasks_by_fetched ON tasks (fetched);
"""


@dataclass(frozen=True)
class UserRecord:
    """A principal: its optional rate limit (tasks per second, burst)."""

    name: str
    rate: float | None = None
    burst: float | None = None


@dataclass(frozen=True)
class EndpointRecord:
    """An endpoint: its id, name, owner, who else may use it, its last heartbeat."""

    id: str
    name: str
    owner: str
    allowed: tuple[str, ...] = ()
    last_seen: float | None = None
    status: dict[str, Any] | None = None

    def may_use(self, user: str) -> bool:
        """True for the owner and every user it was shared with."""
        return user == self.owner or user in self.allowed


@dataclass(frozen=True)
class TaskRow:
    """What the relay knows of one task."""

    task_id: str
    user: str
    endpoint_id: str
    kind: str
    state: str
    session: str | None
    fetched: float | None
    result: bytes | None


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


class RelayStore:
    """The relay's SQLite store.

    Args:
        path: the database file (created with its folder); ``":memory:"`` for tests.
    """

    def __init__(self, path: str | Path) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Used by one thread at a time, though not always the one that opened it (a service
        # built on one thread runs on another).
        self._db = sqlite3.connect(
            str(path), timeout=10, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit survives a crash of the relay (not of the host's power): the broker
        # still holds every unacknowledged message, so the relay can redo its last batches.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # -- principals and endpoints ----------------------------------------------------------
    def add_user(self, name: str, rate: float | None = None, burst: float | None = None) -> None:
        """Create or update a principal."""
        self._db.execute(
            "INSERT INTO users (name, created, rate, burst) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET rate = excluded.rate, burst = excluded.burst",
            (name, time.time(), rate, burst),
        )

    def delete_user(self, name: str) -> None:
        """Forget a principal and its access grants (its endpoints and tasks stay)."""
        self._db.execute("DELETE FROM users WHERE name = ?", (name,))
        self._db.execute("DELETE FROM access WHERE user = ?", (name,))

    def user(self, name: str) -> UserRecord | None:
        """The principal, or None."""
        row = self._db.execute(
            "SELECT name, rate, burst FROM users WHERE name = ?", (name,)
        ).fetchone()
        return UserRecord(*row) if row else None

    def users(self) -> list[UserRecord]:
        """Every principal, by name."""
        rows = self._db.execute("SELECT name, rate, burst FROM users ORDER BY name").fetchall()
        return [UserRecord(*r) for r in rows]

    def add_endpoint(self, name: str, owner: str) -> tuple[EndpointRecord, bool]:
        """The owner's endpoint of that name, created if missing.

        Returns:
            (record, created).
        """
        existing = self._db.execute(
            "SELECT id FROM endpoints WHERE owner = ? AND name = ?", (owner, name)
        ).fetchone()
        if existing:
            record = self.endpoint(existing[0])
            assert record is not None
            return record, False
        eid = uuid.uuid4().hex
        self._db.execute(
            "INSERT INTO endpoints (id, name, owner, created) VALUES (?, ?, ?, ?)",
            (eid, name, owner, time.time()),
        )
        return EndpointRecord(eid, name, owner), True

    def endpoint(self, endpoint_id: str) -> EndpointRecord | None:
        """The endpoint, or None."""
        row = self._db.execute(
            "SELECT id, name, owner, last_seen, status FROM endpoints WHERE id = ?",
            (endpoint_id,),
        ).fetchone()
        if row is None:
            return None
        allowed = self._db.execute(
            "SELECT user FROM access WHERE endpoint_id = ? ORDER BY user", (endpoint_id,)
        ).fetchall()
        status = json.loads(row[4]) if row[4] else None
        return EndpointRecord(row[0], row[1], row[2], tuple(a[0] for a in allowed), row[3], status)

    def endpoints(self) -> list[EndpointRecord]:
        """Every endpoint, by owner and name."""
        ids = self._db.execute("SELECT id FROM endpoints ORDER BY owner, name").fetchall()
        return [e for (eid,) in ids if (e := self.endpoint(eid)) is not None]

    def allow(self, endpoint_id: str, user: str, allowed: bool = True) -> None:
        """Share an endpoint with a user (or, ``allowed=False``, stop sharing it)."""
        if allowed:
            self._db.execute(
                "INSERT OR IGNORE INTO access (endpoint_id, user) VALUES (?, ?)",
                (endpoint_id, user),
            )
        else:
            self._db.execute(
                "DELETE FROM access WHERE endpoint_id = ? AND user = ?", (endpoint_id, user)
            )

    def delete_endpoint(self, endpoint_id: str) -> None:
        """Forget an endpoint and its grants."""
        self._db.execute("DELETE FROM endpoints WHERE id = ?", (endpoint_id,))
        self._db.execute("DELETE FROM access WHERE endpoint_id = ?", (endpoint_id,))

    def heartbeat(self, endpoint_id: str, now: float, status: dict[str, Any]) -> None:
        """Record an endpoint's heartbeat."""
        self._db.execute(
            "UPDATE endpoints SET last_seen = ?, status = ? WHERE id = ?",
            (now, json.dumps(status), endpoint_id),
        )

    # -- tasks -----------------------------------------------------------------------------
    def rows(self, task_ids: Sequence[str]) -> dict[str, TaskRow]:
        """The rows of these tasks that exist."""
        found: dict[str, TaskRow] = {}
        for chunk in _chunks(task_ids):
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(
                "SELECT task_id, user, endpoint_id, kind, state, session, fetched, result "
                f"FROM tasks WHERE task_id IN ({marks})",
                tuple(chunk),
            ):
                found[row[0]] = TaskRow(*row)
        return found

    def admit(
        self, user: str, endpoint_id: str, session: str, tasks: Sequence[tuple[str, str]]
    ) -> None:
        """Record new tasks ``(task_id, kind)`` as PENDING (ids must be new: see ``rows``)."""
        now = time.time()
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR IGNORE INTO tasks (task_id, user, endpoint_id, kind, state, session, "
                "submitted) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(tid, user, endpoint_id, kind, PENDING, session, now) for tid, kind in tasks],
            )

    def mark_queued(self, task_ids: Iterable[str]) -> None:
        """The broker confirmed these tasks on their endpoint queue."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE tasks SET state = ? WHERE task_id = ? AND state = ?",
                [(TaskState.QUEUED.value, tid, PENDING) for tid in task_ids],
            )

    def record(self, updates: Sequence[tuple[str, str, bytes]]) -> None:
        """Store ``(task_id, state, result_line)`` updates from an endpoint: a terminal one
        stores the result; a RUNNING one only moves a task that is not final yet."""
        now = time.time()
        final = [(s, line, now, tid, *_FINAL_ARGS) for tid, s, line in updates if s in _FINAL]
        progress = [(s, tid, *_FINAL_ARGS) for tid, s, _ in updates if s not in _FINAL]
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE tasks SET state = ?, result = ?, completed = ? "
                f"WHERE task_id = ? AND {_NOT_FINAL}",
                final,
            )
            if progress:
                self._db.executemany(
                    f"UPDATE tasks SET state = ? WHERE task_id = ? AND {_NOT_FINAL}", progress
                )

    def reroute(self, user: str, task_ids: Sequence[str], session: str) -> None:
        """Send these tasks' future results to ``session`` (a re-attached client)."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE tasks SET session = ? WHERE task_id = ? AND user = ?",
                [(session, tid, user) for tid in task_ids],
            )

    def mark_fetched(self, user: str, task_ids: Sequence[str]) -> None:
        """The client has these results: start their retention clock."""
        now = time.time()
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE tasks SET fetched = ? WHERE task_id = ? AND user = ? "
                "AND fetched IS NULL AND completed IS NOT NULL",
                [(now, tid, user) for tid in task_ids],
            )

    def outstanding(
        self, user: str, endpoint_id: str, task_ids: Sequence[str] | None = None
    ) -> list[tuple[str, str, str]]:
        """``(task_id, kind, state)`` of this user's tasks on the endpoint: the named ones, or
        all whose result is not fetched yet."""
        if task_ids is not None:
            return [
                (r.task_id, r.kind, r.state)
                for r in self.rows(task_ids).values()
                if r.user == user and r.endpoint_id == endpoint_id
            ]
        rows = self._db.execute(
            "SELECT task_id, kind, state FROM tasks WHERE user = ? AND endpoint_id = ? "
            "AND fetched IS NULL AND state != ? ORDER BY submitted",
            (user, endpoint_id, EXPIRED),
        ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def expire(self, now: float, retention: float, max_age: float) -> tuple[int, int]:
        """Drop fetched results after ``retention``, and unfetched ones ``max_age`` after
        completion (their rows stay, ``expired``, for another ``max(max_age, retention)``).

        Returns:
            (rows deleted, results expired).
        """
        with self._db:
            self._db.execute("BEGIN")
            deleted = self._db.execute(
                "DELETE FROM tasks WHERE (fetched IS NOT NULL AND fetched < ?) "
                "OR (state = ? AND completed < ?)",
                (now - retention, EXPIRED, now - max_age - max(max_age, retention)),
            ).rowcount
            expired = self._db.execute(
                "UPDATE tasks SET state = ?, result = NULL WHERE fetched IS NULL "
                "AND completed IS NOT NULL AND completed < ? AND state != ?",
                (EXPIRED, now - max_age, EXPIRED),
            ).rowcount
        return deleted, expired
