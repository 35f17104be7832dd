"""`window`: the last N turns, fewer if they do not fit.

N is the option `turns`: `PARLEY_MEMORY__WINDOW__TURNS`, or the older
`PARLEY_MEMORY_WINDOW_TURNS`, or per conversation.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from parley.memory.registry import MemoryDeps
from parley.memory.token_window import TokenWindow


class WindowOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    turns: int = Field(default=6, ge=1, description="the most recent turns kept")


class RecentTurns(TokenWindow):
    name = "window"
    Options = WindowOptions

    def __init__(self, deps: MemoryDeps) -> None:
        super().__init__(deps)
        self._max_turns = deps.options_as(WindowOptions).turns
