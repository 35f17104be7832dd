"""Process-wide throttling of provider calls: token buckets and a bounded queue.

Three buckets — requests, input tokens and output tokens per minute — refill
continuously. A call takes one request and its estimated input tokens before it
is sent; output tokens are charged when the answer's usage is known (the bucket
may go into debt, which delays the next call). The `anthropic-ratelimit-*`
headers of each response tighten the buckets to what the API says is left.

Bucket state sits behind `BucketStore`, so a shared store (Redis, the database)
can back it when several app processes run; `MemoryBucketStore` serves one process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from parley.errors import RateLimited

REQUESTS, INPUT_TOKENS, OUTPUT_TOKENS = "requests", "input_tokens", "output_tokens"


@dataclass(frozen=True, slots=True)
class Bucket:
    capacity: float
    per_second: float


class BucketStore(Protocol):
    def level(self, name: str, bucket: Bucket, now: float) -> float:
        """The bucket's level now, refill included."""
        ...

    def add(self, name: str, delta: float, bucket: Bucket, now: float) -> None:
        """Add `delta` (negative to take); the level may go below zero, never above capacity."""
        ...

    def cap(self, name: str, level: float, bucket: Bucket, now: float) -> None:
        """Lower the level to at most `level` (what the API says remains)."""
        ...


class MemoryBucketStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._levels: dict[str, tuple[float, float]] = {}  # name -> (level, at)

    def _refilled(self, name: str, bucket: Bucket, now: float) -> float:
        level, at = self._levels.get(name, (bucket.capacity, now))
        return min(bucket.capacity, level + max(0.0, now - at) * bucket.per_second)

    def level(self, name: str, bucket: Bucket, now: float) -> float:
        with self._lock:
            return self._refilled(name, bucket, now)

    def add(self, name: str, delta: float, bucket: Bucket, now: float) -> None:
        with self._lock:
            level = min(bucket.capacity, self._refilled(name, bucket, now) + delta)
            self._levels[name] = (level, now)

    def cap(self, name: str, level: float, bucket: Bucket, now: float) -> None:
        with self._lock:
            self._levels[name] = (min(self._refilled(name, bucket, now), level), now)


def per_minute(limit: float) -> Bucket:
    return Bucket(capacity=limit, per_second=limit / 60.0)


class RateLimiter:
    """Waits for room in every bucket, at most `max_wait_s`; longer waits raise `RateLimited`."""

    def __init__(
        self,
        *,
        requests_per_minute: float,
        input_tokens_per_minute: float,
        output_tokens_per_minute: float,
        max_wait_s: float,
        store: BucketStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.buckets = {
            REQUESTS: per_minute(requests_per_minute),
            INPUT_TOKENS: per_minute(input_tokens_per_minute),
            OUTPUT_TOKENS: per_minute(output_tokens_per_minute),
        }
        self.max_wait_s = max_wait_s
        self._store = store or MemoryBucketStore()
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()

    def _wait_needed(self, input_tokens: int, now: float) -> float:
        needs = {
            REQUESTS: 1.0,
            # A prompt larger than the whole bucket may go once the bucket is full.
            INPUT_TOKENS: min(float(input_tokens), self.buckets[INPUT_TOKENS].capacity),
            OUTPUT_TOKENS: 0.0,  # output is charged afterwards; wait only while in debt
        }
        wait = 0.0
        for name, need in needs.items():
            bucket = self.buckets[name]
            level = self._store.level(name, bucket, now)
            if level < need - 1e-6:  # tolerance: refill arithmetic is floating point
                wait = max(wait, (need - level) / bucket.per_second, 0.001)
        return wait

    def acquire(self, *, input_tokens: int) -> None:
        """Block until one request with `input_tokens` may be sent."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                wait = self._wait_needed(input_tokens, now)
                if wait == 0.0:
                    self._store.add(REQUESTS, -1, self.buckets[REQUESTS], now)
                    self._store.add(INPUT_TOKENS, -input_tokens, self.buckets[INPUT_TOKENS], now)
                    return
            if waited + wait > self.max_wait_s:
                raise RateLimited(
                    "local rate limit", retry_after=waited + wait, now=datetime.now(UTC)
                )
            self._sleep(wait)
            waited += wait

    def record_output(self, output_tokens: int) -> None:
        now = self._clock()
        self._store.add(OUTPUT_TOKENS, -output_tokens, self.buckets[OUTPUT_TOKENS], now)

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Tighten the buckets to the API's own count (`anthropic-ratelimit-*-remaining`)."""
        now = self._clock()
        for name in (REQUESTS, INPUT_TOKENS, OUTPUT_TOKENS):
            value = headers.get(f"anthropic-ratelimit-{name.replace('_', '-')}-remaining")
            if value is None:
                continue
            try:
                remaining = float(value)
            except ValueError:
                continue
            self._store.cap(name, remaining, self.buckets[name], now)


@dataclass
class QueueTicket:
    position: int  # 0 once the call holds a slot


class ConcurrencyGate:
    """At most `slots` provider calls at once; the rest wait in arrival order."""

    def __init__(self, slots: int) -> None:
        self._slots = slots
        self._busy = 0
        self._waiting: list[QueueTicket] = []
        self._cond = threading.Condition()

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    @contextmanager
    def slot(
        self, on_position: Callable[[int], None] | None = None, poll_s: float = 0.25
    ) -> Iterator[None]:
        """Hold a slot for the block. `on_position(n)` hears the queue position while waiting."""
        ticket = QueueTicket(position=0)
        with self._cond:
            self._waiting.append(ticket)
            reported = -1
            while True:
                index = self._waiting.index(ticket)
                if index == 0 and self._busy < self._slots:
                    break
                if on_position is not None and index + 1 != reported:
                    reported = index + 1
                    self._cond.release()
                    try:
                        on_position(reported)
                    finally:
                        self._cond.acquire()
                    continue
                self._cond.wait(timeout=poll_s)
            self._waiting.pop(0)
            self._busy += 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()
