"""Batch jobs on the local model: items one at a time, on the batch service's own
worker, each claimed before it runs, under a lease per job renewed while it runs."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import select, update

from parley.chat.batch.jobs import JobKind
from parley.chat.batch.state import INTERNAL, JobStore, Lost, again, rows, target, token
from parley.chat.gateway.wrapping import close_stream
from parley.core.background import BackgroundWork
from parley.core.config import BatchSettings
from parley.core.errors import ProviderError
from parley.core.llm import ChatProvider, StreamEnd, TextDelta, Usage
from parley.store.db import Database
from parley.store.models import BatchItem
from parley.store.shared import release_lease, renew_lease, try_lease

log = logging.getLogger(__name__)

LOCAL_LEASE_S = 600.0  # renewed every LOCAL_RENEW_S while an item runs
LOCAL_RENEW_S = 60.0  # the local lease is renewed this often while an item runs


class LocalRuns:
    def __init__(
        self,
        database: Database,
        store: JobStore,
        *,
        provider: ChatProvider,
        work: BackgroundWork,
        settings: BatchSettings,
    ) -> None:
        self._db = database
        self._store = store
        self._provider = provider  # the limited provider: queued and metered like any call
        self._work = work  # local jobs, on their own worker
        self._settings = settings
        self._stopping = threading.Event()
        self._queued: set[int] = set()  # jobs queued on, or running on, the worker
        self._queued_lock = threading.Lock()

    def close(self, timeout: float | None = 5.0) -> bool:
        """Stop local jobs after their current item (the next start resumes them)."""
        self._stopping.set()
        return self._work.close(timeout)

    def _window(self) -> int:
        return self._provider.context_window

    def run_soon(self, job_id: int) -> None:
        """Queue the job on the batch worker, once (a poll does not queue it again)."""
        with self._queued_lock:
            if job_id in self._queued:
                return
            self._queued.add(job_id)

        def run() -> None:
            try:
                self.run_local(job_id)
            finally:
                with self._queued_lock:
                    self._queued.discard(job_id)

        if not self._work.submit(run, name=f"batch job {job_id}"):
            with self._queued_lock:
                self._queued.discard(job_id)

    def recover_local(self, job_id: int) -> None:
        """Items a runner that died was running: again, or failed once their tries are
        spent (an item that crashes its process cannot take it down for ever)."""
        spent = BatchItem.attempts >= self._settings.attempts
        with self._db.session(write_lock=True) as session:
            base = (BatchItem.job_id == job_id, BatchItem.state == "running")
            session.execute(
                update(BatchItem)
                .where(*base, spent)
                .values(state="failed", claim=None, error="its process stopped while it ran")
            )
            session.execute(update(BatchItem).where(*base).values(state="pending", claim=None))

    def claim_local(self, job_id: int, run: str) -> BatchItem | None:
        """The next pending item, claimed (`running`, one more try), or None."""
        while True:
            with self._db.session() as session:
                item = session.scalar(
                    select(BatchItem)
                    .where(BatchItem.job_id == job_id, BatchItem.state == "pending")
                    .order_by(BatchItem.id)
                    .limit(1)
                )
                if item is None:
                    return None
                session.expunge(item)
            with self._db.session(write_lock=True) as session:
                claimed = session.execute(
                    update(BatchItem)
                    .where(BatchItem.id == item.id, BatchItem.state == "pending")
                    .values(state="running", claim=run, attempts=BatchItem.attempts + 1)
                )
            if rows(claimed):
                item.attempts += 1
                return item

    def run_one(self, kind: JobKind, item: BatchItem, name: str, lease: str, run: str) -> bool:
        """Run one item (claimed by `run`); False to end this run: the lease was lost
        meanwhile (its taker runs the item again, and nothing of this run is written),
        or the model is busy (the item is given back with its try, for the next poll)."""
        job_id = item.job_id
        with _Kept(self._db, name, lease) as kept:
            try:
                request = kind.request(target(item), window=self._window(), again=again(item))
                if request is None:
                    self._store.end_item(item.id, job_id, "skipped", "changed or gone", claim=run)
                    return True
                parts: list[str] = []
                usage, model = Usage(), self._provider.model
                events = self._provider.stream(request)
                try:
                    for event in events:
                        if kept.lost.is_set():
                            return False
                        if isinstance(event, TextDelta):
                            parts.append(event.text)
                        elif isinstance(event, StreamEnd):
                            usage, model = event.usage, event.model
                finally:
                    close_stream(events)
                if kept.lost.is_set():
                    return False
                # Metered, and priced, by the limited provider like any call.
                self._store.apply(kind, job_id, item, "".join(parts), model, run, usage, 0.0)
            except Lost:
                raise
            except ProviderError as exc:
                if exc.retryable:  # busy, or away a moment: not the item's fault
                    self._store.give_back(item.id, run)
                    log.info("Batch job %s paused: %s", job_id, exc.user_message)
                    return False
                self._store.retry_or_fail(item, job_id, run, exc.user_message)
            except Exception:  # one bad item never stops the job; it used one of its tries
                log.exception("Batch job %s: item %s failed", job_id, item.custom_id)
                self._store.retry_or_fail(item, job_id, run, INTERNAL)
        return not kept.lost.is_set()

    def run_local(self, job_id: int) -> None:
        """Answer the job's pending items on the local model, one at a time."""
        name = f"batch job {job_id}"
        lease = try_lease(self._db, name, LOCAL_LEASE_S)
        if lease is None:
            return  # another task or process runs it
        run = token()  # this run's claim on the items it runs
        try:
            kind = self._store.kind_of(job_id)
            self.recover_local(job_id)
            while not self._stopping.is_set():
                job = self._store.job(job_id)
                if job is None or job.state != "running":
                    return
                if job.cancel_requested:
                    self._store.finish(job_id, ("running",), canceled=True)
                    return
                item = self.claim_local(job_id, run)
                if item is None:
                    self._store.finish(job_id, ("running",))
                    return
                if not self.run_one(kind, item, name, lease, run):
                    return
        except Lost:
            log.info("Batch job %s: taken over by another runner.", job_id)
        finally:
            release_lease(self._db, name, lease)


class _Kept:
    """The job's lease renewed every `LOCAL_RENEW_S` while an item runs, however long it
    waits in the queue or generates; `lost` is set if another runner took it meanwhile."""

    def __init__(self, database: Database, name: str, lease: str) -> None:
        self._db = database
        self._name = name
        self._lease = lease
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._keep, name=f"keep {name}", daemon=True)

    def _keep(self) -> None:
        while not self._done.wait(LOCAL_RENEW_S):
            if not renew_lease(self._db, self._name, self._lease, LOCAL_LEASE_S):
                self.lost.set()
                return

    def __enter__(self) -> _Kept:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


__all__ = ["LocalRuns"]
