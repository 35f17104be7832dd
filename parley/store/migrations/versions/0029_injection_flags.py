"""Prompt-injection flags on document chunks (`document_chunks.suspect`): why the
detector found a chunk suspect, "" when it found nothing, NULL when the chunk was
stored before the detector (it is read at retrieval instead).

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0029"
down_revision: str | None = "0028"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("document_chunks") as batch:
        batch.add_column(sa.Column("suspect", sa.String(100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("document_chunks") as batch:
        batch.drop_column("suspect")
