"""Token accounting, cost per message, user and day, and per-user daily quotas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from chat.providers.scripted import ScriptedProvider
from chat.usage import cost_usd
from parley.config import ModelPrice
from parley.domain import MessageRole, Principal
from parley.errors import QuotaExceeded
from parley.llm import Usage
from store.models import Message
from tests.support import ROOT
from wiring.services import Services


def test_cost_prices_cache_reads_and_writes_apart() -> None:
    price = ModelPrice(input=3.0, output=15.0, cache_write=3.75, cache_read=0.3)
    usage = Usage(
        input_tokens=1_000_000,
        output_tokens=100_000,
        cache_creation_input_tokens=200_000,
        cache_read_input_tokens=1_000_000,
    )
    assert cost_usd(usage, price) == pytest.approx(3.0 + 1.5 + 0.75 + 0.3)


def test_price_lookup_takes_the_longest_prefix(services: Services) -> None:
    settings = services.settings
    settings.prices["claude-sonnet-5-5"] = ModelPrice(
        input=9, output=9, cache_write=9, cache_read=9
    )
    assert settings.price_for("claude-sonnet-5-5-20261101") == settings.prices["claude-sonnet-5-5"]
    assert settings.price_for("claude-sonnet-4-6") == settings.prices["claude-sonnet"]
    assert settings.price_for("gpt-x") is None


def test_each_answer_stores_usage_and_cost(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.model = "claude-haiku-test"
    list(services.chat.send(alice, None, "x" * 4000))
    with services.database.session() as session:
        user_row, answer = session.scalars(select(Message).order_by(Message.id)).all()
    assert user_row.estimated_input_tokens and user_row.estimated_input_tokens > 400
    assert answer.input_tokens and answer.output_tokens == 1
    haiku = services.settings.prices["claude-haiku"]
    expected = (answer.input_tokens * haiku.input + answer.output_tokens * haiku.output) / 1e6
    assert answer.cost_usd == pytest.approx(expected)


def test_usage_by_user_and_day(
    services: Services, scripted: ScriptedProvider, alice: Principal, bob: Principal
) -> None:
    scripted.model = "claude-sonnet-test"
    list(services.chat.send(alice, None, "one"))
    list(services.chat.send(alice, None, "two"))
    list(services.chat.send(bob, None, "three"))
    rows = services.usage.by_user_and_day(ROOT, days=1)
    assert [(r.user, r.messages) for r in rows] == [("alice", 2), ("bob", 1)]
    assert rows[0].day == datetime.now(UTC).date()
    assert rows[0].cost_usd > 0
    today = services.usage.today(alice)
    assert today.messages == 2 and today.tokens > 0


def test_message_quota_ends_with_the_reset_time(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    services.usage.set_quota(ROOT, alice.user_id, messages_per_day=2, tokens_per_day=None)
    list(services.chat.send(alice, None, "one"))
    list(services.chat.send(alice, None, "two"))
    with pytest.raises(QuotaExceeded) as caught:
        services.chat.send(alice, None, "three")
    assert "2 messages" in caught.value.user_message
    assert "resets at 00:00 UTC" in caught.value.user_message
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    assert caught.value.resets_at.date() == tomorrow
    assert len(scripted.requests) == 2
    with services.database.session() as session:
        contents = session.scalars(
            select(Message.content).where(Message.role == MessageRole.USER)
        ).all()
    assert contents == ["one", "two"]  # the refused message was not stored


def test_token_quota_and_override_back_to_default(
    services: Services, alice: Principal, bob: Principal
) -> None:
    services.usage.set_quota(ROOT, alice.user_id, messages_per_day=None, tokens_per_day=5)
    list(services.chat.send(alice, None, "a long enough question to use tokens"))
    with pytest.raises(QuotaExceeded, match="tokens"):
        services.chat.send(alice, None, "more")
    list(services.chat.send(bob, None, "bob is not limited"))  # others are unaffected
    services.usage.set_quota(
        ROOT, alice.user_id, messages_per_day=None, tokens_per_day=0
    )  # 0: no limit
    list(services.chat.send(alice, None, "now it works"))
    assert services.usage.quota(alice).tokens_per_day == 0


def test_yesterdays_use_does_not_count_today(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    services.usage.set_quota(ROOT, alice.user_id, messages_per_day=1, tokens_per_day=None)
    list(services.chat.send(alice, None, "yesterday"))
    with services.database.session() as session:
        for message in session.scalars(select(Message)):
            message.created_at = datetime.now(UTC) - timedelta(days=1)
    list(services.chat.send(alice, None, "today"))
    assert len(scripted.requests) == 2
