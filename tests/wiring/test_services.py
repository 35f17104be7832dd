"""`Services` makes each service when first asked for, once, whichever thread asks first."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections import Counter

import pytest

from parley.chat.conversation import service as chat_service
from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.background import BackgroundWork
from parley.core.config import Settings
from parley.retrieval import embeddings
from parley.store.db import Database
from parley.wiring import factories as factories_module
from parley.wiring.services import Services, build_services

ACTORS = 12


def lazy(settings: Settings) -> Services:
    return build_services(
        settings, provider=ScriptedProvider(), background=BackgroundWork(workers=0), eager=False
    )


def test_a_lazy_start_makes_nothing_until_asked(settings: Settings, database: Database) -> None:
    del database  # migrated by its fixture
    services = lazy(settings)
    try:
        # The start looks for calls metered while the database refused, and no further.
        made = {name for name in Services.part_names() if name in vars(services)}
        assert made == {"metering_outbox"}
        services.accounts.list_users  # noqa: B018 - asked for: made, with what it needs
        made = {name for name in Services.part_names() if name in vars(services)}
        assert made == {"metering_outbox", "accounts", "sessions"}
    finally:
        services.close()


def test_the_app_start_makes_every_part(services: Services) -> None:
    assert set(Services.part_names()) <= set(vars(services))


def test_many_threads_asking_at_once_share_one_chat_service(
    settings: Settings, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    del database
    services = lazy(settings)
    made: Counter[str] = Counter()
    real_init = chat_service.ChatService.__init__

    def counted(self: chat_service.ChatService, **kwargs: object) -> None:
        made["chat"] += 1
        real_init(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(chat_service.ChatService, "__init__", counted)
    start = threading.Barrier(ACTORS)
    got: list[object] = []

    def ask() -> None:
        start.wait()
        got.append(services.chat)

    threads = [threading.Thread(target=ask) for _ in range(ACTORS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(got) == ACTORS
        assert len({id(chat) for chat in got}) == 1
        assert made == Counter(chat=1)
        # What the chat service was made with is the one every other caller sees.
        assert services.chat is got[0] and services.provider is services.provider
    finally:
        services.close()


def test_one_embedder_per_process_when_many_threads_ask_at_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []

    class SlowEmbedder:
        def __init__(self, **_: object) -> None:
            time.sleep(0.05)  # a model's load, long enough for the others to ask
            made.append(threading.current_thread().name)

    monkeypatch.setattr(embeddings, "MiniLMEmbedder", SlowEmbedder)
    monkeypatch.setattr(factories_module, "_EMBEDDERS", {})
    start = threading.Barrier(ACTORS)
    got: list[object] = []

    def ask() -> None:
        start.wait()
        got.append(factories_module.shared_embedder(settings))

    threads = [threading.Thread(target=ask) for _ in range(ACTORS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(made) == 1
    assert len(got) == ACTORS and len({id(e) for e in got}) == 1


def test_the_periodic_work_of_services_dropped_unclosed_ends(
    settings: Settings, database: Database
) -> None:
    """The app's services tick (settle drafts, sweep); a set dropped without `close`
    (a test's, a script's) must let its pool go, so that each ticker ends when it next
    wakes (tests/core/test_background.py shows a ticker ending with its pool)."""
    del database  # migrated by its fixture
    services = build_services(settings, provider=ScriptedProvider(), background=BackgroundWork())
    names = {t.name for t in threading.enumerate()}
    assert {"parley-every-settle drafts", "parley-every-sweep"} <= names
    services.background.drain(10)
    pool = weakref.ref(services.background)
    del services
    gc.collect()
    assert pool() is None, [type(r).__name__ for r in gc.get_referrers(pool())]
