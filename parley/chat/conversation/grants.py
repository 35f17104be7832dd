"""Break-glass grants: an admin may read another user's conversation only after giving a
reason, recorded in the audit trail, in the last `GRANT_LIFETIME`. The trail itself is
the grant: nothing else can say yes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from parley.core.audit_events import AuditKind, ConversationOpened, read_event
from parley.core.domain import Principal
from parley.core.errors import GrantRequired, NotFound
from parley.store.models import AuditRecord, Conversation

# How long a reason opens a conversation for its admin (page reruns, the strategy lab).
GRANT_LIFETIME = timedelta(hours=1)


def has_grant(session: Session, admin: Principal, conversation: Conversation) -> bool:
    if conversation.user_id == admin.user_id:
        return True
    since = (datetime.now(UTC) - GRANT_LIFETIME).isoformat(timespec="microseconds")
    opened = session.scalars(  # this admin's openings of the owner's conversations
        select(AuditRecord.data).where(
            AuditRecord.kind == AuditKind.CONVERSATION_OPENED,
            AuditRecord.actor_id == admin.user_id,
            AuditRecord.about_id == conversation.user_id,
            AuditRecord.at >= since,
        )
    )
    return any(
        isinstance(event, ConversationOpened) and event.conversation_id == conversation.id
        for event in (read_event(AuditKind.CONVERSATION_OPENED, data) for data in opened)
    )


def require_grant(session: Session, admin: Principal, conversation: Conversation) -> None:
    """Refuse to read another user's conversation without a recent, recorded reason."""
    if not admin.is_admin:
        raise NotFound(f"conversation {conversation.id} is not {admin.user_id}'s")
    if not has_grant(session, admin, conversation):
        raise GrantRequired(f"no recent reason of {admin.user_id} for {conversation.id}")


__all__ = ["GRANT_LIFETIME", "has_grant", "require_grant"]
