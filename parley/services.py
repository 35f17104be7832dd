"""Wiring: build every service from `Settings`, once per process (the page and the CLI alike)."""

from __future__ import annotations

from dataclasses import dataclass

from auth.accounts import AccountService
from chat.conversations import ConversationService
from chat.limits import ConcurrencyGate, RateLimiter
from chat.providers import ChatProvider, build_provider
from chat.service import Background, ChatService, run_in_thread
from chat.usage import UsageService
from memory.token_window import TokenWindow
from parley.config import Settings
from parley.errors import ConfigurationError
from parley.logs import configure_logging
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
    limiter = RateLimiter(
        requests_per_minute=settings.requests_per_minute,
        input_tokens_per_minute=settings.input_tokens_per_minute,
        output_tokens_per_minute=settings.output_tokens_per_minute,
        max_wait_s=settings.anthropic_max_retry_wait_s,
    )
    gate = ConcurrencyGate(settings.max_concurrent_calls)
    provider = provider or build_provider(settings, on_headers=limiter.observe_headers)
    usage = UsageService(database, settings)
    return Services(
        settings=settings,
        database=database,
        provider=provider,
        accounts=AccountService(database),
        conversations=ConversationService(database),
        usage=usage,
        limiter=limiter,
        gate=gate,
        chat=ChatService(
            database=database,
            provider=provider,
            memory=TokenWindow(),
            settings=settings,
            usage=usage,
            limiter=limiter,
            gate=gate,
            background=background,
        ),
    )
