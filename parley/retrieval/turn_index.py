"""One conversation's turns, indexed for relevance: BM25 postings and an embedding matrix.

`RecallIndex` (`parley.retrieval.turn_recall`) keeps one of these per conversation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, overload

import numpy as np

from parley.retrieval.lexical import BM25Index
from parley.retrieval.scoring import ScoringWeights, fuse_coded, named_speaker

DEFAULT_WEIGHTS = ScoringWeights()


class IndexedTurn(NamedTuple):
    """A turn as the index sees it (a named tuple: made for every turn on each query)."""

    id: int
    text: str
    speaker: str | None
    session: str  # a label grouping turns: "Session 3, 8 May 2023", or a date


class LazyTurns(Sequence[IndexedTurn]):
    """Turns whose ids are known up front and which are made one by one only when read.

    A query checks the ids against the index; while the index is current (the usual
    case) no `IndexedTurn` is made at all, so a long history costs only its id list.
    """

    def __init__(self, ids: Sequence[int], make: Callable[[int], IndexedTurn]) -> None:
        self.ids = ids
        self._make = make  # position -> the turn

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> IndexedTurn: ...
    @overload
    def __getitem__(self, index: slice) -> list[IndexedTurn]: ...
    def __getitem__(self, index: int | slice) -> IndexedTurn | list[IndexedTurn]:
        if isinstance(index, slice):
            return [self._make(i) for i in range(len(self.ids))[index]]
        return self._make(range(len(self.ids))[index])


def embedding_text(turn: IndexedTurn) -> str:
    """The text a turn is embedded as: "Caroline (Session 3, 8 May 2023): text"."""
    if turn.speaker:
        return f"{turn.speaker} ({turn.session}): {turn.text}"
    return f"({turn.session}): {turn.text}"


def _lexical_text(turn: IndexedTurn) -> str:
    return f"{turn.speaker} {turn.text}" if turn.speaker else turn.text


class ConversationRecall:
    """The turns of one conversation, in the order they were added, ready to score.

    Not thread-safe on its own; `RecallIndex` serialises access to it.
    """

    def __init__(self) -> None:
        self._ids: list[int] = []
        self._positions: dict[int, int] = {}
        self._bm25 = BM25Index()
        self._matrix: np.ndarray | None = None  # capacity rows; the first len(self) are used
        self._session_codes = np.zeros(0, dtype=np.intp)
        self._speaker_codes = np.zeros(0, dtype=np.intp)
        self._session_numbers: dict[str, int] = {}
        self._speaker_numbers: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, turn_id: int) -> bool:
        return turn_id in self._positions

    def ids(self) -> list[int]:
        return list(self._ids)

    def position(self, turn_id: int) -> int | None:
        return self._positions.get(turn_id)

    def embedding(self, turn_id: int) -> np.ndarray:
        """The stored embedding of an indexed turn (KeyError if it is not indexed)."""
        position = self._positions[turn_id]
        assert self._matrix is not None
        return np.array(self._matrix[position], dtype=np.float32)

    def add(self, turns: Sequence[IndexedTurn], embeddings: np.ndarray) -> None:
        """Append turns (oldest first) with their embeddings; already-indexed ids are skipped."""
        vectors = np.asarray(embeddings, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(turns):
            raise ValueError(f"{len(turns)} turns need a ({len(turns)}, d) embedding matrix")
        fresh = [i for i, turn in enumerate(turns) if turn.id not in self._positions]
        if len({turns[i].id for i in fresh}) != len(fresh):
            raise ValueError("a turn id appears twice")
        if not fresh:
            return
        self._reserve(len(fresh), vectors.shape[1])
        assert self._matrix is not None
        start = len(self._ids)
        self._matrix[start : start + len(fresh)] = vectors[fresh]
        new_sessions = np.empty(len(fresh), dtype=np.intp)
        new_speakers = np.empty(len(fresh), dtype=np.intp)
        for k, i in enumerate(fresh):
            turn = turns[i]
            self._positions[turn.id] = start + k
            self._ids.append(turn.id)
            self._bm25.add(_lexical_text(turn))
            sessions = self._session_numbers
            new_sessions[k] = sessions.setdefault(turn.session, len(sessions))
            speakers = self._speaker_numbers
            speaker = turn.speaker
            new_speakers[k] = -1 if not speaker else speakers.setdefault(speaker, len(speakers))
        self._session_codes = np.concatenate([self._session_codes, new_sessions])
        self._speaker_codes = np.concatenate([self._speaker_codes, new_speakers])

    def _reserve(self, extra: int, dimension: int) -> None:
        used = len(self._ids)
        if self._matrix is not None and self._matrix.shape[1] != dimension:
            raise ValueError(
                f"embeddings have {dimension} dimensions, this index {self._matrix.shape[1]}"
            )
        capacity = 0 if self._matrix is None else len(self._matrix)
        if used + extra <= capacity:
            return
        grown = np.zeros((max(used + extra, 2 * capacity, 64), dimension), dtype=np.float32)
        if self._matrix is not None:
            grown[:used] = self._matrix[:used]
        self._matrix = grown

    def holds_exactly(self, turn_ids: Sequence[int]) -> bool:
        """True when the index holds these turns and no others, in this order."""
        return self._ids == turn_ids

    def id_array(self) -> np.ndarray:
        return np.fromiter(self._ids, dtype=np.int64, count=len(self._ids))

    def scores(
        self,
        question: str,
        question_embedding: np.ndarray,
        weights: ScoringWeights = DEFAULT_WEIGHTS,
    ) -> list[tuple[int, float]]:
        """(turn id, fused score) for every indexed turn, in index order."""
        fused = self.fused(question, question_embedding, weights)
        return list(zip(self._ids, fused.tolist(), strict=True))

    def fused(
        self,
        question: str,
        question_embedding: np.ndarray,
        weights: ScoringWeights = DEFAULT_WEIGHTS,
    ) -> np.ndarray:
        """The fused score of every indexed turn, in index order."""
        n = len(self._ids)
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        assert self._matrix is not None
        query = np.asarray(question_embedding, dtype=np.float32).reshape(-1)
        cosine = self._matrix[:n] @ query
        return fuse_coded(
            lexical=self._bm25.scores(question),
            cosine=cosine,
            session_codes=self._session_codes,
            speaker_codes=self._speaker_codes,
            speaker=named_speaker(question, list(self._speaker_numbers)),
            weights=weights,
        )

    def similarities(self, question_embedding: np.ndarray) -> list[tuple[int, float]]:
        """(turn id, cosine similarity) for every indexed turn, in index order."""
        return list(zip(self._ids, self.cosines(question_embedding).tolist(), strict=True))

    def cosines(self, question_embedding: np.ndarray) -> np.ndarray:
        """The cosine similarity of every indexed turn to the question, in index order."""
        n = len(self._ids)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        assert self._matrix is not None
        query = np.asarray(question_embedding, dtype=np.float32).reshape(-1)
        return np.asarray(self._matrix[:n] @ query)
