"""`vector_recall`: turns embedded into a per-conversation Chroma collection as they arrive,
recalled by semantic similarity to the question (plus the last exchange, for continuity).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from parley.core.tokens import count_tokens
from parley.memory.assembly import assemble, group_label, newest_that_fit, pack_by_score, too_long
from parley.memory.base import ContextRequest, ContextWindow, Turn, message_tokens, turn_tokens
from parley.memory.registry import MemoryDeps
from parley.retrieval.turn_recall import IndexedTurn, LazyTurns

log = logging.getLogger(__name__)

RECENT_TURNS = 2
RECENT_SHARE = 0.2
# At most this many recalled turns, the best first: the rest of a long history is ranked
# in NumPy and never touched one by one, so a turn costs the same at 2,000 turns as at 200.
RECALL_TURNS = 256


class RecallOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    recent_turns: int = Field(
        default=RECENT_TURNS, ge=0, description="the most recent turns kept for continuity"
    )
    recent_share: float = Field(
        default=RECENT_SHARE, ge=0, le=1, description="most of the budget the recent turns take"
    )
    recall_turns: int = Field(
        default=RECALL_TURNS, ge=0, description="most earlier turns recalled by similarity"
    )


def recall_or_nothing(
    search: Callable[[], list[tuple[int, float]]],
) -> list[tuple[int, float]]:
    """Recall's result, or nothing when the index is unavailable (the answer goes on)."""
    try:
        return search()
    except Exception:  # Chroma down, model missing: degrade to the recent window, loudly
        log.exception("Recall is unavailable; building the context without recalled turns.")
        return []


def indexed(turn: Turn) -> IndexedTurn:
    return IndexedTurn(id=turn.id, text=turn.content, speaker=turn.label, session=group_label(turn))


def indexed_history(history: Sequence[Turn]) -> LazyTurns:
    """The history as the recall index sees it, each turn made only if the index needs it."""
    return LazyTurns([t.id for t in history], lambda i: indexed(history[i]))


class VectorRecall:
    name = "vector_recall"
    Options = RecallOptions

    def __init__(self, deps: MemoryDeps) -> None:
        self._deps = deps
        self._options = deps.options_as(RecallOptions)

    def observe(self, conversation_id: int, history: Sequence[Turn]) -> None:
        self._deps.recall.observe(conversation_id, [indexed(t) for t in history])

    def build(self, request: ContextRequest) -> ContextWindow:
        room = request.budget - count_tokens(request.system) - message_tokens(request.question)
        if room < 0:
            raise too_long()
        options = self._options
        window = newest_that_fit(
            request.history, int(room * options.recent_share), max_turns=options.recent_turns
        )
        room -= sum(turn_tokens(t) for t in window)
        in_window = {t.id for t in window}
        by_id = {t.id: t for t in request.history if t.id not in in_window}
        ranked: list[tuple[Turn, float]] = []
        if by_id and room > 0 and options.recall_turns:
            similar = recall_or_nothing(
                lambda: self._deps.recall.similar(
                    request.conversation_id,
                    indexed_history(request.history),
                    request.question,
                    limit=options.recall_turns + len(window),
                )
            )
            ranked = [(by_id[i], s) for i, s in similar if i in by_id][: options.recall_turns]
        return assemble(
            strategy=self.name,
            system_prompt=request.system,
            summary=None,
            window=window,
            recalled=pack_by_score(ranked, room),
            question=request.question,
            budget=request.budget,
        )
