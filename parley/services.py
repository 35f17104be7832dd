"""Wiring: build every service from `Settings`, once per process (the page and the CLI alike)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from auth.accounts import AccountService
from chat.conversations import ConversationService
from chat.limits import (
    ConcurrencyGate,
    DatabaseBucketStore,
    MemoryBucketStore,
    RateLimiter,
    limited_stream,
)
from chat.providers import ChatProvider, ChatRequest, StreamEvent, build_provider
from chat.service import Background, ChatService, run_in_thread
from chat.usage import UsageService
from memory.registry import MemoryDeps, StrategyRegistry
from memory.summaries import ExtractiveSummarizer, ModelSummarizer, Summarizer, SummaryStore
from parley.config import Settings
from parley.errors import ConfigurationError
from parley.logs import configure_logging
from parley.tokens import count_tokens
from retrieval.embeddings import MiniLMEmbedder
from retrieval.recall import RecallIndex
from retrieval.vector_store import VectorStore
from store.db import Database
from store.migrate import is_current


@dataclass(frozen=True)
class Services:
    settings: Settings
    database: Database
    provider: ChatProvider
    accounts: AccountService
    conversations: ConversationService
    usage: UsageService
    limiter: RateLimiter
    gate: ConcurrencyGate
    memory: StrategyRegistry
    chat: ChatService


def build_services(
    settings: Settings,
    *,
    provider: ChatProvider | None = None,
    background: Background = run_in_thread,
) -> Services:
    """Everything the app needs. `provider` overrides the settings' choice (tests)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    configure_logging(settings)
    database = Database(settings.resolved_database_url)
    if not is_current(database):
        raise ConfigurationError(
            "The database has no tables yet: run `parley db upgrade` (make run does it)."
        )
    shared = settings.limiter_store == "database"
    limiter = RateLimiter(
        requests_per_minute=settings.requests_per_minute,
        input_tokens_per_minute=settings.input_tokens_per_minute,
        output_tokens_per_minute=settings.output_tokens_per_minute,
        max_wait_s=settings.anthropic_max_retry_wait_s,
        store=DatabaseBucketStore(database) if shared else MemoryBucketStore(),
        clock=time.time if shared else time.monotonic,  # processes share wall time only
    )
    gate = ConcurrencyGate(settings.max_concurrent_calls, max_waiting=settings.max_queued_calls)
    explicit_provider = provider is not None
    provider = provider or build_provider(settings, on_headers=limiter.observe_headers)
    usage = UsageService(database, settings)
    # The embedded 135M model is no use as a summarizer or titler; Claude (or a provider a
    # caller chose on purpose) is.
    capable = explicit_provider or settings.uses_anthropic
    gate_and_limit = _limited(provider, gate, limiter)
    summarizer: Summarizer = (
        ModelSummarizer(
            gate_and_limit, model=provider.model, temperature=settings.temperature.summarize
        )
        if capable
        else ExtractiveSummarizer()
    )
    memory = StrategyRegistry(
        MemoryDeps(
            settings=settings,
            summaries=SummaryStore(database),
            summarizer=summarizer,
            recall_factory=lambda: build_recall_index(settings),
        )
    )
    return Services(
        settings=settings,
        database=database,
        provider=provider,
        accounts=AccountService(database),
        conversations=ConversationService(database, on_delete=memory.forget),
        usage=usage,
        limiter=limiter,
        gate=gate,
        memory=memory,
        chat=ChatService(
            database=database,
            provider=provider,
            memory=memory,
            settings=settings,
            usage=usage,
            limiter=limiter,
            gate=gate,
            background=background,
            model_titles=settings.model_titles and capable,
        ),
    )


def build_recall_index(settings: Settings) -> RecallIndex:
    """MiniLM embeddings persisted in Chroma: a server if `PARLEY_CHROMA_URL`, else files."""
    if settings.chroma_url:
        url = urlsplit(settings.chroma_url)
        if not url.hostname:
            raise ConfigurationError("PARLEY_CHROMA_URL must look like http://host:port.")
        store = VectorStore.http(url.hostname, url.port or 8000)
    else:
        store = VectorStore.persistent(settings.data_dir / "chroma")
    return RecallIndex(embedder=MiniLMEmbedder(threads=settings.embedding_threads), store=store)


def _limited(
    provider: ChatProvider, gate: ConcurrencyGate, limiter: RateLimiter
) -> Callable[[ChatRequest], Iterator[StreamEvent]]:
    """Background calls (summaries) wait in the same queue and buckets as chat turns."""

    def call(request: ChatRequest) -> Iterator[StreamEvent]:
        estimate = count_tokens(request.system) + sum(
            count_tokens(m.content) for m in request.messages
        )
        return limited_stream(provider, gate, limiter, request, estimate=estimate)

    return call
