"""One bounded pool for work that follows a turn (memory upkeep, summary folds, titles).

The services own one `BackgroundWork`; nothing else starts threads. At most
`max_pending` tasks wait: past that a task is dropped and logged, which is safe
because upkeep is derived state (the next turn's upkeep catches up, a title falls
back to the first message). `drain` waits for what was submitted; `close` drains
and stops the workers (the CLI before it exits, the app at shutdown).
`workers=0` runs every task inline and repeats nothing (tests, benchmarks).

Work submitted once the pool is closed, or once Python has begun to exit (its
executors then refuse work), is dropped with a debug line only: shutting down is
no failure, and whatever the work was for is caught up at the next start or turn.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

from parley.core.errors import StorageError

log = logging.getLogger(__name__)


class BackgroundWork:
    def __init__(self, *, workers: int = 2, max_pending: int = 256) -> None:
        self._executor = (
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="parley-upkeep")
            if workers > 0
            else None
        )
        self._max_pending = max_pending
        self._pending: set[Future[None]] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()

    def every(self, seconds: float, task: Callable[[], None], *, name: str) -> None:
        """Submit `task` every `seconds` until the pool closes or is dropped unclosed (a
        daemon thread that only submits: the work itself runs, and is drained, on the
        pool). Inline (`workers=0`) there is no pool to run it on: nothing repeats."""
        if self._executor is None:
            return
        stop, pool = self._stop, weakref.ref(self)

        def tick() -> None:
            while not stop.wait(seconds):
                work = pool()
                if work is None:
                    return
                work.submit(task, name=name)
                del work

        threading.Thread(target=tick, name=f"parley-every-{name}", daemon=True).start()

    @property
    def inline(self) -> bool:
        """Whether tasks run inline, as they are submitted (`workers=0`)."""
        return self._executor is None

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def submit(self, task: Callable[[], None], *, name: str) -> bool:
        """Run `task` in the background; False when it was dropped (full or closed)."""
        with self._lock:
            if self._closed:
                log.debug("Background work is closed; dropped %s.", name)
                return False
            if self._executor is not None and len(self._pending) >= self._max_pending:
                log.warning("Background work is full; dropped %s.", name)
                return False
            if self._executor is not None:
                try:
                    future = self._executor.submit(_run, task, name)
                except RuntimeError:  # the interpreter is exiting: it takes no new work
                    log.debug("Background work is shutting down; dropped %s.", name)
                    return False
                self._pending.add(future)
        if self._executor is None:
            _run(task, name)
        else:
            future.add_done_callback(self._done)
        return True

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far has run; False if `timeout` came first.

        Tasks may submit further tasks (a fold after an observe): those are waited for too.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                pending = set(self._pending)
            if not pending:
                return True
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            _, not_done = wait(pending, timeout=left)
            if not_done:
                return False

    def close(self, timeout: float | None = None) -> bool:
        """Drain (at most `timeout`), then stop accepting work and let the workers end."""
        self._stop.set()
        drained = self.drain(timeout)
        with self._lock:
            self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=drained, cancel_futures=not drained)
        return drained


def _run(task: Callable[[], None], name: str) -> None:
    try:
        task()
    except StorageError as exc:  # the database away or refusing: one line says it
        log.warning("Background task %s failed: %s", name, exc)
    except Exception:  # upkeep never breaks anything; it is logged and derived state heals
        log.exception("Background task %s failed", name)


__all__ = ["BackgroundWork"]


# Hands slow work to the background (`BackgroundWork.submit`): False if it was not taken.
Defer = Callable[[Callable[[], None], str], bool]
