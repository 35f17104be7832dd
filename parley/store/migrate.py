"""Apply Alembic migrations from code (`parley db upgrade`, `make run`, tests)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import SQLAlchemyError

from parley.store.db import Database, translate_database_error

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's Config treats % as interpolation; a password may contain one.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(database: Database, revision: str = "head") -> None:
    url = database.url.render_as_string(hide_password=False)
    try:
        command.upgrade(alembic_config(url), revision)
    except SQLAlchemyError as exc:
        raise translate_database_error(exc) from exc


@cache
def head_revision() -> str | None:
    """The newest migration this code ships."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


# The migration that keyed the audit trail: only an upgrade from before it keys old records.
KEYED_AUDIT_REVISION = "0016"


def current_revision(database: Database) -> str | None:
    """The schema's migration now (None: a new database)."""
    try:
        with database.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        raise translate_database_error(exc) from exc


def is_current(database: Database) -> bool:
    """True when the schema is at the newest migration; the app refuses to start otherwise."""
    revision = current_revision(database)
    return revision is not None and revision == head_revision()
