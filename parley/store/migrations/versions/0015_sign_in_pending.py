"""Sign-in throttling that lets people in together: an account counts its attempts in
flight (`pending`, `last_attempt_at`) instead of counting each as a failure before its
password is checked, so an address is only slowed by real failures.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("login_failures") as batch:
        batch.add_column(sa.Column("pending", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("login_failures") as batch:
        batch.drop_column("last_attempt_at")
        batch.drop_column("pending")
