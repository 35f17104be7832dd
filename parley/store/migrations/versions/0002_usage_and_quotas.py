"""Token usage with cache reads and writes, cost per message, per-user quota overrides.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("cache_creation_input_tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("cache_read_input_tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("estimated_input_tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("cost_usd", sa.Float(), nullable=True))
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("quota_messages_per_day", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("quota_tokens_per_day", sa.Integer(), nullable=True))
    op.create_index("ix_messages_created_at", "messages", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_messages_created_at", table_name="messages")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("quota_tokens_per_day")
        batch.drop_column("quota_messages_per_day")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("cost_usd")
        batch.drop_column("estimated_input_tokens")
        batch.drop_column("cache_read_input_tokens")
        batch.drop_column("cache_creation_input_tokens")
