"""`window`: the last N turns (`PARLEY_MEMORY_WINDOW_TURNS`), fewer if they do not fit."""

from __future__ import annotations

from parley.memory.registry import MemoryDeps
from parley.memory.token_window import TokenWindow


class RecentTurns(TokenWindow):
    name = "window"

    def __init__(self, deps: MemoryDeps) -> None:
        super().__init__(deps)
        self._max_turns = deps.settings.memory_window_turns
