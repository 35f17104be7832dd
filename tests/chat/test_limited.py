"""The limited provider: every model call passes the queue and the buckets and is metered."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import select

from chat.limited import LimitedProvider
from chat.limits import ConcurrencyGate, RateLimiter
from chat.providers.scripted import ScriptedProvider
from parley.background import BackgroundWork
from parley.domain import CallOutcome, Principal, Purpose
from parley.errors import ProviderUnavailable, StreamInterrupted
from parley.llm import (
    CallMeta,
    CallRecord,
    ChatRequest,
    PromptMessage,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
    estimate_tokens,
)
from parley.tokens import count_tokens
from store.models import UsageEntry
from tests.support import FakeClock
from wiring.services import Services, build_services


def limiter(clock: FakeClock | None = None, **limits: float) -> RateLimiter:
    clock = clock or FakeClock()
    return RateLimiter(
        requests_per_minute=limits.get("rpm", 600),
        input_tokens_per_minute=limits.get("itpm", 1e6),
        output_tokens_per_minute=limits.get("otpm", 1e6),
        max_wait_s=limits.get("max_wait", 1e9),
        clock=clock,
        sleep=clock.sleep,
    )


@dataclass
class FakeMeter:
    calls: list[CallRecord] = field(default_factory=list)

    def record(self, call: CallRecord) -> None:
        assert call.started_at <= call.ended_at
        self.calls.append(call)

    def seen(self) -> list[tuple[CallMeta, str, Usage, CallOutcome]]:
        return [(c.meta, c.model, c.usage, c.outcome) for c in self.calls]


class BrokenMeter:
    def record(self, call: CallRecord) -> None:
        raise RuntimeError(f"meter down ({call.meta.purpose}, {call.model}, {call.outcome})")


class KeptStreams:
    """Wraps a provider and keeps a reference to every stream it hands out, as an SDK's
    connection pool would, so a stream ends only when it is read to the end or closed."""

    def __init__(self, inner: ScriptedProvider) -> None:
        self.inner = inner
        self.kept: list[Iterator[StreamEvent]] = []
        self.ended: list[ChatRequest] = []

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def context_window(self) -> int:
        return self.inner.context_window

    @property
    def native_citations(self) -> bool:
        return self.inner.native_citations

    def count_tokens(self, request: ChatRequest) -> int:
        return self.inner.count_tokens(request)

    def _events(self, request: ChatRequest) -> Iterator[StreamEvent]:
        try:
            yield from self.inner.stream(request)
        finally:
            self.ended.append(request)

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        events = self._events(request)
        self.kept.append(events)
        return events


class ApiCounter(ScriptedProvider):
    """A provider whose API token count is a fixed figure, or an error."""

    def __init__(self, answer: int | Exception) -> None:
        super().__init__()
        self.answer = answer
        self.counted: list[ChatRequest] = []

    def count_tokens(self, request: ChatRequest) -> int:
        self.counted.append(request)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def request(
    meta: CallMeta | None = None, *, estimated_input_tokens: int | None = None
) -> ChatRequest:
    return ChatRequest(
        system="Answer briefly.",
        messages=(PromptMessage("user", "What is the capital of Portugal?"),),
        max_tokens=100,
        temperature=0.0,
        meta=meta or CallMeta(),
        estimated_input_tokens=estimated_input_tokens,
    )


def limited_provider(
    inner: ScriptedProvider | KeptStreams,
    *,
    gate: ConcurrencyGate | None = None,
    rate: RateLimiter | None = None,
    meter: FakeMeter | BrokenMeter | None = None,
    count_with_api: bool = False,
) -> LimitedProvider:
    return LimitedProvider(
        inner,
        gate=gate or ConcurrencyGate(1),
        limiter=rate or limiter(),
        meter=meter,
        count_with_api=count_with_api,
    )


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.001)


# ---------------------------------------------------------------- metering


def test_each_stream_is_metered_once_by_purpose_user_and_conversation() -> None:
    scripted, meter = ScriptedProvider(), FakeMeter()
    provider = limited_provider(scripted, meter=meter)
    summary = CallMeta(Purpose.SUMMARY, user_id=7, conversation_id=3)
    title = CallMeta(Purpose.TITLE, user_id=8, conversation_id=4)
    scripted.enqueue("Lis", "bon")
    scripted.enqueue("Porto")

    first = list(provider.stream(request(summary)))
    assert text_of(first) == "Lisbon" and isinstance(first[-1], StreamEnd)
    done = CallOutcome.COMPLETE
    assert meter.seen() == [(summary, "scripted", first[-1].usage, done)]
    second = list(provider.stream(request(title)))
    assert text_of(second) == "Porto" and isinstance(second[-1], StreamEnd)
    assert meter.seen() == [
        (summary, "scripted", first[-1].usage, done),
        (title, "scripted", second[-1].usage, done),
    ]
    assert [call.usage.output_tokens for call in meter.calls] == [2, 1]


def test_a_failing_meter_costs_the_reader_nothing(caplog: pytest.LogCaptureFixture) -> None:
    scripted, gate = ScriptedProvider(), ConcurrencyGate(1)
    provider = limited_provider(scripted, gate=gate, meter=BrokenMeter())
    scripted.enqueue("still ", "answered")
    with caplog.at_level(logging.ERROR, logger="chat.limited"):
        events = list(provider.stream(request(CallMeta(Purpose.CHAT, 1, 2))))
    assert text_of(events) == "still answered"
    assert isinstance(events[-1], StreamEnd)  # the end still reaches the reader
    failures = [r for r in caplog.records if r.name == "chat.limited"]
    assert [r.getMessage() for r in failures] == ["Metering a chat call failed"]
    assert failures[0].exc_info is not None
    assert gate.busy == 0


# ---------------------------------------------------------------- buckets and the gate


def test_output_tokens_are_charged_to_the_limiter() -> None:
    clock = FakeClock()
    rate = limiter(clock, otpm=60)  # one output token a second
    scripted = ScriptedProvider()
    scripted.enqueue(*["word "] * 90)  # the scripted usage: one output token per chunk
    events = list(limited_provider(scripted, rate=rate).stream(request()))
    assert isinstance(events[-1], StreamEnd) and events[-1].usage.output_tokens == 90
    assert clock.slept == []
    rate.acquire(input_tokens=1)  # 90 charged to a bucket of 60: 30 s of debt
    assert sum(clock.slept) == pytest.approx(30.0)


def test_the_prompt_estimate_is_taken_from_the_input_bucket() -> None:
    clock = FakeClock()
    rate = limiter(clock, itpm=600)  # ten input tokens a second
    provider = limited_provider(ScriptedProvider(), rate=rate)
    list(provider.stream(request(estimated_input_tokens=600)))  # the whole bucket
    assert clock.slept == []
    list(provider.stream(request(estimated_input_tokens=100)))
    assert sum(clock.slept) == pytest.approx(10.0)


def test_a_reader_that_stops_early_frees_the_slot_for_the_next_caller() -> None:
    scripted, meter, gate = ScriptedProvider(), FakeMeter(), ConcurrencyGate(1)
    inner = KeptStreams(scripted)
    provider = limited_provider(inner, gate=gate, meter=meter)
    scripted.enqueue("one ", "two ", "three")
    scripted.enqueue("next ", "caller")
    first = request(CallMeta(Purpose.CHAT, 1, 1))
    early = provider.stream(first)
    assert next(early) == TextDelta("one ")
    assert gate.busy == 1

    positions: list[int] = []
    answers: list[list[StreamEvent]] = []
    second = threading.Thread(
        target=lambda: answers.append(
            list(provider.stream(request(CallMeta(Purpose.CHAT, 2, 2)), on_queue=positions.append))
        ),
        daemon=True,
    )
    second.start()
    try:
        wait_until(lambda: positions == [1], "the second caller waits first in line")
        assert gate.waiting == 1 and not answers

        early.close()  # the reader goes away mid-answer
        assert inner.ended[:1] == [first]  # the inner call was ended, not left open
        second.join(2)
        assert not second.is_alive(), "the slot was not given back"
    finally:
        early.close()
        second.join(2)
    assert [text_of(a) for a in answers] == ["next caller"]
    assert (gate.busy, gate.waiting) == (0, 0)
    # The abandoned call is metered too, as aborted, with the text it had produced.
    assert [(c.meta.user_id, c.outcome) for c in meter.calls] == [
        (1, CallOutcome.ABORTED),
        (2, CallOutcome.COMPLETE),
    ]
    assert meter.calls[0].usage.output_tokens == count_tokens("one ")


# ---------------------------------------------------------------- counting tokens


def test_count_tokens_is_the_local_estimate_by_default() -> None:
    inner = ApiCounter(12345)
    provider = limited_provider(inner)
    plain = request()
    assert provider.count_tokens(plain) == estimate_tokens(plain) > 0
    assert provider.count_tokens(request(estimated_input_tokens=77)) == 77
    assert inner.counted == []  # the API was never asked


def test_count_tokens_asks_the_api_when_configured() -> None:
    inner = ApiCounter(12345)
    plain = request()
    assert limited_provider(inner, count_with_api=True).count_tokens(plain) == 12345
    assert inner.counted == [plain]


def test_a_failed_api_count_falls_back_to_the_estimate(caplog: pytest.LogCaptureFixture) -> None:
    inner = ApiCounter(ProviderUnavailable("count endpoint down"))
    plain = request()
    with caplog.at_level(logging.INFO, logger="chat.limited"):
        counted = limited_provider(inner, count_with_api=True).count_tokens(plain)
    assert counted == estimate_tokens(plain)
    assert inner.counted == [plain]
    assert any("count_tokens failed" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- through the services


def model_calls(services: Services) -> list[tuple[Purpose, int | None, int | None, str]]:
    with services.database.session() as session:
        rows = session.scalars(select(UsageEntry).order_by(UsageEntry.id)).all()
        return [(r.purpose, r.user_id, r.conversation_id, r.model) for r in rows]


def test_a_chat_turn_is_recorded_as_a_chat_call(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    assert isinstance(services.provider, LimitedProvider)
    scripted.enqueue("Lisbon.")
    reply = services.chat.send(alice, None, "Capital of Portugal?")
    assert "".join(reply) == "Lisbon."
    assert model_calls(services) == [
        (Purpose.CHAT, alice.user_id, reply.conversation_id, "scripted")
    ]


def test_a_continued_answer_is_recorded_as_a_continuation(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue_error(StreamInterrupted(partial_text="Once upon "), chunks=["Once upon "])
    scripted.enqueue("a time.")
    reply = services.chat.send(alice, None, "Tell me a story")
    assert "".join(reply) == "Once upon a time."
    assert scripted.requests[-1].meta.purpose is Purpose.CONTINUATION
    continuations = [c for c in model_calls(services) if c[0] is Purpose.CONTINUATION]
    assert continuations == [
        (Purpose.CONTINUATION, alice.user_id, reply.conversation_id, "scripted")
    ]


def test_a_title_call_is_recorded_for_the_user(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    settings = services.settings.model_copy(update={"model_titles": True})
    services = build_services(settings, provider=scripted, background=BackgroundWork(workers=0))
    scripted.enqueue("Lisbon is lovely in spring.")
    scripted.enqueue('{"title": "Spring in Lisbon"}')
    reply = services.chat.send(alice, None, "Where should I go in April?")
    list(reply)
    assert services.conversations.get(alice, reply.conversation_id).title == "Spring in Lisbon"
    assert model_calls(services) == [
        (Purpose.CHAT, alice.user_id, reply.conversation_id, "scripted"),
        (Purpose.TITLE, alice.user_id, reply.conversation_id, "scripted"),
    ]
