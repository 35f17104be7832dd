"""What a memory strategy sees and returns.

A strategy *selects and condenses* stored history into a bounded prompt; it never
stores the history itself (the database does). It may keep derived state of its
own (embeddings in Chroma, rolling summaries in the `summaries` table), rebuilt
from the history whenever it is missing.

    class MemoryStrategy(Protocol):
        name: str
        def observe(self, conversation_id: int, turns: Sequence[Turn]) -> None: ...
        def build(self, request: ContextRequest) -> ContextWindow: ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from parley.core.llm import MESSAGE_OVERHEAD_TOKENS, PromptMessage, PromptRole
from parley.core.tokens import count_tokens


@dataclass(frozen=True, slots=True)
class Turn:
    """One stored message as a strategy sees it."""

    id: int
    role: PromptRole
    content: str
    created_at: datetime | None = None
    speaker: str | None = None  # a display name ("Caroline"); None in ordinary chats
    session: str | None = None  # a label grouping turns ("Session 3"); None: by day
    tokens: int | None = None  # `message_tokens(content)` when the store already knows it

    @property
    def label(self) -> str:
        return self.speaker or ("User" if self.role == "user" else "Assistant")


@dataclass(frozen=True, slots=True)
class ContextRequest:
    conversation_id: int
    system: str
    history: Sequence[Turn]  # every stored turn before the question, oldest first
    question: str
    budget: int  # tokens for the whole prompt: system, messages and question


@dataclass(frozen=True, slots=True)
class RecalledItem:
    """A turn brought back by relevance, with its score."""

    turn_id: int
    score: float


@dataclass(frozen=True, slots=True)
class ContextWindow:
    """The assembled prompt, with provenance.

    `system` is the operator's system prompt alone. The stable prefix is `system`
    and, when there is a rolling summary, the first message (`cache=True`, the summary
    in its envelope): it changes only when a summary is folded, so Claude's prompt
    cache keeps hitting.
    `section_tokens` adds up to `total_tokens`, which never exceeds the budget.
    """

    strategy: str
    system: str
    messages: tuple[PromptMessage, ...]
    turn_ids: tuple[int, ...]  # every stored turn whose text is in the prompt
    section_tokens: dict[str, int] = field(default_factory=dict)
    summary_version: int | None = None
    summary_covers: tuple[int, int] | None = None  # first and last turn id folded into it
    recalled: tuple[RecalledItem, ...] = ()
    # Passages from the user's documents in the prompt (document, chunk, score, and why
    # the user may see it), added by the chat service; kept with the answer.
    sources: tuple[dict[str, object], ...] = ()

    @property
    def total_tokens(self) -> int:
        return sum(self.section_tokens.values())

    def text(self) -> str:
        """Everything the model reads, for checks and benchmarks."""
        return "\n".join([self.system, *(m.content for m in self.messages)])

    def provenance(self) -> dict[str, object]:
        """A JSON-ready record of what went into the prompt (stored with the answer)."""
        return {
            "strategy": self.strategy,
            "turn_ids": list(self.turn_ids),
            "summary_version": self.summary_version,
            "summary_covers": list(self.summary_covers) if self.summary_covers else None,
            "recalled": [{"turn_id": r.turn_id, "score": round(r.score, 4)} for r in self.recalled],
            "sources": [dict(source) for source in self.sources],
            "section_tokens": dict(self.section_tokens),
            "total_tokens": self.total_tokens,
        }


@runtime_checkable
class MemoryStrategy(Protocol):
    name: str

    def observe(self, conversation_id: int, turns: Sequence[Turn]) -> None:
        """New turns were stored (called after each answer, off the hot path)."""
        ...

    def build(self, request: ContextRequest) -> ContextWindow:
        """The context for `request.question` within `request.budget` tokens."""
        ...


def message_tokens(text: str) -> int:
    """Tokens a message costs, with an allowance for role markers."""
    return count_tokens(text) + MESSAGE_OVERHEAD_TOKENS


def turn_tokens(turn: Turn) -> int:
    """`message_tokens` of the turn's text: stored with the message, counted only if not."""
    return turn.tokens if turn.tokens is not None else message_tokens(turn.content)


__all__ = [
    "ContextRequest",
    "ContextWindow",
    "MemoryStrategy",
    "RecalledItem",
    "Turn",
    "message_tokens",
    "turn_tokens",
]
