"""A user's conversations: list, create, rename, delete, read. Ownership is in every query."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, defer

from parley.chat.conversation.branches import Branching, load_tree
from parley.chat.conversation.grants import require_grant
from parley.chat.conversation.images import thumbnail as image_thumbnail
from parley.core.audit_events import ConversationErased
from parley.core.background import Defer
from parley.core.domain import MessageRole, MessageStatus, Principal, require_admin
from parley.core.errors import InvalidInput, NotFound
from parley.core.records import Attachment, CitedPassage, DocumentSource, SentImage
from parley.retrieval.vector_store import deferred_purges
from parley.store.audit import actor_of, append_in
from parley.store.db import Database
from parley.store.models import Conversation, Message, User, VectorErasure, utcnow

log = logging.getLogger(__name__)

MAX_TITLE_CHARS = 200
MAX_PINNED = 100


@dataclass(frozen=True, slots=True)
class ConversationInfo:
    id: int
    title: str
    created_at: datetime
    updated_at: datetime
    pinned: bool = False
    archived: bool = False


@dataclass(frozen=True, slots=True)
class ListPage:
    """A page of a user's conversations: the pinned conversations, then the newest others up to a
    limit (`more`: there are older ones)."""

    pinned: list[ConversationInfo]
    recent: list[ConversationInfo]
    more: bool


@dataclass(frozen=True, slots=True)
class ChatMessage:
    id: int
    role: MessageRole
    content: str
    status: MessageStatus
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cache_read_input_tokens: int | None
    cache_creation_input_tokens: int | None
    cost_usd: float | None
    error: str | None
    created_at: datetime
    # The passages the answer cites (see `Message.citations`), in the answer's order.
    citations: tuple[CitedPassage, ...] = ()
    parent_id: int | None = None  # the message it follows (`branches`)
    attachments: tuple[Attachment, ...] = ()  # the files a question was sent with
    sources: tuple[DocumentSource, ...] = ()  # the passages an answer's prompt held
    images: tuple[SentImage, ...] = ()  # the images a question was sent with
    cached: bool = False  # an answer served from the response cache
    # Earlier turns its prompt recalled that the injection detector's rules flagged.
    flagged_recalls: int = 0


@dataclass(frozen=True, slots=True)
class Thread:
    """The branch a conversation shows, oldest first, and where each of its messages
    stands among its siblings (only those that have any: edited questions, answers
    asked for again)."""

    messages: list[ChatMessage]
    branching: dict[int, Branching]


def to_info(conversation: Conversation) -> ConversationInfo:
    return ConversationInfo(
        conversation.id,
        conversation.title,
        conversation.created_at,
        conversation.updated_at,
        pinned=conversation.pinned_at is not None,
        archived=conversation.archived_at is not None,
    )


def to_chat_message(message: Message) -> ChatMessage:
    return ChatMessage(
        id=message.id,
        role=message.role,
        content=message.content,
        status=message.status,
        model=message.model,
        input_tokens=message.input_tokens,
        output_tokens=message.output_tokens,
        cache_read_input_tokens=message.cache_read_input_tokens,
        cache_creation_input_tokens=message.cache_creation_input_tokens,
        cost_usd=message.cost_usd,
        error=message.error,
        created_at=message.created_at,
        citations=tuple(message.citations or ()),
        parent_id=message.parent_id,
        attachments=tuple(message.attachments or ()),
        sources=tuple(message.sources or ()),
        images=tuple(message.images or ()),
        cached=message.cached,
        flagged_recalls=sum(1 for r in message.context.recalled if r.suspect)
        if message.context is not None
        else 0,
    )


def owned_conversation(
    session: Session, principal: Principal, conversation_id: int
) -> Conversation:
    """The conversation if `principal` owns it; NotFound otherwise (whether or not it exists)."""
    conversation = session.scalar(
        select(Conversation).where(
            Conversation.id == conversation_id, Conversation.user_id == principal.user_id
        )
    )
    if conversation is None:
        raise NotFound(f"conversation {conversation_id} not found for user {principal.user_id}")
    return conversation


def clean_title(title: str) -> str:
    title = " ".join(title.split())
    if not title:
        raise InvalidInput("A title cannot be empty.")
    return title[:MAX_TITLE_CHARS]


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """A row of the admins' list of every conversation."""

    id: int
    owner: str
    messages: int
    updated_at: datetime


def conversation_exists(database: Database, conversation_id: int) -> bool:
    """Whether a conversation is still there (for derived stores, not for pages: no owner)."""
    with database.session() as session:
        found = session.scalar(select(Conversation.id).where(Conversation.id == conversation_id))
    return found is not None


def conversation_owner(database: Database, conversation_id: int) -> int | None:
    """The owner's user id, or None once the conversation is gone (for metering)."""
    with database.session() as session:
        return session.scalar(
            select(Conversation.user_id).where(Conversation.id == conversation_id)
        )


class ConversationService:
    def __init__(
        self,
        database: Database,
        *,
        on_delete: Callable[[int], None] | None = None,
        forget_cached: Callable[[int], None] | None = None,
        defer: Defer | None = None,
        settle: Callable[[int], int] | None = None,
    ) -> None:
        self._db = database
        # Keeps the answers of a process that died writing them (drafts.DraftSettler),
        # before a conversation is shown.
        self._settle = settle
        # Drops what this process holds of the conversation in memory, at once.
        self._forget_cached = forget_cached
        # Runs slow work (dropping and purging vectors) off the request, on the
        # services' pool; None runs it inline.
        self._defer = defer
        # Drops derived memory (vectors) of a deleted conversation and purges the vector
        # store's files of them; raises if it cannot.
        self._on_delete = on_delete

    def list_for(self, principal: Principal) -> list[ConversationInfo]:
        with self._db.session() as session:
            rows = session.scalars(
                select(Conversation)
                .where(Conversation.user_id == principal.user_id)
                .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
            ).all()
            return [to_info(c) for c in rows]

    def listing(self, principal: Principal, *, limit: int = 50, archived: bool = False) -> ListPage:
        """The principal's conversations as a list shows them, newest first: the
        pinned ones (at most `MAX_PINNED`) and then `limit` of the rest; with `archived`,
        the archived ones instead. Two indexed queries, whatever the number of
        conversations (the list benchmark in `parley/bench`)."""
        limit = max(1, min(limit, 10_000))
        mine = select(Conversation).where(Conversation.user_id == principal.user_id)
        newest = (Conversation.updated_at.desc(), Conversation.id.desc())
        with self._db.session() as session:
            if archived:
                pinned: list[Conversation] = []
                rest = mine.where(Conversation.archived_at.is_not(None))
            else:
                pinned = list(
                    session.scalars(
                        mine.where(
                            Conversation.pinned_at.is_not(None),
                            Conversation.archived_at.is_(None),
                        )
                        .order_by(*newest)
                        .limit(MAX_PINNED)
                    )
                )
                rest = mine.where(
                    Conversation.pinned_at.is_(None), Conversation.archived_at.is_(None)
                )
            rows = list(session.scalars(rest.order_by(*newest).limit(limit + 1)))
            return ListPage(
                pinned=[to_info(c) for c in pinned],
                recent=[to_info(c) for c in rows[:limit]],
                more=len(rows) > limit,
            )

    def set_pinned(self, principal: Principal, conversation_id: int, pinned: bool) -> None:
        """Keep one of the principal's conversations on top of the list, or not."""
        with self._db.session() as session:
            conversation = owned_conversation(session, principal, conversation_id)
            if pinned and conversation.pinned_at is None:
                count = session.scalar(
                    select(func.count(Conversation.id)).where(
                        Conversation.user_id == principal.user_id,
                        Conversation.pinned_at.is_not(None),
                    )
                )
                if (count or 0) >= MAX_PINNED:
                    raise InvalidInput(
                        f"You have pinned {MAX_PINNED} conversations; unpin one to pin this."
                    )
            conversation.pinned_at = (conversation.pinned_at or utcnow()) if pinned else None

    def set_archived(self, principal: Principal, conversation_id: int, archived: bool) -> None:
        """Take one of the principal's conversations out of the list (kept,
        found by search), or bring it back."""
        with self._db.session() as session:
            conversation = owned_conversation(session, principal, conversation_id)
            conversation.archived_at = utcnow() if archived else None

    def list_all(self, principal: Principal) -> list[ConversationSummary]:
        """Every conversation, newest first: admins only."""
        require_admin(principal, "Only administrators see every conversation.")
        with self._db.session() as session:
            counts = (
                select(Message.conversation_id, func.count(Message.id).label("n"))
                .group_by(Message.conversation_id)
                .subquery()
            )
            rows = session.execute(
                select(Conversation, User.name, func.coalesce(counts.c.n, 0))
                .join(User, User.id == Conversation.user_id)
                .outerjoin(counts, counts.c.conversation_id == Conversation.id)
                .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
            ).all()
            return [
                ConversationSummary(c.id, owner, int(n), c.updated_at)  # no title: their words
                for c, owner, n in rows
            ]

    def messages_of(self, principal: Principal, conversation_id: int) -> list[ChatMessage]:
        """Any conversation's messages, for admins (the strategy lab): their own, or one
        they opened with a reason (break-glass, `parley/chat/oversight/review.py`)."""
        require_admin(principal, "Only administrators read others' conversations.")
        with self._db.session() as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None:
                raise NotFound(user_message=f"There is no conversation {conversation_id}.")
            require_grant(session, principal, conversation)
            rows = session.scalars(
                select(Message)
                .options(defer(Message.context))  # provenance: not shown here
                .where(Message.conversation_id == conversation_id)
                .order_by(Message.id)
            ).all()
            return [to_chat_message(m) for m in rows]

    def get(self, principal: Principal, conversation_id: int) -> ConversationInfo:
        with self._db.session() as session:
            return to_info(owned_conversation(session, principal, conversation_id))

    def create(self, principal: Principal, *, title: str = "New conversation") -> ConversationInfo:
        with self._db.session() as session:
            now = utcnow()
            conversation = Conversation(
                user_id=principal.user_id, title=clean_title(title), created_at=now, updated_at=now
            )
            session.add(conversation)
            session.flush()
            return to_info(conversation)

    def rename(self, principal: Principal, conversation_id: int, title: str) -> ConversationInfo:
        with self._db.session() as session:
            conversation = owned_conversation(session, principal, conversation_id)
            conversation.title = clean_title(title)
            return to_info(conversation)

    def documents_of(self, principal: Principal, conversation_id: int) -> list[int] | None:
        """The documents the conversation draws on (None: every one its user may see)."""
        with self._db.session() as session:
            conversation = owned_conversation(session, principal, conversation_id)
            return None if conversation.document_ids is None else list(conversation.document_ids)

    def choose_documents(
        self, principal: Principal, conversation_id: int, documents: list[int] | None
    ) -> None:
        """Let the conversation draw on `documents` only (None: every visible document).
        Search still checks each one's permission on every question."""
        with self._db.session() as session:
            conversation = owned_conversation(session, principal, conversation_id)
            conversation.document_ids = None if documents is None else sorted(set(documents))

    def delete(self, principal: Principal, conversation_id: int) -> None:
        """Erase a conversation: its messages, summaries and vectors, leaving no bytes of
        them in SQLite's files (`Database.reclaim`) and a tombstone in the audit trail.

        The rows go in one transaction, which also records the conversation in the
        `vector_erasures` outbox; the vectors are then dropped and the outbox row
        removed. If the vector store fails, the row stays and `sweep_erasures` (run at
        start-up) tries again. Background work that comes late for the conversation
        re-creates nothing (the recall index remembers what it erased).
        """
        with self._db.session(write_lock=True) as session:
            conversation = owned_conversation(session, principal, conversation_id)
            erased = session.execute(
                delete(Message).where(Message.conversation_id == conversation.id)
            ).rowcount  # type: ignore[attr-defined]
            session.delete(conversation)
            session.add(VectorErasure(conversation_id=conversation_id, attempts=0))
            append_in(  # the tombstone: what was erased, never what it said
                session,
                ConversationErased(conversation_ids=[conversation_id], message_count=int(erased)),
                **actor_of(principal),
                about_id=principal.user_id,
            )
        if self._forget_cached is not None:
            self._forget_cached(conversation_id)
        self._db.reclaim(search=True)
        # The vectors and the vector store's files follow off the request (a purge
        # rewrites files): on failure the outbox row stays for the start-up sweep.
        if self._defer is None or not self._defer(
            partial(self._erase_vectors_later, conversation_id),
            f"erase vectors of {conversation_id}",
        ):
            self._erase_vectors(conversation_id)

    def sweep_erasures(self) -> int:
        """Retry every pending vector erasure; how many are still pending afterwards.
        The vector store's files are purged once for all of them (`deferred_purges`), and
        their outbox rows go only after that purge."""
        with self._db.session() as session:
            pending = session.scalars(select(VectorErasure.conversation_id)).all()
        dropped: list[int] = []
        try:
            with deferred_purges():
                dropped = [cid for cid in pending if self._drop_vectors(cid)]
        except Exception:
            log.exception("Purging erased conversations' vectors failed; will retry at start-up")
            self._count_attempts(dropped)
            return len(pending)
        self._erased(dropped)
        return len(pending) - len(dropped)

    def _erase_vectors_later(self, conversation_id: int) -> None:
        self._erase_vectors(conversation_id)

    def _erase_vectors(self, conversation_id: int) -> bool:
        if not self._drop_vectors(conversation_id):
            return False
        self._erased([conversation_id])
        return True

    def _drop_vectors(self, conversation_id: int) -> bool:
        """Drop (and purge) a conversation's derived vectors: False, logged and counted,
        if the vector store failed."""
        try:
            if self._on_delete is not None:
                self._on_delete(conversation_id)
        except Exception:
            log.exception(
                "Dropping the vectors of conversation %s failed; will retry at start-up",
                conversation_id,
            )
            self._count_attempts([conversation_id])
            return False
        return True

    def _count_attempts(self, conversation_ids: list[int]) -> None:
        with self._db.session() as session:
            for conversation_id in conversation_ids:
                row = session.get(VectorErasure, conversation_id)
                if row is not None:
                    row.attempts += 1

    def _erased(self, conversation_ids: list[int]) -> None:
        """Their vectors are gone, files included: the outbox rows go."""
        if conversation_ids:
            with self._db.session() as session:
                session.execute(
                    delete(VectorErasure).where(VectorErasure.conversation_id.in_(conversation_ids))
                )

    def thread(
        self, principal: Principal, conversation_id: int, *, leaf: int | None = None
    ) -> Thread:
        """The branch through `leaf` (a browser's own), down to the newest message below
        it (None, or a message that is not a shown one of this conversation: the branch
        the conversation shows), with each
        message's siblings. Answers a stopped process was writing are kept first, as for
        `messages`."""
        if self._settle is not None:
            with self._db.session() as session:
                owned_conversation(session, principal, conversation_id)
            self._settle(conversation_id)
        with self._db.session() as session:
            conversation = owned_conversation(session, principal, conversation_id)
            tree = load_tree(session, conversation.id)
            # The newest below the browser's own (a question it left waiting has its
            # answer now; a tab is on a branch, not at a message).
            end = tree.newest_under(leaf) if tree.shown(leaf) else None
            end = end or tree.leaf(conversation.active_leaf_id)
            path = tree.path(end)
            rows = {
                m.id: m
                for m in session.scalars(
                    select(Message)
                    .options(defer(Message.context))  # provenance: not shown here
                    .where(Message.conversation_id == conversation.id)
                )
            }
            if any(i not in rows for i in path):  # erased between the two reads
                raise NotFound(f"conversation {conversation_id} went while it was read")
            branching = {i: b for i in path if (b := tree.branching(i)).count > 1}
            return Thread([to_chat_message(rows[i]) for i in path], branching)

    def show_branch(self, principal: Principal, conversation_id: int, message_id: int) -> int:
        """Show the branch that holds `message_id`: the one last written below it. The
        id of its newest message (the page keeps it, so each tab shows its own)."""
        with self._db.session() as session:
            conversation = owned_conversation(session, principal, conversation_id)
            tree = load_tree(session, conversation.id)
            newest = tree.newest_under(message_id) if tree.shown(message_id) else None
            if newest is None:
                raise InvalidInput("That message is not one of this conversation's.")
            conversation.active_leaf_id = newest
            return newest

    def thumbnail(self, principal: Principal, image_id: int) -> tuple[str, bytes]:
        """The small copy of an image the principal sent: (media type, bytes). Another
        user's image is `NotFound`, as is one erased with its conversation."""
        with self._db.session() as session:
            return image_thumbnail(session, principal.user_id, image_id)

    def messages(self, principal: Principal, conversation_id: int) -> list[ChatMessage]:
        """Every message in order, every branch's and superseded attempts included (the
        page shows `thread`).
        Answers a stopped process was writing are kept first (`drafts.DraftSettler`),
        once the conversation is known to be the principal's."""
        shown = self._read(principal, conversation_id)
        if self._settle is not None and self._settle(conversation_id):
            shown = self._read(principal, conversation_id)
        return shown

    def _read(self, principal: Principal, conversation_id: int) -> list[ChatMessage]:
        with self._db.session() as session:
            conversation = owned_conversation(session, principal, conversation_id)
            rows = session.scalars(
                select(Message)
                .options(defer(Message.context))  # provenance: not shown here
                .where(Message.conversation_id == conversation.id)
                .order_by(Message.id)
            ).all()
            return [to_chat_message(m) for m in rows]
