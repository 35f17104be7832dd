"""Erasure, second part: ids of users are never handed out again
(SQLite AUTOINCREMENT), so an erased user's audit history, accesses and usage never
pass to a new account; and each message gets a random salt, which its audit hash
includes, so once a message is erased its hash no longer says anything of its text.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("users",)  # groups and documents have had it since 0009


def _autoincrement(on: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return  # PostgreSQL sequences never hand out an id twice
    for table in TABLES:
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": on}
        ):
            pass


def upgrade() -> None:
    _autoincrement(True)
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("salt", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("salt")
    _autoincrement(False)
