"""What a model call costs: the settings' price table (US dollars per million tokens,
cache writes and reads priced apart). Reads no database."""

from __future__ import annotations

import logging

from parley.core.config import ModelPrice, Settings
from parley.core.llm import Usage

log = logging.getLogger(__name__)


def cost_usd(usage: Usage, price: ModelPrice) -> float:
    return (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_creation_input_tokens * price.cache_write
        + usage.cache_read_input_tokens * price.cache_read
    ) / 1_000_000


class Pricing:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def price(self, model: str) -> ModelPrice | None:
        price = self._settings.price_for(model)
        if price is None:
            log.warning("No price for model %s; its cost is recorded as 0.", model)
        return price

    def cost(self, model: str, usage: Usage, *, batch: bool = False) -> float:
        """What `usage` cost on `model`; `batch`: at the batch price (a share of it)."""
        price = self.price(model)
        full = cost_usd(usage, price) if price else 0.0
        return full * self._settings.batch.price_factor if batch else full

    def estimate_cost(self, model: str, *, input_tokens: int, output_tokens: int = 0) -> float:
        return self.cost(model, Usage(input_tokens=input_tokens, output_tokens=output_tokens))


__all__ = ["Pricing", "cost_usd"]
