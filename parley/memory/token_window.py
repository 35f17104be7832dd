"""`token_window`: as many recent turns as fit the budget."""

from __future__ import annotations

from collections.abc import Sequence

from parley.core.tokens import count_tokens
from parley.memory.assembly import assemble, newest_that_fit, too_long
from parley.memory.base import ContextRequest, ContextWindow, Turn, message_tokens
from parley.memory.registry import MemoryDeps


class TokenWindow:
    name = "token_window"

    _max_turns: int | None = None  # `window` sets a count; this strategy only counts tokens

    def __init__(self, deps: MemoryDeps | None = None) -> None:
        del deps  # needs nothing

    def observe(self, conversation_id: int, history: Sequence[Turn]) -> None:
        del conversation_id, history  # stateless

    def build(self, request: ContextRequest) -> ContextWindow:
        room = request.budget - count_tokens(request.system) - message_tokens(request.question)
        if room < 0:
            raise too_long()
        return assemble(
            strategy=self.name,
            system_prompt=request.system,
            summary=None,
            window=newest_that_fit(request.history, room, max_turns=self._max_turns),
            recalled=(),
            question=request.question,
            budget=request.budget,
        )
