"""Wiring: build every service from `Settings`, once per process (the page and the CLI alike)."""

from __future__ import annotations

from dataclasses import dataclass

from auth.accounts import AccountService
from chat.conversations import ConversationService
from chat.providers import ChatProvider, build_provider
from chat.service import ChatService
from memory.token_window import TokenWindow
from parley.config import Settings
from parley.errors import ConfigurationError
from store.db import Database
from store.migrate import is_current


@dataclass(frozen=True)
class Services:
    settings: Settings
    database: Database
    provider: ChatProvider
    accounts: AccountService
    conversations: ConversationService
    chat: ChatService


def build_services(settings: Settings, *, provider: ChatProvider | None = None) -> Services:
    """Everything the app needs. `provider` overrides the settings' choice (tests)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.resolved_database_url)
    if not is_current(database):
        raise ConfigurationError(
            "The database has no tables yet: run `parley db upgrade` (make run does it)."
        )
    provider = provider or build_provider(settings)
    return Services(
        settings=settings,
        database=database,
        provider=provider,
        accounts=AccountService(database),
        conversations=ConversationService(database),
        chat=ChatService(
            database=database, provider=provider, memory=TokenWindow(), settings=settings
        ),
    )
