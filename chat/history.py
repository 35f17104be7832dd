"""Stored messages as the prompt sees them: which count, and as what `Turn`.

The prompt's history is read as plain columns (no ORM objects, no provenance JSON),
with each message's stored token count, and `HistoryCache` keeps it between sends
so that a send reads only what is new: its cost stays flat as a conversation grows.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.orm import Session

from memory.base import Turn
from parley.domain import MessageRole, MessageStatus
from parley.llm import PromptRole
from store.models import Message


def visible_messages(session: Session, conversation_id: int) -> list[Message]:
    return list(
        session.scalars(
            select(Message)
            .where(
                Message.conversation_id == conversation_id,
                Message.status != MessageStatus.SUPERSEDED,
            )
            .order_by(Message.id)
        )
    )


def in_prompt(message: Message) -> bool:
    """Failed answers with no text stay out of the prompt; partial answers go in."""
    return bool(message.content) and message.status is not MessageStatus.SUPERSEDED


def to_turn(message: Message) -> Turn:
    role: PromptRole = "user" if message.role is MessageRole.USER else "assistant"
    return Turn(
        id=message.id,
        role=role,
        content=message.content,
        created_at=message.created_at,
        tokens=message.tokens,
    )


def _in_prompt(conversation_id: int) -> ColumnElement[bool]:
    """The SQL form of `in_prompt` for one conversation."""
    return and_(
        Message.conversation_id == conversation_id,
        Message.status != MessageStatus.SUPERSEDED,
        Message.content != "",
    )


def prompt_turns(
    session: Session,
    conversation_id: int,
    *,
    before_id: int | None = None,
    after_id: int | None = None,
) -> list[Turn]:
    """The turns a prompt may use, oldest first (only those between the ids if given)."""
    query = select(
        Message.id, Message.role, Message.content, Message.created_at, Message.tokens
    ).where(_in_prompt(conversation_id))
    if before_id is not None:
        query = query.where(Message.id < before_id)
    if after_id is not None:
        query = query.where(Message.id > after_id)
    return [
        Turn(
            id=row.id,
            role="user" if row.role is MessageRole.USER else "assistant",
            content=row.content,
            created_at=row.created_at,
            tokens=row.tokens,
        )
        for row in session.execute(query.order_by(Message.id))
    ]


class HistoryCache:
    """The prompt turns of recently used conversations, kept between sends.

    Each read asks the database one cheap question — how many prompt turns the
    conversation has and the newest id — and then reads only the turns added since.
    If anything else changed (an answer marked superseded, by this process or any
    other), the counts disagree and the turns are read again in full. This holds
    because a stored turn's text never changes: a change supersedes the old row and
    adds a new one. The tuple handed out is immutable and shared safely by threads.
    """

    def __init__(self, max_conversations: int = 256) -> None:
        self._max = max_conversations
        self._entries: OrderedDict[int, tuple[Turn, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def turns(self, session: Session, conversation_id: int) -> tuple[Turn, ...]:
        count, newest = session.execute(
            select(func.count(Message.id), func.max(Message.id)).where(_in_prompt(conversation_id))
        ).one()
        with self._lock:
            cached = self._entries.get(conversation_id)
        if cached is not None and (newest or 0) >= (cached[-1].id if cached else 0):
            known = cached[-1].id if cached else 0
            added = tuple(prompt_turns(session, conversation_id, after_id=known))
            # Equal only if no cached turn left the prompt (a superseded answer).
            if len(cached) + len(added) == count:
                turns = cached + added
                self._keep(conversation_id, turns)
                return turns
        turns = tuple(prompt_turns(session, conversation_id))
        self._keep(conversation_id, turns)
        return turns

    def _keep(self, conversation_id: int, turns: tuple[Turn, ...]) -> None:
        with self._lock:
            self._entries[conversation_id] = turns
            self._entries.move_to_end(conversation_id)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
