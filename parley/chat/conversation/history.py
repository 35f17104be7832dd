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
from typing import Any

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from parley.core import metrics
from parley.core.domain import MessageRole, MessageStatus
from parley.memory.base import Turn
from parley.store.models import Conversation, Message


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


def prompt_turns(
    session: Session, conversation_id: int, *, before_id: int | None = None
) -> list[Turn]:
    """The turns a prompt may use, oldest first (only those before `before_id` if given).

    Failed answers with no text stay out of the prompt; partial answers go in.
    """
    query = select(
        Message.id, Message.role, Message.content, Message.created_at, Message.tokens
    ).where(
        Message.conversation_id == conversation_id,
        Message.status != MessageStatus.SUPERSEDED,
        Message.content != "",
    )
    if before_id is not None:
        query = query.where(Message.id < before_id)
    return [_turn(row) for row in session.execute(query.order_by(Message.id))]


@dataclass(frozen=True, slots=True)
class _Cached:
    turns: tuple[Turn, ...]
    messages: int  # every message of the conversation when `turns` was read
    superseded: int  # of which superseded
    newest: int  # the highest message id seen


class HistoryCache:
    """The prompt turns of recently used conversations, kept between sends.

    A stored turn's text never changes, and messages only ever join a conversation or
    leave its prompt by being marked superseded. So each read asks two questions an
    index answers without touching the history — how many messages the conversation
    has and how many are superseded — and reads the messages after the newest one
    seen. If those new messages account for the whole difference and nothing was
    superseded meanwhile, they are appended; otherwise (a supersede, or a message that
    committed late with a lower id, by this process or another) everything is read
    again. Entries are keyed by the conversation's id *and* creation time, so a
    deleted conversation's id given to a new one can never bring back old turns.
    The tuple handed out is immutable and shared safely by threads.
    """

    def __init__(self, max_conversations: int = 256) -> None:
        self._max = max_conversations
        self._entries: OrderedDict[tuple[int, datetime], _Cached] = OrderedDict()
        self._lock = threading.Lock()

    def forget(self, conversation_id: int) -> None:
        """An erased conversation's turns leave this process's memory too."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == conversation_id]:
                del self._entries[key]

    def turns(self, session: Session, conversation: Conversation) -> tuple[Turn, ...]:
        key = (conversation.id, conversation.created_at)
        messages, superseded = session.execute(
            select(
                func.count(Message.id),
                func.count(Message.id).filter(Message.status == MessageStatus.SUPERSEDED),
            ).where(Message.conversation_id == conversation.id)
        ).one()
        with self._lock:
            cached = self._entries.get(key)
        entry = None
        if cached is not None and cached.superseded == superseded:
            new = _messages_after(session, conversation.id, cached.newest)
            if cached.messages + len(new) == messages:
                entry = _Cached(
                    cached.turns + tuple(_turn(r) for r in new if _prompt_row(r)),
                    messages,
                    superseded,
                    max([cached.newest, *(r.id for r in new)]),
                )
        result = "miss" if entry is None else "hit"
        metrics.guarded(metrics.CACHE_LOOKUPS.labels(cache="history", result=result).inc)
        if entry is None:
            rows = _messages_after(session, conversation.id, 0)
            entry = _Cached(
                tuple(_turn(r) for r in rows if _prompt_row(r)),
                len(rows),
                sum(1 for r in rows if r.status is MessageStatus.SUPERSEDED),
                max((r.id for r in rows), default=0),
            )
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return entry.turns


def _messages_after(session: Session, conversation_id: int, after_id: int) -> list[Row[Any]]:
    return list(
        session.execute(
            select(
                Message.id,
                Message.role,
                Message.content,
                Message.created_at,
                Message.tokens,
                Message.status,
            )
            .where(Message.conversation_id == conversation_id, Message.id > after_id)
            .order_by(Message.id)
        )
    )


def _prompt_row(row: Row[Any]) -> bool:
    return bool(row.content) and row.status is not MessageStatus.SUPERSEDED


def _turn(row: Any) -> Turn:  # a Row of prompt_turns' or _messages_after's columns
    return Turn(
        id=row.id,
        role="user" if row.role is MessageRole.USER else "assistant",
        content=row.content,
        created_at=row.created_at,
        tokens=row.tokens,
    )
