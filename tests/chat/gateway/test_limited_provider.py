"""The limited provider: every model call passes the queue and the buckets and is metered."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from parley.chat.gateway.admission import ConcurrencyGate, RateLimiter
from parley.chat.gateway.limited_provider import METER_RETRY_WAITS_S, LimitedProvider
from parley.chat.gateway.outbox import MeteringOutbox
from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.background import BackgroundWork
from parley.core.domain import CallOutcome, Principal, Purpose
from parley.core.errors import ProviderUnavailable, StorageUnavailable, StreamInterrupted
from parley.core.llm import (
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
from parley.core.tokens import count_tokens
from parley.store.models import UsageEntry
from parley.wiring.services import Services, build_services
from tests.support import ROOT, FakeClock


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


@dataclass
class FlakyMeter:
    """Refuses the first `failures` writes (a locked database), then records."""

    failures: int
    calls: list[CallRecord] = field(default_factory=list)
    tries: int = 0

    def record(self, call: CallRecord) -> None:
        self.tries += 1
        if self.tries <= self.failures:
            raise StorageUnavailable("database is locked")
        self.calls.append(call)


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

    @property
    def takes_images(self) -> bool:
        return self.inner.takes_images

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
    meter: FakeMeter | BrokenMeter | FlakyMeter | None = None,
    count_with_api: bool = False,
    outbox: MeteringOutbox | None = None,
    waits: list[float] | None = None,
) -> LimitedProvider:
    return LimitedProvider(
        inner,
        gate=gate or ConcurrencyGate(1),
        limiter=rate or limiter(),
        meter=meter,
        outbox=outbox,
        count_with_api=count_with_api,
        sleep=(waits if waits is not None else []).append,
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


def test_a_meter_that_refuses_for_a_moment_is_retried_with_backoff() -> None:
    scripted, meter, waits = ScriptedProvider(), FlakyMeter(failures=2), []
    provider = limited_provider(scripted, meter=meter, waits=waits)
    scripted.enqueue("answered")
    events = list(provider.stream(request(CallMeta(Purpose.CHAT, 1, 2))))
    assert text_of(events) == "answered"
    assert len(meter.calls) == 1 and meter.tries == 3
    assert waits == list(METER_RETRY_WAITS_S[:2])  # growing waits between attempts


def test_a_meter_that_stays_down_costs_the_reader_nothing_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scripted, gate = ScriptedProvider(), ConcurrencyGate(1)
    outbox = MeteringOutbox(tmp_path / "outbox")
    provider = limited_provider(scripted, gate=gate, meter=BrokenMeter(), outbox=outbox)
    scripted.enqueue("still ", "answered")
    scripted.enqueue("again")
    with caplog.at_level(logging.WARNING, logger="parley.chat.gateway.limited_provider"):
        events = list(provider.stream(request(CallMeta(Purpose.CHAT, 1, 2))))
        list(provider.stream(request(CallMeta(Purpose.TITLE, 1, 2))))
    assert text_of(events) == "still answered"
    assert isinstance(events[-1], StreamEnd)  # the end still reaches the reader
    assert gate.busy == 0
    assert outbox.waiting() == 2
    assert any("kept in the outbox" in r.getMessage() for r in caplog.records)
    # The database is back: a drain records both, in order, once.
    meter = FakeMeter()
    assert outbox.drain(meter) == 2
    assert [c.meta.purpose for c in meter.calls] == [Purpose.CHAT, Purpose.TITLE]
    assert meter.calls[0].usage == events[-1].usage  # type: ignore[union-attr]
    assert outbox.waiting() == 0 and outbox.drain(meter) == 0


def test_a_drain_that_fails_midway_keeps_the_rest(tmp_path: Path) -> None:
    outbox = MeteringOutbox(tmp_path / "outbox")
    calls = [
        CallRecord(CallMeta(Purpose.CHAT, 1, n), "m", Usage(n, n), CallOutcome.COMPLETE,
                   datetime.now(UTC), datetime.now(UTC))
        for n in range(3)
    ]  # fmt: skip
    for call in calls:
        outbox.put(call)
    flaky = FlakyMeter(failures=0)
    flaky.record(calls[0])  # the first was recorded before a crash: drained again
    half = FlakyMeter(failures=0)
    original = half.record

    def refuse_the_second(call: CallRecord) -> None:
        if call.meta.conversation_id == 1:
            raise StorageUnavailable("database is locked")
        original(call)

    half.record = refuse_the_second  # type: ignore[method-assign]
    assert outbox.drain(half) == 1 and outbox.waiting() == 2
    assert outbox.drain(FakeMeter()) == 2 and outbox.waiting() == 0


def test_calls_kept_while_others_drain_are_never_lost(tmp_path: Path) -> None:
    """Writers keep calls while drains run at the same time: every call is recorded
    exactly once (each call is a file of its own, claimed by rename)."""
    outbox, meter = MeteringOutbox(tmp_path / "outbox"), FakeMeter()
    kept = [
        CallRecord(CallMeta(Purpose.CHAT, 1, n), "m", Usage(n, 1), CallOutcome.COMPLETE,
                   datetime.now(UTC), datetime.now(UTC))
        for n in range(300)
    ]  # fmt: skip
    done = threading.Event()

    def write(part: list[CallRecord]) -> None:
        for call in part:
            outbox.put(call)

    def drain() -> None:
        while not done.is_set():
            outbox.drain(meter)

    writers = [threading.Thread(target=write, args=(kept[n::3],)) for n in range(3)]
    drainers = [threading.Thread(target=drain) for _ in range(2)]
    for thread in writers + drainers:
        thread.start()
    for thread in writers:
        thread.join(60)
    done.set()
    for thread in drainers:
        thread.join(60)
    outbox.drain(meter)
    assert sorted(c.call_id for c in meter.calls) == sorted(c.call_id for c in kept)
    assert outbox.waiting() == 0


def test_the_ledger_takes_a_call_once_whatever_the_retries(services: Services) -> None:
    call = CallRecord(CallMeta(Purpose.CHAT, None, None), "scripted", Usage(3, 4),
                      CallOutcome.COMPLETE, datetime.now(UTC), datetime.now(UTC))  # fmt: skip
    services.usage.record(call)
    services.usage.record(call)  # a retry whose first write had in fact committed
    with services._database.session() as session:
        rows = session.scalars(select(UsageEntry).where(UsageEntry.call_id == call.call_id))
        assert len(rows.all()) == 1


def test_a_turn_metered_while_the_database_refuses_reaches_the_ledger_later(
    services: Services,
    alice: Principal,
    scripted: ScriptedProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ledger write fails at the end of the turn (the database locked for longer than
    the retries): the answer is kept, the call waits in the outbox, and the next turn's
    upkeep drains it, with its `ai_call` record and its quota charge."""
    real_record = services.usage.record
    monkeypatch.setattr(services.provider, "_retry_waits_s", (0.0,))

    def locked(_call: CallRecord) -> None:
        raise StorageUnavailable("database is locked")

    monkeypatch.setattr(services.usage, "record", locked)
    scripted.enqueue("First answer.")
    first = services.chat.send(alice, None, "First question")
    assert "".join(first) == "First answer."
    assert model_calls(services) == [] and services.metering_outbox.waiting() == 1
    monkeypatch.setattr(services.usage, "record", real_record)
    scripted.enqueue("Second answer.")
    "".join(services.chat.send(alice, first.conversation_id, "Second question"))
    services.background.drain()
    assert [c[0] for c in model_calls(services)] == [Purpose.CHAT, Purpose.CHAT]
    assert services.metering_outbox.waiting() == 0
    calls = services.audit.history(ROOT, kinds=["ai_call"]).records
    assert len(calls) == 2
    assert services.quotas.today(alice).messages == 2


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


def test_count_tokens_asks_the_api_when_configured_and_meters_it() -> None:
    inner, meter = ApiCounter(12345), FakeMeter()
    plain = request(CallMeta(Purpose.CHAT, user_id=5, conversation_id=9))
    provider = limited_provider(inner, count_with_api=True, meter=meter)
    assert provider.count_tokens(plain) == 12345
    assert inner.counted == [plain]
    counted = CallMeta(Purpose.COUNT_TOKENS, user_id=5, conversation_id=9)
    assert meter.seen() == [(counted, inner.model, Usage(), CallOutcome.COMPLETE)]


def test_count_tokens_waits_for_a_slot_and_a_request_like_any_call() -> None:
    clock = FakeClock()
    gate, rate = ConcurrencyGate(1), limiter(clock, rpm=1)
    inner = ApiCounter(42)
    provider = limited_provider(inner, gate=gate, rate=rate, count_with_api=True)
    counted: list[int] = []
    with gate.slot():  # another call holds the only slot
        worker = threading.Thread(target=lambda: counted.append(provider.count_tokens(request())))
        worker.start()
        wait_until(lambda: gate.waiting == 1, "the count waits in line")
        assert counted == []
    worker.join(5)
    assert counted == [42] and clock.slept == []
    provider.count_tokens(request())  # the bucket's one request a minute is spent: waits
    assert clock.slept and sum(clock.slept) == pytest.approx(60, abs=1)


def test_a_count_that_finds_the_line_full_falls_back_to_the_estimate() -> None:
    """The count is no reason to refuse the turn: with every slot taken and no room to
    wait, the local estimate stands in (the turn itself then queues as usual)."""
    gate, inner = ConcurrencyGate(1, max_waiting=0), ApiCounter(42)
    provider = limited_provider(inner, gate=gate, count_with_api=True)
    plain = request()
    with gate.slot():
        assert provider.count_tokens(plain) == estimate_tokens(plain)
    assert inner.counted == []


def test_a_failed_api_count_falls_back_to_the_estimate(caplog: pytest.LogCaptureFixture) -> None:
    inner = ApiCounter(ProviderUnavailable("count endpoint down"))
    plain = request()
    meter = FakeMeter()
    with caplog.at_level(logging.INFO, logger="parley.chat.gateway.limited_provider"):
        counted = limited_provider(inner, count_with_api=True, meter=meter).count_tokens(plain)
    assert counted == estimate_tokens(plain)
    assert [c.outcome for c in meter.calls] == [CallOutcome.FAILED]  # on record too
    assert inner.counted == [plain]
    assert any("count_tokens failed" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- through the services


def model_calls(services: Services) -> list[tuple[Purpose, int | None, int | None, str]]:
    with services._database.session() as session:
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
