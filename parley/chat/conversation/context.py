"""The prompt for a conversation: its strategy, its budget, and what it will cost.

Shared by the turn lifecycle (`conversation.service`) and the strategy lab
(`conversation.lab`), so both build exactly the context the model would get.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from parley.chat.gateway.pricing import Pricing
from parley.core.config import Settings
from parley.core.errors import InvalidInput
from parley.core.llm import ChatProvider
from parley.core.records import DocumentSource, Provenance, RecalledTurn
from parley.memory import ContextRequest, ContextWindow, StrategyRegistry, Turn
from parley.memory.registry import LOOK_UP, LookUp

log = logging.getLogger(__name__)

# cl100k counts run a little below Claude's and SmolLM2's tokenizers; keep headroom.
BUDGET_MARGIN = 0.9


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the next message is expected to cost, before it is sent."""

    input_tokens: int
    input_cost_usd: float
    max_output_cost_usd: float


class ContextBuilder:
    def __init__(
        self,
        *,
        provider: ChatProvider,
        memory: StrategyRegistry,
        settings: Settings,
        pricing: Pricing,
    ) -> None:
        self._provider = provider
        self._memory = memory
        self._settings = settings
        self._pricing = pricing

    @property
    def memory(self) -> StrategyRegistry:
        return self._memory

    def budget(self) -> int:
        """Prompt tokens allowed: the model's context minus the answer's reserve, less a margin,
        and at most `memory_prompt_tokens` (so a turn's cost stops growing with the history)."""
        model_room = (
            self._provider.context_window - self._settings.max_output_tokens
        ) * BUDGET_MARGIN
        return min(int(model_room), self._settings.memory_prompt_tokens)

    def prepare(self, question: str) -> None:
        """Start, in the background, what `build` will need for `question`."""
        self._memory.prepare(question)

    def build(
        self,
        *,
        conversation_id: int,
        strategy: str | None,
        history: Sequence[Turn],
        question: str,
        budget: int | None = None,
        options: Mapping[str, Any] | None | LookUp = LOOK_UP,
    ) -> ContextWindow:
        """The context `strategy` (None: the default) builds, within the budget (or less);
        `options` the conversation's stored memory options, when the caller has its row."""
        limit = self.budget()
        return self._memory.resolve(strategy, options).build(
            ContextRequest(
                conversation_id=conversation_id,
                system=self._settings.system_prompt,
                history=history,
                question=question,
                budget=min(budget or limit, limit),
            )
        )

    def estimate(self, context: ContextWindow) -> Estimate:
        model = self._provider.model
        return Estimate(
            input_tokens=context.total_tokens,
            input_cost_usd=self._pricing.estimate_cost(model, input_tokens=context.total_tokens),
            max_output_cost_usd=self._pricing.estimate_cost(
                model, input_tokens=0, output_tokens=self._settings.max_output_tokens
            ),
        )

    def is_free(self) -> bool:
        """True when the model costs nothing (the local one): no estimate worth showing."""
        price = self._pricing.price(self._provider.model)
        return price is None or not (price.input or price.output)


def provenance_of(window: ContextWindow, sources: Sequence[DocumentSource] = ()) -> Provenance:
    """What went into a prompt, as kept with its answer: the strategy's choices and the
    document passages the chat layer added (`Passages.sources`). `InvalidInput` if a
    strategy reported what cannot be kept (`parley.memory.testing` checks for it)."""
    try:
        return Provenance(
            strategy=window.strategy,
            turn_ids=list(window.turn_ids),
            summary_version=window.summary_version,
            summary_covers=window.summary_covers,
            recalled=[
                RecalledTurn(turn_id=r.turn_id, score=round(r.score, 4), suspect=r.suspect)
                for r in window.recalled
            ],
            sources=list(sources),
            section_tokens=dict(window.section_tokens),
            total_tokens=window.total_tokens,
            images=[
                i.image_id for m in window.messages for i in m.images if i.image_id is not None
            ],
        )
    except ValidationError as exc:
        log.error(
            "Memory strategy %r reported a prompt that cannot be kept: %s", window.strategy, exc
        )
        raise InvalidInput(
            f"The memory strategy `{window.strategy}` built a prompt Parley cannot record; "
            "nothing was sent. Please try again, or use another strategy."
        ) from None


__all__ = ["BUDGET_MARGIN", "ContextBuilder", "Estimate", "provenance_of"]
