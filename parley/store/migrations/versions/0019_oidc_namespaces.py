"""OIDC groups per issuer: a provider's groups are named `LABEL#group` (longer names
than local ones), and each provider-linked user records when their groups were last
read from the provider, so a resumed session re-reads them after a while. Groups the
earlier versions made from a claim keep their names (an admin may delete them).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A batch that recreates the table on SQLite must keep AUTOINCREMENT: ids are never
# handed out twice (Alembic reflects the table without it).
KEEP_IDS = {"sqlite_autoincrement": True}


def upgrade() -> None:
    with op.batch_alter_table("groups", table_kwargs=KEEP_IDS) as batch:
        batch.alter_column("name", type_=sa.String(160), existing_type=sa.String(64))
    with op.batch_alter_table("users", table_kwargs=KEEP_IDS) as batch:
        batch.add_column(sa.Column("oidc_synced_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users", table_kwargs=KEEP_IDS) as batch:
        batch.drop_column("oidc_synced_at")
    with op.batch_alter_table("groups", table_kwargs=KEEP_IDS) as batch:
        batch.alter_column("name", type_=sa.String(64), existing_type=sa.String(160))
