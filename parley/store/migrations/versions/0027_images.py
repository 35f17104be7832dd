"""Images sent with a question (`images`, and the question's `messages.images`).

An image row belongs to its conversation and its user (both cascade): erasing either
erases the image's bytes with it (SQLite deletes with `secure_delete`).

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0027"
down_revision: str | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "conversation_id",
            sa.Integer(),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("media_type", sa.String(40), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("thumbnail", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_images_user_id", "images", ["user_id"])
    op.create_index("ix_images_conversation_id", "images", ["conversation_id"])
    # A plain ADD COLUMN: a rebuilt `messages` would lose the search triggers.
    op.add_column("messages", sa.Column("images", sa.JSON()))


def downgrade() -> None:
    op.drop_column("messages", "images")
    op.drop_index("ix_images_conversation_id", table_name="images")
    op.drop_index("ix_images_user_id", table_name="images")
    op.drop_table("images")
