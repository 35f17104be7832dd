"""Metering that cannot be lost: each ledger row carries its call's id (unique), so a
write retried after a failure, or a call drained from the metering outbox twice, adds
one row.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A batch that recreates the table on SQLite must keep AUTOINCREMENT: ids are never
# handed out twice (Alembic reflects the table without it).
KEEP_IDS = {"sqlite_autoincrement": True}


def upgrade() -> None:
    with op.batch_alter_table("usage_ledger", table_kwargs=KEEP_IDS) as batch:
        batch.add_column(sa.Column("call_id", sa.String(32), nullable=True))
        batch.create_unique_constraint("uq_usage_ledger_call_id", ["call_id"])


def downgrade() -> None:
    with op.batch_alter_table("usage_ledger", table_kwargs=KEEP_IDS) as batch:
        batch.drop_constraint("uq_usage_ledger_call_id", type_="unique")
        batch.drop_column("call_id")
