"""Shared fixtures. Every test gets its own data directory; nothing reaches the internet."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.background import BackgroundWork
from parley.core.config import ProviderChoice, Settings
from parley.core.domain import Principal, Role
from parley.fakes.anthropic_server import FakeAnthropic
from parley.retrieval.vector_store import forget_clients
from parley.store.db import Database
from parley.store.migrate import upgrade
from parley.wiring.factories import open_database
from parley.wiring.services import Services, build_services
from tests.chroma_server import chroma_url  # noqa: F401 - a fixture shared by the suite
from tests.support import ROOT

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# CI explores the same examples on every run (a red build always means a change broke
# something); developers' runs stay random and may find new cases.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

SUMMARY_LINES: list[str] = []  # figures tests report (e.g. the chaos completion rate)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SUMMARY_LINES:
        terminalreporter.section("Parley figures")
        for line in SUMMARY_LINES:
            terminalreporter.write_line(line)


os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer's key, .env or settings leak into a test."""
    for name in list(os.environ):
        if name.startswith(("PARLEY_", "ANTHROPIC_", "OTEL_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PARLEY_DATA_DIR", str(tmp_path / "data"))
    # Unit, page and CLI tests run without the embedding model; memory tests opt in.
    monkeypatch.setenv("PARLEY_MEMORY_STRATEGY", "token_window")
    (tmp_path / "no-secrets").mkdir()
    monkeypatch.setenv("PARLEY_SECRETS_DIR", str(tmp_path / "no-secrets"))


@pytest.fixture(autouse=True)
def close_chroma_clients() -> Iterator[None]:
    """Each test's embedded Chroma folders are closed after it: their files stay open
    otherwise, and a long run reaches the process's limit of open files."""
    yield
    forget_clients()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Titles are off by default: a title call would take a scripted answer meant for a turn.
    # token_window keeps unit tests free of the embedding model; memory tests choose their own.
    return Settings(
        data_dir=tmp_path / "data",
        provider=ProviderChoice.LOCAL,
        model_titles=False,
        memory_strategy="token_window",
    )


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = open_database(settings)
    upgrade(db)
    yield db
    db.dispose()


@pytest.fixture
def scripted() -> ScriptedProvider:
    return ScriptedProvider()


@pytest.fixture
def services(settings: Settings, database: Database, scripted: ScriptedProvider) -> Services:
    del database  # migrated by its fixture
    return build_services(settings, provider=scripted, background=BackgroundWork(workers=0))


@pytest.fixture
def alice(services: Services) -> Principal:
    return services.accounts.create_user(ROOT, name="alice", password="alice-password")


@pytest.fixture
def bob(services: Services) -> Principal:
    return services.accounts.create_user(ROOT, name="bob", password="bob-password", role=Role.USER)


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def claude_env(monkeypatch: pytest.MonkeyPatch, fake_anthropic: FakeAnthropic) -> FakeAnthropic:
    """Point the whole app (settings read from the environment) at the fake server."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_anthropic.base_url)
    monkeypatch.setenv("PARLEY_ANTHROPIC_MAX_RETRIES", "0")
    monkeypatch.setenv("PARLEY_MODEL_TITLES", "false")
    return fake_anthropic
