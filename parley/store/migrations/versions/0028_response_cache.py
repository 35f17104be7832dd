"""The response cache: answers it may serve again (`cached_responses`), the documents
each drew on (`cached_response_documents`, which cascade from the document), answers
marked as served from it (`messages.cached`), and the ledger's hits, misses and what a
hit saved (`usage_ledger.cache`, `saved_*`).

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0028"
down_revision: str | None = "0027"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cached_responses",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("exact", sa.String(64), nullable=False, unique=True),
        sa.Column("partition", sa.String(64), nullable=False),
        sa.Column(
            "user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "conversation_id",
            sa.Integer(),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
        ),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("vector", sa.LargeBinary()),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("citations", sa.JSON()),
        sa.Column("stop_reason", sa.String(40)),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("documents", sa.Integer(), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_cached_responses_partition", "cached_responses", ["partition", "expires_at"]
    )
    op.create_index("ix_cached_responses_user_id", "cached_responses", ["user_id"])
    op.create_index("ix_cached_responses_conversation_id", "cached_responses", ["conversation_id"])
    op.create_table(
        "cached_response_documents",
        sa.Column(
            "response_id",
            sa.Integer(),
            sa.ForeignKey("cached_responses.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "document_id",
            sa.Integer(),
            sa.ForeignKey("documents.id", ondelete="CASCADE"),
            primary_key=True,
        ),
    )
    op.create_index(
        "ix_cached_response_documents_document_id", "cached_response_documents", ["document_id"]
    )
    # Plain ADD COLUMNs: a rebuilt `messages` would lose the search triggers.
    op.add_column(
        "messages", sa.Column("cached", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column("usage_ledger", sa.Column("cache", sa.String(8)))
    for column in ("saved_input_tokens", "saved_output_tokens"):
        op.add_column(
            "usage_ledger", sa.Column(column, sa.Integer(), nullable=False, server_default="0")
        )
    op.add_column(
        "usage_ledger", sa.Column("saved_usd", sa.Float(), nullable=False, server_default="0")
    )


def downgrade() -> None:
    for column in ("saved_usd", "saved_output_tokens", "saved_input_tokens", "cache"):
        op.drop_column("usage_ledger", column)
    op.drop_column("messages", "cached")
    op.drop_table("cached_response_documents")
    op.drop_table("cached_responses")
