"""The relay's store: principals, endpoints, access, task states, results.

SQLite for one relay host, PostgreSQL when several relay processes serve one broker (the
``store`` URL of the config; see ``database.py``). One connection per process; the relay uses
it from its one thread, admin commands open their own. Every batch message is one transaction.

Relays that share a store must not route a result to a session a concurrent ``fetch`` has just
moved the task away from: ``record`` and ``claim`` read the rows they change under a row lock
(``lock=True``), so one of the two sees the other's commit.

A task row lives from its submit until its result has been fetched and ``retention`` has
passed, or, unfetched, until ``max_age`` after completion, when its result is dropped and the
row says ``expired`` (kept as a tombstone for another ``max(max_age, retention)``, so a
late fetch gets a clear answer instead of "unknown").
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpiengine.relay.database import Tx, open_database
from mpiengine_sdk.states import TERMINAL_STATES, TaskState

__all__ = ["EXPIRED", "EndpointRecord", "RelayStore", "TaskRow", "UserRecord"]

#: The state of a task whose unfetched result was dropped after ``max_age``.
EXPIRED = "expired"
#: Before the relay has the broker's confirm that the endpoint queue holds the task.
PENDING = TaskState.PENDING.value
_FINAL = {s.value for s in TERMINAL_STATES} | {EXPIRED}
_FINAL_ARGS = tuple(sorted(_FINAL))  # the parameters of "state NOT IN (...)", once
_NOT_FINAL = f"state NOT IN ({','.join('?' * len(_FINAL_ARGS))})"

_TASK_COLUMNS = 'task_id, "user", endpoint_id, kind, state, session, fetched, result'
#: A client's numbered session queue (``...-<8 digits>``, see the SDK's client).
_NUMBERED = re.compile(r".+-\d{8}")
_TABLES = ("users", "endpoints", "access", "tasks", "meta")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, created {real} NOT NULL, "
    "rate {real}, burst {real})",
    "CREATE TABLE IF NOT EXISTS endpoints (id TEXT PRIMARY KEY, name TEXT NOT NULL, "
    "owner TEXT NOT NULL, created {real} NOT NULL, last_seen {real}, status TEXT, "
    "UNIQUE (owner, name))",
    'CREATE TABLE IF NOT EXISTS access (endpoint_id TEXT NOT NULL, "user" TEXT NOT NULL, '
    'PRIMARY KEY (endpoint_id, "user"))',
    'CREATE TABLE IF NOT EXISTS tasks (task_id TEXT PRIMARY KEY, "user" TEXT NOT NULL, '
    "endpoint_id TEXT NOT NULL, kind TEXT NOT NULL, state TEXT NOT NULL, session TEXT, "
    "submitted {real} NOT NULL, completed {real}, fetched {real}, result {blob})",
    'CREATE INDEX IF NOT EXISTS tasks_by_user ON tasks ("user", endpoint_id)',
    "CREATE INDEX IF NOT EXISTS tasks_by_completed ON tasks (completed)",
    "CREATE INDEX IF NOT EXISTS tasks_by_fetched ON tasks (fetched)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


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


def _for_ids(
    tx: Tx, sql: str, ids: Iterable[str], before: Sequence[Any] = ()
) -> list[tuple[Any, ...]]:
    """Run ``sql`` once per chunk of ``ids`` (sorted: one lock order), its ``{ids}`` the
    chunk's condition on ``task_id`` (``Tx.task_ids``), after the parameters ``before``; returns
    every chunk's rows. One statement per chunk, not per id: a PostgreSQL server pays per
    statement."""
    found: list[tuple[Any, ...]] = []
    for condition, params in tx.task_ids(sorted(set(ids))):
        found += tx.execute(sql.format(ids=condition), (*before, *params))
    return found


def _row(v: Sequence[Any]) -> TaskRow:
    result = bytes(v[7]) if v[7] is not None else None  # PostgreSQL may hand a memoryview
    return TaskRow(v[0], v[1], v[2], v[3], v[4], v[5], v[6], result)


class RelayStore:
    """The relay's store.

    Args:
        url: ``sqlite:///PATH``, ``postgresql://...``, or a SQLite file path (created with its
            folder); ``":memory:"`` for tests.

    Raises:
        ConfigError: an unknown store URL, or PostgreSQL without psycopg.
        BackendError: the database cannot be reached.
    """

    def __init__(self, url: str | Path) -> None:
        self._db = open_database(url)
        self._db.create([s.format(real=self._db.real, blob=self._db.blob) for s in _SCHEMA])

    @property
    def url(self) -> str:
        """The store's URL (password hidden)."""
        return self._db.url

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def destroy(self) -> None:
        """Remove everything: the tables (PostgreSQL) or the file (SQLite); closes the store."""
        self._db.drop(_TABLES)

    # -- settings --------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        """A value the admin commands keep (e.g. who created the broker's admin user)."""
        rows = self._db.query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        """Keep a value (see get_meta)."""
        self._db.transaction(
            lambda tx: tx.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        )

    # -- principals and endpoints ----------------------------------------------------------
    def add_user(self, name: str, rate: float | None = None, burst: float | None = None) -> None:
        """Create or update a principal."""
        self._db.transaction(
            lambda tx: tx.execute(
                "INSERT INTO users (name, created, rate, burst) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET rate = excluded.rate, burst = excluded.burst",
                (name, time.time(), rate, burst),
            )
        )

    def delete_user(self, name: str) -> None:
        """Forget a principal and its access grants (its endpoints and tasks stay)."""

        def run(tx: Tx) -> None:
            tx.execute("DELETE FROM users WHERE name = ?", (name,))
            tx.execute('DELETE FROM access WHERE "user" = ?', (name,))

        self._db.transaction(run)

    def user(self, name: str) -> UserRecord | None:
        """The principal, or None."""
        rows = self._db.query("SELECT name, rate, burst FROM users WHERE name = ?", (name,))
        return UserRecord(*rows[0]) if rows else None

    def users(self) -> list[UserRecord]:
        """Every principal, by name."""
        rows = self._db.query("SELECT name, rate, burst FROM users ORDER BY name")
        return [UserRecord(*r) for r in rows]

    def add_endpoint(self, name: str, owner: str) -> tuple[EndpointRecord, bool]:
        """The owner's endpoint of that name, created if missing.

        Returns:
            (record, created).
        """
        eid = uuid.uuid4().hex
        created = self._db.transaction(
            lambda tx: tx.execute(
                "INSERT INTO endpoints (id, name, owner, created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (owner, name) DO NOTHING RETURNING id",
                (eid, name, owner, time.time()),
            )
        )
        found = self._db.query(
            "SELECT id FROM endpoints WHERE owner = ? AND name = ?", (owner, name)
        )
        record = self.endpoint(str(found[0][0]))
        assert record is not None
        return record, bool(created)

    def endpoint(self, endpoint_id: str) -> EndpointRecord | None:
        """The endpoint, or None."""
        rows = self._db.query(
            "SELECT id, name, owner, last_seen, status FROM endpoints WHERE id = ?",
            (endpoint_id,),
        )
        if not rows:
            return None
        row = rows[0]
        allowed = self._db.query(
            'SELECT "user" FROM access WHERE endpoint_id = ? ORDER BY "user"', (endpoint_id,)
        )
        status = json.loads(row[4]) if row[4] else None
        return EndpointRecord(row[0], row[1], row[2], tuple(a[0] for a in allowed), row[3], status)

    def endpoints(self) -> list[EndpointRecord]:
        """Every endpoint, by owner and name."""
        ids = self._db.query("SELECT id FROM endpoints ORDER BY owner, name")
        return [e for (eid,) in ids if (e := self.endpoint(eid)) is not None]

    def allow(self, endpoint_id: str, user: str, allowed: bool = True) -> None:
        """Share an endpoint with a user (or, ``allowed=False``, stop sharing it)."""
        if allowed:
            sql = 'INSERT INTO access (endpoint_id, "user") VALUES (?, ?) ON CONFLICT DO NOTHING'
        else:
            sql = 'DELETE FROM access WHERE endpoint_id = ? AND "user" = ?'
        self._db.transaction(lambda tx: tx.execute(sql, (endpoint_id, user)))

    def delete_endpoint(self, endpoint_id: str) -> None:
        """Forget an endpoint and its grants."""

        def run(tx: Tx) -> None:
            tx.execute("DELETE FROM endpoints WHERE id = ?", (endpoint_id,))
            tx.execute("DELETE FROM access WHERE endpoint_id = ?", (endpoint_id,))

        self._db.transaction(run)

    def heartbeat(self, endpoint_id: str, now: float, status: dict[str, Any]) -> None:
        """Record an endpoint's heartbeat."""
        self._db.transaction(
            lambda tx: tx.execute(
                "UPDATE endpoints SET last_seen = ?, status = ? WHERE id = ?",
                (now, json.dumps(status), endpoint_id),
            ),
            durable=False,  # the next heartbeat says it again
        )

    # -- tasks -----------------------------------------------------------------------------
    def _read(self, tx: Tx, task_ids: Iterable[str], lock: str = "") -> dict[str, TaskRow]:
        # Sorted, chunk after chunk: every locking transaction takes row locks in one order.
        sql = f"SELECT {_TASK_COLUMNS} FROM tasks WHERE {{ids}}{lock}"
        return {row.task_id: row for row in map(_row, _for_ids(tx, sql, task_ids))}

    def rows(self, task_ids: Sequence[str]) -> dict[str, TaskRow]:
        """The rows of these tasks that exist."""
        return self._db.read(lambda tx: self._read(tx, task_ids))

    def admit(
        self, user: str, endpoint_id: str, session: str, tasks: Sequence[tuple[str, str]]
    ) -> None:
        """Record new tasks ``(task_id, kind)`` as PENDING (an id that exists meanwhile, from
        another relay's copy of the same batch, is left as it is)."""
        now = time.time()
        rows = [(tid, user, endpoint_id, kind, PENDING, session, now) for tid, kind in tasks]
        self._db.transaction(
            lambda tx: tx.executemany(
                'INSERT INTO tasks (task_id, "user", endpoint_id, kind, state, session, '
                "submitted) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (task_id) DO NOTHING",
                sorted(rows),
            )
        )

    def mark_queued(self, task_ids: Iterable[str]) -> None:
        """The broker confirmed these tasks on their endpoint queue."""
        self._db.transaction(
            lambda tx: _for_ids(
                tx,
                "UPDATE tasks SET state = ? WHERE state = ? AND {ids}",
                task_ids,
                (TaskState.QUEUED.value, PENDING),
            ),
            durable=False,  # lost, a task stays PENDING: a resubmit forwards it again, no more
        )

    def record(
        self, endpoint_id: str, updates: Sequence[tuple[str, str, bytes]]
    ) -> dict[str, TaskRow]:
        """Store ``(task_id, state, result_line)`` updates from endpoint ``endpoint_id``: a
        terminal one stores the result; a RUNNING one only moves a task that is not final yet.
        Updates of tasks that are not the endpoint's are ignored.

        Returns:
            The rows of the endpoint's tasks among them as they were before the update, read
            under a lock: their ``session`` is where the results go.
        """
        now = time.time()

        def run(tx: Tx) -> dict[str, TaskRow]:
            rows = self._read(tx, [u[0] for u in updates], self._db.lock_rows)
            rows = {t: r for t, r in rows.items() if r.endpoint_id == endpoint_id}
            mine = sorted((u for u in updates if u[0] in rows), key=lambda u: u[0])
            final = [(s, line, now, tid, *_FINAL_ARGS) for tid, s, line in mine if s in _FINAL]
            progress = [(s, tid, *_FINAL_ARGS) for tid, s, _ in mine if s not in _FINAL]
            tx.executemany(
                "UPDATE tasks SET state = ?, result = ?, completed = ? "
                f"WHERE task_id = ? AND {_NOT_FINAL}",
                final,
            )
            tx.executemany(
                f"UPDATE tasks SET state = ? WHERE task_id = ? AND {_NOT_FINAL}", progress
            )
            return rows

        return self._db.transaction(run, lock=True)

    def claim(self, user: str, task_ids: Sequence[str], session: str) -> dict[str, TaskRow]:
        """Route these tasks' future results to ``session`` (a client's new or re-attached
        session), except back to an earlier session of the client that holds them now.

        Returns:
            The rows of these tasks that exist (any user's), read under a lock after the move.
        """
        later = _later_session_guard(session)

        def run(tx: Tx) -> dict[str, TaskRow]:
            rows = self._read(tx, task_ids, self._db.lock_rows)
            _for_ids(
                tx,
                'UPDATE tasks SET session = ? WHERE "user" = ? AND NOT (session IS NOT NULL '
                "AND length(session) = ? AND substr(session, 1, ?) = ? AND session > ?) "
                "AND {ids}",
                [t for t, row in rows.items() if row.user == user],
                (session, user, *later),
            )
            return self._read(tx, rows)

        return self._db.transaction(run, lock=True)

    def mark_fetched(self, user: str, task_ids: Sequence[str]) -> None:
        """The client has these results: start their retention clock."""
        now = time.time()
        self._db.transaction(
            lambda tx: _for_ids(
                tx,
                'UPDATE tasks SET fetched = ? WHERE "user" = ? AND fetched IS NULL '
                "AND completed IS NOT NULL AND {ids}",
                task_ids,
                (now, user),
            ),
            durable=False,  # lost, a result is kept longer than its retention
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
        rows = self._db.query(
            'SELECT task_id, kind, state FROM tasks WHERE "user" = ? AND endpoint_id = ? '
            "AND fetched IS NULL AND state != ? ORDER BY submitted, task_id",
            (user, endpoint_id, EXPIRED),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    def task_counts(self) -> dict[str, int]:
        """How many tasks the store holds in each state."""
        rows = self._db.query("SELECT state, COUNT(*) FROM tasks GROUP BY state ORDER BY state")
        return {str(state): int(count) for state, count in rows}

    def expire(self, now: float, retention: float, max_age: float) -> tuple[int, int]:
        """Drop fetched results after ``retention``, and unfetched ones ``max_age`` after
        completion (their rows stay, ``expired``, for another ``max(max_age, retention)``).

        Returns:
            (rows deleted, results expired).
        """

        def run(tx: Tx) -> tuple[int, int]:
            deleted = tx.executemany(
                "DELETE FROM tasks WHERE (fetched IS NOT NULL AND fetched < ?) "
                "OR (state = ? AND completed < ?)",
                [(now - retention, EXPIRED, now - max_age - max(max_age, retention))],
            )
            expired = tx.executemany(
                "UPDATE tasks SET state = ?, result = NULL WHERE fetched IS NULL "
                "AND completed IS NOT NULL AND completed < ? AND state != ?",
                [(EXPIRED, now - max_age, EXPIRED)],
            )
            return deleted, expired

        return self._db.transaction(run)


def _later_session_guard(session: str) -> tuple[int, int, str, str]:
    """The parameters of claim's guard: a numbered session's length, the length and text of
    its client prefix, and itself (a session of another form matches no row: length -1)."""
    if _NUMBERED.fullmatch(session) is None:
        return (-1, 0, "", session)
    prefix = session[:-8]
    return (len(session), len(prefix), prefix, session)
