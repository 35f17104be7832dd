"""Memory strategies: how stored history becomes a bounded prompt.

This package file is memory's public API: a strategy plug-in imports from here (and
tests itself with `parley.memory.testing`), never from a module behind it. Strategies
are found by name through the entry-point group `parley.memory_strategies`
(`parley.memory.registry`); docs/plugins.md shows how to write one. Memory knows no chat
module and no provider SDK; model-written summaries come in through `Summarizer`.

    the contract       MemoryStrategy, ContextRequest, ContextWindow, Turn, RecalledItem
    what it may use    MemoryDeps: its options, summaries, summarizer, recall
    its options        a pydantic model as the strategy's `Options` (NoOptions: none)
    assembling         assemble, newest_that_fit, pack_by_score
    refusing           InvalidInput, too_long, HistoryTooLong (the history cannot fit at all)
    counting           count_tokens, message_tokens, turn_tokens, prompt_tokens,
                       summary_tokens, recalled_tokens
    summaries          RollingSummary, Summary, SummaryOptions, fit_summary, Summarizer,
                       ExtractiveSummarizer, SummaryStorage, SummaryStore, InMemorySummaryStore
    recall             RecallIndex, IndexedTurn, LazyTurns, indexed, indexed_history,
                       recall_or_nothing
    the registry       available, installed, StrategyRegistry, ENTRY_POINT_GROUP
"""

from parley.core.errors import HistoryTooLong, InvalidInput
from parley.core.tokens import count_tokens
from parley.memory.assembly import (
    assemble,
    group_label,
    neutralise,
    newest_that_fit,
    pack_by_score,
    prompt_tokens,
    recalled_tokens,
    render_recalled,
    request_boundary,
    summary_block,
    summary_tokens,
    too_long,
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
from parley.memory.options import NoOptions, OptionInfo, describe_options, env_variable
from parley.memory.registry import (
    ENTRY_POINT_GROUP,
    InstalledStrategy,
    MemoryDeps,
    StrategyFactory,
    StrategyRegistry,
    available,
    installed,
)
from parley.memory.summaries import (
    ExtractiveSummarizer,
    InMemorySummaryStore,
    RollingSummary,
    Summarizer,
    Summary,
    SummaryDraft,
    SummaryOptions,
    SummaryStorage,
    SummaryStore,
    fit_summary,
)
from parley.memory.vector_recall import indexed, indexed_history, recall_or_nothing
from parley.retrieval.turn_recall import IndexedTurn, LazyTurns, RecallIndex

__all__ = [
    "ENTRY_POINT_GROUP",
    "ContextRequest",
    "ContextWindow",
    "ExtractiveSummarizer",
    "HistoryTooLong",
    "InMemorySummaryStore",
    "IndexedTurn",
    "InstalledStrategy",
    "InvalidInput",
    "LazyTurns",
    "MemoryDeps",
    "MemoryStrategy",
    "NoOptions",
    "OptionInfo",
    "RecallIndex",
    "RecalledItem",
    "RollingSummary",
    "StrategyFactory",
    "StrategyRegistry",
    "Summarizer",
    "Summary",
    "SummaryDraft",
    "SummaryOptions",
    "SummaryStorage",
    "SummaryStore",
    "Turn",
    "assemble",
    "available",
    "count_tokens",
    "describe_options",
    "env_variable",
    "fit_summary",
    "group_label",
    "indexed",
    "indexed_history",
    "installed",
    "message_tokens",
    "neutralise",
    "newest_that_fit",
    "pack_by_score",
    "prompt_tokens",
    "recall_or_nothing",
    "recalled_tokens",
    "render_recalled",
    "request_boundary",
    "summary_block",
    "summary_tokens",
    "too_long",
    "turn_tokens",
]
