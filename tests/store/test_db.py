"""Database: migrations match the models, SQLite runs in WAL mode, URLs are validated,
and database errors leave `Database.session()` as Parley's storage errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from parley.chat.conversation.branches import load_tree
from parley.core.config import Settings
from parley.core.domain import Role
from parley.core.errors import (
    ConfigurationError,
    InvalidInput,
    StorageConflict,
    StorageError,
    StorageUnavailable,
)
from parley.store import search_index
from parley.store.db import Database
from parley.store.migrate import is_current, upgrade
from parley.store.models import Base, User
from parley.wiring.services import Services, build_services
from tests.support import ROOT


def test_migrations_create_exactly_the_models_schema(database: Database) -> None:
    with database.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_name": search_index.include_name}
        )
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


def users_named(database: Database, name: str) -> int:
    with database.session() as session:
        return session.scalar(select(func.count(User.id)).where(User.name == name)) or 0


def test_an_operational_error_leaves_as_storage_unavailable(database: Database) -> None:
    with pytest.raises(StorageUnavailable) as caught, database.session() as session:
        session.add(User(name="rolled-back", role=Role.USER))
        session.flush()
        session.execute(text("SELECT * FROM no_such_table"))
    assert isinstance(caught.value.__cause__, OperationalError)
    assert caught.value.user_message == StorageError.user_message
    assert "no_such_table" not in caught.value.user_message  # no SQL reaches the user
    assert users_named(database, "rolled-back") == 0  # the block was rolled back


def test_an_unreachable_database_is_storage_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-folder.db").mkdir()  # SQLite cannot open a folder as its file
    database = Database(f"sqlite:///{tmp_path / 'a-folder.db'}")
    try:
        with pytest.raises(StorageUnavailable) as caught, database.session() as session:
            session.execute(text("SELECT 1"))
    finally:
        database.dispose()
    assert isinstance(caught.value.__cause__, OperationalError)
    assert "database" in caught.value.user_message.lower()


@pytest.mark.parametrize("flush", [True, False], ids=["in the block", "at commit"])
def test_an_integrity_error_leaves_as_storage_conflict(database: Database, flush: bool) -> None:
    with database.session() as session:
        session.add(User(name="taken", role=Role.USER))
    with pytest.raises(StorageConflict) as caught, database.session() as session:
        session.add(User(name="other", role=Role.USER))
        session.add(User(name="taken", role=Role.USER))
        if flush:
            session.flush()
    assert isinstance(caught.value.__cause__, IntegrityError)
    assert caught.value.user_message == StorageConflict.user_message
    assert users_named(database, "taken") == 1
    assert users_named(database, "other") == 0  # the whole block was rolled back


def test_other_errors_pass_through_the_session_and_roll_back(database: Database) -> None:
    with pytest.raises(KeyError), database.session() as session:
        session.add(User(name="half-done", role=Role.USER))
        session.flush()
        raise KeyError("a bug, not a database error")
    assert users_named(database, "half-done") == 0


def test_a_duplicate_user_name_is_invalid_input_with_a_sentence(services: Services) -> None:
    services.accounts.create_user(ROOT, name="alice", password="alice-password")
    with pytest.raises(InvalidInput) as caught:
        services.accounts.create_user(ROOT, name="alice", password="other-password")
    assert caught.value.user_message == "A user named 'alice' already exists."
    assert isinstance(caught.value.__cause__, StorageConflict)
    assert users_named(services._database, "alice") == 1


def test_a_database_behind_the_newest_migration_is_refused_until_upgraded(
    tmp_path: Path,
) -> None:
    database = Database(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(database, "0004")
    assert not is_current(database)
    upgrade(database)
    assert is_current(database)
    database.dispose()


def test_the_ledger_migration_keeps_past_usage(tmp_path: Path) -> None:
    """Answers from before `model_calls` and the `model_calls` rows both reach the ledger."""
    database = Database(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(database, "0005")
    with database.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO users (id, name, role, created_at)"
                " VALUES (1, 'ann', 'user', '2026-11-01 10:00:00')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO conversations (id, user_id, title, created_at, updated_at)"
                " VALUES (5, 1, 't', '2026-11-01 10:00:00', '2026-11-01 10:00:00')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO messages (conversation_id, role, content, status, model, input_tokens,"
                " output_tokens, cost_usd, created_at) VALUES"
                " (5, 'user', 'q', 'complete', NULL, NULL, NULL, NULL, '2026-11-01 10:00:00'),"
                " (5, 'assistant', 'a', 'complete', 'm1', 100, 20, 0.5, '2026-11-01 10:00:01'),"
                " (5, 'assistant', 'b', 'interrupted', 'm1', NULL, NULL, NULL,"
                " '2026-11-01 10:00:02'),"
                " (5, 'assistant', 'c', 'complete', 'm2', 7, 3, 0.1, '2026-11-02 10:00:00')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO model_calls (user_id, conversation_id, purpose, model, input_tokens,"
                " output_tokens, cache_creation_input_tokens, cache_read_input_tokens, cost_usd,"
                " created_at) VALUES (1, 5, 'chat', 'm2', 7, 3, 0, 0, 0.1, '2026-11-02 10:00:00'),"
                " (1, 5, 'title', 'm2', 4, 2, 0, 0, 0.01, '2026-11-02 10:00:01')"
            )
        )
    upgrade(database)
    with database.engine.begin() as conn:
        rows = conn.execute(
            text(
                "SELECT user_name, purpose, outcome, model, input_tokens, output_tokens, cost_usd"
                " FROM usage_ledger ORDER BY id"
            )
        ).all()
        assert not inspect(conn).has_table("model_calls")
    assert [tuple(r) for r in rows] == [
        ("ann", "chat", "complete", "m1", 100, 20, 0.5),  # before model_calls existed
        ("ann", "chat", "interrupted", "m1", 0, 0, 0.0),
        ("ann", "chat", "complete", "m2", 7, 3, 0.1),  # from model_calls, not twice
        ("ann", "title", "complete", "m2", 4, 2, 0.01),
    ]
    database.dispose()


def test_the_branches_migration_makes_one_branch_in_the_order_shown(tmp_path: Path) -> None:
    """Before 0026 a conversation was its messages in id order, less the answers a retry
    replaced: each message now follows the newest earlier shown one, and the branch shown
    ends at the newest shown message."""
    database = Database(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(database, "0025")
    with database.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO users (id, name, role, created_at)"
                " VALUES (1, 'ann', 'user', '2026-11-01 10:00:00')"
            )
        )
        for cid in (5, 6, 7):
            conn.execute(
                text(
                    "INSERT INTO conversations (id, user_id, title, created_at, updated_at)"
                    f" VALUES ({cid}, 1, 't', '2026-11-01 10:00:00', '2026-11-01 10:00:00')"
                )
            )
        conn.execute(
            text(
                "INSERT INTO messages (id, conversation_id, role, content, status, created_at)"
                " VALUES (1, 5, 'user', 'q1', 'complete', '2026-11-01 10:00:00'),"
                " (2, 6, 'user', 'other', 'complete', '2026-11-01 10:00:00'),"
                " (3, 5, 'assistant', 'failed', 'superseded', '2026-11-01 10:00:01'),"
                " (4, 5, 'assistant', 'a1', 'complete', '2026-11-01 10:00:02'),"
                " (5, 5, 'user', 'q2', 'complete', '2026-11-01 10:00:03'),"
                " (6, 5, 'assistant', 'a2', 'interrupted', '2026-11-01 10:00:04'),"
                " (7, 5, 'assistant', 'late', 'superseded', '2026-11-01 10:00:05')"
            )
        )
    upgrade(database)
    with database.engine.begin() as conn:
        parents = dict(conn.execute(text("SELECT id, parent_id FROM messages")).all())
        leaves = dict(conn.execute(text("SELECT id, active_leaf_id FROM conversations")).all())
    assert parents == {1: None, 2: None, 3: 1, 4: 1, 5: 4, 6: 5, 7: 6}
    assert leaves == {5: 6, 6: 2, 7: None}
    with database.session() as session:
        tree = load_tree(session, 5)
        assert tree.path(tree.leaf(leaves[5])) == [1, 4, 5, 6]
        assert tree.branching(4).count == 1  # the replaced answer is no sibling
    database.dispose()


def test_every_table_that_never_reuses_ids_keeps_autoincrement_after_all_migrations(
    database: Database,
) -> None:
    """A batch migration recreates a SQLite table from its reflection, which forgets
    AUTOINCREMENT: ids of erased users, documents or ledger rows would come back."""
    wanted = {
        table.name
        for table in Base.metadata.tables.values()
        if table.kwargs.get("sqlite_autoincrement")
    }
    assert {"users", "documents", "groups", "usage_ledger", "audit_records"} <= wanted
    with database.engine.connect() as connection:
        ddl = dict(connection.exec_driver_sql("SELECT name, sql FROM sqlite_master").all())
    assert [name for name in sorted(wanted) if "AUTOINCREMENT" not in (ddl[name] or "")] == []


def test_the_head_the_start_up_check_knows_is_alembics_head() -> None:
    """`is_current` compares with `HEAD_REVISION` so that starting needs no Alembic: a
    new migration must move it."""
    from parley.store.migrate import HEAD_REVISION, head_revision

    assert head_revision() == HEAD_REVISION
