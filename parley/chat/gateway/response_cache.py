"""The response cache: an answer asked for again, served without a call.

`CachingProvider` wraps the limited provider, so every caller that gives its request a
`CallMeta.cache` key gets it (chat turns at a low temperature, titles); a request
without a key passes through untouched. The caller makes the key (`CacheKey`): who may
see the answer (`scope`: the user, their groups, the versions of the documents it drew
on), the prompt without the question (`context`, from texts, ids and versions, not from
the rendering) and the question. So a cached answer only ever reaches the user it was
written for, with the same access, in the same context.

    stream(request)
      ├ exact hit         the same scope, context and question (one indexed row)
      ├ semantic hit      the same scope and context, a question whose embedding is
      │                   at least `semantic_threshold` similar (cosine)
      │                   → the answer's words and citations, at once; no slot, no
      │                     call; the ledger records a hit and what it saved
      └ miss              the call, through the limited provider; a complete answer
                          (`end_turn`, not cut by `max_tokens`) is kept for `ttl_s`

An entry is not served once it has expired, once a document it drew on is gone (its
row in `cached_response_documents` cascades from the document; an entry missing one
is dropped), or after `drop_documents` (a document changed or unshared); its
conversation's erasure takes it (foreign key). Upkeep deletes expired entries.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select, update

from parley.chat.gateway.limited_provider import LimitedProvider
from parley.chat.gateway.output_guard import schema_problem
from parley.chat.gateway.wrapping import Wrapping
from parley.core import metrics
from parley.core.domain import CallOutcome
from parley.core.errors import StorageConflict
from parley.core.llm import (
    CacheKey,
    CallRecord,
    ChatRequest,
    Citation,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
    estimate_tokens,
)
from parley.core.tokens import count_tokens
from parley.store.db import Database
from parley.store.models import CachedResponse, CachedResponseDocument

log = logging.getLogger(__name__)

Embed = Callable[[str], np.ndarray]  # a question's normalised vector
SEMANTIC_MAX_TOKENS = 200  # MiniLM reads 256 tokens: a longer question's end is unseen


@dataclass(frozen=True, slots=True)
class CacheSettings:
    ttl_s: int
    semantic_threshold: float  # cosine similarity; above 1: exact matches only


@dataclass(frozen=True, slots=True)
class _Hit:
    id: int
    model: str
    text: str
    citations: list[dict[str, Any]]
    stop_reason: str | None
    saved: Usage


class ResponseCache:
    def __init__(
        self,
        database: Database,
        settings: CacheSettings,
        *,
        embed: Embed | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = database
        self._settings = settings
        self._embed = embed
        self._embed_failed = False  # said once
        self._now = clock

    def holds(self, key: CacheKey) -> bool:
        """Whether an answer is kept for exactly this key (not counted as a hit)."""
        with self._db.session() as session:
            return (
                session.scalar(
                    select(CachedResponse.id).where(
                        CachedResponse.exact == key.exact, CachedResponse.expires_at > self._now()
                    )
                )
                is not None
            )

    def find(self, key: CacheKey) -> _Hit | None:
        """The answer kept for `key`: exactly, else the nearest question above the
        threshold in the same scope and context. None when there is none to serve."""
        now = self._now()
        with self._db.session() as session:
            rows = session.scalars(
                select(CachedResponse).where(
                    CachedResponse.partition == key.partition, CachedResponse.expires_at > now
                )
            ).all()
            if not rows:
                return None
            chosen = next((r for r in rows if r.exact == key.exact), None)
            if chosen is None and self._semantic(key):
                chosen = self._nearest(key.question, rows)
            if chosen is None:
                return None
            kept = session.scalar(
                select(func.count())
                .select_from(CachedResponseDocument)
                .where(CachedResponseDocument.response_id == chosen.id)
            )
            if kept != chosen.documents:  # a document it drew on is gone
                session.delete(chosen)
                return None
            session.execute(
                update(CachedResponse)
                .where(CachedResponse.id == chosen.id)
                .values(hits=CachedResponse.hits + 1)
            )
            return _Hit(
                chosen.id,
                chosen.model,
                chosen.text,
                list(chosen.citations or ()),
                chosen.stop_reason,
                Usage(input_tokens=chosen.input_tokens, output_tokens=chosen.output_tokens),
            )

    def _semantic(self, key: CacheKey) -> bool:
        """Whether a near question may match: the setting allows it, the key does, and
        the question is short enough for the embedding to read all of it."""
        return (
            key.semantic
            and self._embed is not None
            and self._settings.semantic_threshold <= 1
            and count_tokens(key.question) <= SEMANTIC_MAX_TOKENS
        )

    def _nearest(self, question: str, rows: Sequence[CachedResponse]) -> CachedResponse | None:
        kept = [(r, np.frombuffer(r.vector, dtype=np.float32)) for r in rows if r.vector]
        if not kept:
            return None
        asked = self._vector(question)
        if asked is None:
            return None
        scores = [(float(np.dot(asked, v)), r) for r, v in kept if v.shape == asked.shape]
        if not scores:
            return None
        best, row = max(scores, key=lambda pair: pair[0])
        return row if best >= self._settings.semantic_threshold else None

    def _vector(self, question: str) -> np.ndarray | None:
        if self._embed is None:
            return None
        try:
            vector = np.asarray(self._embed(question), dtype=np.float32).ravel()
        except Exception as exc:  # a cache that cannot embed still matches exactly
            if not self._embed_failed:
                log.warning("The response cache matches exactly only: embedding failed: %s", exc)
                self._embed_failed = True
            return None
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm else None

    def keep(
        self,
        key: CacheKey,
        *,
        user_id: int,
        conversation_id: int | None,
        model: str,
        text: str,
        citations: Sequence[tuple[int, Citation]],
        stop_reason: str | None,
        usage: Usage,
    ) -> None:
        """Keep a complete answer for `key` (an answer kept for it already stays)."""
        vector = self._vector(key.question) if self._semantic(key) else None
        now = self._now()
        with self._db.session() as session:
            if session.scalar(select(CachedResponse.id).where(CachedResponse.exact == key.exact)):
                return  # two asked at once: the other one's stays (a race ends below)
            row = CachedResponse(
                exact=key.exact,
                partition=key.partition,
                user_id=user_id,
                conversation_id=conversation_id,
                question=key.question,
                vector=vector.tobytes() if vector is not None else None,
                model=model,
                text=text,
                citations=[
                    {
                        "source_index": c.source_index,
                        "cited_text": c.cited_text,
                        "start_block": c.start_block,
                        "end_block": c.end_block,
                        "at": at,
                    }
                    for at, c in citations
                ]
                or None,
                stop_reason=stop_reason,
                input_tokens=usage.input_tokens
                + usage.cache_read_input_tokens
                + usage.cache_creation_input_tokens,
                output_tokens=usage.output_tokens,
                documents=len(set(key.documents)),
                created_at=now,
                expires_at=now + timedelta(seconds=self._settings.ttl_s),
            )
            session.add(row)
            session.flush()
            session.add_all(
                CachedResponseDocument(response_id=row.id, document_id=d)
                for d in sorted(set(key.documents))
            )

    def drop_documents(self, document_ids: Sequence[int]) -> int:
        """Drop every answer that drew on one of these documents (changed or unshared)."""
        if not document_ids:
            return 0
        with self._db.session() as session:
            ids = session.scalars(
                select(CachedResponseDocument.response_id).where(
                    CachedResponseDocument.document_id.in_(document_ids)
                )
            ).all()
            if ids:
                session.execute(delete(CachedResponse).where(CachedResponse.id.in_(ids)))
            return len(set(ids))

    def drop_expired(self) -> int:
        with self._db.session() as session:
            result = session.execute(
                delete(CachedResponse).where(CachedResponse.expires_at <= self._now())
            )
            return int(getattr(result, "rowcount", 0) or 0)


_WORDS = re.compile(r"\S+\s*|\s+")


class CachingProvider(Wrapping[LimitedProvider]):
    """The limited provider, with the response cache in front of it for requests that
    carry a key. A `ChatProvider` itself (with the limited provider's `on_queue`)."""

    def __init__(self, inner: LimitedProvider, cache: ResponseCache) -> None:
        super().__init__(inner)
        self._cache = cache

    def count_tokens(self, request: ChatRequest) -> int:
        """The inner count, without the key (a count is no miss); an answer the cache
        holds exactly is counted here, without asking the API."""
        key = request.meta.cache
        if key is None:
            return self._inner.count_tokens(request)
        if self._holds(key):
            return estimate_tokens(request)
        return self._inner.count_tokens(replace(request, meta=replace(request.meta, cache=None)))

    def _holds(self, key: CacheKey) -> bool:
        try:
            return self._cache.holds(key)
        except Exception:
            log.exception("The response cache could not be read")
            return False

    def stream(
        self, request: ChatRequest, *, on_queue: Callable[[int], None] | None = None
    ) -> Generator[StreamEvent, None, None]:
        key = request.meta.cache
        if key is None:
            yield from self._inner.stream(request, on_queue=on_queue)
            return
        hit = self._find(key)
        if hit is not None:
            yield from self._served(request, hit)
            return
        yield from self._kept(request, key, on_queue)

    def _find(self, key: CacheKey) -> _Hit | None:
        try:
            return self._cache.find(key)
        except Exception:  # the cache failing costs a call, never the answer
            log.exception("The response cache could not be read")
            return None

    def _served(self, request: ChatRequest, hit: _Hit) -> Generator[StreamEvent, None, None]:
        started = datetime.now(UTC)
        metrics.guarded(metrics.CACHE_LOOKUPS.labels(cache="response", result="hit").inc)
        metrics.guarded(lambda: _count_saved(hit.saved))
        yield from _replayed(hit.text, hit.citations)
        self._inner.record(
            CallRecord(
                request.meta,
                hit.model,
                Usage(),
                CallOutcome.COMPLETE,
                started,
                datetime.now(UTC),
                cache="hit",
                saved=hit.saved,
            )
        )
        yield StreamEnd(model=hit.model, usage=Usage(), stop_reason=hit.stop_reason, cached=True)

    def _kept(
        self, request: ChatRequest, key: CacheKey, on_queue: Callable[[int], None] | None
    ) -> Generator[StreamEvent, None, None]:
        metrics.guarded(metrics.CACHE_LOOKUPS.labels(cache="response", result="miss").inc)
        text: list[str] = []
        citations: list[tuple[int, Citation]] = []  # and where in the text each stands
        end: StreamEnd | None = None
        for event in self._inner.stream(request, on_queue=on_queue):
            if isinstance(event, TextDelta):
                text.append(event.text)
            elif isinstance(event, Citation):
                citations.append((sum(len(t) for t in text), event))
            elif isinstance(event, StreamEnd):
                end = event
            yield event
        if end is None or end.stop_reason not in ("end_turn", "stop_sequence"):
            return  # cut short by max_tokens, or not finished: not kept
        if request.meta.user_id is None:
            return  # kept only for the user it was written for
        if request.json_schema is not None and schema_problem("".join(text), request.json_schema):
            return  # structured output that does not match its schema is not kept
        try:
            self._cache.keep(
                key,
                user_id=request.meta.user_id,
                conversation_id=request.meta.conversation_id,
                model=end.model,
                text="".join(text),
                citations=citations,
                stop_reason=end.stop_reason,
                usage=end.usage,
            )
        except StorageConflict:  # the same question answered at once elsewhere: kept there
            log.info("An answer for the same key was kept meanwhile")
        except Exception:
            log.exception("The response cache could not keep an answer")


def _count_saved(saved: Usage) -> None:
    metrics.CACHE_SAVED_TOKENS.labels(kind="input").inc(saved.input_tokens)
    metrics.CACHE_SAVED_TOKENS.labels(kind="output").inc(saved.output_tokens)


def _replayed(text: str, citations: Sequence[dict[str, Any]]) -> Iterator[StreamEvent]:
    """The kept answer as it streamed: its words, each citation where the text up to it
    ended (the text is cut there, mid-word if need be)."""
    by_offset = sorted(citations, key=lambda c: int(c.get("at", 0)))
    cuts = sorted({min(max(int(c.get("at", 0)), 0), len(text)) for c in by_offset})
    start = 0
    for cut in [*cuts, len(text)]:
        for word in _WORDS.findall(text[start:cut]):
            yield TextDelta(word)
        while by_offset and min(max(int(by_offset[0].get("at", 0)), 0), len(text)) <= cut:
            yield _citation(by_offset.pop(0))
        start = cut


def _citation(raw: dict[str, Any]) -> Citation:
    return Citation(
        source_index=int(raw["source_index"]),
        cited_text=str(raw["cited_text"]),
        start_block=int(raw["start_block"]),
        end_block=int(raw["end_block"]),
    )


__all__ = ["CacheSettings", "CachingProvider", "ResponseCache"]
