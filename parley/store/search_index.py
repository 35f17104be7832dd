"""Full-text search over conversations, with the database's own engine.

SQLite: two FTS5 tables over `messages.content` and `conversations.title`, as external
content (the text lives once, in its table), kept in step by triggers on insert, update
and delete (migration 0023), tokenized by `unicode61` without stemming. PostgreSQL: GIN
indexes on `to_tsvector('simple', …)` of the same two columns, which PostgreSQL keeps in step
itself; the queries use the same expressions, so the planner takes the indexes.

Erasure: an FTS5 delete only appends a tombstone, the erased words stay in older index
segments until they are merged. `purge` merges every segment into one (`optimize`), so
with `secure_delete` the erased words leave the file; `Database.reclaim` runs it after
every erasure of conversations. It rewrites the whole index: O(messages), about 0.75 s
per 100,000 messages of 80 words, under the write lock.

A batch migration that rebuilds `messages` or `conversations` on SQLite drops their
triggers: it must create them again (`create_sqlite`), and the search tests fail if not.
"""

from __future__ import annotations

from sqlalchemy import Connection

MESSAGES_FTS = "message_search"
TITLES_FTS = "conversation_search"
# No stemming: a stemmed index does not match the start of a word ("runn" is no prefix
# of the stem "run"), and people search as they type.
POSTGRES_CONFIG = "simple"
TOKENIZER = "unicode61 remove_diacritics 2"

_SOURCES = {MESSAGES_FTS: ("messages", "content"), TITLES_FTS: ("conversations", "title")}
_SHADOWS = ("_data", "_idx", "_content", "_docsize", "_config")


def is_search_table(name: str | None) -> bool:
    """The FTS5 tables and their shadow tables: the models do not declare them."""
    if name is None:
        return False
    return any(name == fts or name in {fts + s for s in _SHADOWS} for fts in _SOURCES)


def include_name(name: str | None, type_: str, _parents: object) -> bool:
    """For Alembic's comparison of the models with the database (`include_name`)."""
    return not (type_ == "table" and is_search_table(name)) and not (
        type_ == "index" and name in POSTGRES_INDEXES
    )


POSTGRES_INDEXES = {
    "ix_messages_search": ("messages", "content"),
    "ix_conversations_search": ("conversations", "title"),
}


def create_sqlite(connection: Connection) -> None:
    """The FTS5 tables, filled from what is there, and the triggers that keep them in step."""
    for fts, (table, column) in _SOURCES.items():
        connection.exec_driver_sql(
            f"CREATE VIRTUAL TABLE IF NOT EXISTS {fts} USING fts5("
            f"{column}, content='{table}', content_rowid='id', tokenize='{TOKENIZER}')"
        )
        connection.exec_driver_sql(f"INSERT INTO {fts}({fts}) VALUES ('rebuild')")
        new = f"INSERT INTO {fts}(rowid, {column}) VALUES (new.id, new.{column});"
        old = f"INSERT INTO {fts}({fts}, rowid, {column}) VALUES ('delete', old.id, old.{column});"
        for name, when, body in (
            ("insert", "AFTER INSERT", new),
            ("delete", "AFTER DELETE", old),
            ("update", f"AFTER UPDATE OF {column}", old + " " + new),
        ):
            connection.exec_driver_sql(
                f"CREATE TRIGGER IF NOT EXISTS {fts}_{name} {when} ON {table} BEGIN {body} END"
            )


def drop_sqlite(connection: Connection) -> None:
    for fts in _SOURCES:
        for name in ("insert", "delete", "update"):
            connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {fts}_{name}")
        connection.exec_driver_sql(f"DROP TABLE IF EXISTS {fts}")


def create_postgres(connection: Connection) -> None:
    for index, (table, column) in POSTGRES_INDEXES.items():
        connection.exec_driver_sql(
            f"CREATE INDEX IF NOT EXISTS {index} ON {table} "
            f"USING gin (to_tsvector('{POSTGRES_CONFIG}', {column}))"
        )


def drop_postgres(connection: Connection) -> None:
    for index in POSTGRES_INDEXES:
        connection.exec_driver_sql(f"DROP INDEX IF EXISTS {index}")


def is_present(connection: Connection) -> bool:
    """Whether the FTS5 tables exist (a database migrated past 0023)."""
    found = connection.exec_driver_sql(
        f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{MESSAGES_FTS}'"
    ).scalar()
    return bool(found)


def purge(connection: Connection) -> None:
    """Merge each FTS5 index into one segment, leaving out what was deleted (SQLite)."""
    for fts in _SOURCES:
        connection.exec_driver_sql(f"INSERT INTO {fts}({fts}) VALUES ('optimize')")


__all__ = [
    "MESSAGES_FTS",
    "POSTGRES_CONFIG",
    "TITLES_FTS",
    "create_postgres",
    "create_sqlite",
    "drop_postgres",
    "drop_sqlite",
    "include_name",
    "is_present",
    "is_search_table",
    "purge",
]
