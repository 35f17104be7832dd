"""What a memory strategy sees and returns.

A strategy *selects and condenses* stored history into a bounded prompt; it never
stores history itself (the database does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from chat.providers.base import PromptMessage, PromptRole
from parley.tokens import count_tokens


@dataclass(frozen=True, slots=True)
class Turn:
    """One stored message as a strategy sees it."""

    id: int
    role: PromptRole
    content: str
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ContextWindow:
    """The assembled prompt, with provenance: which turns went in and what each part cost."""

    system: str
    messages: tuple[PromptMessage, ...]
    turn_ids: tuple[int, ...]
    section_tokens: dict[str, int] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return sum(self.section_tokens.values())


class MemoryStrategy(Protocol):
    name: str

    def build(
        self, *, system: str, history: Sequence[Turn], question: str, budget: int
    ) -> ContextWindow:
        """Context for `question` within `budget` tokens, system prompt included."""
        ...


def message_tokens(text: str) -> int:
    """Tokens a message costs, with a small allowance for role markers."""
    return count_tokens(text) + 4
