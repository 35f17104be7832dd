"""An admin erases a user: their conversations (messages, summaries, memory vectors),
their documents (chunks and vectors), sessions, memberships and the account itself.

One transaction deletes the rows (the database cascades from the user), queues the
vectors in the same outboxes ordinary deletions use, and appends the tombstone: ids
and counts, never content. Then the vectors are dropped (or retried at start-up) and
SQLite's files are reclaimed, so no byte of the erased text stays behind. The usage
ledger keeps its rows (metadata: tokens and cost, for the accounts).
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, func, select, update

from parley.chat.conversation.conversations import ConversationService
from parley.chat.documents.access import access_of, queue_sync, scrub_quotes
from parley.chat.documents.library import DocumentService
from parley.core.audit_events import UserErased
from parley.core.domain import Principal, require_admin
from parley.core.errors import InvalidInput, NotFound
from parley.store.audit import actor_of, append_in, redact_user_in
from parley.store.db import Database
from parley.store.models import Conversation, Document, Message, UsageEntry, User, VectorErasure

log = logging.getLogger(__name__)


class ErasureService:
    def __init__(
        self, database: Database, conversations: ConversationService, documents: DocumentService
    ) -> None:
        self._db = database
        self._conversations = conversations
        self._documents = documents

    def erase_user(self, admin: Principal, name: str) -> dict[str, int]:
        """Erase a user and everything of theirs; counts of what went."""
        require_admin(admin, "Only administrators erase users.")
        with self._db.session(write_lock=True) as session:
            user = session.scalar(select(User).where(User.name == name.strip()))
            if user is None:
                raise NotFound(user_message=f"There is no user named {name.strip()!r}.")
            if user.id == admin.user_id:
                raise InvalidInput("You cannot erase your own account.")
            conversation_ids = list(
                session.scalars(select(Conversation.id).where(Conversation.user_id == user.id))
            )
            messages = session.scalar(
                select(func.count(Message.id)).where(Message.conversation_id.in_(conversation_ids))
            )
            documents = list(session.scalars(select(Document).where(Document.owner_id == user.id)))
            for document in documents:
                queue_sync(session, document.id, access_of(session, document).scopes)
            scrub_quotes(session, [d.id for d in documents])
            session.add_all(VectorErasure(conversation_id=c, attempts=0) for c in conversation_ids)
            user_id = user.id
            session.execute(delete(User).where(User.id == user_id))  # the database cascades
            counts = {
                "conversations": len(conversation_ids),
                "messages": int(messages or 0),
                "documents": len(documents),
            }
            # Their names, addresses, issuers, groups and hashes leave the trail's records
            # (which keep their place in the chain, naming the user by id).
            redact_user_in(session, user_id)
            # The ledger keeps every cost (nothing used is unmade), by id, not by name.
            session.execute(
                update(UsageEntry)
                .where(UsageEntry.user_id == user_id)
                .values(user_name=f"user #{user_id}")
            )
            append_in(
                session,
                UserErased(
                    user_id=user_id,
                    conversation_ids=conversation_ids,
                    document_ids=[d.id for d in documents],
                    **counts,
                ),
                **actor_of(admin),
                about_id=user_id,
            )
        pending = self._conversations.sweep_erasures() + self._documents.sweep_index()
        if pending:
            log.warning("%d vector erasures are pending; they are retried at start-up.", pending)
        self._db.reclaim(search=True)
        return counts


__all__ = ["ErasureService"]
