"""Token accounting, cost per message, user and day, and per-user daily quotas."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from parley.chat.gateway.pricing import cost_usd
from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.chat.gateway.quotas import RESERVATION_LIFETIME
from parley.core.background import BackgroundWork
from parley.core.config import ModelPrice
from parley.core.domain import CallOutcome, MessageRole, Principal, Purpose
from parley.core.errors import QuotaExceeded
from parley.core.llm import Usage
from parley.store.models import Message, QuotaReservation, UsageEntry
from parley.wiring.services import Services, build_services
from tests.support import ROOT


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
    with services._database.session() as session:
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
    today = services.quotas.today(alice)
    assert today.messages == 2 and today.tokens > 0


def test_message_quota_ends_with_the_reset_time(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    services.quotas.set_quota(ROOT, alice.user_id, messages_per_day=2, tokens_per_day=None)
    list(services.chat.send(alice, None, "one"))
    list(services.chat.send(alice, None, "two"))
    with pytest.raises(QuotaExceeded) as caught:
        services.chat.send(alice, None, "three")
    assert "2 messages" in caught.value.user_message
    assert "resets at 00:00 UTC" in caught.value.user_message
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    assert caught.value.resets_at.date() == tomorrow
    assert len(scripted.requests) == 2
    with services._database.session() as session:
        contents = session.scalars(
            select(Message.content).where(Message.role == MessageRole.USER)
        ).all()
    assert contents == ["one", "two"]  # the refused message was not stored


def test_token_quota_reserves_the_prompt_and_the_output_cap(
    services: Services, scripted: ScriptedProvider, alice: Principal, bob: Principal
) -> None:
    cap = services.settings.max_output_tokens
    list(services.chat.send(bob, None, "a question"))  # bob is not limited
    with services._database.session() as session:
        prompt = session.scalar(select(Message.estimated_input_tokens).limit(1))
    assert prompt
    # Room for exactly one such message (its prompt and the longest answer), not two.
    quota = cap + prompt + 2
    services.quotas.set_quota(ROOT, alice.user_id, messages_per_day=None, tokens_per_day=quota)
    list(services.chat.send(alice, None, "a question"))
    used = services.quotas.today(alice).tokens
    assert 0 < used < quota
    with pytest.raises(QuotaExceeded) as caught:
        services.chat.send(alice, None, "a question")
    assert f"{quota - used:,} of today's {quota:,} are left" in caught.value.user_message
    services.quotas.set_quota(ROOT, alice.user_id, messages_per_day=None, tokens_per_day=0)
    list(services.chat.send(alice, None, "now it works"))  # 0: no limit
    assert services.quotas.quota(alice).tokens_per_day == 0
    assert len(scripted.requests) == 3


def test_yesterdays_use_does_not_count_today(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    services.quotas.set_quota(ROOT, alice.user_id, messages_per_day=1, tokens_per_day=None)
    list(services.chat.send(alice, None, "yesterday"))
    with services._database.session() as session:
        for entry in session.scalars(select(UsageEntry)):
            entry.ended_at = datetime.now(UTC) - timedelta(days=1)
    list(services.chat.send(alice, None, "today"))
    assert len(scripted.requests) == 2


def test_deleting_every_conversation_gives_no_quota_back(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    services.quotas.set_quota(ROOT, alice.user_id, messages_per_day=2, tokens_per_day=None)
    for text in ("one", "two"):
        list(services.chat.send(alice, None, text))
    before = services.quotas.today(alice)
    for conversation in services.conversations.list_for(alice):
        services.conversations.delete(alice, conversation.id)
    assert services.conversations.list_for(alice) == []
    with pytest.raises(QuotaExceeded, match="2 messages"):
        services.chat.send(alice, None, "three")
    assert services.quotas.today(alice) == before
    rows = services.usage.by_user_and_day(ROOT, days=1)
    assert [(r.user, r.messages) for r in rows] == [("alice", 2)]
    assert len(scripted.requests) == 2


def test_summaries_and_titles_count_against_the_owner(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    settings = services.settings.model_copy(update={"model_titles": True})
    services = build_services(settings, provider=scripted, background=BackgroundWork(workers=0))
    scripted.enqueue("Lisbon is lovely in spring.")
    scripted.enqueue('{"title": "Spring in Lisbon"}')
    list(services.chat.send(alice, None, "Where should I go in April?"))
    with services._database.session() as session:
        entries = session.scalars(select(UsageEntry).order_by(UsageEntry.id)).all()
        by_purpose = {e.purpose: e.tokens for e in entries}
        assert {e.user_name for e in entries} == {"alice"}
    assert set(by_purpose) == {Purpose.CHAT, Purpose.TITLE}
    today = services.quotas.today(alice)
    assert today.messages == 1  # the title is no message of hers,
    assert today.tokens == sum(by_purpose.values())  # but its tokens are her use


def test_an_aborted_answer_is_charged(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue("one ", "two ", "three ", "four")
    reply = services.chat.send(alice, None, "count to four")
    chunks = iter(reply)
    assert next(chunks) == "one "
    reply.close()  # the reader leaves: Stop, Ctrl-C, a closed tab
    with services._database.session() as session:
        (entry,) = session.scalars(select(UsageEntry)).all()
    assert (entry.purpose, entry.outcome) == (Purpose.CHAT, CallOutcome.ABORTED)
    assert entry.input_tokens == reply.estimated_input_tokens > 0
    assert entry.output_tokens >= 1 and entry.cost_usd >= 0
    assert services.quotas.today(alice).messages == 1


def test_concurrent_sends_cannot_overshoot_the_quota(services: Services, alice: Principal) -> None:
    """Eight tabs send at once with room for three messages: three are answered."""
    services.quotas.set_quota(ROOT, alice.user_id, messages_per_day=3, tokens_per_day=None)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def tab(n: int) -> None:
        barrier.wait()
        try:
            reply = services.chat.send(alice, None, f"tab {n}")
            time.sleep(0.05)  # the answer streams for a while: the others arrive meanwhile
            list(reply)
            result = "answered"
        except QuotaExceeded:
            result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=tab, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["answered"] * 3 + ["refused"] * 5
    assert services.quotas.today(alice).messages == 3
    with services._database.session() as session:
        assert session.scalars(select(QuotaReservation)).all() == []  # all given back


def test_a_reservation_left_by_a_dead_process_expires(services: Services, alice: Principal) -> None:
    services.quotas.set_quota(ROOT, alice.user_id, messages_per_day=1, tokens_per_day=None)
    now = datetime.now(UTC)
    held = services.quotas.reserve(alice, tokens=10, now=now)
    assert held is not None
    with pytest.raises(QuotaExceeded):
        services.quotas.reserve(alice, tokens=10, now=now + timedelta(minutes=1))
    later = now + RESERVATION_LIFETIME + timedelta(seconds=1)
    assert services.quotas.reserve(alice, tokens=10, now=later) is not None


def test_an_answer_never_started_frees_its_quota(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    """The page reran between the send and the first chunk: nothing is held for 15 minutes."""
    services.quotas.set_quota(ROOT, alice.user_id, messages_per_day=1, tokens_per_day=None)
    reply = services.chat.send(alice, None, "never read")
    with services._database.session() as session:
        assert len(session.scalars(select(QuotaReservation)).all()) == 1
    reply.close()
    assert reply.result is not None and reply.result.error == (
        "The answer was stopped before it began."
    )
    with services._database.session() as session:
        assert session.scalars(select(QuotaReservation)).all() == []
        stored = session.scalars(select(Message).order_by(Message.id)).all()
    assert [m.status.value for m in stored] == ["complete", "error"]  # the question is kept
    assert scripted.requests == []  # no call was made
    list(services.chat.send(alice, None, "the one message of the day"))  # room is back
