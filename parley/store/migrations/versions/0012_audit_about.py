"""The audit trail: the user a record concerns (`about_id`), for per-user histories and
the accesses a user is shown.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_records") as batch:
        batch.add_column(sa.Column("about_id", sa.Integer(), nullable=True))
    op.create_index("ix_audit_records_actor_id", "audit_records", ["actor_id", "id"])
    op.create_index("ix_audit_records_about_id", "audit_records", ["about_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_records_about_id", table_name="audit_records")
    op.drop_index("ix_audit_records_actor_id", table_name="audit_records")
    with op.batch_alter_table("audit_records") as batch:
        batch.drop_column("about_id")
