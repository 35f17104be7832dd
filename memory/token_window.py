"""`token_window`: as many recent turns as fit the budget."""

from __future__ import annotations

from collections.abc import Sequence

from chat.providers.base import PromptMessage
from memory.base import ContextWindow, Turn, message_tokens
from parley.errors import InvalidInput
from parley.tokens import count_tokens


class TokenWindow:
    name = "token_window"

    def build(
        self, *, system: str, history: Sequence[Turn], question: str, budget: int
    ) -> ContextWindow:
        system_tokens = count_tokens(system)
        question_tokens = message_tokens(question)
        remaining = budget - system_tokens - question_tokens
        if remaining < 0:
            raise InvalidInput(
                "This message is too long for the model's context window; please shorten it."
            )
        chosen: list[Turn] = []
        for turn in reversed(history):
            cost = message_tokens(turn.content)
            if cost > remaining:
                break
            chosen.append(turn)
            remaining -= cost
        chosen.reverse()
        # A prompt must start with a user turn.
        while chosen and chosen[0].role != "user":
            chosen.pop(0)
        messages = tuple(PromptMessage(t.role, t.content) for t in chosen)
        return ContextWindow(
            system=system,
            messages=(*messages, PromptMessage("user", question)),
            turn_ids=tuple(t.id for t in chosen),
            section_tokens={
                "system": system_tokens,
                "recent": sum(message_tokens(t.content) for t in chosen),
                "question": question_tokens,
            },
        )
