"""Memory: per-conversation strategy, prompt provenance per answer, rolling summaries.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("memory_strategy", sa.String(64), nullable=True))
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("context", sa.JSON(), nullable=True))
    op.create_table(
        "summaries",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "conversation_id",
            sa.Integer(),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("first_turn_id", sa.Integer(), nullable=False),
        sa.Column("last_turn_id", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("method", sa.String(20), nullable=False),
        sa.Column("model", sa.String(100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("conversation_id", "version"),
    )
    op.create_index("ix_summaries_conversation_id", "summaries", ["conversation_id"])


def downgrade() -> None:
    op.drop_index("ix_summaries_conversation_id", table_name="summaries")
    op.drop_table("summaries")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("context")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("memory_strategy")
