"""`summary_buffer`: a rolling summary of the oldest turns plus as many recent turns as fit.

Folding happens in `observe`, after the answer, by the configured summarizer; `build`
only reads the latest version, so the prompt prefix (system + summary) is stable
between folds.
"""

from __future__ import annotations

from collections.abc import Sequence

from parley.core.tokens import count_tokens
from parley.memory.assembly import assemble, newest_that_fit, summary_tokens, too_long
from parley.memory.base import ContextRequest, ContextWindow, Turn, message_tokens
from parley.memory.registry import MemoryDeps
from parley.memory.summaries import RollingSummary, SummaryOptions


class SummaryBuffer:
    name = "summary_buffer"
    Options = SummaryOptions

    def __init__(self, deps: MemoryDeps) -> None:
        options = deps.options_as(SummaryOptions)
        self._rolling = RollingSummary(
            deps.summaries,
            deps.summarizer,
            fold_tokens=options.fold_tokens,
            summary_tokens=options.summary_tokens,
        )

    def observe(self, conversation_id: int, history: Sequence[Turn]) -> None:
        self._rolling.maybe_fold(conversation_id, history)

    def build(self, request: ContextRequest) -> ContextWindow:
        summary = self._rolling.latest(request.conversation_id, request.history)
        fixed = message_tokens(request.question) + count_tokens(request.system)
        if summary is not None:
            with_summary = count_tokens(request.system) + summary_tokens(summary)
            if with_summary + message_tokens(request.question) > request.budget:
                summary = None  # a tiny budget: the summary does not fit at all
            else:
                fixed = with_summary + message_tokens(request.question)
        room = request.budget - fixed
        if room < 0:
            raise too_long()
        pending = self._rolling.unsummarized(request.history, summary)
        return assemble(
            strategy=self.name,
            system_prompt=request.system,
            summary=summary,
            window=newest_that_fit(pending, room),
            recalled=(),
            question=request.question,
            budget=request.budget,
        )
