"""Citations and document choice: an answer's cited passages, the documents a
conversation draws on, and an outbox of documents whose vectors are still to follow a
share, unshare or deletion.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("citations", sa.JSON(), nullable=True))
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("document_ids", sa.JSON(), nullable=True))
    op.create_table(
        "document_syncs",
        sa.Column("document_id", sa.Integer(), primary_key=True),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("document_syncs")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("document_ids")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("citations")
