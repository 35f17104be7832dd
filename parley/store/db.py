"""Engine and sessions. SQLite (WAL mode) by default, any SQLAlchemy URL by setting.

This is the one boundary for database errors: whatever SQLAlchemy or the driver
raises inside `Database.session()` leaves it as `StorageUnavailable` (unreachable,
locked, timed out) or `StorageConflict` (a constraint refused the change), with a
sentence for the user and the original on `__cause__`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from parley.core.errors import ConfigurationError, StorageConflict, StorageError, StorageUnavailable
from parley.store import search_index
from parley.store.keys import AuditKeys

log = logging.getLogger(__name__)


class Database:
    """One engine and session factory per process; sessions are short-lived, one per operation."""

    def __init__(self, url: str, *, audit_keys: AuditKeys | None = None) -> None:
        try:
            parsed = make_url(url)
        except Exception as exc:  # sqlalchemy raises ArgumentError with the URL inside
            raise ConfigurationError("The database URL cannot be parsed.") from exc
        self.url = parsed
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(parsed, pool_pre_ping=not self.is_sqlite)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        # Sessions carry the audit key ring (never stored in the database itself), so
        # every `append_in` in any transaction keys its record with it.
        self.audit_keys = audit_keys
        info = {AUDIT_KEYS: audit_keys}
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, info=info)
        self._locked_sessions = sessionmaker(
            self.engine.execution_options(**{_WRITE_LOCK: True}),
            expire_on_commit=False,
            info=info,
        )

    @contextmanager
    def session(self, *, write_lock: bool = False) -> Iterator[Session]:
        """A session that commits when the block ends and rolls back on error.

        `write_lock=True` is for read-decide-write work that must not interleave with
        another process doing the same (shared rate buckets, quota reservations): on
        SQLite the transaction starts with `BEGIN IMMEDIATE`, taking the database's one
        write lock before the first read (pysqlite would otherwise begin only at the
        first write, after the reads it was decided on); on PostgreSQL the caller locks
        the rows it decides on (`FOR UPDATE`).

        Database errors (in the block or at commit) leave as `StorageError`s.
        """
        factory = self._locked_sessions if write_lock else self._sessions
        try:
            with factory() as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise translate_database_error(exc) from exc

    def reclaim(self, attempts: int = 5, *, search: bool = False) -> bool:
        """After an erasure: leave no erased bytes in SQLite's files.

        Every connection deletes with `secure_delete` (freed cells and pages are
        zeroed); with `search` (after erasing messages or titles) it merges the search
        index, leaving out the erased words (FTS5 keeps them in older segments otherwise:
        `search_index.purge`); then it moves the write-ahead log into the database and
        truncates it, so the log's older copies
        of the pages go too. A reader holding an old
        snapshot makes SQLite decline; that is tried again a few times, then logged (the
        start-up sweep checkpoints again). True when the log is empty. PostgreSQL
        reclaims its own files (VACUUM; see the README).
        """
        if not self.is_sqlite:
            return True
        if search:
            try:
                with self.engine.begin() as connection:
                    if search_index.is_present(connection):
                        search_index.purge(connection)
            except SQLAlchemyError as exc:  # the rows are gone: the next erasure merges
                log.warning("Merging the search index after an erasure failed: %s", exc)
        for attempt in range(attempts):
            try:
                with self.engine.connect() as connection:
                    busy = connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").first()
            except SQLAlchemyError as exc:
                raise translate_database_error(exc) from exc
            if busy is not None and busy[0] == 0:
                return True
            time.sleep(0.05 * (attempt + 1))
        log.warning("The database's log still holds erased pages; reclaimed at start-up.")
        return False

    def dispose(self) -> None:
        self.engine.dispose()


_WRITE_LOCK = "parley_write_lock"
AUDIT_KEYS = "parley_audit_keys"


def _sqlite_begin(connection: Connection) -> None:
    # Ordinary sessions keep pysqlite's deferred begin (a read never holds the lock).
    if connection.get_execution_options().get(_WRITE_LOCK):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=5000")
    # WAL lets the page read while the CLI or another session writes. Switching to it
    # takes the file for a moment, and SQLite answers "locked" at once (no busy wait)
    # to the other processes opening a new file then: they ask again.
    _wal(cursor)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # Deleted rows are overwritten, not left in free pages: erasure must leave no bytes.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def _wal(cursor: Any) -> None:
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    for attempt in range(100):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if attempt == 99:
                raise
            time.sleep(0.02 + 0.01 * (attempt % 5))


def translate_database_error(exc: SQLAlchemyError) -> StorageError:
    """The same translation for code that talks to the engine outside `session()`."""
    if isinstance(exc, IntegrityError):
        return StorageConflict(f"constraint: {type(exc.orig).__name__}")
    return StorageUnavailable(f"database error: {type(exc).__name__}")
