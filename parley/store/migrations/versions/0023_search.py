"""Full-text search over each user's conversations (titles and messages), with the
database's own engine: FTS5 tables kept in step by triggers on SQLite, GIN indexes on
`to_tsvector` on PostgreSQL (`parley/store/search_index.py`).

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

from parley.store import search_index

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name == "sqlite":
        search_index.create_sqlite(connection)
    elif connection.dialect.name == "postgresql":
        search_index.create_postgres(connection)


def downgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name == "sqlite":
        search_index.drop_sqlite(connection)
    elif connection.dialect.name == "postgresql":
        search_index.drop_postgres(connection)
