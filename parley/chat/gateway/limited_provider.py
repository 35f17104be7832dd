"""The one path of every model call: queue, token buckets and metering around any provider.

`LimitedProvider` is itself a `ChatProvider`, so whatever calls a model (a chat turn,
its continuation, a summary, a title; later batches and evaluations) takes it without
knowing: the wiring hands out only the limited provider.

    stream(request)
      └ ConcurrencyGate.slot        a place in the FIFO line, its position to `on_queue`
         └ RateLimiter.acquire      requests and input tokens per minute (waits at most
                                    `max_wait_s`; a longer wait is `RateLimited`, "try at HH:MM")
            └ inner.stream          the provider (its own retries and retry-after cap)
               └ at the end         output tokens to the buckets; the call to the meter,
                                    by user, conversation, purpose and outcome, however
                                    it ended: complete, interrupted (with what the API
                                    reported and the text so far), aborted (the reader
                                    left) or failed

    count_tokens(request)           the API's count (when configured) takes the same
                                    path: a slot, a request from the bucket, the meter

Metering cannot be lost: a write the database refuses is retried with backoff, then
kept in the metering outbox (`parley/chat/gateway/outbox.py`), which start-up and upkeep
drain; recording is idempotent by the call's id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Protocol

from parley.chat.gateway.admission import ConcurrencyGate, RateLimiter
from parley.chat.gateway.outbox import MeteringOutbox
from parley.chat.gateway.wrapping import Wrapping
from parley.core import metrics
from parley.core.domain import CallOutcome, Purpose
from parley.core.errors import ProviderError
from parley.core.llm import (
    CallMeta,
    CallRecord,
    ChatProvider,
    ChatRequest,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
    UsageSoFar,
    estimate_tokens,
)
from parley.core.retry import retried
from parley.core.tokens import count_tokens

log = logging.getLogger(__name__)

# Waits between attempts to write a call's metering, before it goes to the outbox.
METER_RETRY_WAITS_S: Sequence[float] = (0.05, 0.2, 0.8)


class Meter(Protocol):
    def record(self, call: CallRecord) -> None:
        """One model call, however it ended: who it was for, why, and what it used."""
        ...


class LimitedProvider(Wrapping[ChatProvider]):
    """Wraps `inner` with the process's queue, buckets and meter; a `ChatProvider` itself."""

    def __init__(
        self,
        inner: ChatProvider,
        *,
        gate: ConcurrencyGate,
        limiter: RateLimiter,
        meter: Meter | None = None,
        outbox: MeteringOutbox | None = None,
        count_with_api: bool = False,
        retry_waits_s: Sequence[float] = METER_RETRY_WAITS_S,
        sleep: Callable[[float], None] = time.sleep,
        price: Callable[[str, Usage], float] | None = None,
    ) -> None:
        super().__init__(inner)
        self._price = price
        self._gate = gate
        self._limiter = limiter
        self._meter = meter
        self._outbox = outbox
        self._count_with_api = count_with_api
        self._retry_waits_s = retry_waits_s
        self._sleep = sleep

    def count_tokens(self, request: ChatRequest) -> int:
        """The API's count when `count_with_api` (and it answers), else the local estimate.

        Asking the API is a request like any other: it waits for a slot and a request
        from the bucket (it takes no tokens), and the meter and the audit trail get it,
        under `Purpose.COUNT_TOKENS`, for the user and conversation it was for."""
        if not self._count_with_api:
            return estimate_tokens(request)
        # A call of its own: never the chat call's ledger id (that row would be taken).
        meta = replace(request.meta, purpose=Purpose.COUNT_TOKENS, call_id=None)
        try:
            with self._gate.slot(None):
                self._limiter.acquire(input_tokens=0)
                started = datetime.now(UTC)
                try:
                    counted = self._inner.count_tokens(request)
                except ProviderError as exc:
                    self._record_call(meta, self.model, Usage(), CallOutcome.FAILED, started)
                    raise exc
                self._record_call(meta, self.model, Usage(), CallOutcome.COMPLETE, started)
                return counted
        except ProviderError as exc:  # a full line, a limit, an API error: an estimate
            # is not worth failing (or holding up) a turn for
            log.info("count_tokens failed (%s); using the local estimate.", type(exc).__name__)
            return estimate_tokens(request)

    def stream(
        self, request: ChatRequest, *, on_queue: Callable[[int], None] | None = None
    ) -> Generator[StreamEvent, None, None]:
        """The inner stream, once a slot and room in the buckets are free.

        `UsageSoFar` events stay here: they are what the meter records if the call
        never reaches its `StreamEnd`.
        """
        purpose = request.meta.purpose.value
        began = time.monotonic()
        try:
            with self._gate.slot(on_queue):
                self._limiter.acquire(input_tokens=estimate_tokens(request))
                waited = time.monotonic() - began
                metrics.guarded(lambda: metrics.QUEUE_WAIT.observe(waited))
                yield from self._stream_in_slot(request, began)
        except ProviderError as exc:
            metrics.guarded(metrics.PROVIDER_ERRORS.labels(kind=type(exc).__name__).inc)
            raise
        finally:
            took = time.monotonic() - began
            metrics.guarded(lambda: metrics.ANSWER_DURATION.labels(purpose=purpose).observe(took))

    def _stream_in_slot(
        self, request: ChatRequest, began: float
    ) -> Generator[StreamEvent, None, None]:
        started = datetime.now(UTC)
        reported: Usage | None = None
        text: list[str] = []
        outcome = CallOutcome.FAILED
        events = self._inner.stream(request)
        try:
            for event in events:
                if isinstance(event, UsageSoFar):
                    reported = event.usage
                    continue
                if isinstance(event, StreamEnd):
                    outcome = CallOutcome.COMPLETE
                    self._limiter.record_output(event.usage.output_tokens)
                    self._record(request, event.model, event.usage, outcome, started)
                elif isinstance(event, TextDelta):
                    if not text:
                        first = time.monotonic() - began
                        metrics.guarded(
                            lambda first=first: metrics.TIME_TO_FIRST_TOKEN.labels(  # type: ignore[misc]
                                purpose=request.meta.purpose.value
                            ).observe(first)
                        )
                    text.append(event.text)
                yield event
        except GeneratorExit:
            if outcome is not CallOutcome.COMPLETE:
                outcome = CallOutcome.ABORTED
            raise
        finally:
            if isinstance(events, Generator):  # the reader left: end the inner call now
                events.close()
            if outcome is not CallOutcome.COMPLETE:
                self._record_unfinished(request, outcome, reported, text, started)

    def _record_unfinished(
        self,
        request: ChatRequest,
        outcome: CallOutcome,
        reported: Usage | None,
        text: list[str],
        started: datetime,
    ) -> None:
        """Meter a call that ended before `StreamEnd` with what it is known to have used.

        Input: what the API reported at `message_start`; without a report (a local
        model), the prompt's estimate once an answer had begun, else nothing. Output:
        the API's count or the text received, whichever is larger.
        """
        produced = count_tokens("".join(text)) if text else 0
        if reported is None:
            usage = Usage(input_tokens=estimate_tokens(request) if text else 0)
        else:
            usage = reported
        usage = Usage(
            input_tokens=usage.input_tokens,
            output_tokens=max(usage.output_tokens, produced),
            cache_creation_input_tokens=usage.cache_creation_input_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens,
        )
        if outcome is CallOutcome.FAILED and (reported is not None or text):
            outcome = CallOutcome.INTERRUPTED  # the API had begun to answer
        if usage.output_tokens:
            self._limiter.record_output(usage.output_tokens)
        self._record(request, self._inner.model, usage, outcome, started)

    def _record(
        self,
        request: ChatRequest,
        model: str,
        usage: Usage,
        outcome: CallOutcome,
        started: datetime,
    ) -> None:
        self._record_call(request.meta, model, usage, outcome, started)

    def _count(self, meta: CallMeta, model: str, usage: Usage, outcome: CallOutcome) -> None:
        metrics.ANSWERS.labels(purpose=meta.purpose.value, outcome=outcome.value).inc()
        for kind, tokens in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_input_tokens),
            ("cache_write", usage.cache_creation_input_tokens),
        ):
            if tokens:
                metrics.TOKENS.labels(model=model, kind=kind).inc(tokens)
        if self._price is not None:
            metrics.COST.labels(model=model).inc(self._price(model, usage))

    def _record_call(
        self, meta: CallMeta, model: str, usage: Usage, outcome: CallOutcome, started: datetime
    ) -> None:
        """Meter one call made: a miss of the response cache when it carried a key."""
        metrics.guarded(lambda: self._count(meta, model, usage, outcome))
        call = CallRecord(meta, model, usage, outcome, started, datetime.now(UTC))
        self.record(replace(call, cache="miss") if meta.cache is not None else call)

    def record(self, call: CallRecord) -> None:
        """Meter one call (or one the response cache answered): retried with backoff,
        then kept in the outbox. Never raises (metering must not cost the user the
        answer) and never drops the call."""
        meta = call.meta
        if self._meter is None:
            return
        if meta.call_id is not None:
            call = replace(call, call_id=meta.call_id)
        meter = self._meter
        try:
            retried(lambda: meter.record(call), self._retry_waits_s, sleep=self._sleep)
            return
        except Exception as exc:  # whatever the meter raised: the call is kept below
            failure = exc
        if self._outbox is None:
            log.error(
                "Metering a %s call failed and no outbox is configured: %s",
                meta.purpose.value,
                failure,
            )
            return
        try:
            self._outbox.put(call)
        except OSError:
            log.exception("Metering a %s call failed, and so did its outbox", meta.purpose.value)
            return
        log.warning(
            "Metering a %s call failed (%s); kept in the outbox for the next drain.",
            meta.purpose.value,
            failure,
        )


__all__ = ["LimitedProvider", "Meter"]
