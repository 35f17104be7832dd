"""Branches: each message names the message it follows (`parent_id`), and each
conversation the newest message of the branch it shows (`active_leaf_id`). Files sent
with a question: the documents they became (`messages.attachments`). The passages an
answer read (`messages.sources`), copied from its provenance, so that the page can show
them under an answer that cites none without reading the provenance.

Existing conversations become one branch: a message follows the newest earlier message
of its conversation that a retry did not replace, which is the order they were shown
in. Plain `ADD COLUMN`s, no table rebuild: a rebuilt `messages` or `conversations`
would lose the search triggers (`parley/store/search_index.py`).

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("parent_id", sa.Integer()))
    op.add_column("messages", sa.Column("attachments", sa.JSON()))
    op.add_column("messages", sa.Column("sources", sa.JSON()))
    op.add_column("conversations", sa.Column("active_leaf_id", sa.Integer()))
    op.execute(
        "UPDATE messages SET parent_id = ("
        " SELECT p.id FROM messages AS p"
        " WHERE p.conversation_id = messages.conversation_id"
        " AND p.id < messages.id AND p.status != 'superseded'"
        " ORDER BY p.id DESC LIMIT 1)"
    )
    op.execute(
        "UPDATE conversations SET active_leaf_id = ("
        " SELECT max(m.id) FROM messages AS m"
        " WHERE m.conversation_id = conversations.id AND m.status != 'superseded')"
    )
    op.create_index("ix_messages_parent_id", "messages", ["parent_id"])
    _copy_sources()


def _copy_sources() -> None:
    """Each answer's passages, from its provenance (JSON read here: no model is imported)."""
    bind = op.get_bind()
    messages = sa.table(
        "messages",
        sa.column("id", sa.Integer()),
        sa.column("context", sa.JSON()),
        sa.column("sources", sa.JSON()),
    )
    rows = bind.execute(
        sa.select(messages.c.id, messages.c.context).where(
            sa.cast(messages.c.context, sa.String).like('%"document_id"%')
        )
    ).all()
    for message_id, context in rows:
        sources = (context or {}).get("sources") if isinstance(context, dict) else None
        if sources:
            bind.execute(
                messages.update().where(messages.c.id == message_id).values(sources=sources)
            )


def downgrade() -> None:
    # Plain DROP COLUMNs (SQLite 3.35 and later), so the tables keep their triggers.
    # Every branch but the shown one stays, as messages in the order they were written.
    op.drop_index("ix_messages_parent_id", table_name="messages")
    op.drop_column("conversations", "active_leaf_id")
    op.drop_column("messages", "sources")
    op.drop_column("messages", "attachments")
    op.drop_column("messages", "parent_id")
