"""Memory options per conversation: each strategy's options may be set for one
conversation (JSON by strategy name, over the environment's `PARLEY_MEMORY__*`), and are
checked by the strategy's own model when written and when read.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A batch that recreates the table on SQLite must keep AUTOINCREMENT: ids are never
# handed out twice (Alembic reflects the table without it).
KEEP_IDS = {"sqlite_autoincrement": True}


def upgrade() -> None:
    with op.batch_alter_table("conversations", table_kwargs=KEEP_IDS) as batch:
        batch.add_column(sa.Column("memory_options", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("conversations", table_kwargs=KEEP_IDS) as batch:
        batch.drop_column("memory_options")
