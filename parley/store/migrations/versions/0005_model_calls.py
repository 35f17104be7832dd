"""Every model call metered by user and purpose; a stored token count per message;
an index to count a conversation's superseded answers.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_calls",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("conversation_id", sa.Integer(), nullable=True),
        sa.Column(
            "purpose",
            sa.Enum(
                "chat",
                "continuation",
                "summary",
                "title",
                "batch",
                "evaluation",
                name="purpose",
                native_enum=False,
                length=20,
            ),
            nullable=False,
        ),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cache_creation_input_tokens", sa.Integer(), nullable=False),
        sa.Column("cache_read_input_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_model_calls_user_created", "model_calls", ["user_id", "created_at"])
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("tokens", sa.Integer(), nullable=True))
    op.create_index("ix_messages_conversation_status", "messages", ["conversation_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_messages_conversation_status", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("tokens")
    op.drop_index("ix_model_calls_user_created", table_name="model_calls")
    op.drop_table("model_calls")
