"""Apply Alembic migrations from code (`parley db upgrade`, `make run`, tests).

Alembic (and the Mako templates it brings) loads only to upgrade: checking that a
database is current reads `alembic_version` with one query, so every command and page
starts without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError

from parley.store.db import Database, translate_database_error

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The newest migration this code ships (a test holds it to Alembic's own head).
HEAD_REVISION = "0030"


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's Config treats % as interpolation; a password may contain one.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(database: Database, revision: str = "head") -> None:
    from alembic import command

    url = database.url.render_as_string(hide_password=False)
    try:
        command.upgrade(alembic_config(url), revision)
    except SQLAlchemyError as exc:
        raise translate_database_error(exc) from exc


def head_revision() -> str | None:
    """The newest migration among the scripts (Alembic's reading; see `HEAD_REVISION`)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


# The migration that keyed the audit trail: only an upgrade from before it keys old records.
KEYED_AUDIT_REVISION = "0016"


def current_revision(database: Database) -> str | None:
    """The schema's migration now (None: a new database)."""
    try:
        with database.engine.connect() as connection:
            try:
                rows = connection.execute(text("SELECT version_num FROM alembic_version"))
                versions = [str(v) for (v,) in rows]
            except (OperationalError, ProgrammingError):  # no table yet: a new database
                return None
    except SQLAlchemyError as exc:
        raise translate_database_error(exc) from exc
    return versions[0] if len(versions) == 1 else None


def is_current(database: Database) -> bool:
    """True when the schema is at the newest migration; the app refuses to start otherwise."""
    revision = current_revision(database)
    return revision is not None and revision == HEAD_REVISION
