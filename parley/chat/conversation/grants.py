"""Break-glass grants: an admin may read another user's conversation only after giving a
reason, recorded in the audit trail, in the last `GRANT_LIFETIME`. The trail itself is
the grant: nothing else can say yes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from parley.core.domain import Principal
from parley.core.errors import NotFound, PermissionDenied
from parley.store.models import AuditRecord, Conversation

# How long a reason opens a conversation for its admin (page reruns, the strategy lab).
GRANT_LIFETIME = timedelta(hours=1)
OPENED = "conversation_opened"


def has_grant(session: Session, admin: Principal, conversation: Conversation) -> bool:
    if conversation.user_id == admin.user_id:
        return True
    since = (datetime.now(UTC) - GRANT_LIFETIME).isoformat(timespec="microseconds")
    found = session.scalar(
        select(AuditRecord.id).where(
            AuditRecord.kind == OPENED,
            AuditRecord.actor_id == admin.user_id,
            AuditRecord.subject == f"conversation {conversation.id}",
            AuditRecord.at >= since,
        )
    )
    return found is not None


def require_grant(session: Session, admin: Principal, conversation: Conversation) -> None:
    """Refuse to read another user's conversation without a recent, recorded reason."""
    if not admin.is_admin:
        raise NotFound(f"conversation {conversation.id} is not {admin.user_id}'s")
    if not has_grant(session, admin, conversation):
        raise PermissionDenied(
            user_message="Open this conversation from the admin console first, with a reason: "
            "its owner will see who looked and why."
        )


__all__ = ["GRANT_LIFETIME", "OPENED", "has_grant", "require_grant"]
