"""Erasing conversations: ids never reused (SQLite AUTOINCREMENT on conversations and
messages), and an outbox of conversations whose vectors are still to be dropped.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _autoincrement(on: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return  # PostgreSQL sequences never hand out an id twice
    for table in ("conversations", "messages"):
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": on}
        ):
            pass


def upgrade() -> None:
    _autoincrement(True)
    op.create_table(
        "vector_erasures",
        sa.Column("conversation_id", sa.Integer(), primary_key=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("vector_erasures")
    _autoincrement(False)
