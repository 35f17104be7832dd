"""Relevance of every stored turn of a conversation to a question, in a few milliseconds.

`ConversationRecall` is the in-memory index of one conversation (BM25 postings and an
embedding matrix); `RecallIndex` keeps one per conversation for the whole process, and
persists the embeddings in a `VectorStore` so that a restart re-reads them instead of
re-embedding the history. Turn ids are taken to be immutable: a stored turn's text
never changes under the same id.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from parley.retrieval.embeddings import Embedder
from parley.retrieval.scoring import ScoringWeights
from parley.retrieval.turn_index import (
    DEFAULT_WEIGHTS,
    ConversationRecall,
    IndexedTurn,
    LazyTurns,
    embedding_text,
)
from parley.retrieval.vector_store import VectorStore

MAX_PREFETCHED = 32  # questions embedded ahead and not yet asked for


def _collection(conversation_id: int) -> str:
    return f"conversation-{conversation_id}"


class _Entry:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.recall = ConversationRecall()


class RecallIndex:
    """One `ConversationRecall` per conversation (the most recently used few), for all users.

    Embeddings are persisted in `store` (collection "conversation-<id>", row id = turn id)
    when one is given. Safe to call from several threads: each conversation has its own
    lock, so work on one conversation never waits for another (except for the embedder).

    `alive(conversation_id)` says whether a conversation still exists (the wiring asks
    the database): vectors are stored only for a live one, and dropped again if it was
    erased while they were being written, whichever process erased it.
    """

    def __init__(
        self,
        *,
        embedder: Embedder,
        store: VectorStore | None,
        max_conversations: int = 64,
        alive: Callable[[int], bool] | None = None,
    ) -> None:
        self._alive = alive
        if max_conversations < 1:
            raise ValueError("max_conversations must be at least 1")
        self._embedder = embedder
        self._store = store
        self._max = max_conversations
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._lock = threading.Lock()  # guards _entries, _questions and _erased
        # Conversations erased in this process: late background work for them stores nothing.
        self._erased: set[int] = set()
        # Questions being embedded ahead of their query (`prefetch`). One worker of its own:
        # the upkeep pool may be busy with a summary's model call, and this is the hot path.
        self._questions: OrderedDict[str, Future[np.ndarray]] = OrderedDict()
        self._question_worker = ThreadPoolExecutor(1, thread_name_prefix="parley-question")

    @property
    def store(self) -> VectorStore | None:
        return self._store

    def _entry(self, conversation_id: int) -> _Entry:
        with self._lock:
            entry = self._entries.get(conversation_id)
            if entry is None:
                entry = self._entries[conversation_id] = _Entry()
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(conversation_id)
            return entry

    def _vectors(
        self, conversation_id: int, turns: Sequence[IndexedTurn], known: ConversationRecall
    ) -> np.ndarray:
        """Embeddings for `turns`: from `known`, else from the store, else embedded (and stored)."""
        out = np.zeros((len(turns), self._embedder.dimension), dtype=np.float32)
        missing: list[int] = []
        for i, turn in enumerate(turns):
            if turn.id in known:
                out[i] = known.embedding(turn.id)
            else:
                missing.append(i)
        if missing and self._store is not None:
            stored = self._store.get(
                _collection(conversation_id), [str(turns[i].id) for i in missing]
            )
            if any(v.shape != (self._embedder.dimension,) for v in stored.values()):
                # Made by another embedding model: stale, so rebuild it from the history.
                self._store.delete_collection(_collection(conversation_id))
                stored = {}
            still: list[int] = []
            for i in missing:
                vector = stored.get(str(turns[i].id))
                if vector is None:
                    still.append(i)
                else:
                    out[i] = vector
            missing = still
        if missing:
            fresh = [turns[i] for i in missing]
            vectors = self._embedder.embed([embedding_text(t) for t in fresh])
            out[missing] = vectors
            self._persist(conversation_id, fresh, vectors)
        return out

    def _persist(
        self, conversation_id: int, turns: Sequence[IndexedTurn], vectors: np.ndarray
    ) -> None:
        if self._store is None or not turns:
            return
        if conversation_id in self._erased or not self._is_alive(conversation_id):
            return  # erased while this was being embedded: do not bring it back
        # Ids, embeddings and metadata only: the text stays in the database, with its rights.
        self._store.add(
            _collection(conversation_id),
            ids=[str(t.id) for t in turns],
            embeddings=vectors,
            metadatas=[
                {"turn_id": t.id, "session": t.session, "speaker": t.speaker or ""} for t in turns
            ],
        )
        if not self._is_alive(conversation_id):  # erased meanwhile, perhaps elsewhere
            self._store.delete_collection(_collection(conversation_id))
            self._store.purge([_collection(conversation_id)])

    def _is_alive(self, conversation_id: int) -> bool:
        return self._alive is None or self._alive(conversation_id)

    def observe(self, conversation_id: int, turns: Sequence[IndexedTurn]) -> None:
        """Index new turns: embed them in one batch, store them, add them to memory.

        Turns already indexed (in memory or in the store) are not embedded again.
        """
        if conversation_id in self._erased:
            return
        entry = self._entry(conversation_id)
        with entry.lock:
            new = _unique([t for t in turns if t.id not in entry.recall])
            if new:
                entry.recall.add(new, self._vectors(conversation_id, new, entry.recall))

    def sync(self, conversation_id: int, turns: Sequence[IndexedTurn]) -> ConversationRecall:
        """Make sure every given turn (oldest first) is indexed, in the given order.

        Cheap when all of them are already in memory. Embeddings missing from memory come
        from the store, and only those missing there too are embedded. The returned index
        may hold further turns (observed, but not given here); `score` leaves them out.
        """
        turns = _unique(turns)
        entry = self._entry(conversation_id)
        with entry.lock:
            self._sync_locked(conversation_id, entry, turns)
            return entry.recall

    def _sync_locked(
        self, conversation_id: int, entry: _Entry, turns: Sequence[IndexedTurn]
    ) -> None:
        recall = entry.recall
        positions = [recall.position(t.id) for t in turns]
        known = [p for p in positions if p is not None]
        in_order = all(a < b for a, b in zip(known, known[1:], strict=False))
        missing_at = [i for i, p in enumerate(positions) if p is None]
        if in_order and (not missing_at or missing_at[0] == len(known)):
            # Known turns keep their order and the missing ones are all newer: append them.
            tail = turns[len(known) :]
            if tail:
                recall.add(tail, self._vectors(conversation_id, tail, recall))
            return
        # Otherwise rebuild in the given order, so neighbours are real neighbours.
        rebuilt = ConversationRecall()
        rebuilt.add(turns, self._vectors(conversation_id, turns, recall))
        entry.recall = rebuilt

    def score(
        self,
        conversation_id: int,
        turns: Sequence[IndexedTurn],
        question: str,
        weights: ScoringWeights = DEFAULT_WEIGHTS,
        *,
        limit: int | None = None,
    ) -> list[tuple[int, float]]:
        """(turn id, relevance) for the given turns; higher is more relevant.

        All of them oldest first, or only the best `limit`, best first.
        """
        ids, values = self._query(
            conversation_id, turns, question, lambda recall, q: recall.fused(question, q, weights)
        )
        if limit is None:
            return list(zip(ids.tolist(), values.tolist(), strict=True))
        return _best(ids, values, limit)

    def similar(
        self,
        conversation_id: int,
        turns: Sequence[IndexedTurn],
        question: str,
        *,
        limit: int | None = None,
    ) -> list[tuple[int, float]]:
        """(turn id, cosine) for the given turns (only the best `limit`), most similar first."""
        ids, values = self._query(
            conversation_id, turns, question, lambda recall, q: recall.cosines(q)
        )
        return _best(ids, values, len(ids) if limit is None else limit)

    def _query(
        self,
        conversation_id: int,
        turns: Sequence[IndexedTurn],
        question: str,
        rank: Callable[[ConversationRecall, np.ndarray], np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Index `turns`, embed the question (outside the lock), rank them with `rank`.

        Returns the given turns' ids and values, in index order. When the index holds
        exactly the given turns (the usual case: observe keeps it current), nothing is
        looked up turn by turn, so a long conversation costs only the vector arithmetic.
        """
        if not turns:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        query = self._question_vector(question)
        entry = self._entry(conversation_id)
        turn_ids = turns.ids if isinstance(turns, LazyTurns) else [t.id for t in turns]
        with entry.lock:
            exact = entry.recall.holds_exactly(turn_ids)
            if not exact:
                self._sync_locked(conversation_id, entry, _unique(turns))
            values = np.asarray(rank(entry.recall, query))
            ids = entry.recall.id_array()
        if not exact:
            wanted = np.isin(ids, np.fromiter(set(turn_ids), dtype=np.int64))
            ids, values = ids[wanted], values[wanted]
        return ids, values

    def prefetch(self, question: str) -> None:
        """Start embedding `question` now; the next query for it uses the result.

        The chat service calls this first thing in a send, so the embedding runs while
        the quota is checked and the history and summary are read.
        """
        with self._lock:
            if question in self._questions:
                return
            self._questions[question] = self._question_worker.submit(self._embed_one, question)
            while len(self._questions) > MAX_PREFETCHED:
                _, stale = self._questions.popitem(last=False)
                stale.cancel()  # never asked for: do not spend the CPU

    def _embed_one(self, question: str) -> np.ndarray:
        return np.asarray(self._embedder.embed([question])[0])

    def _question_vector(self, question: str) -> np.ndarray:
        with self._lock:
            future = self._questions.pop(question, None)
        if future is not None:
            with contextlib.suppress(Exception):  # embedded again below, raising for real
                return future.result()
        return self._embed_one(question)

    def close(self) -> None:
        """Stop the question worker (prefetched questions not yet embedded are dropped)."""
        with self._lock:
            pending = list(self._questions.values())
            self._questions.clear()
        for future in pending:
            future.cancel()
        self._question_worker.shutdown(wait=True)

    def forget(self, conversation_id: int) -> None:
        """Drop a conversation's index from memory and from the store (it was deleted),
        and purge the store's files of it (`VectorStore.purge`); raises if the store fails.

        Waits for work in progress on it (its lock), and marks it erased first, so
        neither that work nor later work stores its vectors again.
        """
        with self._lock:
            self._erased.add(conversation_id)
            entry = self._entries.get(conversation_id)
        if entry is not None:
            with entry.lock, self._lock:
                self._entries.pop(conversation_id, None)
        if self._store is not None:
            self._store.delete_collection(_collection(conversation_id))
            self._store.purge([_collection(conversation_id)])


def _unique(turns: Sequence[IndexedTurn]) -> list[IndexedTurn]:
    """The turns without repeated ids (the first occurrence wins), order kept."""
    seen: set[int] = set()
    out: list[IndexedTurn] = []
    for turn in turns:
        if turn.id not in seen:
            seen.add(turn.id)
            out.append(turn)
    return out


def _best(ids: np.ndarray, values: np.ndarray, limit: int) -> list[tuple[int, float]]:
    """The `limit` highest values with their ids, highest first (ties: older turn first)."""
    if limit <= 0 or len(ids) == 0:
        return []
    if limit < len(ids):
        top = np.argpartition(-values, limit - 1)[:limit]
        ids, values = ids[top], values[top]
    order = np.lexsort((ids, -values))
    return list(zip(ids[order].tolist(), values[order].tolist(), strict=True))


__all__ = ["ConversationRecall", "IndexedTurn", "LazyTurns", "RecallIndex", "embedding_text"]
