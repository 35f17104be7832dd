"""Database: migrations match the models, SQLite runs in WAL mode, URLs are validated."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from parley.config import Settings
from parley.errors import ConfigurationError
from store.db import Database
from store.migrate import is_current, upgrade
from store.models import Base
from wiring.services import build_services


def test_migrations_create_exactly_the_models_schema(database: Database) -> None:
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []
    assert {"users", "conversations", "messages", "alembic_version"} <= set(
        inspect(database.engine).get_table_names()
    )


def test_upgrade_twice_is_harmless(database: Database) -> None:
    upgrade(database)
    assert is_current(database)


def test_sqlite_uses_wal_and_foreign_keys(database: Database) -> None:
    with database.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_app_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "fresh")
    with pytest.raises(ConfigurationError, match="parley db upgrade"):
        build_services(settings)


def test_bad_database_url_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="cannot be parsed"):
        Database("not a url at all")
