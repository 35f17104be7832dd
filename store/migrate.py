"""Apply Alembic migrations from code (`parley db upgrade`, `make run`, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError

from store.db import Database, translate_database_error

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's Config treats % as interpolation; a password may contain one.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(database: Database, revision: str = "head") -> None:
    url = database.url.render_as_string(hide_password=False)
    command.upgrade(alembic_config(url), revision)


def is_current(database: Database) -> bool:
    """True when the schema exists; the app refuses to start on an empty database."""
    try:
        return inspect(database.engine).has_table("alembic_version")
    except SQLAlchemyError as exc:
        raise translate_database_error(exc) from exc
