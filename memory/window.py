"""`window`: the last N turns (`PARLEY_MEMORY_WINDOW_TURNS`), fewer if they do not fit."""

from __future__ import annotations

from collections.abc import Sequence

from memory.assembly import assemble, newest_that_fit, too_long
from memory.base import ContextRequest, ContextWindow, Turn, message_tokens
from memory.registry import MemoryDeps
from parley.tokens import count_tokens


class RecentTurns:
    name = "window"

    def __init__(self, deps: MemoryDeps) -> None:
        self._turns = deps.settings.memory_window_turns

    def observe(self, conversation_id: int, history: Sequence[Turn]) -> None:
        del conversation_id, history

    def build(self, request: ContextRequest) -> ContextWindow:
        room = request.budget - count_tokens(request.system) - message_tokens(request.question)
        if room < 0:
            raise too_long()
        return assemble(
            strategy=self.name,
            system_prompt=request.system,
            summary=None,
            window=newest_that_fit(request.history, room, max_turns=self._turns),
            recalled=(),
            question=request.question,
            budget=request.budget,
        )
