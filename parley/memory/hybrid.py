"""`hybrid` (the default): system prompt + rolling summary + recalled turns + recent window.

Per-section allotments of the budget (after the system prompt and the question), each
an option (`HybridOptions`, e.g. `PARLEY_MEMORY__HYBRID__RECENT_TURNS`): the summary
takes at most 10 % (its oldest lines give way first), the recent window at most 20 %
and six turns, and recall gets the rest, for at most 256 turns. Recall
ranks every earlier turn by a fusion of BM25 and MiniLM similarity, lifted by
neighbouring turns, the turn's session and the speaker named in the question
(`parley.retrieval.scoring`), then packs the best turns whole, grouped under one header
per session.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from parley.core.tokens import count_tokens
from parley.memory.assembly import (
    assemble,
    newest_that_fit,
    pack_by_score,
    summary_tokens,
    too_long,
)
from parley.memory.base import ContextRequest, ContextWindow, Turn, message_tokens, turn_tokens
from parley.memory.registry import MemoryDeps
from parley.memory.summaries import RollingSummary, SummaryOptions, fit_summary
from parley.memory.vector_recall import RECALL_TURNS, indexed, indexed_history, recall_or_nothing

SUMMARY_SHARE = 0.10
RECENT_SHARE = 0.20
RECENT_TURNS = 6


class HybridOptions(SummaryOptions):
    summary_share: float = Field(
        default=SUMMARY_SHARE, ge=0, le=1, description="most of the budget the summary takes"
    )
    recent_share: float = Field(
        default=RECENT_SHARE, ge=0, le=1, description="most of the budget the recent turns take"
    )
    recent_turns: int = Field(default=RECENT_TURNS, ge=0, description="most recent turns kept")
    recall_turns: int = Field(
        default=RECALL_TURNS, ge=0, description="most earlier turns recalled by relevance"
    )


class Hybrid:
    name = "hybrid"
    Options = HybridOptions

    def __init__(self, deps: MemoryDeps) -> None:
        self._deps = deps
        self._options = options = deps.options_as(HybridOptions)
        self._rolling = RollingSummary(
            deps.summaries,
            deps.summarizer,
            fold_tokens=options.fold_tokens,
            summary_tokens=options.summary_tokens,
        )

    def observe(self, conversation_id: int, history: Sequence[Turn]) -> None:
        self._deps.recall.observe(conversation_id, [indexed(t) for t in history])
        self._rolling.maybe_fold(conversation_id, history)

    def build(self, request: ContextRequest) -> ContextWindow:
        options = self._options
        base = count_tokens(request.system) + message_tokens(request.question)
        room = request.budget - base
        if room < 0:
            raise too_long()
        summary = fit_summary(
            self._rolling.latest(request.conversation_id, request.history),
            int(room * options.summary_share),
        )
        room = (
            request.budget
            - count_tokens(request.system)
            - summary_tokens(summary)
            - message_tokens(request.question)
        )
        window = newest_that_fit(
            request.history, int(room * options.recent_share), max_turns=options.recent_turns
        )
        room -= sum(turn_tokens(t) for t in window)
        in_window = {t.id for t in window}
        candidates = [t for t in request.history if t.id not in in_window]
        ranked: list[tuple[Turn, float]] = []
        if candidates and room > 0 and options.recall_turns:
            by_id = {t.id: t for t in candidates}
            best = recall_or_nothing(
                lambda: self._deps.recall.score(
                    request.conversation_id,
                    indexed_history(request.history),
                    request.question,
                    limit=options.recall_turns + len(window),
                )
            )
            ranked = [(by_id[i], s) for i, s in best if i in by_id][: options.recall_turns]
        return assemble(
            strategy=self.name,
            system_prompt=request.system,
            summary=summary,
            window=window,
            recalled=pack_by_score(ranked, room),
            question=request.question,
            budget=request.budget,
        )
