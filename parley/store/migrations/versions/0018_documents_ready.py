"""Uploads that hold no lock while they are indexed: a document's rows are written not
ready, its vectors are indexed with no transaction open, then it is made ready; every
read skips a document that is not ready yet.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A batch that recreates the table on SQLite must keep AUTOINCREMENT: ids are never
# handed out twice (Alembic reflects the table without it).
KEEP_IDS = {"sqlite_autoincrement": True}


def upgrade() -> None:
    with op.batch_alter_table("documents", table_kwargs=KEEP_IDS) as batch:
        batch.add_column(sa.Column("ready", sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("documents", table_kwargs=KEEP_IDS) as batch:
        batch.drop_column("ready")
