"""The concurrency limit shared through the database: several processes, each with several
threads, never hold more slots together than the limit; a process that dies holding
slots frees them when its leases run out; a long call keeps its slot by renewing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from parley.chat.gateway.shared_slots import SharedSlots
from parley.store.db import Database
from parley.store.migrate import upgrade


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'slots.db'}"
    database = Database(url)
    upgrade(database)
    database.dispose()
    return url


def calls_in_processes(
    url: str, tmp_path: Path, *, processes: int, threads: int, slots: int, calls: int
) -> list[tuple[float, float]]:
    """Every (start, end) of `calls` calls by each of `threads` threads in each of
    `processes` processes, all through gates sharing `slots` slots, released together."""
    script = textwrap.dedent(f"""
        import json, os, sys, threading, time
        from parley.chat.gateway.admission import ConcurrencyGate
        from parley.chat.gateway.shared_slots import SharedSlots
        from parley.store.db import Database
        gate = ConcurrencyGate({slots}, shared=SharedSlots(Database({url!r}), {slots}))
        spans = []
        def caller():
            for _ in range({calls}):
                with gate.slot():
                    start = time.time()
                    time.sleep(0.05)
                    spans.append((start, time.time()))
        open(os.path.join({str(tmp_path)!r}, "ready-" + sys.argv[1]), "w").close()
        while not os.path.exists(os.path.join({str(tmp_path)!r}, "go")):
            time.sleep(0.001)
        workers = [threading.Thread(target=caller) for _ in range({threads})]
        for w in workers: w.start()
        for w in workers: w.join()
        print(json.dumps(spans))
    """)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(processes)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < processes and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    spans: list[tuple[float, float]] = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        spans.extend(tuple(s) for s in json.loads(out.splitlines()[-1]))
    return spans


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = peak = 0
    for _, step in events:  # at a tie an end (-1) sorts before a start: touching is not overlap
        now += step
        peak = max(peak, now)
    return peak


def test_processes_together_never_hold_more_than_the_shared_limit(url: str, tmp_path: Path) -> None:
    spans = calls_in_processes(url, tmp_path, processes=4, threads=3, slots=3, calls=4)
    assert len(spans) == 4 * 3 * 4  # every call ran
    assert most_at_once(spans) == 3  # the limit was reached, never passed


def test_a_process_that_dies_holding_slots_frees_them_when_the_lease_runs_out(
    url: str,
) -> None:
    dying = textwrap.dedent(f"""
        import os
        from parley.chat.gateway.shared_slots import SharedSlots
        from parley.store.db import Database
        slots = SharedSlots(Database({url!r}), 2, holder="dies", lease_s=1.5)
        assert slots.try_take() is not None and slots.try_take() is not None
        os._exit(0)  # no give_back, no renewal: as a killed process
    """)
    subprocess.run([sys.executable, "-c", dying], check=True, timeout=60)
    survivor = SharedSlots(Database(url), 2, holder="lives")
    died_at = time.time()
    assert survivor.try_take() is None  # both still leased to the dead process
    while (slot := survivor.try_take()) is None:
        assert time.time() - died_at < 5, "the dead process's slots were never freed"
        time.sleep(0.05)
    assert slot in (0, 1)
    survivor.give_back(slot)


def test_a_long_call_renews_its_lease_and_a_given_back_slot_is_free_at_once(url: str) -> None:
    long_call = SharedSlots(Database(url), 1, holder="long", lease_s=0.6)
    other = SharedSlots(Database(url), 1, holder="other", lease_s=0.6)
    slot = long_call.try_take()
    assert slot == 0
    time.sleep(1.5)  # over twice the lease: only the renewal keeps it
    assert other.try_take() is None
    long_call.give_back(slot)
    assert other.try_take() == 0
    assert long_call.held == 0 and other.held == 1


def test_a_call_whose_lease_lapsed_cannot_free_the_slot_another_call_took(url: str) -> None:
    slots = SharedSlots(Database(url), 1, holder="same-process", lease_s=0.3)
    first = slots.try_take()
    assert first == 0
    slots._held.clear()  # its renewals failed: the lease lapses...
    time.sleep(0.4)
    second = SharedSlots(Database(url), 1, holder="same-process", lease_s=30)
    assert second.try_take() == 0  # ...and another call of this process takes the slot
    slots._held[0] = "same-process:stale"  # the first call, late, gives back what it had
    slots.give_back(0)
    assert SharedSlots(Database(url), 1, holder="other").try_take() is None  # still held
    second.give_back(0)


def test_a_call_that_waits_too_long_for_a_shared_slot_is_told_parley_is_busy(url: str) -> None:
    from parley.chat.gateway.admission import ConcurrencyGate
    from parley.core.errors import Overloaded

    holder = SharedSlots(Database(url), 1, holder="busy")
    assert holder.try_take() == 0
    gate = ConcurrencyGate(1, shared=SharedSlots(Database(url), 1, wait_s=0.3, poll_s=0.02))
    heard: list[int] = []
    started = time.monotonic()
    with pytest.raises(Overloaded) as refused, gate.slot(heard.append):
        pytest.fail("a slot was given while every shared one was held")
    assert 0.3 <= time.monotonic() - started < 5
    assert heard == [1] and "busy" in (refused.value.user_message or "")
    assert gate.busy == 0  # the local place was given back
