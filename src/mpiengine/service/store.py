"""The endpoint's local store (SQLite): results until the broker confirms them, and beyond.

A result is written here before it is published; ``sent`` is set once the broker confirmed it.
After a crash or a broker outage the unsent ones are published again, and a task delivered
again whose result is here is answered from here instead of being run twice.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["LocalStore"]

_CHUNK = 500


class LocalStore:
    """The endpoint's store.

    Args:
        path: the database file, or ``":memory:"``.
    """

    def __init__(self, path: str | Path) -> None:
        # Used by one thread at a time, though not always the one that opened it (a service
        # built on one thread runs on another).
        self._db = sqlite3.connect(
            str(path), timeout=10, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            "CREATE TABLE IF NOT EXISTS results (task_id TEXT PRIMARY KEY, line BLOB NOT NULL, "
            "sent INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);"
            "CREATE TABLE IF NOT EXISTS cancelled (task_id TEXT PRIMARY KEY, created REAL);"
        )

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def put(self, results: Sequence[tuple[str, bytes]]) -> None:
        """Store new results (unsent); a task that already has one keeps it."""
        now = time.time()
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR IGNORE INTO results (task_id, line, created) VALUES (?, ?, ?)",
                [(tid, line, now) for tid, line in results],
            )

    def sent_flags(self, task_ids: Sequence[str]) -> dict[str, bool]:
        """For each task that has a stored result: whether the broker confirmed it."""
        rows = self._where_in("SELECT task_id, sent FROM results", task_ids)
        return {tid: bool(sent) for tid, sent in rows}

    def mark_sent(self, task_ids: Iterable[str]) -> None:
        """The broker confirmed these results."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE results SET sent = 1 WHERE task_id = ?", [(t,) for t in task_ids]
            )

    def unsent(self) -> list[tuple[str, bytes]]:
        """Every result not yet confirmed, oldest first."""
        rows = self._db.execute(
            "SELECT task_id, line FROM results WHERE sent = 0 ORDER BY created"
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def count_unsent(self) -> int:
        """How many results wait for the broker."""
        row = self._db.execute("SELECT COUNT(*) FROM results WHERE sent = 0").fetchone()
        return int(row[0])

    def add_cancelled(self, task_ids: Iterable[str]) -> None:
        """Remember cancels of tasks not seen yet."""
        now = time.time()
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR IGNORE INTO cancelled (task_id, created) VALUES (?, ?)",
                [(t, now) for t in task_ids],
            )

    def cancelled(self, task_ids: Sequence[str]) -> set[str]:
        """Those of ``task_ids`` whose cancel arrived before them."""
        return {tid for (tid,) in self._where_in("SELECT task_id FROM cancelled", task_ids)}

    def _where_in(self, select: str, task_ids: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        """The rows of ``select ... WHERE task_id IN (task_ids)``, one query per chunk."""
        for i in range(0, len(task_ids), _CHUNK):
            chunk = tuple(task_ids[i : i + _CHUNK])
            marks = ",".join("?" * len(chunk))
            yield from self._db.execute(f"{select} WHERE task_id IN ({marks})", chunk)

    def prune(self, older_than: float) -> None:
        """Forget sent results and cancels older than ``older_than`` (epoch seconds)."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM results WHERE sent = 1 AND created < ?", (older_than,))
            self._db.execute("DELETE FROM cancelled WHERE created < ?", (older_than,))
