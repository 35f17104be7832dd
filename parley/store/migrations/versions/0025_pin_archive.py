"""Pinned and archived conversations: a pinned one stays on top of the list, an
archived one leaves the list (it is kept, found by search, and can come back).

Plain `ADD COLUMN`s, no table rebuild: a rebuilt `conversations` would lose the search
triggers (`parley/store/search_index.py`).

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("conversations", sa.Column("pinned_at", sa.DateTime(timezone=True)))
    op.add_column("conversations", sa.Column("archived_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    # A rebuilt SQLite table keeps AUTOINCREMENT: ids are never reused.
    with op.batch_alter_table(
        "conversations", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.drop_column("archived_at")
        batch.drop_column("pinned_at")
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":  # the rebuild dropped the search triggers
        from parley.store import search_index

        search_index.drop_sqlite(bind)
        search_index.create_sqlite(bind)
