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
    suspect: str | None = None  # why the injection detector's rules flagged it, if they did


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

    @property
    def total_tokens(self) -> int:
        return sum(self.section_tokens.values())

    def text(self) -> str:
        """Everything the model reads, for checks and benchmarks."""
        return "\n".join([self.system, *(m.content for m in self.messages)])


@runtime_checkable
class MemoryStrategy(Protocol):
    """Selects and condenses a conversation's stored turns into a bounded prompt.

    One instance serves every conversation (one per set of option values), from several
    threads at once: keep per-conversation state keyed by `conversation_id`, behind a
    lock, and rebuildable from the turns it is given.
    """

    name: str

    def observe(self, conversation_id: int, turns: Sequence[Turn]) -> None:
        """Catch up on the conversation's stored turns (index them, fold a summary).

        How it is really called (`parley.chat.conversation.upkeep.Upkeep.observe`):

        - after every answer, whether it completed, broke off or failed, on the
          services' background pool (`PARLEY_BACKGROUND_WORKERS` threads): never on the
          path of an answer, so slow work (embedding, a summary's model call) belongs here;
        - with *every* turn the prompt may use, oldest first (ids ascending): the whole
          history, not the new turns alone. Superseded answers and answers with no text
          are left out, so the last turn may be the user's (the answer failed);
        - so the same turns arrive again and again: each call repeats the earlier ones,
          a call may bring exactly the turns of the one before (a failed answer adds
          none, two queued calls read the same rows), and calls for one conversation may
          run at the same time on two threads. It must be idempotent: observing the same
          turns twice changes nothing;
        - a turn can leave the history: a partial answer that `retry` supersedes is in
          one call's turns and not in the next. A turn's text never changes;
        - a call may be skipped (the pool is full, or the process is stopping): the
          next one brings everything, so catch up from `turns`, not from a count of calls;
        - it may come after the conversation was deleted (and `forget` called), and it
          is not called for a conversation that has no turns stored yet.

        It raises nothing that matters to anyone: a failure is logged and the next
        call catches up. The benchmark (`parley bench memory`) calls it after each turn.
        """
        ...

    def build(self, request: ContextRequest) -> ContextWindow:
        """The context for `request.question` within `request.budget` tokens.

        Called on the answer's path (keep it quick), inside the sending request, with the
        turns stored before the question; the strategy lab calls it with an older message's
        history to replay it. Raises `InvalidInput` with a sentence when the question
        cannot fit. `parley.memory.testing.check_strategy` checks the rules.
        """
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
