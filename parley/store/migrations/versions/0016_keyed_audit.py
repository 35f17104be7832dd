"""A keyed audit trail: each record names the key (by id) whose HMAC chains it, and its
personal part (actor, subject, data) enters the chain through a salted content hash and
the hash of its redacted form, so a user's erasure can redact it without breaking the
chain. Records written before this are keyed by `parley db upgrade` right after the
migrations (it holds the key; a migration does not).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Tables whose ids are never handed out twice: a batch that recreates one on SQLite must
# keep AUTOINCREMENT (Alembic reflects the table without it).
KEEP_IDS = {"sqlite_autoincrement": True}


def upgrade() -> None:
    with op.batch_alter_table("audit_records", table_kwargs=KEEP_IDS) as batch:
        batch.add_column(sa.Column("key_id", sa.String(16), nullable=True))
        batch.add_column(sa.Column("salt", sa.String(32), nullable=True))
        batch.add_column(sa.Column("content_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("redacted_hash", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_records", table_kwargs=KEEP_IDS) as batch:
        batch.drop_column("redacted_hash")
        batch.drop_column("content_hash")
        batch.drop_column("salt")
        batch.drop_column("key_id")
