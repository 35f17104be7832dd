"""Stored messages as the prompt sees them: which count, and as what `Turn`.

The prompt's history is the branch the question follows (`branches`), read as plain
columns (no ORM objects, no provenance JSON) with each message's stored token count;
`HistoryCache` keeps it between sends so that a send reads only what is new: its cost
stays flat as a conversation grows.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row
from sqlalchemy.orm import Session

from parley.chat.conversation.branches import path_rows
from parley.core import metrics
from parley.core.domain import MessageRole, MessageStatus
from parley.memory.base import Turn
from parley.store.models import Conversation


def path_turns(session: Session, leaf_id: int | None) -> list[Turn]:
    """The turns a prompt may use on the branch ending at `leaf_id`, oldest first.

    Failed answers with no text stay out of the prompt; partial answers go in.
    """
    if leaf_id is None:
        return []
    return [_turn(r) for r in path_rows(session, leaf_id) if _prompt_row(r)]


@dataclass(frozen=True, slots=True)
class _Cached:
    leaf: int  # the branch's newest message
    path: tuple[int, ...]  # every message id on it, oldest first (ids rise down a path)
    turns: tuple[Turn, ...]


class HistoryCache:
    """The prompt turns of recently used branches, kept between sends.

    A stored turn's text never changes and a message never moves (`branches`), so the
    path down to a given message is the same for ever. Each read walks up from the
    branch's newest message only as far as the newest message already read, by primary
    key: when the walk meets the cached path (the usual case: a question or an answer
    added to the branch, or a sibling of one of its messages), the new messages are put
    after the part of the cached path they follow; otherwise (another branch opened)
    the path is read whole. Entries are keyed by the conversation's id *and* creation
    time, so a deleted conversation's id given to a new one can never bring back old
    turns. The tuple handed out is immutable and shared safely by threads.
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

    def turns(
        self, session: Session, conversation: Conversation, leaf: int | None
    ) -> tuple[Turn, ...]:
        """The turns on the branch down to `leaf`, that message included (None: none)."""
        if leaf is None:
            return ()
        key = (conversation.id, conversation.created_at)
        with self._lock:
            cached = self._entries.get(key)
        entry = _extended(session, cached, leaf) if cached is not None else None
        result = "miss" if entry is None else "hit"
        metrics.guarded(metrics.CACHE_LOOKUPS.labels(cache="history", result=result).inc)
        if entry is None:
            rows = path_rows(session, leaf)
            entry = _Cached(
                leaf, tuple(r.id for r in rows), tuple(_turn(r) for r in rows if _prompt_row(r))
            )
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return entry.turns


def _extended(session: Session, cached: _Cached, leaf: int) -> _Cached | None:
    """The cached path brought to `leaf`, or None when `leaf` is on another branch."""
    if leaf == cached.leaf:
        return cached
    rows = path_rows(session, leaf, above=cached.leaf) if leaf > cached.leaf else []
    joins = rows[0].parent_id if rows else leaf
    if joins is None:  # a new first message: nothing of the cached path comes along
        kept = 0
    else:
        kept = bisect_right(cached.path, joins)
        if kept == 0 or cached.path[kept - 1] != joins:
            return None
    shared = cached.path[:kept]
    last = shared[-1] if shared else 0
    turns = tuple(t for t in cached.turns if t.id <= last)
    return _Cached(
        leaf,
        shared + tuple(r.id for r in rows),
        turns + tuple(_turn(r) for r in rows if _prompt_row(r)),
    )


def _prompt_row(row: Row[Any]) -> bool:
    return bool(row.content) and row.status is not MessageStatus.SUPERSEDED


def _turn(row: Any) -> Turn:  # a Row of `path_rows`' columns
    return Turn(
        id=row.id,
        role="user" if row.role is MessageRole.USER else "assistant",
        content=row.content,
        created_at=row.created_at,
        tokens=row.tokens,
    )
