"""Token buckets and the concurrency queue, on a fake clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parley.chat.gateway.admission import ConcurrencyGate, RateLimiter
from parley.core.errors import Overloaded, RateLimited
from tests.support import FakeClock, admitted_by_processes


def limiter(clock: FakeClock, **limits: float) -> RateLimiter:
    return RateLimiter(
        requests_per_minute=limits.get("rpm", 60),
        input_tokens_per_minute=limits.get("itpm", 6000),
        output_tokens_per_minute=limits.get("otpm", 6000),
        max_wait_s=limits.get("max_wait", 20),
        clock=clock,
        sleep=clock.sleep,
    )


def test_requests_beyond_the_minute_wait_for_refill() -> None:
    clock = FakeClock()
    rl = limiter(clock, rpm=3)
    for _ in range(3):
        rl.acquire(input_tokens=10)
    assert clock.slept == []
    rl.acquire(input_tokens=10)
    assert clock.slept == [pytest.approx(20.0)]  # one request refills every 20 s


def test_a_wait_longer_than_the_cap_says_when_to_come_back() -> None:
    clock = FakeClock()
    rl = limiter(clock, itpm=600, max_wait=5)
    rl.acquire(input_tokens=600)
    with pytest.raises(RateLimited) as caught:
        rl.acquire(input_tokens=300)  # 300 tokens refill in 30 s > 5 s
    assert caught.value.retry_after == pytest.approx(30.0)
    assert "try again at" in caught.value.user_message


def test_output_debt_delays_the_next_call() -> None:
    clock = FakeClock()
    rl = limiter(clock, otpm=600, max_wait=60)
    rl.acquire(input_tokens=1)
    rl.record_output(900)  # 300 tokens of debt
    rl.acquire(input_tokens=1)
    assert sum(clock.slept) == pytest.approx(30.0)


def test_prompt_larger_than_the_bucket_goes_when_the_bucket_is_full() -> None:
    clock = FakeClock()
    rl = limiter(clock, itpm=100, max_wait=1e9)
    rl.acquire(input_tokens=5000)
    assert clock.slept == []
    # The whole prompt was charged: the next one waits until the bucket is full again.
    rl.acquire(input_tokens=5000)
    assert sum(clock.slept) == pytest.approx(5000 / (100 / 60))


def test_response_headers_tighten_the_buckets() -> None:
    clock = FakeClock()
    rl = limiter(clock, rpm=600)
    rl.observe_headers({"anthropic-ratelimit-requests-remaining": "0"})
    rl.acquire(input_tokens=1)
    assert clock.slept == [pytest.approx(0.1)]  # 600/min refills one request in 0.1 s
    rl.observe_headers({"anthropic-ratelimit-input-tokens-remaining": "0"})
    rl.acquire(input_tokens=50)
    assert clock.slept[1:] == [pytest.approx(0.5)]  # 6000/min refills 50 tokens in 0.5 s


def test_an_unreadable_header_leaves_the_buckets_alone() -> None:
    clock = FakeClock()
    rl = limiter(clock, rpm=3)
    rl.observe_headers(
        {
            "anthropic-ratelimit-requests-remaining": "not a number",
            "anthropic-ratelimit-input-tokens-remaining": "",
        }
    )
    for _ in range(3):  # the minute's three requests are all still there
        rl.acquire(input_tokens=1)
    assert clock.slept == []


@given(calls=st.lists(st.tuples(st.integers(1, 400), st.floats(0, 30)), min_size=1, max_size=40))
def test_never_more_than_the_bucket_allows_in_any_stretch_of_time(
    calls: list[tuple[int, float]],
) -> None:
    """A token bucket's promise: from a to b, at most its capacity plus what refills in b - a.

    (So up to twice the per-minute figure may go in a sliding minute, as with the API's own
    continuously refilled buckets: 10 at once, then one every 6 s.)
    """
    clock = FakeClock()
    rl = limiter(clock, rpm=10, itpm=1000, max_wait=1e9)
    sent: list[tuple[float, int]] = []
    for tokens, gap in calls:
        clock.now += gap
        rl.acquire(input_tokens=tokens)
        sent.append((clock.now, tokens))
    for first in range(len(sent)):
        for last in range(first, len(sent)):
            elapsed = sent[last][0] - sent[first][0]
            inside = [t for _, t in sent[first : last + 1]]
            assert len(inside) <= 10 + elapsed * 10 / 60 + 1e-3
            assert sum(inside) <= 1000 + elapsed * 1000 / 60 + 1e-3


def test_database_buckets_are_shared_by_processes(tmp_path: Path) -> None:
    """Five processes, one limit, started together: never more than the bucket's capacity.

    On SQLite each take begins with `BEGIN IMMEDIATE`; with pysqlite's deferred begin
    the processes read the same level and each took from it.
    """
    from parley.store.db import Database
    from parley.store.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'limits.db'}"
    database = Database(url)
    upgrade(database)
    database.dispose()
    granted, elapsed = admitted_by_processes(url, tmp_path, per_minute=300, tries=120)
    # 600 asked: the capacity, plus what refilled while they ran, and not one more.
    assert 300 <= sum(granted) <= 300 + elapsed * 300 / 60, (granted, elapsed)


# ---------------------------------------------------------------- the concurrency gate


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 2.0) -> None:
    """Poll `condition` until it holds; fail (saying `what`) if it does not within `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.001)


class CallbackFailed(Exception):
    """What a waiter's `on_position` raises in these tests."""


class Waiter:
    """One caller in its own thread: records every position it hears, then holds its slot
    until `leave` is set. `journal` is shared by all waiters of a test, in the order things
    happened: ("heard", name, position) and ("in", name)."""

    def __init__(
        self,
        gate: ConcurrencyGate,
        name: int,
        journal: list[tuple[object, ...]],
        journal_lock: threading.Lock,
        *,
        fail_at: int | None = None,
        start_together: threading.Barrier | None = None,
    ) -> None:
        self.gate = gate
        self.name = name
        self.heard: list[int] = []
        self.entered = threading.Event()
        self.leave = threading.Event()
        self.error: BaseException | None = None
        self._journal = journal
        self._journal_lock = journal_lock
        self._fail_at = fail_at
        self._start_together = start_together
        self.thread = threading.Thread(target=self._run, name=f"waiter-{name}", daemon=True)

    def _hear(self, position: int) -> None:
        with self._journal_lock:
            self._journal.append(("heard", self.name, position))
        self.heard.append(position)
        if position == self._fail_at:
            raise CallbackFailed(f"waiter {self.name} at {position}")

    def _run(self) -> None:
        if self._start_together is not None:
            self._start_together.wait(5)
        try:
            with self.gate.slot(self._hear):
                with self._journal_lock:
                    self._journal.append(("in", self.name))
                self.entered.set()
                self.leave.wait(5)
        except BaseException as exc:  # reported to the test, which asserts on it
            self.error = exc

    def start(self) -> Waiter:
        self.thread.start()
        return self

    def finish(self) -> None:
        self.leave.set()
        self.thread.join(5)
        assert not self.thread.is_alive(), f"waiter {self.name} is stuck"


@contextmanager
def waiters_cleaned_up() -> Iterator[list[Waiter]]:
    """Every waiter a test starts is let go and joined, even when an assertion fails."""
    started: list[Waiter] = []
    try:
        yield started
    finally:
        for waiter in started:
            waiter.leave.set()
        for waiter in started:
            waiter.thread.join(5)


def wait_for_line(gate: ConcurrencyGate, length: int) -> None:
    wait_until(lambda: gate.waiting == length, f"{length} are waiting in line")


def wait_to_hear(waiter: Waiter, position: int) -> None:
    """Until the last position `waiter` heard is `position`."""
    wait_until(lambda: waiter.heard[-1:] == [position], f"waiter {waiter.name} hears {position}")


def acquired(journal: list[tuple[object, ...]]) -> list[object]:
    return [entry[1] for entry in journal if entry[0] == "in"]


def refused_at_once(gate: ConcurrencyGate) -> Overloaded:
    """Ask `gate` for a slot in another thread; it must be refused within 2 s, not queued."""
    refused: list[Overloaded] = []

    def ask() -> None:
        try:
            with gate.slot():
                pass
        except Overloaded as exc:
            refused.append(exc)

    caller = threading.Thread(target=ask, daemon=True)
    caller.start()
    caller.join(2)
    assert not caller.is_alive(), "a caller past max_waiting was left waiting"
    assert len(refused) == 1, "the caller was let in instead of refused"
    return refused[0]


def test_without_a_line_a_busy_gate_refuses_at_once_with_a_sentence() -> None:
    gate = ConcurrencyGate(1, max_waiting=0)
    with gate.slot():
        refusal = refused_at_once(gate)
        assert "very busy" in refusal.user_message
        assert (gate.waiting, gate.busy) == (0, 1)
    with gate.slot():  # free again once the slot is released
        assert (gate.waiting, gate.busy) == (0, 1)


def test_six_waiters_are_served_in_arrival_order_and_hear_true_positions() -> None:
    gate = ConcurrencyGate(1)
    journal: list[tuple[object, ...]] = []
    lock = threading.Lock()
    holder = ExitStack()
    holder.enter_context(gate.slot())  # the test holds the only slot
    with waiters_cleaned_up() as waiters, holder:
        for k in range(1, 7):  # one at a time, so the arrival order is known
            waiters.append(Waiter(gate, k, journal, lock).start())
            wait_for_line(gate, k)
        wait_until(lambda: all(w.heard for w in waiters), "every waiter heard a position")
        assert [w.heard for w in waiters] == [[1], [2], [3], [4], [5], [6]]
        assert not any(w.entered.is_set() for w in waiters)

        holder.close()  # the line starts to move
        for served in range(1, 7):
            current = waiters[served - 1]
            assert current.entered.wait(2), f"waiter {served} was not let in"
            # Everyone still waiting has been told the place it moved up to.
            for w in waiters[served:]:
                wait_to_hear(w, w.name - served)
            assert gate.waiting == 6 - served and gate.busy == 1
            current.finish()

    assert acquired(journal) == [1, 2, 3, 4, 5, 6]  # first in, first out
    for w in waiters:
        assert w.error is None
        assert w.heard == list(range(w.name, 0, -1))  # k, k-1, ..., 1: each true when told
        # Told it is first before it is let in.
        assert journal.index(("heard", w.name, 1)) < journal.index(("in", w.name))
    assert (gate.waiting, gate.busy) == (0, 0)


def test_a_waiter_whose_callback_raises_leaves_and_the_line_moves_up() -> None:
    gate = ConcurrencyGate(1)
    journal: list[tuple[object, ...]] = []
    lock = threading.Lock()
    holder = ExitStack()
    holder.enter_context(gate.slot())
    with waiters_cleaned_up() as waiters, holder:
        for k in range(1, 5):  # waiter 2's callback raises when it is told it is first
            waiters.append(Waiter(gate, k, journal, lock, fail_at=1 if k == 2 else None).start())
            wait_for_line(gate, k)
        first, failing, third, fourth = waiters

        holder.close()  # 1 goes in; 2 hears it is first, raises and leaves
        assert first.entered.wait(2)
        failing.thread.join(2)
        assert not failing.thread.is_alive()
        assert isinstance(failing.error, CallbackFailed)
        assert failing.heard == [2, 1] and not failing.entered.is_set()
        wait_for_line(gate, 2)  # the failed waiter left it
        wait_to_hear(third, 1)  # both moved up
        wait_to_hear(fourth, 2)

        first.finish()
        assert third.entered.wait(2)
        wait_to_hear(fourth, 1)
        third.finish()
        assert fourth.entered.wait(2)
        fourth.finish()

    assert acquired(journal) == [1, 3, 4]
    for w, joined_at in ((third, 3), (fourth, 4)):
        assert w.error is None
        assert w.heard[0] == joined_at and w.heard[-1] == 1
        assert all(a > b for a, b in zip(w.heard, w.heard[1:], strict=False))
    assert (gate.waiting, gate.busy) == (0, 0)


def test_failed_waiters_leak_no_place_and_a_full_line_refuses_at_once() -> None:
    gate = ConcurrencyGate(1, max_waiting=3)
    journal: list[tuple[object, ...]] = []
    lock = threading.Lock()

    def fail(position: int) -> None:
        raise CallbackFailed(f"at {position}")

    holder = ExitStack()
    holder.enter_context(gate.slot())
    with waiters_cleaned_up() as waiters, holder:
        for _ in range(3 * 3):  # three times max_waiting
            with pytest.raises(CallbackFailed), gate.slot(fail):
                pass
        assert (gate.waiting, gate.busy) == (0, 1)

        # The line still takes max_waiting callers: no failure kept a place.
        for k in range(1, 4):
            waiters.append(Waiter(gate, k, journal, lock).start())
            wait_for_line(gate, k)
        assert all(w.error is None for w in waiters)

        # One more is refused at once, in a sentence, rather than left to wait.
        assert refused_at_once(gate).user_message == (
            "Parley is very busy: 3 people are waiting for an answer. Please try again in a minute."
        )
        assert gate.waiting == 3  # the refused caller took no place

        holder.close()
        for w in waiters:
            assert w.entered.wait(2)
            w.finish()

    assert acquired(journal) == [1, 2, 3]
    with gate.slot():  # free again: straight in, no line
        assert (gate.waiting, gate.busy) == (0, 1)
    assert gate.busy == 0


def two_arrive_together() -> None:
    gate = ConcurrencyGate(1)
    journal: list[tuple[object, ...]] = []
    lock = threading.Lock()
    together = threading.Barrier(2)
    holder = ExitStack()
    holder.enter_context(gate.slot())
    with waiters_cleaned_up() as waiters, holder:
        waiters.extend(
            Waiter(gate, k, journal, lock, start_together=together).start() for k in (1, 2)
        )
        wait_for_line(gate, 2)
        wait_until(lambda: all(w.heard for w in waiters), "both waiters heard a position")
        # Nobody moves while the test holds the slot: one position each, and different.
        assert sorted(w.heard[0] for w in waiters) == [1, 2]
        assert all(len(w.heard) == 1 for w in waiters)
        front, back = sorted(waiters, key=lambda w: w.heard[0])

        holder.close()
        assert front.entered.wait(2)
        wait_to_hear(back, 1)  # the second moved up
        assert not back.entered.is_set()
        front.finish()
        assert back.entered.wait(2)
        back.finish()
    assert acquired(journal) == [front.name, back.name]
    assert back.heard == [2, 1] and front.heard == [1]
    assert all(w.error is None for w in waiters)


def test_two_waiters_arriving_together_never_both_hear_first() -> None:
    """Tickets are identities: two waiters in line always hear two different positions."""
    for _ in range(20):  # arrivals at once race differently on each round
        two_arrive_together()
