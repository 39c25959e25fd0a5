"""The relay store's one seam to its database: SQLite (one host) or PostgreSQL (scale-out).

The store's SQL is written once, in what both accept (``?`` parameters, ``ON CONFLICT``, the
column ``"user"`` quoted); each :class:`Database` runs it its own way. A transaction is a
function of a :class:`Tx`, so PostgreSQL can run it again when the server aborted it for a
deadlock or a serialization failure (several relay processes update the same rows).

``lock=True`` transactions read rows they are about to change and must see them as no other
transaction can change them meanwhile: SQLite takes the database's write lock at ``BEGIN
IMMEDIATE`` (every write transaction does); PostgreSQL locks the rows that ``lock_rows``
clauses select (``FOR UPDATE``).

Store URLs: ``sqlite:///PATH`` (``sqlite:////abs/path.db``; ``~`` is expanded), a bare path
(SQLite), or ``postgresql://[user[:password]@]host[:port]/database[?options]`` (libpq's form).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from mpiengine_sdk.errors import BackendError, ConfigError

__all__ = [
    "Database",
    "PostgresDatabase",
    "SqliteDatabase",
    "Tx",
    "open_database",
    "redact",
    "store_url",
]

T = TypeVar("T")
Row = tuple[Any, ...]

_ALLOWED = "sqlite:///PATH, a file path, or postgresql://user@host:port/database"
_POSTGRES = ("postgresql", "postgres")
#: Transactions PostgreSQL aborted for a deadlock or a serialization failure are run again.
_RETRIES = 8
#: Host parameters per ``IN (...)`` list, well under SQLite's limit.
_SQLITE_CHUNK = 500


class Tx(Protocol):
    """The statements of one transaction."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement; returns its rows (none for a statement without results)."""

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run one statement per parameter row; returns the rows changed in all."""

    def task_ids(self, ids: Sequence[str]) -> Iterator[tuple[str, list[Any]]]:
        """``(condition, parameters)`` selecting these task ids, in as few statements as the
        dialect allows (none for no ids)."""


class Database(Protocol):
    """A connection to the store's database (used by one thread at a time)."""

    #: The store URL, password hidden.
    url: str
    #: What the schema calls a float and a byte string in this dialect.
    real: str
    blob: str
    #: Appended to a SELECT in a ``lock=True`` transaction to lock the rows it reads.
    lock_rows: str

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement on its own (autocommit); returns its rows."""

    def read(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn``, which only reads (SQLite: without taking the write lock).

        Raises:
            BackendError: the database cannot be reached (the next call reconnects).
        """

    def transaction(self, fn: Callable[[Tx], T], *, lock: bool = False, durable: bool = True) -> T:
        """Run ``fn`` in one transaction and commit; roll back if it raises.

        ``durable=False``: the commit need not wait for the disk (PostgreSQL); for changes whose
        loss in a server crash harms nothing (a state flag that only says how far a task got).

        Raises:
            BackendError: the database cannot be reached (the next call reconnects).
        """

    def create(self, statements: Sequence[str]) -> None:
        """Run schema statements (idempotent), one relay process at a time."""

    def drop(self, tables: Sequence[str]) -> None:
        """Remove the store: its tables (PostgreSQL) or its file (SQLite)."""

    def close(self) -> None:
        """Close the connection."""


def store_url(value: str | Path, default: Path) -> str:
    """The URL a config's ``store`` value names: ``""`` is ``default``, a path is SQLite.

    Raises:
        ConfigError: a URL of another scheme.
    """
    text = str(value)
    if not text:
        return f"sqlite:///{default}"
    scheme = urlsplit(text).scheme if "://" in text else ""
    if not scheme:
        return f"sqlite:///{Path(text).expanduser()}"
    if scheme == "sqlite" or scheme in _POSTGRES:
        return text
    raise ConfigError("store", f"{scheme!r} is not a store this relay can use", _ALLOWED)


def redact(url: str) -> str:
    """The URL without its password (for logs and status)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def open_database(url: str | Path) -> Database:
    """Connect to the database a store URL (or a bare SQLite path) names.

    Raises:
        ConfigError: an unknown scheme, or PostgreSQL without psycopg installed.
        BackendError: PostgreSQL cannot be reached.
    """
    text = str(url)
    if text == ":memory:":
        return SqliteDatabase(text)
    full = store_url(text, Path(text))
    scheme = urlsplit(full).scheme
    if scheme in _POSTGRES:
        return PostgresDatabase(full)
    path = full[len("sqlite:///") :] if full.startswith("sqlite:///") else ""
    if not path:
        raise ConfigError("store", f"{text!r} names no SQLite file", _ALLOWED)
    return SqliteDatabase(path if path == ":memory:" else str(Path(path).expanduser()))


class _SqliteTx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._db.execute(sql, tuple(params)).fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        return self._db.executemany(sql, rows).rowcount

    def task_ids(self, ids: Sequence[str]) -> Iterator[tuple[str, list[Any]]]:
        for i in range(0, len(ids), _SQLITE_CHUNK):
            chunk = list(ids[i : i + _SQLITE_CHUNK])
            yield f"task_id IN ({','.join('?' * len(chunk))})", chunk


class SqliteDatabase:
    """A SQLite file in WAL mode (several processes on one host may share it)."""

    real = "REAL"
    blob = "BLOB"
    lock_rows = ""  # BEGIN IMMEDIATE already holds the write lock

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.url = f"sqlite:///{path}"
        # Used by one thread at a time, though not always the one that opened it (a service
        # built on one thread runs on another).
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit survives a crash of the relay (not of the host's power): the broker
        # still holds every unacknowledged message, so the relay can redo its last batches.
        self._db.execute("PRAGMA synchronous=NORMAL")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """See Database.query."""
        return self._db.execute(sql, tuple(params)).fetchall()

    def read(self, fn: Callable[[Tx], T]) -> T:
        """See Database.read (each statement on its own)."""
        return fn(_SqliteTx(self._db))

    def transaction(self, fn: Callable[[Tx], T], *, lock: bool = False, durable: bool = True) -> T:
        """See Database.transaction (always IMMEDIATE: a deferred transaction that reads and
        then writes can fail at once with 'database is locked' beside another writer; never
        waits for the disk: synchronous=NORMAL)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            value = fn(_SqliteTx(self._db))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return value

    def create(self, statements: Sequence[str]) -> None:
        """See Database.create."""
        self.transaction(lambda tx: [tx.execute(s) for s in statements])

    def drop(self, tables: Sequence[str]) -> None:
        """See Database.drop: the file and its WAL files go."""
        self.close()
        if self.path != ":memory:":
            for suffix in ("", "-wal", "-shm"):
                Path(self.path + suffix).unlink(missing_ok=True)

    def close(self) -> None:
        """See Database.close."""
        self._db.close()


class _PgTx:
    def __init__(self, cursor: Any, sql: Callable[[str], str]) -> None:
        self._cur = cursor
        self._sql = sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._cur.execute(self._sql(sql), tuple(params))
        return list(self._cur.fetchall()) if self._cur.description else []

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        self._cur.executemany(self._sql(sql), rows)
        return max(int(self._cur.rowcount), 0)

    def task_ids(self, ids: Sequence[str]) -> Iterator[tuple[str, list[Any]]]:
        if ids:  # one array parameter: one statement to parse and plan, however many ids
            yield "task_id = ANY(?)", [list(ids)]


class PostgresDatabase:
    """A PostgreSQL database (psycopg 3); several relay processes may share it.

    Args:
        url: ``postgresql://...`` (libpq's URI form).

    Raises:
        ConfigError: psycopg is not installed.
        BackendError: the server cannot be reached.
    """

    real = "DOUBLE PRECISION"
    blob = "BYTEA"
    lock_rows = " ORDER BY task_id FOR UPDATE"  # one lock order for every transaction

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise ConfigError(
                "store",
                "a PostgreSQL store needs psycopg: pip install 'mpiengine[postgres]'",
                _ALLOWED,
            ) from exc
        self._psycopg = psycopg
        self._url = url
        self.url = redact(url)
        self._sql_cache: dict[str, str] = {}
        self._conn: Any = None
        self._connect()

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = self._psycopg.connect(self._url, autocommit=True, connect_timeout=10)
            except self._psycopg.OperationalError as exc:
                raise BackendError(f"cannot reach the relay store {self.url}: {exc}") from exc
        return self._conn

    def _sql(self, sql: str) -> str:
        # Our SQL has no literal "%" or "?": parameters are the only ones.
        cached = self._sql_cache.get(sql)
        if cached is None:
            cached = self._sql_cache[sql] = sql.replace("?", "%s")
        return cached

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """See Database.query."""
        return self.read(lambda tx: tx.execute(sql, params))

    def read(self, fn: Callable[[Tx], T]) -> T:
        """See Database.read: each statement on its own (autocommit), one round trip each
        instead of three (BEGIN, the statement, COMMIT)."""
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                return fn(_PgTx(cur, self._sql))
        except self._psycopg.OperationalError as exc:
            self._lost(conn)
            raise BackendError(f"the relay store {self.url} failed: {exc}") from exc

    def _lost(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.close()  # the next call reconnects

    def transaction(self, fn: Callable[[Tx], T], *, lock: bool = False, durable: bool = True) -> T:
        """See Database.transaction."""
        errors = self._psycopg.errors
        for attempt in range(_RETRIES):
            conn = self._connect()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    if not durable:
                        cur.execute("SET LOCAL synchronous_commit = off")
                    return fn(_PgTx(cur, self._sql))
            except (errors.DeadlockDetected, errors.SerializationFailure):
                if attempt == _RETRIES - 1:
                    raise
            except self._psycopg.OperationalError as exc:
                self._lost(conn)
                raise BackendError(f"the relay store {self.url} failed: {exc}") from exc
        raise AssertionError("unreachable")

    def create(self, statements: Sequence[str]) -> None:
        """See Database.create: under an advisory lock, since two relays starting at once
        would race on CREATE TABLE IF NOT EXISTS."""

        def run(tx: Tx) -> None:
            tx.execute("SELECT pg_advisory_xact_lock(7325001)")
            for statement in statements:
                tx.execute(statement)

        self.transaction(run)

    def drop(self, tables: Sequence[str]) -> None:
        """See Database.drop."""
        self.transaction(lambda tx: [tx.execute(f"DROP TABLE IF EXISTS {t}") for t in tables])
        self.close()

    def close(self) -> None:
        """See Database.close."""
        if self._conn is not None:
            self._conn.close()
