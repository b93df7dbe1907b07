"""The store's two databases behind one seam: a SQLite file (the default) and a PostgreSQL server (psycopg 3).

``coordinator.store`` writes each statement once, in SQL both accept (``?`` placeholders, ``INSERT ... ON
CONFLICT ... DO UPDATE``); what differs lives here, once per database: connecting, starting a transaction,
placeholder style, the column types of the migrations in ``coordinator.schema``, where the schema version is
kept, whether a table exists, the database's clock, and online backup.  psycopg is imported only when a PostgreSQL store is opened,
so a SQLite coordinator runs without the ``postgres`` extra.
"""

from __future__ import annotations

import abc
import functools
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fedprompt.config import store_target
from fedprompt.errors import ConfigError

if TYPE_CHECKING:
    from fedprompt.coordinator.schema import Migration

Row = tuple[Any, ...]


class Cursor(Protocol):
    """A statement's result: rows changed, and the rows of a ``RETURNING`` clause."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...


class Writer(Protocol):
    """What a transaction offers the store: statements with ``?`` placeholders."""

    def execute(self, sql: str, args: Sequence[object] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[object]], /) -> object: ...


class Backend(abc.ABC):
    """One database connection, serialised by a lock: every public store write is one ``transaction``."""

    location: str  # the file, or the URL without its password: what messages and logs show
    integrity_error: type[Exception]  # what a broken key or constraint raises
    unavailable_error: type[Exception]  # what a lost connection or a locked database raises: worth a retry
    now: str  # SQL for the database's clock, in seconds since the epoch: the one clock every replica shares
    #: SQL (a table-valued function for FROM) giving ``key, value`` rows of a JSON object held in TEXT ``{column}``
    json_pairs: str

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[Writer]:
        """Committed when the block ends, rolled back when it raises."""

    @abc.abstractmethod
    def rows(self, sql: str, args: Sequence[object] = ()) -> list[Row]: ...

    @abc.abstractmethod
    def has_table(self, name: str) -> bool: ...

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The version of ``coordinator.schema`` the database is at (0: made before versioning, or empty)."""

    @abc.abstractmethod
    def apply(self, migration: Migration) -> None:
        """Run one migration and record its version, in one transaction."""

    @abc.abstractmethod
    def backup(self, destination: str | Path) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class SqliteBackend(Backend):
    """One SQLite file in WAL mode, ``synchronous=FULL``; ``":memory:"`` for none.  Version: ``user_version``."""

    integrity_error = sqlite3.IntegrityError
    unavailable_error = sqlite3.OperationalError
    now = "((julianday('now') - 2440587.5) * 86400.0)"
    json_pairs = "json_each({column})"

    def __init__(self, path: str) -> None:
        self.location = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed transaction survives power loss, not only a crash
        self._db.execute("PRAGMA busy_timeout=5000")  # an online backup (``backup``) may hold a read lock

    @contextmanager
    def transaction(self) -> Iterator[Writer]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def rows(self, sql: str, args: Sequence[object] = ()) -> list[Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    def has_table(self, name: str) -> bool:
        return bool(self.rows("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)))

    def schema_version(self) -> int:
        return int(self.rows("PRAGMA user_version")[0][0])

    def apply(self, migration: Migration) -> None:
        with self._lock:
            try:
                self._db.executescript(f"BEGIN IMMEDIATE;\n{migration.script}\n{migration.sqlite_only}\n"
                                       f"PRAGMA user_version = {migration.number};\nCOMMIT;")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def backup(self, destination: str | Path) -> None:
        """A consistent copy of the whole file while the coordinator keeps running (SQLite online backup)."""
        target = sqlite3.connect(str(destination))
        try:
            with self._lock:
                self._db.backup(target)
        finally:
            target.close()

    def close(self) -> None:
        self._db.close()


#: SQLite column types as PostgreSQL spells them: its INTEGER and REAL are only 32 bits wide.
_PG_TYPES = ((re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
             (re.compile(r"\bINTEGER\b"), "BIGINT"), (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
             (re.compile(r"\bBLOB\b"), "BYTEA"))

#: ``pg_advisory_xact_lock`` key held while migrating, so coordinators opening one database migrate in turn.
_MIGRATION_LOCK = 0x66656470726F6D70  # "fedpromp"


def pg_script(script: str) -> str:
    """A migration script with PostgreSQL's column types (the scripts in ``coordinator.schema`` are SQLite's)."""
    for pattern, replacement in _PG_TYPES:
        script = pattern.sub(replacement, script)
    return script


@functools.lru_cache(maxsize=256)
def pg_statement(sql: str) -> str:
    """A store statement with psycopg's placeholders (``%s``; a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PgWriter:
    """A transaction's cursor, taking the store's ``?`` statements."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, args: Sequence[object] = (), /) -> Cursor:
        return self._cursor.execute(pg_statement(sql), args)

    def executemany(self, sql: str, rows: Sequence[Sequence[object]], /) -> object:
        return self._cursor.executemany(pg_statement(sql), rows)


def without_password(url: str) -> str:
    """``url`` with its password (in the user part or as a ``password`` parameter) replaced by ``***``."""
    parts = urlsplit(url)
    user, at, host = parts.netloc.rpartition("@")
    netloc = f"{user.partition(':')[0]}:***@{host}" if at and ":" in user else parts.netloc
    query = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class PostgresBackend(Backend):
    """One connection to a PostgreSQL server (autocommit outside ``transaction``); a connection the server
    dropped is opened again at the next call.  Version: the one-row table ``schema_version``."""

    now = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
    json_pairs = "json_each_text(CAST({column} AS json))"

    def __init__(self, url: str) -> None:
        self.location = without_password(url)
        try:
            import psycopg
        except ImportError as exc:
            raise ConfigError(f"coordinator.store: {self.location} needs psycopg 3, the PostgreSQL driver: "
                              "pip install 'fedprompt[postgres]'") from exc
        self._psycopg = psycopg
        self.integrity_error = psycopg.IntegrityError
        self.unavailable_error = psycopg.OperationalError
        self._url = url
        self._lock = threading.RLock()
        try:
            self._db = self._connect()
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            password = urlsplit(url).password
            raise ConfigError(f"coordinator.store: cannot open {self.location}: "
                              f"{reason.replace(password, '***') if password else reason}") from exc

    def _connect(self) -> Any:
        return self._psycopg.connect(self._url, autocommit=True, connect_timeout=10,
                                     application_name="fedprompt-coordinator")

    def _connection(self) -> Any:
        if self._db.closed:
            self._db = self._connect()
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[Writer]:
        with self._lock:
            db = self._connection()
            with db.transaction(), db.cursor() as cursor:
                yield _PgWriter(cursor)

    def rows(self, sql: str, args: Sequence[object] = ()) -> list[Row]:
        with self._lock:
            return list(self._connection().execute(pg_statement(sql), args).fetchall())

    def has_table(self, name: str) -> bool:
        return bool(self.rows("SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() "
                              "AND table_name = ?", (name,)))

    def schema_version(self) -> int:
        return int(self.rows("SELECT version FROM schema_version")[0][0]) if self.has_table("schema_version") else 0

    def apply(self, migration: Migration) -> None:
        """Under an advisory lock, so that of two coordinators opening a new database at once, the second finds
        the migration done and skips it."""
        with self._lock:
            db = self._connection()
            with db.transaction(), db.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                cursor.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL, "
                               "one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one))")
                cursor.execute("INSERT INTO schema_version (version) VALUES (0) ON CONFLICT DO NOTHING")
                if cursor.execute("SELECT version FROM schema_version").fetchone()[0] >= migration.number:
                    return
                cursor.execute(pg_script(migration.script))
                cursor.execute("UPDATE schema_version SET version = %s", (migration.number,))

    def backup(self, destination: str | Path) -> None:
        raise ConfigError(f"coordinator.store: {self.location} is a PostgreSQL database; back it up with pg_dump "
                          "(or the server's own backups), not with fedprompt coordinator backup")

    def close(self) -> None:
        self._db.close()


def connect(location: str | Path) -> Backend:
    """The backend for a store: a SQLite file path (or ``":memory:"``), or a URL that ``store_target`` reads."""
    if isinstance(location, Path) or "://" not in location:
        return SqliteBackend(str(location))
    kind, target = store_target(location)
    return PostgresBackend(target) if kind == "postgresql" else SqliteBackend(target)


def upsert(table: str, columns: str, key: str) -> str:
    """Insert a row, or overwrite the one with the same ``key`` columns: SQLite's ``INSERT OR REPLACE``, spelt as
    both databases take it."""
    names = columns.split(", ")
    sets = ", ".join(f"{c}=excluded.{c}" for c in names if c not in key.split(", "))
    return (f"INSERT INTO {table} ({columns}) VALUES ({','.join('?' * len(names))}) "
            f"ON CONFLICT ({key}) DO UPDATE SET {sets}")
