"""The one path of every model call: queue, token buckets and metering around any provider.

`LimitedProvider` is itself a `ChatProvider`, so whatever calls a model (a chat turn,
its continuation, a summary, a title; later batches and evaluations) takes it without
knowing: the wiring hands out only the limited provider.

    stream(request)
      └ ConcurrencyGate.slot        a place in the FIFO line, its position to `on_queue`
         └ RateLimiter.acquire      requests and input tokens per minute (waits at most
                                    `max_wait_s`; a longer wait is `RateLimited`, "try at HH:MM")
            └ inner.stream          the provider (its own retries and retry-after cap)
               └ at StreamEnd       output tokens to the buckets; the call to the meter,
                                    by user, conversation and purpose
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Protocol

from chat.limits import ConcurrencyGate, RateLimiter
from parley.errors import ProviderError
from parley.llm import CallMeta, ChatProvider, ChatRequest, StreamEnd, StreamEvent, estimate_tokens

log = logging.getLogger(__name__)


class Meter(Protocol):
    def record(self, meta: CallMeta, *, model: str, end: StreamEnd) -> None:
        """One finished model call: who it was for, why, and what it used."""
        ...


class LimitedProvider:
    """Wraps `inner` with the process's queue, buckets and meter; a `ChatProvider` itself."""

    def __init__(
        self,
        inner: ChatProvider,
        *,
        gate: ConcurrencyGate,
        limiter: RateLimiter,
        meter: Meter | None = None,
        count_with_api: bool = False,
    ) -> None:
        self._inner = inner
        self._gate = gate
        self._limiter = limiter
        self._meter = meter
        self._count_with_api = count_with_api

    @property
    def model(self) -> str:
        return self._inner.model

    @property
    def context_window(self) -> int:
        return self._inner.context_window

    def count_tokens(self, request: ChatRequest) -> int:
        """The API's count when `count_with_api` (and it answers), else the local estimate."""
        if not self._count_with_api:
            return estimate_tokens(request)
        try:
            return self._inner.count_tokens(request)
        except ProviderError as exc:  # an estimate is not worth failing a turn for
            log.info("count_tokens failed (%s); using the local estimate.", type(exc).__name__)
            return estimate_tokens(request)

    def stream(
        self, request: ChatRequest, *, on_queue: Callable[[int], None] | None = None
    ) -> Generator[StreamEvent, None, None]:
        """The inner stream, once a slot and room in the buckets are free."""
        with self._gate.slot(on_queue):
            self._limiter.acquire(input_tokens=estimate_tokens(request))
            events = self._inner.stream(request)
            try:
                for event in events:
                    if isinstance(event, StreamEnd):
                        self._limiter.record_output(event.usage.output_tokens)
                        self._record(request.meta, event)
                    yield event
            finally:
                if isinstance(events, Generator):  # the reader left: end the inner call now
                    events.close()

    def _record(self, meta: CallMeta, end: StreamEnd) -> None:
        if self._meter is None:
            return
        try:
            self._meter.record(meta, model=end.model, end=end)
        except Exception:  # metering must never cost the user the answer
            log.exception("Metering a %s call failed", meta.purpose.value)


__all__ = ["LimitedProvider", "Meter"]
