"""Memory strategies: how stored history becomes a bounded prompt.

This package file is memory's public API: a strategy plugin imports from here only.
Strategies are found by name through the entry-point group `parley.memory_strategies`
(`parley.memory.registry`); see docs/ARCHITECTURE.md for how to write one. Memory knows no
chat module and no provider SDK; model-written summaries come in through `Summarizer`.
"""

from parley.memory.assembly import (
    assemble,
    neutralise,
    newest_that_fit,
    pack_by_score,
    request_boundary,
    summary_block,
    summary_tokens,
)
from parley.memory.base import (
    ContextRequest,
    ContextWindow,
    MemoryStrategy,
    RecalledItem,
    Turn,
    message_tokens,
    turn_tokens,
)
from parley.memory.registry import MemoryDeps, StrategyRegistry, available
from parley.memory.summaries import (
    ExtractiveSummarizer,
    RollingSummary,
    Summarizer,
    SummaryDraft,
    SummaryStore,
)

__all__ = [
    "ContextRequest",
    "ContextWindow",
    "ExtractiveSummarizer",
    "MemoryDeps",
    "MemoryStrategy",
    "RecalledItem",
    "RollingSummary",
    "StrategyRegistry",
    "Summarizer",
    "SummaryDraft",
    "SummaryStore",
    "Turn",
    "assemble",
    "available",
    "message_tokens",
    "newest_that_fit",
    "pack_by_score",
    "neutralise",
    "request_boundary",
    "summary_block",
    "summary_tokens",
    "turn_tokens",
]
