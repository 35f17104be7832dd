"""Answers while they stream, checkpointed, so that an answer whose process dies is kept
as interrupted by another process instead of lost; ledger rows of such calls are marked
estimated.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEEP_IDS = {"sqlite_autoincrement": True}  # a rebuilt SQLite table keeps AUTOINCREMENT


def upgrade() -> None:
    op.create_table(
        "answer_drafts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "conversation_id",
            sa.Integer(),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("user_message_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(32), nullable=False),
        sa.Column("call_id", sa.String(32), nullable=False),
        sa.Column("model", sa.String(100), nullable=True),
        sa.Column("estimated_input_tokens", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("context", sa.JSON(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_message_id", sa.Integer(), nullable=True),
        sa.Column("reservation_id", sa.Integer(), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_answer_drafts_conversation", "answer_drafts", ["conversation_id"])
    op.create_index("ix_answer_drafts_heartbeat", "answer_drafts", ["heartbeat_at"])
    # A ledger row written for a call whose process died holds estimated tokens; if the
    # process comes back, its real figures replace them.
    with op.batch_alter_table("usage_ledger", table_kwargs=KEEP_IDS) as batch:
        batch.add_column(
            sa.Column("estimated", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("usage_ledger", table_kwargs=KEEP_IDS) as batch:
        batch.drop_column("estimated")
    op.drop_index("ix_answer_drafts_heartbeat", table_name="answer_drafts")
    op.drop_index("ix_answer_drafts_conversation", table_name="answer_drafts")
    op.drop_table("answer_drafts")
