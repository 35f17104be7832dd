"""Each strategy's own options: from the environment, and per conversation."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.background import BackgroundWork
from parley.core.config import Settings, get_settings
from parley.core.domain import Principal, Role
from parley.core.errors import ConfigurationError, InvalidInput, NotFound, PermissionDenied
from parley.memory import (
    ExtractiveSummarizer,
    MemoryDeps,
    NoOptions,
    RecallIndex,
    StrategyRegistry,
    SummaryStore,
)
from parley.retrieval.embeddings import HashingEmbedder
from parley.store.db import Database
from parley.store.models import Conversation
from parley.wiring.services import Services, build_services
from tests.memory.test_strategies import ask, chat_turns
from tests.support import ROOT


def registry_with(database: Database, settings: Settings) -> StrategyRegistry:
    deps = MemoryDeps(
        summaries=SummaryStore(database),
        summarizer=ExtractiveSummarizer(),
        recall_factory=lambda: RecallIndex(embedder=HashingEmbedder(), store=None),
    )
    return StrategyRegistry(
        deps, default=settings.memory_strategy, options=settings.memory_options()
    )


def kept(registry: StrategyRegistry, name: str = "window") -> tuple[int, ...]:
    return ask(registry.get(name), 1, chat_turns(20), "q", 5000).turn_ids


@pytest.fixture
def admin(services: Services) -> Principal:
    return services.accounts.create_user(
        ROOT, name="root", password="root-password", role=Role.ADMIN
    )


# --- the environment --------------------------------------------------------------------


def test_an_option_comes_from_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch, database: Database
) -> None:
    monkeypatch.setenv("PARLEY_MEMORY__WINDOW__TURNS", "2")
    monkeypatch.setenv("PARLEY_MEMORY__HYBRID__RECENT_TURNS", "3")
    settings = get_settings()
    assert settings.memory_options() == {
        "window": {"turns": "2"},
        "hybrid": {"recent_turns": "3"},
    }
    registry = registry_with(database, settings)
    assert kept(registry) == (19, 20)
    assert registry.options("hybrid").model_dump()["recent_turns"] == 3
    assert registry.options("token_window") == NoOptions()


def test_the_flat_setting_of_earlier_versions_still_works_and_yields_to_the_new_one(
    monkeypatch: pytest.MonkeyPatch, database: Database
) -> None:
    monkeypatch.setenv("PARLEY_MEMORY_WINDOW_TURNS", "4")
    monkeypatch.setenv("PARLEY_MEMORY_FOLD_TOKENS", "500")
    assert kept(registry_with(database, get_settings())) == (17, 18, 19, 20)
    registry = registry_with(database, get_settings())
    assert registry.options("summary_buffer").model_dump()["fold_tokens"] == 500
    assert registry.options("hybrid").model_dump()["fold_tokens"] == 500
    monkeypatch.setenv("PARLEY_MEMORY__WINDOW__TURNS", "2")
    assert kept(registry_with(database, get_settings())) == (19, 20)


def test_the_defaults_hold_without_any_setting(database: Database) -> None:
    registry = registry_with(database, get_settings())
    assert kept(registry) == tuple(range(15, 21))  # six turns
    assert registry.options("summary_buffer").model_dump() == {
        "fold_tokens": 3000,
        "summary_tokens": 400,
    }


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("PARLEY_MEMORY__WINDOW__TURNS", "many", r"PARLEY_MEMORY__WINDOW__TURNS is not valid"),
        ("PARLEY_MEMORY__WINDOW__TURNS", "0", r"PARLEY_MEMORY__WINDOW__TURNS is not valid.*1"),
        (
            "PARLEY_MEMORY__WINDOW__TURN",
            "3",
            r"PARLEY_MEMORY__WINDOW__TURN is not an option of the memory strategy 'window' "
            r"\(its options: turns\)",
        ),
        ("PARLEY_MEMORY__TOKEN_WINDOW__TURNS", "3", r"its options: none"),
        ("PARLEY_MEMORY__NOPE__TURNS", "3", r"'nope' that is not installed"),
    ],
)
def test_a_bad_environment_value_is_a_configuration_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    database: Database,
    scripted: ScriptedProvider,
    variable: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=message) as caught:
        registry_with(database, get_settings())
    assert caught.value.user_message == str(caught.value)
    with pytest.raises(ConfigurationError, match=message):  # the services refuse to start
        build_services(get_settings(), provider=scripted, background=BackgroundWork(workers=0))


# --- per conversation -------------------------------------------------------------------


def exchange(services: Services, who: Principal, conversation_id: int | None, text: str) -> int:
    reply = services.chat.send(who, conversation_id, text)
    list(reply)
    return reply.conversation_id


@pytest.fixture
def window_services(settings: Settings, database: Database, scripted: ScriptedProvider) -> Services:
    del database
    chosen = settings.model_copy(update={"memory_strategy": "window"})
    return build_services(chosen, provider=scripted, background=BackgroundWork(workers=0))


def test_a_conversation_keeps_its_own_options(
    window_services: Services, database: Database
) -> None:
    services = window_services
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    root = services.accounts.create_user(
        ROOT, name="root", password="root-password", role=Role.ADMIN
    )
    tuned = exchange(services, alice, None, "first")
    other = exchange(services, alice, None, "elsewhere")
    for text in ("second", "third", "fourth"):
        exchange(services, alice, tuned, text)
        exchange(services, alice, other, text)
    assert services.lab.set_memory_options(root, tuned, "window", {"turns": "2"}) == {"turns": 2}
    with database.session() as session:
        stored = session.get(Conversation, tuned)
        assert stored is not None and stored.memory_options == {"window": {"turns": 2}}
    narrow = services.chat.send(alice, tuned, "fifth")
    list(narrow)
    wide = services.chat.send(alice, other, "fifth")
    list(wide)
    assert len(narrow.context.turn_ids) == 2
    assert len(wide.context.turn_ids) == 6  # the environment's (the default) for the other
    shown = services.lab.options_of(root, tuned, "window")
    assert shown.problem is None and shown.overrides == {"turns": 2}
    (row,) = shown.rows
    assert (row.name, row.type, row.default, row.environment, row.conversation) == (
        "turns",
        "int",
        6,
        6,
        2,
    )
    # Back to the environment's.
    assert services.lab.set_memory_options(root, tuned, "window", None) == {}
    with database.session() as session:
        stored = session.get(Conversation, tuned)
        assert stored is not None and stored.memory_options is None
    assert services.lab.options_of(root, tuned, "window").overrides == {}


def test_options_are_checked_when_written_and_nothing_is_lost(
    services: Services, alice: Principal, admin: Principal, database: Database
) -> None:
    cid = exchange(services, alice, None, "hello")
    services.lab.set_memory_options(admin, cid, "hybrid", {"recent_turns": 2})
    for values, message in [
        ({"turns": 0}, r"'window': turns: Input should be greater than or equal to 1"),
        ({"turns": "many"}, r"turns: Input should be a valid integer"),
        ({"size": 3}, r"no option 'size' \(its options: turns\)"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            services.lab.set_memory_options(admin, cid, "window", values)
    with pytest.raises(InvalidInput, match="no memory strategy named 'nope'"):
        services.lab.set_memory_options(admin, cid, "nope", {"turns": 1})
    with database.session() as session:
        stored = session.get(Conversation, cid)
        assert stored is not None and stored.memory_options == {"hybrid": {"recent_turns": 2}}
    with pytest.raises(PermissionDenied):
        services.lab.set_memory_options(alice, cid, "window", {"turns": 2})
    with pytest.raises(PermissionDenied):
        services.lab.options_of(alice, cid, "window")
    with pytest.raises(NotFound):
        services.lab.set_memory_options(admin, 999, "window", {"turns": 2})
    with pytest.raises(NotFound):
        services.lab.options_of(admin, 999, "window")


def test_stored_options_that_no_longer_suit_are_a_sentence_and_are_kept(
    window_services: Services, database: Database
) -> None:
    services = window_services
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    root = services.accounts.create_user(
        ROOT, name="root", password="root-password", role=Role.ADMIN
    )
    cid = exchange(services, alice, None, "hello")
    # As if a plug-in's new version no longer took what an admin chose with the old one.
    with database.session() as session:
        session.execute(
            update(Conversation)
            .where(Conversation.id == cid)
            .values(memory_options={"window": {"turns": 0, "stale": True}})
        )
    with pytest.raises(InvalidInput, match="no longer valid") as caught:
        services.chat.send(alice, cid, "again")
    assert "'window'" in caught.value.user_message
    shown = services.lab.options_of(root, cid, "window")
    assert shown.problem is not None and "no longer valid" in shown.problem
    assert shown.overrides == {"turns": 0}
    with database.session() as session:
        stored = session.get(Conversation, cid)
        assert stored is not None
        assert stored.memory_options == {"window": {"turns": 0, "stale": True}}
    services.lab.set_memory_options(root, cid, "window", {"turns": 3})  # an admin mends it
    exchange(services, alice, cid, "again")


@pytest.mark.usefixtures("database")
def test_observe_uses_the_conversations_options_too(
    settings: Settings, scripted: ScriptedProvider
) -> None:
    chosen = settings.model_copy(update={"memory_strategy": "summary_buffer"})
    services = build_services(chosen, provider=scripted, background=BackgroundWork(workers=0))
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    root = services.accounts.create_user(
        ROOT, name="root", password="root-password", role=Role.ADMIN
    )
    words = "We planned the voyage from the northern harbour with three barrels of apples. "
    tuned = exchange(services, alice, None, words)
    plain = exchange(services, alice, None, words)
    services.lab.set_memory_options(
        root, tuned, "summary_buffer", {"fold_tokens": 200, "summary_tokens": 60}
    )
    for _ in range(6):
        exchange(services, alice, tuned, words * 2)
        exchange(services, alice, plain, words * 2)
    summaries = services.memory.deps.summaries
    assert summaries.latest(tuned) is not None  # folded past 200 tokens
    assert summaries.latest(plain) is None  # 3,000 by default: nothing to fold yet
