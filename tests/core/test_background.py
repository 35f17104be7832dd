"""The one bounded pool for work after a turn: inline or pooled, bounded, drained, closed."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from parley.core.background import BackgroundWork
from parley.core.errors import InvalidRequest, StorageError


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.001)


@pytest.fixture
def pool() -> Iterator[BackgroundWork]:
    """Two workers, as the app runs; closed after the test (bounded, never hangs)."""
    work = BackgroundWork(workers=2)
    yield work
    work.close(timeout=2)


def test_no_workers_runs_each_task_inline_before_submit_returns() -> None:
    work = BackgroundWork(workers=0)
    ran: list[tuple[str, int]] = []
    assert work.submit(lambda: ran.append(("a", threading.get_ident())), name="a")
    assert ran == [("a", threading.get_ident())]  # already done, on the caller's thread
    assert work.pending == 0
    assert work.drain(timeout=0) is True


def test_an_inline_task_that_raises_is_logged_and_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    work = BackgroundWork(workers=0)

    def boom() -> None:
        raise RuntimeError("upkeep bug")

    with caplog.at_level(logging.ERROR, logger="parley.core.background"):
        assert work.submit(boom, name="boom")
    assert [r.getMessage() for r in caplog.records] == ["Background task boom failed"]


def test_drain_waits_for_tasks_and_the_tasks_they_submit(pool: BackgroundWork) -> None:
    ran: list[str] = []
    parent_may_run, child_may_finish = threading.Event(), threading.Event()
    child_started = threading.Event()

    def child() -> None:
        child_started.set()
        child_may_finish.wait(5)
        ran.append("child")

    def parent() -> None:
        parent_may_run.wait(5)
        ran.append("parent")
        pool.submit(child, name="child")  # a fold after an observe

    assert pool.submit(parent, name="parent")
    drained: list[bool] = []
    drainer = threading.Thread(target=lambda: drained.append(pool.drain(timeout=5)), daemon=True)
    drainer.start()
    try:
        parent_may_run.set()
        assert child_started.wait(2)
        wait_until(lambda: pool.pending == 1, "the parent is done and only the child is left")
        drainer.join(0.2)  # a drain that forgot the child would have returned by now
        assert drainer.is_alive() and drained == []
    finally:
        child_may_finish.set()
        drainer.join(5)
    assert drained == [True]
    assert ran == ["parent", "child"]
    assert pool.pending == 0


def test_drain_with_a_timeout_says_false_while_a_task_is_blocked(pool: BackgroundWork) -> None:
    release = threading.Event()
    started = threading.Event()

    def blocked() -> None:
        started.set()
        release.wait(5)

    assert pool.submit(blocked, name="blocked")
    assert started.wait(2)
    try:
        began = time.monotonic()
        assert pool.drain(timeout=0.05) is False
        assert time.monotonic() - began < 1.0  # it gave up at its timeout
        assert pool.pending == 1
    finally:
        release.set()
    assert pool.drain(timeout=5) is True
    assert pool.pending == 0


def test_past_max_pending_a_task_is_dropped_and_submit_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    work = BackgroundWork(workers=1, max_pending=2)
    release = threading.Event()
    ran: list[str] = []

    def task(name: str) -> Callable[[], None]:
        def run() -> None:
            release.wait(5)
            ran.append(name)

        return run

    try:
        assert work.submit(task("first"), name="first")  # running, blocked
        assert work.submit(task("second"), name="second")  # queued
        with caplog.at_level(logging.WARNING, logger="parley.core.background"):
            assert work.submit(task("third"), name="third") is False
        assert work.pending == 2
        assert any("dropped third" in r.getMessage() for r in caplog.records)
    finally:
        release.set()
    assert work.drain(timeout=5)
    assert ran == ["first", "second"]  # the dropped task never ran
    # The bound counts what is pending now, not what was ever submitted.
    assert work.submit(task("fourth"), name="fourth")
    assert work.close(timeout=5)
    assert ran == ["first", "second", "fourth"]


def test_a_raising_task_is_logged_and_later_tasks_still_run(
    pool: BackgroundWork, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("upkeep bug")

    with caplog.at_level(logging.ERROR, logger="parley.core.background"):
        assert pool.submit(boom, name="boom")
        assert pool.drain(timeout=5)
        for name in ("after-1", "after-2", "after-3"):
            assert pool.submit(partial(ran.append, name), name=name)
        assert pool.drain(timeout=5)
    assert sorted(ran) == ["after-1", "after-2", "after-3"]
    failures = [r for r in caplog.records if r.name == "parley.core.background"]
    assert [r.getMessage() for r in failures] == ["Background task boom failed"]
    assert failures[0].exc_info is not None and failures[0].exc_info[0] is RuntimeError


def test_close_runs_what_was_submitted_then_accepts_nothing() -> None:
    work = BackgroundWork(workers=2)
    ran: list[str] = []
    release = threading.Event()

    def slow() -> None:
        release.wait(5)
        ran.append("submitted")

    assert work.submit(slow, name="submitted")
    closer = threading.Thread(target=lambda: ran.append(f"closed {work.close(timeout=5)}"))
    closer.start()
    release.set()
    closer.join(5)
    assert ran == ["submitted", "closed True"]  # close drained first
    assert work.submit(lambda: ran.append("late"), name="late") is False
    assert work.pending == 0 and "late" not in ran


def test_a_close_that_times_out_drops_what_has_not_started() -> None:
    work = BackgroundWork(workers=1)
    release, started = threading.Event(), threading.Event()
    ran: list[str] = []

    def blocked() -> None:
        started.set()
        release.wait(5)
        ran.append("blocked")

    assert work.submit(blocked, name="blocked")
    assert work.submit(lambda: ran.append("queued"), name="queued")
    assert started.wait(2)
    try:
        assert work.close(timeout=0.05) is False
        assert work.submit(lambda: ran.append("late"), name="late") is False
    finally:
        release.set()
    wait_until(lambda: work.pending == 0, "the running task finished")
    assert ran == ["blocked"]  # the one that had started finished; the queued one was dropped


def test_an_inline_pool_accepts_nothing_once_closed() -> None:
    work = BackgroundWork(workers=0)
    ran: list[str] = []
    assert work.close() is True
    assert work.submit(lambda: ran.append("late"), name="late") is False
    assert ran == []


def test_close_waits_for_work_that_is_running() -> None:
    work = BackgroundWork(workers=2)
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def running() -> None:
        started.set()
        release.wait(5)
        ran.append("running")

    assert work.submit(running, name="running")
    assert started.wait(2)
    closed: list[bool] = []
    closer = threading.Thread(target=lambda: closed.append(work.close(timeout=5)), daemon=True)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive() and closed == []  # still waiting for the task
    release.set()
    closer.join(5)
    assert closed == [True] and ran == ["running"]


def test_work_submitted_after_close_is_dropped_quietly(caplog: pytest.LogCaptureFixture) -> None:
    for work in (BackgroundWork(workers=2), BackgroundWork(workers=0)):
        assert work.close(timeout=2)
        with caplog.at_level(logging.DEBUG, logger="parley.core.background"):
            assert work.submit(lambda: None, name="late") is False
    assert [r.levelno for r in caplog.records] == [logging.DEBUG, logging.DEBUG]
    assert all("late" in r.getMessage() for r in caplog.records)


def test_work_a_task_submits_during_and_after_close_neither_raises_nor_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    work = BackgroundWork(workers=1)
    started, release = threading.Event(), threading.Event()
    outcomes: list[bool] = []
    ran: list[str] = []

    def parent() -> None:
        outcomes.append(work.submit(partial(ran.append, "during"), name="during close"))
        started.set()
        release.wait(5)
        # close() gave up waiting and closed the pool meanwhile
        outcomes.append(work.submit(partial(ran.append, "after"), name="after close"))

    with caplog.at_level(logging.DEBUG, logger="parley.core.background"):
        assert work.submit(parent, name="parent")
        assert started.wait(2)
        assert work.close(timeout=0.05) is False
        release.set()
        wait_until(lambda: len(outcomes) == 2, "the parent submitted twice")
        wait_until(lambda: work.pending == 0, "the parent finished")
    assert outcomes == [True, False]
    assert "after" not in ran
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_work_submitted_while_the_interpreter_shuts_down_is_dropped_quietly(
    tmp_path: Path,
) -> None:
    """A pool nobody closed: Python's exit marks every executor shut before it joins
    their threads, so a task that submits another meets a RuntimeError there."""
    script = tmp_path / "exits.py"
    script.write_text(
        textwrap.dedent(
            """
            import logging, sys, time
            from concurrent.futures import ThreadPoolExecutor
            from parley.core.background import BackgroundWork

            logging.basicConfig(level=logging.INFO, stream=sys.stderr)
            work = BackgroundWork(workers=1)
            probe = ThreadPoolExecutor(max_workers=1)

            def parent():
                while True:  # until Python's exit has begun (the main thread is done)
                    try:
                        probe.submit(lambda: None)
                    except RuntimeError:
                        break
                    time.sleep(0.01)
                print("child accepted:", work.submit(lambda: print("child ran"), name="child"))

            work.submit(parent, name="parent")
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["child accepted: False"]
    assert done.stderr == ""


def test_every_submits_again_and_again_until_the_pool_closes() -> None:
    work = BackgroundWork(workers=2)
    ran: list[float] = []
    work.every(0.05, lambda: ran.append(time.monotonic()), name="tick")
    wait_until(lambda: len(ran) >= 3, "three ticks")
    work.close(timeout=2)
    after_close = len(ran)
    time.sleep(0.2)
    assert len(ran) == after_close  # no tick once closed


def test_every_ends_when_its_pool_is_dropped_unclosed() -> None:
    # A set of services a caller forgot to close must not tick on for ever (it would
    # reach for a database that is long gone, as a test's did after its server stopped).
    work = BackgroundWork(workers=1)
    ran: list[float] = []
    work.every(0.05, lambda: ran.append(time.monotonic()), name="orphan")
    wait_until(lambda: len(ran) >= 2, "two ticks")
    ticker = next(t for t in threading.enumerate() if t.name == "parley-every-orphan")
    del work
    gc.collect()
    ticker.join(timeout=2)
    assert not ticker.is_alive()


def test_every_repeats_nothing_inline() -> None:
    work = BackgroundWork(workers=0)
    ran: list[int] = []
    before = {t.name for t in threading.enumerate()}
    work.every(0.01, lambda: ran.append(1), name="inline")
    time.sleep(0.1)
    assert ran == [] and "parley-every-inline" not in before | {
        t.name for t in threading.enumerate()
    }


def test_the_database_away_is_one_line_and_anything_else_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def database_away() -> None:
        raise StorageError("connection refused")

    def refused_request() -> None:
        raise InvalidRequest("a bug in what Parley sent")

    def bug() -> None:
        raise KeyError("a bug")

    work = BackgroundWork(workers=0)
    with caplog.at_level(logging.WARNING, logger="parley.core.background"):
        work.submit(database_away, name="settle drafts")
        work.submit(refused_request, name="title")
        work.submit(bug, name="fold")
    known, *unknown = caplog.records
    assert known.levelno == logging.WARNING and known.exc_info is None
    assert "settle drafts" in known.getMessage() and "connection refused" in known.getMessage()
    assert [(r.levelno, r.exc_info is not None) for r in unknown] == [(logging.ERROR, True)] * 2
