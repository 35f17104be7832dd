"""Admins review conversations: find them by user, day, status, model or text, and open
one, with what fed each answer and what it cost. Opening someone else's conversation
is break-glass: the admin gives a reason, the audit trail records it, and the owner
sees who looked, when and why (`who_looked`).

Every check is here, not in a page: `find` and `open` refuse non-admins; `read` (the
page's rerun, the strategy lab) refuses an admin without a reason given in the last
`GRANT_LIFETIME`, by asking the audit trail itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, exists, func, or_, select
from sqlalchemy.orm import Session

from parley.chat.conversation.conversations import ChatMessage, to_chat_message
from parley.chat.conversation.grants import has_grant, require_grant
from parley.core.audit_events import (
    AuditKind,
    ConversationOpened,
    ConversationsSearched,
    DocumentChunkOpened,
    Subject,
    read_event,
)
from parley.core.domain import MessageRole, MessageStatus, Principal, Rating, require_admin
from parley.core.errors import InvalidInput, NotFound
from parley.core.records import Provenance
from parley.store.audit import actor_of, append_in, keys_of
from parley.store.db import Database
from parley.store.models import AuditRecord, Conversation, Feedback, Message, UsageEntry, User

MIN_REASON_CHARS = 10
MAX_REASON_CHARS = 500


ONLY_ADMINS = "Only administrators review conversations."


@dataclass(frozen=True, slots=True)
class ReviewFilter:
    user: str | None = None
    since: date | None = None  # messages on or after this UTC day
    until: date | None = None  # ... and on or before this one
    status: MessageStatus | None = None  # an answer that ended so
    model: str | None = None
    text: str | None = None  # in a message or the title
    rating: Rating | None = None  # an answer its user rated so

    def describe(self, keyed: Callable[[str, str], str]) -> dict[str, Any]:
        return {
            "user": self.user,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "status": str(self.status) if self.status else None,
            "model": self.model,
            "rating": str(self.rating) if self.rating else None,
            # By keyed hash: what was searched may be someone's words, and must not
            # outlive their erasure; whoever holds the audit key can still check a
            # suspected phrase against it, nobody else can guess it.
            "text_hmac": keyed("admin search", self.text) if self.text else None,
        }


@dataclass(frozen=True, slots=True)
class ConversationRow:
    """A conversation as the search lists it: no title (titles are the user's words, shown
    only once the conversation is opened with a reason)."""

    id: int
    owner: str
    owner_id: int
    messages: int
    cost_usd: float
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ReviewPage:
    rows: list[ConversationRow]
    total: int


@dataclass(frozen=True, slots=True)
class ReviewedMessage:
    message: ChatMessage
    prompt: Provenance | None  # what went into the prompt (answers only)
    rating: Rating | None = None  # its user's thumbs, and why
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class Review:
    id: int
    title: str
    owner: str
    messages: list[ReviewedMessage] = field(default_factory=list)

    @property
    def cost_usd(self) -> float:
        return sum(m.message.cost_usd or 0.0 for m in self.messages)


@dataclass(frozen=True, slots=True)
class Look:
    """Someone else read the user's data: an admin opened one of their conversations,
    searched text across theirs, opened a chunk of a document not shared with the admin,
    or exported their audit history. The page chooses the words for each `kind`."""

    at: datetime
    admin: str
    reason: str
    conversation_id: int | None  # None unless a conversation was opened
    title: str | None  # None unless opened, or once the conversation is gone
    kind: AuditKind = AuditKind.CONVERSATION_OPENED
    document_id: int | None = None  # for a chunk opening
    matched: bool | None = None  # for a search: whether any of the user's matched


# Every kind of record by which someone else read a user's data ("Who looked").
LOOKED = (
    AuditKind.CONVERSATION_OPENED,
    AuditKind.CONVERSATIONS_SEARCHED,
    AuditKind.DOCUMENT_CHUNK_OPENED,
    AuditKind.AUDIT_EXPORTED,
)


@dataclass(frozen=True, slots=True)
class Looks:
    looks: list[Look]
    total: int


class ReviewService:
    def __init__(self, database: Database) -> None:
        self._db = database

    def find(
        self, admin: Principal, where: ReviewFilter, *, page: int = 0, per_page: int = 25
    ) -> ReviewPage:
        """Conversations matching every filter given, most recently active first."""
        require_admin(admin, ONLY_ADMINS)
        conditions = _conditions(where)
        # Whose conversations a text search reads: every owner the other filters leave
        # in, matched or not (reading them to find nothing is reading them).
        scope = _conditions(replace(where, text=None))
        per_page = max(1, min(per_page, 200))
        with self._db.session() as session:
            if where.user:
                owner = session.scalar(select(User.id).where(User.name == where.user.strip()))
                if owner is None:
                    raise NotFound(user_message=f"There is no user named {where.user.strip()!r}.")
                conditions.append(Conversation.user_id == owner)
                scope.append(Conversation.user_id == owner)
            total = session.scalar(select(func.count(Conversation.id)).where(*conditions)) or 0
            counts = (
                select(Message.conversation_id, func.count(Message.id).label("n"))
                .group_by(Message.conversation_id)
                .subquery()
            )
            costs = (
                select(UsageEntry.conversation_id, func.sum(UsageEntry.cost_usd).label("usd"))
                .group_by(UsageEntry.conversation_id)
                .subquery()
            )
            rows = session.execute(
                select(
                    Conversation,
                    User.name,
                    func.coalesce(counts.c.n, 0),
                    func.coalesce(costs.c.usd, 0.0),
                )
                .join(User, User.id == Conversation.user_id)
                .outerjoin(counts, counts.c.conversation_id == Conversation.id)
                .outerjoin(costs, costs.c.conversation_id == Conversation.id)
                .where(*conditions)
                .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
                .limit(per_page)
                .offset(max(0, page) * per_page)
            ).all()
            owners: list[int | None] = []
            matched: set[int] = set()
            if where.text:
                owners += session.scalars(select(Conversation.user_id).where(*scope).distinct())
                owners.sort(key=lambda o: o or 0)
                owners = owners or [None]  # a search that read nobody's is on record too
                matched.update(
                    session.scalars(select(Conversation.user_id).where(*conditions).distinct())
                )
            found = ReviewPage(
                [
                    ConversationRow(
                        c.id,
                        owner,
                        c.user_id,
                        int(n),
                        float(usd),
                        c.created_at,
                        c.updated_at,
                    )
                    for c, owner, n, usd in rows
                ],
                int(total),
            )
        if where.text:
            # A search of people's words is itself an admin action, and everyone whose
            # conversations it read sees it ("Who looked"): one record per owner.
            with self._db.session(write_lock=True) as session:
                described = where.describe(keys_of(session).keyed_hash)  # the text keyed
                for owner_id in owners:
                    append_in(
                        session,
                        ConversationsSearched(
                            found=total, matched=owner_id in matched, **described
                        ),
                        **actor_of(admin),
                        about_id=owner_id,
                    )
        return found

    def models(self, admin: Principal) -> list[str]:
        """Every model that answered, for the filter."""
        require_admin(admin, ONLY_ADMINS)
        with self._db.session() as session:
            return sorted(
                m
                for m in session.scalars(select(Message.model).distinct())
                if m  # user messages have none
            )

    def open(self, admin: Principal, conversation_id: int, reason: str) -> Review:
        """Break-glass: an admin opens a conversation, giving a reason the owner will see.

        The admin's own conversations need no reason (and leave no record)."""
        require_admin(admin, ONLY_ADMINS)
        reason = " ".join((reason or "").split())
        with self._db.session(write_lock=True) as session:
            conversation = _conversation(session, conversation_id)
            if conversation.user_id != admin.user_id:
                if len(reason) < MIN_REASON_CHARS:
                    raise InvalidInput(
                        f"Say why you open this conversation (at least {MIN_REASON_CHARS} "
                        "characters): its owner will see your reason."
                    )
                append_in(
                    session,
                    ConversationOpened(
                        conversation_id=conversation.id, reason=reason[:MAX_REASON_CHARS]
                    ),
                    **actor_of(admin),
                    about_id=conversation.user_id,
                )
            return _review(session, conversation)

    def read(self, admin: Principal, conversation_id: int) -> Review:
        """A conversation the admin opened with a reason in the last hour (or owns)."""
        require_admin(admin, ONLY_ADMINS)
        with self._db.session() as session:
            conversation = _conversation(session, conversation_id)
            require_grant(session, admin, conversation)
            return _review(session, conversation)

    def granted(self, admin: Principal, conversation_id: int) -> bool:
        """Whether `read` would open it now (the page asks for a reason when not)."""
        if not admin.is_admin:
            return False
        with self._db.session() as session:
            conversation = session.get(Conversation, conversation_id)
            return conversation is not None and has_grant(session, admin, conversation)

    def looks(
        self,
        principal: Principal,
        *,
        conversation_id: int | None = None,
        page: int = 0,
        per_page: int = 100,
    ) -> list[Look]:
        """Who read the principal's data (or opened one conversation of theirs), when and
        why: newest first, a page at a time (`who_looked` gives the total too)."""
        return self.who_looked(
            principal, conversation_id=conversation_id, page=page, per_page=per_page
        ).looks

    def who_looked(
        self,
        principal: Principal,
        *,
        conversation_id: int | None = None,
        page: int = 0,
        per_page: int = 50,
    ) -> Looks:
        """Every record of someone else reading the principal's data, newest first, paged:
        conversations opened, searches that read theirs (matched or not), chunks of their
        documents opened by an admin, exports of their history. Three queries a page."""
        query = select(AuditRecord).where(
            AuditRecord.about_id == principal.user_id,
            or_(AuditRecord.actor_id.is_(None), AuditRecord.actor_id != principal.user_id),
        )
        if conversation_id is None:
            query = query.where(AuditRecord.kind.in_(LOOKED))
        else:
            query = query.where(
                AuditRecord.kind == AuditKind.CONVERSATION_OPENED,
                AuditRecord.subject == str(Subject.conversation(conversation_id)),
            )
        per_page = max(1, min(per_page, 500))
        with self._db.session() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            records = session.scalars(
                query.order_by(AuditRecord.id.desc())
                .limit(per_page)
                .offset(max(0, page) * per_page)
            ).all()
            events = {r.id: read_event(r.kind, r.data) for r in records}
            opened = {
                record_id: event.conversation_id
                for record_id, event in events.items()
                if isinstance(event, ConversationOpened)
            }
            titles = dict(
                session.execute(
                    select(Conversation.id, Conversation.title).where(
                        Conversation.id.in_(set(opened.values())),
                        Conversation.user_id == principal.user_id,
                    )
                ).all()
            )
        looks = []
        for r in records:
            event = events[r.id]
            looks.append(
                Look(
                    datetime.fromisoformat(r.at),
                    r.actor,
                    event.reason if isinstance(event, ConversationOpened) else "",
                    opened.get(r.id),
                    titles.get(opened[r.id]) if r.id in opened else None,
                    kind=AuditKind(r.kind),
                    document_id=(
                        event.document_id if isinstance(event, DocumentChunkOpened) else None
                    ),
                    matched=event.matched if isinstance(event, ConversationsSearched) else None,
                )
            )
        return Looks(looks, int(total))


def _conditions(where: ReviewFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    in_range: list[ColumnElement[bool]] = []
    if where.since and where.until and where.since > where.until:
        raise InvalidInput("The first day comes after the last.")
    if where.since:
        in_range.append(Message.created_at >= datetime.combine(where.since, time.min, UTC))
    if where.until:
        end = datetime.combine(where.until + timedelta(days=1), time.min, UTC)
        in_range.append(Message.created_at < end)
    if in_range:
        conditions.append(_has_message(*in_range))
    if where.status:
        conditions.append(
            _has_message(Message.role == MessageRole.ASSISTANT, Message.status == where.status)
        )
    if where.model:
        conditions.append(_has_message(Message.model == where.model))
    if where.rating:
        conditions.append(
            exists().where(
                Feedback.message_id == Message.id,
                Message.conversation_id == Conversation.id,
                Feedback.rating == where.rating,
            )
        )
    text = (where.text or "").strip()
    if text:
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        conditions.append(
            or_(
                Conversation.title.ilike(pattern, escape="\\"),
                _has_message(Message.content.ilike(pattern, escape="\\")),
            )
        )
    return conditions


def _has_message(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    return exists().where(Message.conversation_id == Conversation.id, *conditions)


def _conversation(session: Session, conversation_id: int) -> Conversation:
    conversation = session.get(Conversation, conversation_id)
    if conversation is None:
        raise NotFound(user_message=f"There is no conversation {conversation_id}.")
    return conversation


def _review(session: Session, conversation: Conversation) -> Review:
    owner = session.scalar(select(User.name).where(User.id == conversation.user_id)) or "?"
    messages = session.scalars(
        select(Message).where(Message.conversation_id == conversation.id).order_by(Message.id)
    ).all()
    rated = {
        f.message_id: f
        for f in session.scalars(
            select(Feedback)
            .join(Message, Message.id == Feedback.message_id)
            .where(Message.conversation_id == conversation.id)
        )
    }
    return Review(
        conversation.id,
        conversation.title,
        owner,
        [
            ReviewedMessage(
                to_chat_message(m),
                m.context,
                rating=rated[m.id].rating if m.id in rated else None,
                comment=rated[m.id].comment if m.id in rated else None,
            )
            for m in messages
        ],
    )


__all__ = [
    "LOOKED",
    "Look",
    "Looks",
    "ConversationRow",
    "Review",
    "ReviewFilter",
    "ReviewPage",
    "ReviewService",
    "ReviewedMessage",
]
