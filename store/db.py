"""Engine and sessions. SQLite (WAL mode) by default, any SQLAlchemy URL by setting.

This is the one boundary for database errors: whatever SQLAlchemy or the driver
raises inside `Database.session()` leaves it as `StorageUnavailable` (unreachable,
locked, timed out) or `StorageConflict` (a constraint refused the change), with a
sentence for the user and the original on `__cause__`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from parley.errors import ConfigurationError, StorageConflict, StorageError, StorageUnavailable


class Database:
    """One engine and session factory per process; sessions are short-lived, one per operation."""

    def __init__(self, url: str) -> None:
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
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block ends and rolls back on error.

        Database errors (in the block or at commit) leave as `StorageError`s.
        """
        try:
            with self._sessions() as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise translate_database_error(exc) from exc

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the page read while the CLI or another session writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def translate_database_error(exc: SQLAlchemyError) -> StorageError:
    """The same translation for code that talks to the engine outside `session()`."""
    if isinstance(exc, IntegrityError):
        return StorageConflict(f"constraint: {type(exc.orig).__name__}")
    return StorageUnavailable(f"database error: {type(exc).__name__}")
