"""Stored messages as the prompt sees them: which count, and as what `Turn`.

The prompt's history is read as plain columns (no ORM objects, no provenance JSON),
with each message's stored token count, and `HistoryCache` keeps it between sends
so that a send reads only what is new: its cost stays flat as a conversation grows.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.orm import Session

from memory.base import Turn
from parley.domain import MessageRole, MessageStatus
from parley.llm import PromptRole
from store.models import Conversation, Message


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


@dataclass(frozen=True, slots=True)
class _Cached:
    turns: tuple[Turn, ...]
    superseded: int  # the conversation's superseded messages when `turns` was read


class HistoryCache:
    """The prompt turns of recently used conversations, kept between sends.

    A stored turn's text never changes, and turns only ever join a conversation or
    leave its prompt by being marked superseded. So each read asks the database two
    questions that its indexes answer without touching the history — how many
    messages are superseded, and which prompt turns came after the newest one cached —
    and reads everything again only when the superseded count moved (by this process
    or any other). Entries are keyed by the conversation's id *and* creation time, so
    a deleted conversation's id given to a new one can never bring back old turns.
    The tuple handed out is immutable and shared safely by threads.
    """

    def __init__(self, max_conversations: int = 256) -> None:
        self._max = max_conversations
        self._entries: OrderedDict[tuple[int, datetime], _Cached] = OrderedDict()
        self._lock = threading.Lock()

    def turns(self, session: Session, conversation: Conversation) -> tuple[Turn, ...]:
        key = (conversation.id, conversation.created_at)
        superseded = session.scalar(
            select(func.count(Message.id)).where(
                Message.conversation_id == conversation.id,
                Message.status == MessageStatus.SUPERSEDED,
            )
        )
        with self._lock:
            cached = self._entries.get(key)
        if cached is not None and cached.superseded == superseded:
            newest = cached.turns[-1].id if cached.turns else 0
            turns = cached.turns + tuple(prompt_turns(session, conversation.id, after_id=newest))
        else:
            turns = tuple(prompt_turns(session, conversation.id))
        with self._lock:
            self._entries[key] = _Cached(turns, superseded or 0)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return turns
