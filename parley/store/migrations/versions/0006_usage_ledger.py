"""The usage ledger (append-only, one row per provider call, whatever its outcome) and
quota reservations. `model_calls` moves into the ledger; answers stored before
`model_calls` existed are carried over from the messages, so today's quotas and
`parley usage` keep their history.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PURPOSES = ("chat", "continuation", "summary", "title", "batch", "evaluation")
_OUTCOMES = ("complete", "interrupted", "aborted", "failed")


def upgrade() -> None:
    op.create_table(
        "usage_ledger",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("user_name", sa.String(64), nullable=True),
        sa.Column("conversation_id", sa.Integer(), nullable=True),
        sa.Column(
            "purpose",
            sa.Enum(*_PURPOSES, name="purpose", native_enum=False, length=20),
            nullable=False,
        ),
        sa.Column(
            "outcome",
            sa.Enum(*_OUTCOMES, name="call_outcome", native_enum=False, length=20),
            nullable=False,
        ),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cache_creation_input_tokens", sa.Integer(), nullable=False),
        sa.Column("cache_read_input_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_usage_ledger_user_ended", "usage_ledger", ["user_id", "ended_at"])
    op.create_index("ix_usage_ledger_ended", "usage_ledger", ["ended_at"])
    # Answers from before `model_calls` existed: one chat call each, as the message recorded it.
    op.execute(
        """
        INSERT INTO usage_ledger (user_id, user_name, conversation_id, purpose, outcome, model,
            input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens,
            cost_usd, started_at, ended_at)
        SELECT c.user_id, u.name, m.conversation_id, 'chat',
            CASE m.status WHEN 'complete' THEN 'complete'
                          WHEN 'interrupted' THEN 'interrupted' ELSE 'failed' END,
            COALESCE(m.model, ''), COALESCE(m.input_tokens, 0), COALESCE(m.output_tokens, 0),
            COALESCE(m.cache_creation_input_tokens, 0), COALESCE(m.cache_read_input_tokens, 0),
            COALESCE(m.cost_usd, 0), m.created_at, COALESCE(m.completed_at, m.created_at)
        FROM messages m
        JOIN conversations c ON c.id = m.conversation_id
        JOIN users u ON u.id = c.user_id
        WHERE m.role = 'assistant'
          AND NOT EXISTS (SELECT 1 FROM model_calls k WHERE k.created_at <= m.created_at)
        ORDER BY m.created_at
        """
    )
    op.execute(
        """
        INSERT INTO usage_ledger (user_id, user_name, conversation_id, purpose, outcome, model,
            input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens,
            cost_usd, started_at, ended_at)
        SELECT k.user_id, u.name, k.conversation_id, k.purpose, 'complete', k.model,
            k.input_tokens, k.output_tokens, k.cache_creation_input_tokens,
            k.cache_read_input_tokens, k.cost_usd, k.created_at, k.created_at
        FROM model_calls k
        LEFT JOIN users u ON u.id = k.user_id
        ORDER BY k.id
        """
    )
    op.drop_index("ix_model_calls_user_created", table_name="model_calls")
    op.drop_table("model_calls")
    op.create_table(
        "quota_reservations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "user_id",
            sa.Integer(),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,  # a released id is never another send's reservation
    )
    op.create_index("ix_quota_reservations_user_id", "quota_reservations", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_quota_reservations_user_id", table_name="quota_reservations")
    op.drop_table("quota_reservations")
    op.create_table(
        "model_calls",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("conversation_id", sa.Integer(), nullable=True),
        sa.Column(
            "purpose",
            sa.Enum(*_PURPOSES, name="purpose", native_enum=False, length=20),
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
    op.execute(
        """
        INSERT INTO model_calls (user_id, conversation_id, purpose, model, input_tokens,
            output_tokens, cache_creation_input_tokens, cache_read_input_tokens, cost_usd,
            created_at)
        SELECT user_id, conversation_id, purpose, model, input_tokens, output_tokens,
            cache_creation_input_tokens, cache_read_input_tokens, cost_usd, ended_at
        FROM usage_ledger WHERE user_id IN (SELECT id FROM users) OR user_id IS NULL
        """
    )
    op.drop_index("ix_usage_ledger_ended", table_name="usage_ledger")
    op.drop_index("ix_usage_ledger_user_ended", table_name="usage_ledger")
    op.drop_table("usage_ledger")
