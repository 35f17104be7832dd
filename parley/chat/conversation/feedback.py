"""Feedback on answers: thumbs up or down, with an optional comment.

A user rates answers in their own conversations only (anyone else's is `NotFound`, the
same as one that does not exist); one rating per answer and user, changed in place or
taken back. Each change is an audit record naming the comment by hash. Admins list the
feedback with each answer's model, usage and provenance (what went into the prompt,
without document names), and export it; the answer's text stays behind break-glass.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select

from parley.core.audit_events import FeedbackGiven
from parley.core.domain import MessageRole, MessageStatus, Principal, Rating, require_admin
from parley.core.errors import InvalidInput, NotFound
from parley.core.records import Provenance
from parley.store.audit import actor_of, append_in, message_hash
from parley.store.db import Database
from parley.store.models import Conversation, Feedback, Message, User, utcnow

MAX_COMMENT_CHARS = 2_000
RATED = (MessageStatus.COMPLETE, MessageStatus.STOPPED)  # answers one can judge


@dataclass(frozen=True, slots=True)
class GivenFeedback:
    rating: Rating
    comment: str | None


@dataclass(frozen=True, slots=True)
class FeedbackRow:
    """One rating as admins see it: who, on which answer, and what made that answer."""

    id: int
    user: str
    conversation_id: int
    message_id: int
    rating: Rating
    comment: str | None
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    prompt: Provenance | None
    created_at: datetime
    updated_at: datetime


def clean_comment(comment: str | None) -> str | None:
    if comment is None:
        return None
    if not isinstance(comment, str):
        raise InvalidInput("A comment must be text.")
    text = unicodedata.normalize("NFC", comment.replace("\x00", "")).strip()
    if len(text) > MAX_COMMENT_CHARS:
        raise InvalidInput(
            f"The comment has {len(text):,} characters; the limit is {MAX_COMMENT_CHARS:,}."
        )
    return text or None


class FeedbackService:
    def __init__(self, database: Database) -> None:
        self._db = database

    def give(
        self,
        principal: Principal,
        message_id: int,
        rating: Rating | None,
        comment: str | None = None,
    ) -> None:
        """Rate one of the principal's answers (None takes the rating back). `NotFound`
        for anything but a finished or stopped answer in their own conversation."""
        comment = clean_comment(comment)
        if rating is None and comment:
            raise InvalidInput("Choose thumbs up or down to leave a comment.")
        with self._db.session(write_lock=True) as session:
            message = session.scalar(
                select(Message)
                .join(Conversation, Conversation.id == Message.conversation_id)
                .where(
                    Message.id == message_id,
                    Conversation.user_id == principal.user_id,
                    Message.role == MessageRole.ASSISTANT,
                    Message.status.in_(RATED),
                )
            )
            if message is None:
                raise NotFound(f"answer {message_id} not found for user {principal.user_id}")
            existing = session.scalar(
                select(Feedback).where(
                    Feedback.message_id == message.id, Feedback.user_id == principal.user_id
                )
            )
            if rating is None:
                if existing is None:
                    return
                session.execute(delete(Feedback).where(Feedback.id == existing.id))
            elif existing is None:
                session.add(
                    Feedback(
                        message_id=message.id,
                        user_id=principal.user_id,
                        rating=rating,
                        comment=comment,
                    )
                )
            elif (existing.rating, existing.comment) == (rating, comment):
                return  # nothing changed: no record
            else:
                existing.rating, existing.comment, existing.updated_at = rating, comment, utcnow()
            append_in(
                session,
                FeedbackGiven(
                    conversation_id=message.conversation_id,
                    message_id=message.id,
                    rating=rating.value if rating else None,
                    comment_sha256=message_hash(comment, message.salt) if comment else None,
                ),
                **actor_of(principal),
                about_id=principal.user_id,
            )

    def of_conversation(
        self, principal: Principal, conversation_id: int
    ) -> dict[int, GivenFeedback]:
        """The principal's feedback on the answers of one of their conversations, by
        message id (nothing for a conversation that is not theirs)."""
        with self._db.session() as session:
            rows = session.execute(
                select(Feedback.message_id, Feedback.rating, Feedback.comment)
                .join(Message, Message.id == Feedback.message_id)
                .join(Conversation, Conversation.id == Message.conversation_id)
                .where(
                    Message.conversation_id == conversation_id,
                    Conversation.user_id == principal.user_id,
                    Feedback.user_id == principal.user_id,
                )
            ).all()
        return {m: GivenFeedback(r, c) for m, r, c in rows}

    def find(
        self,
        principal: Principal,
        *,
        rating: Rating | None = None,
        limit: int = 200,
        before_id: int | None = None,
    ) -> Sequence[FeedbackRow]:
        """Feedback, newest first (admins), optionally of one rating; page with
        `before_id` (the last row's id)."""
        require_admin(principal, "Only administrators may read the feedback.")
        query = (
            select(Feedback, Message, User.name)
            .join(Message, Message.id == Feedback.message_id)
            .join(User, User.id == Feedback.user_id)
            .order_by(Feedback.id.desc())
            .limit(max(1, min(limit, 10_000)))
        )
        if rating is not None:
            query = query.where(Feedback.rating == rating)
        if before_id is not None:
            query = query.where(Feedback.id < before_id)
        with self._db.session() as session:
            found = session.execute(query).all()
            return [
                FeedbackRow(
                    id=f.id,
                    user=name,
                    conversation_id=m.conversation_id,
                    message_id=m.id,
                    rating=f.rating,
                    comment=f.comment,
                    model=m.model,
                    input_tokens=m.input_tokens,
                    output_tokens=m.output_tokens,
                    cost_usd=m.cost_usd,
                    prompt=m.context.without_names() if m.context else None,
                    created_at=f.created_at,
                    updated_at=f.updated_at,
                )
                for f, m, name in found
            ]


__all__ = [
    "MAX_COMMENT_CHARS",
    "FeedbackRow",
    "FeedbackService",
    "GivenFeedback",
    "clean_comment",
]
