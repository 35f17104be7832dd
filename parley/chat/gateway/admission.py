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
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from parley.core import metrics
from parley.core.errors import Overloaded, RateLimited, StorageError
from parley.store.db import Database
from parley.store.models import RateBucket

if TYPE_CHECKING:
    from parley.chat.gateway.shared_slots import SharedSlots

REQUESTS, INPUT_TOKENS, OUTPUT_TOKENS = "requests", "input_tokens", "output_tokens"


@dataclass(frozen=True, slots=True)
class Bucket:
    capacity: float
    per_second: float


class BucketStore(Protocol):
    def take(self, needs: Mapping[str, tuple[float, float, Bucket]], now: float) -> float:
        """Atomically: if every bucket holds its `need`, take each `amount` and return 0;
        else take nothing and return how long to wait (s). `needs`: name -> (need, amount, bucket).
        """
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

    def take(self, needs: Mapping[str, tuple[float, float, Bucket]], now: float) -> float:
        with self._lock:
            levels = {name: self._refilled(name, b, now) for name, (_, _, b) in needs.items()}
            wait = _wait(needs, levels)
            if wait == 0.0:
                for name, (_, amount, bucket) in needs.items():
                    self._levels[name] = (min(bucket.capacity, levels[name] - amount), now)
            return wait

    def add(self, name: str, delta: float, bucket: Bucket, now: float) -> None:
        with self._lock:
            level = min(bucket.capacity, self._refilled(name, bucket, now) + delta)
            self._levels[name] = (level, now)

    def cap(self, name: str, level: float, bucket: Bucket, now: float) -> None:
        with self._lock:
            self._levels[name] = (min(self._refilled(name, bucket, now), level), now)


class DatabaseBucketStore:
    """Bucket levels in the `rate_buckets` table, so several app processes share one limit.

    Each operation is one short transaction that locks the bucket's row before reading
    it (`FOR UPDATE` on PostgreSQL; `BEGIN IMMEDIATE` on SQLite, whose driver would
    otherwise begin only at the write, after the level it was computed from). Use it
    with a wall clock (`time.time`), since monotonic clocks differ between processes.
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    def _row(self, session: Session, name: str, bucket: Bucket, now: float) -> RateBucket:
        row = session.scalar(select(RateBucket).where(RateBucket.name == name).with_for_update())
        if row is None:
            row = RateBucket(name=name, level=bucket.capacity, updated_at=now)
            session.add(row)
        else:
            elapsed = max(0.0, now - row.updated_at)
            row.level = min(bucket.capacity, row.level + elapsed * bucket.per_second)
            # `now` was read before the lock was granted: a process that waited must not
            # move the clock back, or the next one refills the same seconds again.
            row.updated_at = max(row.updated_at, now)
        return row

    def _transaction(self, work: Callable[[Session], float]) -> float:
        # SQLite answers "database is locked" at once when two writers race inside WAL
        # snapshots (busy_timeout does not cover that case), and two processes may create
        # the same bucket row at once: either way the transaction is retried.
        for attempt in range(50):
            try:
                with self._db.session(write_lock=True) as session:
                    return work(session)
            except StorageError:
                if attempt == 49:
                    raise
                time.sleep(0.002 * (attempt + 1))
        raise AssertionError("unreachable")

    def take(self, needs: Mapping[str, tuple[float, float, Bucket]], now: float) -> float:
        def work(session: Session) -> float:
            # Rows locked in name order, so two processes never wait on each other in a cycle.
            rows = {name: self._row(session, name, needs[name][2], now) for name in sorted(needs)}
            wait = _wait(needs, {name: row.level for name, row in rows.items()})
            if wait == 0.0:
                for name, (_, amount, bucket) in needs.items():
                    rows[name].level = min(bucket.capacity, rows[name].level - amount)
            return wait

        return self._transaction(work)

    def add(self, name: str, delta: float, bucket: Bucket, now: float) -> None:
        def work(session: Session) -> float:
            row = self._row(session, name, bucket, now)
            row.level = min(bucket.capacity, row.level + delta)
            return 0.0

        self._transaction(work)

    def cap(self, name: str, level: float, bucket: Bucket, now: float) -> None:
        def work(session: Session) -> float:
            row = self._row(session, name, bucket, now)
            row.level = min(row.level, level)
            return 0.0

        self._transaction(work)


def _wait(needs: Mapping[str, tuple[float, float, Bucket]], levels: Mapping[str, float]) -> float:
    wait = 0.0
    for name, (need, _, bucket) in needs.items():
        if levels[name] < need - 1e-6:  # tolerance: refill arithmetic is floating point
            wait = max(wait, (need - levels[name]) / bucket.per_second, 0.001)
    return wait


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

    def acquire(self, *, input_tokens: int) -> None:
        """Block until one request with `input_tokens` may be sent."""
        needs = {
            REQUESTS: (1.0, 1.0, self.buckets[REQUESTS]),
            # A prompt larger than the whole bucket may go once the bucket is full.
            INPUT_TOKENS: (
                min(float(input_tokens), self.buckets[INPUT_TOKENS].capacity),
                float(input_tokens),
                self.buckets[INPUT_TOKENS],
            ),
            # Output is charged afterwards; wait only while the bucket is in debt.
            OUTPUT_TOKENS: (0.0, 0.0, self.buckets[OUTPUT_TOKENS]),
        }
        waited = 0.0
        while True:
            wait = self._store.take(needs, self._clock())
            if wait == 0.0:
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


class ConcurrencyGate:
    """At most `slots` provider calls at once; the others wait in one first-in, first-out line.

    A waiter is an identity (`object()`), never a value: two waiters are never equal.
    Positions are true: the first in line is told 1, the fifth 5, and a waiter that
    wakes to find it has moved up is told its new position (a late waker may skip a
    number; what it hears is never stale). A waiter always leaves the line, whatever
    happens to it (its `on_position` callback raising, its reader going away).
    A call that would make the line longer than `max_waiting` is refused at once with
    `Overloaded` (a sentence and a Retry), rather than left to wait for minutes.

    With `shared` (`SharedSlots`), a call that has its place here also holds one of the
    slots every process shares: the limit is then for all processes together, and the
    line's positions count this process's waiters.
    """

    def __init__(
        self, slots: int, *, max_waiting: int = 1000, shared: SharedSlots | None = None
    ) -> None:
        self._slots = slots
        self._shared = shared
        self._max_waiting = max_waiting
        self._busy = 0
        self._line: deque[object] = deque()
        self._cond = threading.Condition()

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._line)

    @property
    def busy(self) -> int:
        with self._cond:
            return self._busy

    @contextmanager
    def slot(self, on_position: Callable[[int], None] | None = None) -> Iterator[None]:
        """Hold a slot for the block. `on_position(n)` hears the line position while waiting."""
        self._wait_for_slot(on_position)
        metrics.guarded(metrics.CALLS_IN_FLIGHT.inc)
        shared = None
        try:
            if self._shared is not None:
                shared = self._take_shared(self._shared, on_position)
            yield
        finally:
            if shared is not None and self._shared is not None:
                self._shared.give_back(shared)
            metrics.guarded(metrics.CALLS_IN_FLIGHT.dec)
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()

    @staticmethod
    def _take_shared(shared: SharedSlots, on_position: Callable[[int], None] | None) -> int:
        """One of the slots every process shares, polled for; `Overloaded` after `wait_s`.
        While it waits the reader hears it is next (and may leave: the callback raises)."""
        deadline = time.monotonic() + shared.wait_s
        told = False
        while (slot := shared.try_take()) is None:
            if time.monotonic() > deadline:
                raise Overloaded(
                    "no shared call slot within the wait",
                    user_message="Parley is very busy right now. Please try again in a minute.",
                )
            if on_position is not None and not told:
                on_position(1)
                told = True
            time.sleep(shared.poll_s)
        return slot

    def _wait_for_slot(self, on_position: Callable[[int], None] | None) -> None:
        ticket = object()
        with self._cond:
            if not self._line and self._busy < self._slots:
                self._busy += 1  # no line and a free slot: straight in
                return
            if len(self._line) >= self._max_waiting:
                raise Overloaded(
                    f"queue full ({len(self._line)} waiting)",
                    user_message=f"Parley is very busy: {len(self._line)} people are "
                    "waiting for an answer. Please try again in a minute.",
                )
            self._line.append(ticket)
            metrics.guarded(metrics.QUEUE_DEPTH.inc)
            try:
                reported = 0
                while not (self._line[0] is ticket and self._busy < self._slots):
                    position = (
                        self._line.index(ticket) + 1
                    )  # identity: deque compares by `is` first
                    if on_position is not None and position != reported:
                        reported = position
                        self._cond.release()
                        try:
                            on_position(position)
                        finally:
                            self._cond.acquire()
                        continue  # the line may have moved while the callback ran
                    self._cond.wait()
                self._line.popleft()
                self._busy += 1
            except BaseException:
                # The callback raised or the waiting thread was interrupted: leave the line,
                # and let the ones behind move up.
                if ticket in self._line:
                    self._line.remove(ticket)
                raise
            finally:
                metrics.guarded(metrics.QUEUE_DEPTH.dec)
                self._cond.notify_all()
