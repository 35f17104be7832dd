"""Full-text search over a user's own conversations: titles and messages.

The database's engine does the matching (`parley/store/search_index.py`: FTS5 on
SQLite, `tsvector` with GIN indexes on PostgreSQL); the owner is a condition of the
same query, so no result ever comes from another user's conversation. Failed attempts a
retry replaced (`superseded`) are not found; an erased conversation is gone from the
index with its rows.

The query is words, not syntax: each word (letters and digits) must occur in the same
title or message, whole or as the start of a word ("parl" finds "Parley", "run" finds
"running"); no stemming, no stop words, on both engines. At most eight words count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import TextClause, text

from parley.core.domain import MessageRole, MessageStatus, Principal
from parley.core.errors import InvalidInput
from parley.store.db import Database
from parley.store.search_index import MESSAGES_FTS, POSTGRES_CONFIG, TITLES_FTS

MAX_TERMS = 8
MAX_TERM_CHARS = 64
MAX_QUERY_CHARS = 500
OPEN, CLOSE = "\ue000", "\ue001"  # around each match in a snippet (private-use characters)
_WORD = re.compile(r"\w+")


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A match: in a conversation's title (`message_id` None) or in one of its messages.
    `snippet` is plain text around the match; `marks` are the (start, end) offsets of
    the matched words in it."""

    conversation_id: int
    title: str
    message_id: int | None
    role: MessageRole | None
    snippet: str
    marks: tuple[tuple[int, int], ...]


def terms_of(query: str) -> list[str]:
    """The words searched for, or `InvalidInput` with a sentence."""
    if not isinstance(query, str) or len(query) > MAX_QUERY_CHARS:
        raise InvalidInput(f"Search for at most {MAX_QUERY_CHARS} characters.")
    words = [
        w[:MAX_TERM_CHARS]
        for w in _WORD.findall(query.lower().replace(OPEN, " ").replace(CLOSE, " "))
        if any(ch.isalnum() for ch in w)
    ]
    if not words:
        raise InvalidInput("Type a word to search for.")
    return list(dict.fromkeys(words))[:MAX_TERMS]


def marked(snippet: str) -> tuple[str, tuple[tuple[int, int], ...]]:
    """The snippet without its match markers, and where the matches stand."""
    plain: list[str] = []
    marks: list[tuple[int, int]] = []
    at = 0
    start: int | None = None
    for ch in snippet:
        if ch == OPEN:
            start = at
        elif ch == CLOSE:
            if start is not None and at > start:
                marks.append((start, at))
            start = None
        else:
            plain.append(ch)
            at += 1
    return "".join(plain), tuple(marks)


class ConversationSearch:
    def __init__(self, database: Database) -> None:
        self._db = database

    def search(self, principal: Principal, query: str, *, limit: int = 20) -> list[SearchHit]:
        """The principal's conversations whose title or messages hold every word of
        `query`: title matches first (of conversations no message matched), then
        messages, best first. `InvalidInput` for a
        query with no word."""
        terms = terms_of(query)
        limit = max(1, min(limit, 100))
        if self._db.is_sqlite:
            return self._sqlite(principal.user_id, terms, limit)
        return self._postgres(principal.user_id, terms, limit)

    def _sqlite(self, user_id: int, terms: list[str], limit: int) -> list[SearchHit]:
        match = " ".join('"' + t.replace('"', '""') + '"*' for t in terms)
        titles = text(
            f"SELECT c.id, c.title, NULL, NULL, "
            f"highlight({TITLES_FTS}, 0, :open, :close) "
            f"FROM {TITLES_FTS} JOIN conversations c ON c.id = {TITLES_FTS}.rowid "
            f"WHERE {TITLES_FTS} MATCH :match AND c.user_id = :user "
            f"ORDER BY bm25({TITLES_FTS}), c.updated_at DESC LIMIT :limit"
        )
        messages = text(
            f"SELECT c.id, c.title, m.id, m.role, "
            f"snippet({MESSAGES_FTS}, 0, :open, :close, '…', 24) "
            f"FROM {MESSAGES_FTS} JOIN messages m ON m.id = {MESSAGES_FTS}.rowid "
            f"JOIN conversations c ON c.id = m.conversation_id "
            f"WHERE {MESSAGES_FTS} MATCH :match AND c.user_id = :user "
            f"AND m.status != :superseded "
            f"ORDER BY bm25({MESSAGES_FTS}), m.id DESC LIMIT :limit"
        )
        return self._run(titles, messages, match, user_id, limit)

    def _postgres(self, user_id: int, terms: list[str], limit: int) -> list[SearchHit]:
        match = " & ".join(f"{t}:*" for t in terms)  # words only: nothing to escape
        config = POSTGRES_CONFIG
        options = f"StartSel={OPEN}, StopSel={CLOSE}, MaxWords=24, MinWords=8, MaxFragments=1"
        titles = text(
            f"SELECT c.id, c.title, NULL, NULL, "
            f"ts_headline('{config}', c.title, q, 'HighlightAll=true, {options}') "
            f"FROM conversations c, to_tsquery('{config}', :match) q "
            f"WHERE to_tsvector('{config}', c.title) @@ q AND c.user_id = :user "
            f"ORDER BY ts_rank(to_tsvector('{config}', c.title), q) DESC, c.updated_at DESC "
            f"LIMIT :limit"
        )
        messages = text(
            f"SELECT c.id, c.title, m.id, m.role, "
            f"ts_headline('{config}', m.content, q, '{options}') "
            f"FROM messages m JOIN conversations c ON c.id = m.conversation_id, "
            f"to_tsquery('{config}', :match) q "
            f"WHERE to_tsvector('{config}', m.content) @@ q AND c.user_id = :user "
            f"AND m.status != :superseded "
            f"ORDER BY ts_rank(to_tsvector('{config}', m.content), q) DESC, m.id DESC "
            f"LIMIT :limit"
        )
        return self._run(titles, messages, match, user_id, limit)

    def _run(
        self, titles: TextClause, messages: TextClause, match: str, user_id: int, limit: int
    ) -> list[SearchHit]:
        params = {
            "match": match,
            "user": user_id,
            "limit": limit,
            "open": OPEN,
            "close": CLOSE,
            "superseded": MessageStatus.SUPERSEDED.value,
        }
        with self._db.session() as session:
            in_titles = session.execute(titles, params).all()
            in_messages = session.execute(messages, params).all()
        # A conversation found in a message needs no entry for its title too (a title is
        # often its first message).
        found_in_messages = {row[0] for row in in_messages}
        rows = [*(r for r in in_titles if r[0] not in found_in_messages), *in_messages]
        hits: list[SearchHit] = []
        for conversation_id, title, message_id, role, snippet in rows[:limit]:
            plain, marks = marked(snippet or "")
            hits.append(
                SearchHit(
                    conversation_id=conversation_id,
                    title=title,
                    message_id=message_id,
                    role=MessageRole(role) if role else None,
                    snippet=plain,
                    marks=marks,
                )
            )
        return hits


__all__ = ["ConversationSearch", "SearchHit", "marked", "terms_of"]
