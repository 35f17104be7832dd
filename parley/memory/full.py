"""`full`: the whole history, or a clear error when it does not fit."""

from __future__ import annotations

from collections.abc import Sequence

from parley.core.errors import HistoryTooLong, InvalidInput
from parley.memory.assembly import assemble
from parley.memory.base import ContextRequest, ContextWindow, Turn
from parley.memory.registry import MemoryDeps


class FullHistory:
    name = "full"

    def __init__(self, deps: MemoryDeps | None = None) -> None:
        del deps

    def observe(self, conversation_id: int, history: Sequence[Turn]) -> None:
        del conversation_id, history

    def build(self, request: ContextRequest) -> ContextWindow:
        history = list(request.history)
        while history and history[0].role != "user":
            history.pop(0)
        try:
            return assemble(
                strategy=self.name,
                system_prompt=request.system,
                summary=None,
                window=history,
                recalled=(),
                question=request.question,
                budget=request.budget,
            )
        except InvalidInput:
            raise HistoryTooLong(self.name, request.budget) from None
