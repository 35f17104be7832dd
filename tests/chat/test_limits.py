"""Token buckets and the concurrency queue, on a fake clock."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat.limits import ConcurrencyGate, RateLimiter
from parley.errors import RateLimited


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


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
    rl = limiter(clock, itpm=100)
    rl.acquire(input_tokens=5000)
    assert clock.slept == []


def test_response_headers_tighten_the_buckets() -> None:
    clock = FakeClock()
    rl = limiter(clock, rpm=600)
    rl.observe_headers({"anthropic-ratelimit-requests-remaining": "0"})
    rl.acquire(input_tokens=1)
    assert clock.slept == [pytest.approx(0.1)]  # 600/min refills one request in 0.1 s
    rl.observe_headers({"anthropic-ratelimit-requests-remaining": "not a number"})


@given(calls=st.lists(st.tuples(st.integers(1, 400), st.floats(0, 30)), min_size=1, max_size=40))
def test_never_more_than_the_limit_in_any_minute(calls: list[tuple[int, float]]) -> None:
    clock = FakeClock()
    rl = limiter(clock, rpm=10, itpm=1000, max_wait=1e9)
    sent: list[tuple[float, int]] = []
    for tokens, gap in calls:
        clock.now += gap
        rl.acquire(input_tokens=tokens)
        sent.append((clock.now, tokens))
    for start, _ in sent:
        window = [t for at, t in sent if start <= at < start + 60]
        assert len(window) <= 10 + 1  # the bucket starts full and refills within the window
        assert sum(window) <= 1000 + 1000


def test_gate_lets_only_n_through_and_reports_positions() -> None:
    gate = ConcurrencyGate(1)
    positions: list[int] = []
    inside = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with gate.slot():
            inside.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(5)
    done = threading.Event()

    def wait_in_line() -> None:
        with gate.slot(positions.append):
            done.set()

    waiter = threading.Thread(target=wait_in_line)
    waiter.start()
    deadline = time.monotonic() + 5
    while not positions and time.monotonic() < deadline:
        time.sleep(0.01)
    assert positions == [1] and not done.is_set()
    release.set()
    assert done.wait(5)
    holder.join(5)
    waiter.join(5)
    assert gate.waiting == 0


def test_database_buckets_are_shared_by_processes(tmp_path: Path) -> None:
    """Two processes, one limit: together they get exactly the bucket's capacity."""
    from store.db import Database
    from store.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'limits.db'}"
    database = Database(url)
    upgrade(database)
    database.dispose()
    script = textwrap.dedent(f"""
        import time
        from chat.limits import DatabaseBucketStore, RateLimiter
        from parley.errors import RateLimited
        from store.db import Database
        limiter = RateLimiter(requests_per_minute=8, input_tokens_per_minute=1e9,
                              output_tokens_per_minute=1e9, max_wait_s=0,
                              store=DatabaseBucketStore(Database({url!r})), clock=time.time)
        granted = 0
        for _ in range(10):
            try:
                limiter.acquire(input_tokens=1)
                granted += 1
            except RateLimited:
                pass
        print(granted)
    """)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=60) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err for _, err in outputs]
    granted = [int(out) for out, _ in outputs]
    assert sum(granted) == 8, granted  # not 16: the second process saw the first one's takes


def test_a_full_queue_refuses_at_once_with_a_sentence() -> None:
    from parley.errors import Overloaded

    gate = ConcurrencyGate(1, max_waiting=0)
    with gate.slot():
        with pytest.raises(Overloaded) as caught, gate.slot():
            pass
        assert "very busy" in caught.value.user_message
    with gate.slot():  # free again once the slot is released
        assert gate.waiting == 0
