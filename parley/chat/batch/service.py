"""Batch jobs: work nobody waits for, sent in bulk at the batch price.

An admin submits a job of one kind (`parley.chat.batch.jobs`): its targets are planned
at once, one item each. Then:

- **With Claude** the items go as one Message Batch (`BatchClient`: create, poll,
  results). The app polls every `PARLEY_BATCH__POLL_S` (and `collect` polls at once);
  when the batch has ended, one process claims the job (a conditional update: several
  processes polling at once collect it once) and applies each result whose target is
  unchanged. Each call is metered in the usage ledger at the batch price
  (`Purpose.BATCH`, charged to the target's owner, audited as an `AiCall`, and not
  counted against the owner's quota). Items that errored, expired or came back invalid
  go again in the job's next round, until `PARLEY_BATCH__ATTEMPTS` tries.
- **With the local model** the items run one after another on the background pool,
  through the limited provider like any call; a process that dies mid-job leaves the
  rest to the next poll (a lease per job).

PII redaction applies to what leaves for the batch API as it does to any call; the
placeholders are put back from the same request rebuilt when the results are read,
so no raw value is stored with the job. Every method that takes a principal is for
admins.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from parley.chat.batch.jobs import JobKind, Target
from parley.chat.gateway.redaction import restore
from parley.chat.gateway.usage import UsageService
from parley.core.audit_events import BatchJobChanged
from parley.core.background import Defer
from parley.core.config import BatchSettings
from parley.core.domain import CallOutcome, Principal, Purpose, require_admin
from parley.core.errors import InvalidInput, NotFound, ParleyError, ProviderError
from parley.core.llm import (
    BatchClient,
    BatchOutcome,
    CallMeta,
    CallRecord,
    ChatProvider,
    ChatRequest,
    StreamEnd,
    TextDelta,
    Usage,
)
from parley.store.audit import actor_of, append_in
from parley.store.db import Database
from parley.store.models import BatchItem, BatchJob
from parley.store.shared import release_lease, renew_lease, try_lease

log = logging.getLogger(__name__)

Redact = Callable[[ChatRequest], tuple[ChatRequest, dict[str, str]]]

LOCAL_LEASE_S = 600.0  # renewed after each item; a dead process's job is resumed after it
OPEN_STATES = ("running", "collecting")
STALE_COLLECTING_S = 900  # a process that died collecting: another takes the job over
INVALID = "invalid: "  # an item's error when its answer failed validation


def _again(item: BatchItem) -> str:
    """Why the item's last answer was not valid ("" if it was not an invalid answer)."""
    return item.error.removeprefix(INVALID) if item.error.startswith(INVALID) else ""


@dataclass(frozen=True, slots=True)
class JobView:
    """A job as the page and the command line show it."""

    id: int
    kind: str
    runner: str  # "api" or "local"
    state: str
    model: str
    round: int
    items: int
    done: int
    skipped: int
    failed: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    note: str

    @property
    def finished(self) -> int:
        return self.done + self.skipped + self.failed

    @property
    def open(self) -> bool:
        return self.state in OPEN_STATES


class BatchService:
    def __init__(
        self,
        database: Database,
        *,
        kinds: dict[str, JobKind],
        settings: BatchSettings,
        usage: UsageService,
        provider: ChatProvider,
        client: Callable[[], BatchClient | None],
        defer: Defer,
        redact: Redact | None = None,
    ) -> None:
        self._db = database
        self._kinds = kinds
        self._settings = settings
        self._usage = usage
        self._provider = provider  # the local path: the limited provider, metered
        self._client = client  # made on first use (Claude's module loads the SDK)
        self._defer = defer
        self._redact = redact

    @property
    def kinds(self) -> dict[str, str]:
        """Each kind's name and what it does."""
        return {name: kind.description for name, kind in self._kinds.items()}

    # -- what admins call -----------------------------------------------------------------

    def submit(self, principal: Principal, kind: str) -> JobView | None:
        """Plan and send a job of `kind`; None when nothing needs it."""
        require_admin(principal)
        chosen = self._kinds.get(kind)
        if chosen is None:
            raise InvalidInput(
                f"There is no batch job {kind!r}: choose one of {', '.join(sorted(self._kinds))}."
            )
        targets = chosen.targets(self._settings.max_items)
        if not targets:
            return None
        client = self._client()
        runner = "local" if client is None else "api"
        model = client.model if client is not None else self._provider.model
        with self._db.session(write_lock=True) as session:
            job = BatchJob(kind=kind, runner=runner, state="running", model=model)
            job.created_by = principal.user_id
            job.note = ""
            session.add(job)
            session.flush()
            session.add_all(
                BatchItem(
                    job_id=job.id,
                    custom_id=f"{kind}-{t.id}",
                    target_id=t.id,
                    fingerprint=t.fingerprint,
                    state="pending",
                    attempts=0,
                    error="",
                    input_tokens=0,
                    output_tokens=0,
                    cost_usd=0.0,
                )
                for t in targets
            )
            event = BatchJobChanged(
                job_id=job.id, job_kind=kind, action="submitted", runner=runner, items=len(targets)
            )
            append_in(session, event, **actor_of(principal))
            job_id = job.id
        if client is not None:
            self._send(job_id, client)
        else:
            self._defer(lambda: self.run_local(job_id), f"batch job {job_id}")
        return self._view(job_id)

    def jobs(self, principal: Principal, *, limit: int = 20) -> list[JobView]:
        """The newest jobs first."""
        require_admin(principal)
        with self._db.session() as session:
            ids = session.scalars(select(BatchJob.id).order_by(BatchJob.id.desc()).limit(limit))
            found = list(ids)
        return [self._view(job_id) for job_id in found]

    def job(self, principal: Principal, job_id: int) -> JobView:
        require_admin(principal)
        return self._view(job_id)

    def collect(self, principal: Principal, job_id: int) -> JobView:
        """Ask whether the job's batch has ended and, if so, apply its results now (and
        send its failed items again); a job whose batch could not be sent is sent again."""
        require_admin(principal)
        self._view(job_id)  # NotFound first
        self.advance(job_id)
        return self._view(job_id)

    def cancel(self, principal: Principal, job_id: int) -> JobView:
        """Stop an open job: its batch is cancelled, and items not yet answered are left."""
        require_admin(principal)
        view = self._view(job_id)
        if not view.open:
            raise InvalidInput(f"Batch job {job_id} has already ended ({view.state}).")
        with self._db.session(write_lock=True) as session:
            job = session.get(BatchJob, job_id)
            assert job is not None
            batch_id, runner = job.provider_batch_id, job.runner
            job.state, job.ended_at, job.updated_at = "canceled", _now(), _now()
            job.note = f"Cancelled by {principal.name}."
            session.execute(
                update(BatchItem)
                .where(BatchItem.job_id == job_id, BatchItem.state.in_(("pending", "sent")))
                .values(state="failed", error="cancelled")
            )
            event = BatchJobChanged(
                job_id=job_id,
                job_kind=job.kind,
                action="canceled",
                runner=runner,
                items=view.items,
                cost_usd=view.cost_usd,
            )
            append_in(session, event, **actor_of(principal))
        client = self._client() if runner == "api" else None
        if client is not None and batch_id is not None:
            try:
                client.cancel(batch_id)
            except ProviderError as exc:  # it ends by itself within a day; nothing is applied
                log.warning("Could not cancel batch %s: %s", batch_id, exc)
        return self._view(job_id)

    # -- the background's part ------------------------------------------------------------

    def poll(self) -> None:
        """Advance every open job: batches that have ended are collected, and local jobs
        whose process went away are resumed (the app calls this every poll interval)."""
        stale = datetime.fromtimestamp(_now().timestamp() - STALE_COLLECTING_S, UTC)
        with self._db.session(write_lock=True) as session:  # its collector died
            session.execute(
                update(BatchJob)
                .where(BatchJob.state == "collecting", BatchJob.updated_at < stale)
                .values(state="running")
            )
        with self._db.session() as session:
            open_jobs = list(
                session.execute(
                    select(BatchJob.id, BatchJob.runner).where(BatchJob.state == "running")
                )
            )
        for job_id, runner in open_jobs:
            try:
                if runner == "local":
                    self.run_local(job_id)
                else:
                    self.advance(job_id)
            except ParleyError as exc:
                log.warning("Batch job %s: %s", job_id, exc.user_message)

    def advance(self, job_id: int) -> None:
        """One step of an API job: send it if it is not out, else poll it and collect it
        once its batch has ended (one process: the job is claimed by a conditional update)."""
        client = self._client()
        with self._db.session() as session:
            job = session.get(BatchJob, job_id)
            if job is None or job.runner != "api" or job.state != "running":
                return
            batch_id = job.provider_batch_id
        if client is None:
            self._note(job_id, "Claude is no longer configured: the batch cannot be read.")
            return
        if batch_id is None:  # it could not be sent last time
            self._send(job_id, client)
            return
        progress = client.progress(batch_id)
        if not progress.ended:
            self._note(job_id, f"{progress.processing} request(s) still processing.")
            return
        with self._db.session(write_lock=True) as session:
            claimed = session.execute(
                update(BatchJob)
                .where(
                    BatchJob.id == job_id,
                    BatchJob.state == "running",
                    BatchJob.provider_batch_id == batch_id,
                )
                .values(state="collecting", updated_at=_now())
            )
            if not claimed.rowcount:  # type: ignore[attr-defined]
                return  # another process is collecting it
        try:
            self._collect(job_id, batch_id, client)
        except ParleyError:
            with self._db.session(write_lock=True) as session:  # the next poll tries again
                session.execute(
                    update(BatchJob).where(BatchJob.id == job_id).values(state="running")
                )
            raise
        self._next_round(job_id, client)

    def run_local(self, job_id: int) -> None:
        """Answer the job's pending items on the local model, one at a time."""
        name = f"batch job {job_id}"
        token = try_lease(self._db, name, LOCAL_LEASE_S)
        if token is None:
            return  # another task or process runs it
        try:
            kind = self._kind_of(job_id)
            while (item := self._next_local(job_id)) is not None:
                self._run_one(job_id, kind, item)
                if not renew_lease(self._db, name, token, LOCAL_LEASE_S):
                    return  # taken over after a stall: leave the rest to its taker
            self._finish(job_id)
        finally:
            release_lease(self._db, name, token)

    # -- inside --------------------------------------------------------------------------

    def _kind_of(self, job_id: int) -> JobKind:
        with self._db.session() as session:
            kind = session.scalar(select(BatchJob.kind).where(BatchJob.id == job_id))
        if kind is None or kind not in self._kinds:
            raise NotFound(
                user_message=f"Batch job {job_id} is of a kind this version does not know."
            )
        return self._kinds[kind]

    def _window(self) -> int:
        return self._provider.context_window

    def _requests(self, job_id: int) -> Iterator[tuple[BatchItem, ChatRequest]]:
        """The pending items' requests (items whose target changed are skipped here)."""
        kind = self._kind_of(job_id)
        with self._db.session() as session:
            items = list(
                session.scalars(
                    select(BatchItem)
                    .where(BatchItem.job_id == job_id, BatchItem.state == "pending")
                    .order_by(BatchItem.id)
                )
            )
            session.expunge_all()
        for item in items:
            request = kind.request(
                Target(item.target_id, item.fingerprint), window=self._window(), again=_again(item)
            )
            if request is None:
                self._set(item.id, state="skipped", error="changed or gone before it was sent")
                continue
            yield item, request

    def _send(self, job_id: int, client: BatchClient) -> None:
        """Send the job's pending items as one batch."""
        pairs = [
            (item, self._redact(request)[0] if self._redact else request)
            for item, request in self._requests(job_id)
        ]
        if not pairs:
            self._finish(job_id)
            return
        try:
            batch_id = client.submit([(item.custom_id, request) for item, request in pairs])
        except ProviderError as exc:
            again = " It is sent again at the next poll." if exc.retryable else ""
            with self._db.session(write_lock=True) as session:
                session.execute(
                    update(BatchJob)
                    .where(BatchJob.id == job_id)
                    .values(
                        provider_batch_id=None,
                        state="running" if exc.retryable else "failed",
                        ended_at=None if exc.retryable else _now(),
                        updated_at=_now(),
                        note=f"Not sent: {exc.user_message}{again}",
                    )
                )
            log.warning("Batch job %s was not sent: %s", job_id, exc)
            return
        with self._db.session(write_lock=True) as session:
            session.execute(
                update(BatchJob)
                .where(BatchJob.id == job_id)
                .values(
                    provider_batch_id=batch_id,
                    state="running",
                    updated_at=_now(),
                    note=f"Sent as {batch_id}.",
                )
            )
            session.execute(
                update(BatchItem)
                .where(BatchItem.id.in_([item.id for item, _ in pairs]))
                .values(state="sent", attempts=BatchItem.attempts + 1)
            )

    def _collect(self, job_id: int, batch_id: str, client: BatchClient) -> None:
        kind = self._kind_of(job_id)
        with self._db.session() as session:
            items = {
                item.custom_id: item
                for item in session.scalars(
                    select(BatchItem).where(BatchItem.job_id == job_id, BatchItem.state == "sent")
                )
            }
            sent_at = session.scalar(select(BatchJob.updated_at).where(BatchJob.id == job_id))
            session.expunge_all()
        for outcome in client.outcomes(batch_id):
            item = items.pop(outcome.custom_id, None)
            if item is None:
                continue  # not this round's (or already settled)
            self._settle(kind, item, outcome, batch_id, _aware(sent_at) or _now())
        for item in items.values():  # the API returned nothing for it
            self._retry_or_fail(item, "no result came back")

    def _settle(
        self,
        kind: JobKind,
        item: BatchItem,
        outcome: BatchOutcome,
        batch_id: str,
        sent_at: datetime,
    ) -> None:
        target = Target(item.target_id, item.fingerprint)
        request = kind.request(target, window=self._window(), again=_again(item))
        if outcome.text is None:
            self._retry_or_fail(item, outcome.error or "no answer")
            return
        meta = request.meta if request is not None else None
        call = CallRecord(
            meta=meta if meta is not None else CallMeta(Purpose.BATCH),  # its target went
            model=outcome.model,
            usage=outcome.usage,
            outcome=CallOutcome.COMPLETE,
            started_at=sent_at,
            ended_at=_now(),
            call_id=hashlib.sha256(f"batch:{batch_id}:{item.custom_id}".encode()).hexdigest()[:32],
            batch=True,
        )
        self._usage.record(call)  # the ledger (at the batch price) and the audit's AiCall
        cost = self._usage.cost(call)
        self._add_usage(item.id, outcome.usage, cost)
        if request is None:
            self._set(item.id, state="skipped", error="changed or gone while it was answered")
            return
        text = outcome.text
        if self._redact is not None:  # the placeholders of the same request, rebuilt
            text = restore(text, self._redact(request)[1])
        self._apply(kind, item, target, text, outcome.model)

    def _apply(self, kind: JobKind, item: BatchItem, target: Target, text: str, model: str) -> None:
        applied = kind.apply(target, text, model)
        if applied.outcome == "invalid":  # asked again, told why
            self._retry_or_fail(item, INVALID + applied.reason)
        else:
            self._set(item.id, state=applied.outcome, error="")

    def _retry_or_fail(self, item: BatchItem, reason: str) -> None:
        with self._db.session() as session:
            attempts = session.scalar(select(BatchItem.attempts).where(BatchItem.id == item.id))
        again = (attempts or 0) < self._settings.attempts
        self._set(item.id, state="pending" if again else "failed", error=reason[:300])

    def _next_round(self, job_id: int, client: BatchClient) -> None:
        with self._db.session(write_lock=True) as session:
            pending = session.scalar(
                select(func.count(BatchItem.id)).where(
                    BatchItem.job_id == job_id, BatchItem.state == "pending"
                )
            )
            if pending:
                session.execute(
                    update(BatchJob)
                    .where(BatchJob.id == job_id)
                    .values(state="running", round=BatchJob.round + 1, provider_batch_id=None)
                )
        if pending:
            self._send(job_id, client)
        else:
            self._finish(job_id)

    def _next_local(self, job_id: int) -> BatchItem | None:
        with self._db.session() as session:
            state = session.scalar(select(BatchJob.state).where(BatchJob.id == job_id))
            if state != "running":
                return None  # cancelled
            item = session.scalar(
                select(BatchItem)
                .where(BatchItem.job_id == job_id, BatchItem.state == "pending")
                .order_by(BatchItem.attempts, BatchItem.id)
                .limit(1)
            )
            if item is not None:
                session.expunge(item)
            return item

    def _run_one(self, job_id: int, kind: JobKind, item: BatchItem) -> None:
        target = Target(item.target_id, item.fingerprint)
        request = kind.request(target, window=self._window(), again=_again(item))
        if request is None:
            self._set(item.id, state="skipped", error="changed or gone before it was run")
            return
        with self._db.session(write_lock=True) as session:
            session.execute(
                update(BatchItem)
                .where(BatchItem.id == item.id)
                .values(attempts=BatchItem.attempts + 1)
            )
        parts: list[str] = []
        usage = Usage()
        model = self._provider.model
        try:
            for event in self._provider.stream(request):
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                elif isinstance(event, StreamEnd):
                    usage, model = event.usage, event.model
        except ProviderError as exc:
            self._retry_or_fail(item, exc.user_message)
            return
        self._add_usage(item.id, usage, 0.0)  # metered (and priced) by the limited provider
        self._apply(kind, item, target, "".join(parts), model)
        self._note(job_id, "")

    def _finish(self, job_id: int) -> None:
        view = self._view(job_id)
        with self._db.session(write_lock=True) as session:
            ended = session.execute(
                update(BatchJob)
                .where(BatchJob.id == job_id, BatchJob.state.in_(OPEN_STATES))
                .values(state="done", ended_at=_now(), updated_at=_now(), note="")
            )
            if ended.rowcount:  # type: ignore[attr-defined]
                event = BatchJobChanged(
                    job_id=job_id,
                    job_kind=view.kind,
                    action="ended",
                    runner=view.runner,
                    items=view.items,
                    cost_usd=view.cost_usd,
                )
                append_in(session, event, **actor_of(None))

    def _set(self, item_id: int, *, state: str, error: str) -> None:
        with self._db.session(write_lock=True) as session:
            session.execute(
                update(BatchItem).where(BatchItem.id == item_id).values(state=state, error=error)
            )

    def _add_usage(self, item_id: int, usage: Usage, cost: float) -> None:
        with self._db.session(write_lock=True) as session:
            session.execute(
                update(BatchItem)
                .where(BatchItem.id == item_id)
                .values(
                    input_tokens=BatchItem.input_tokens + usage.input_tokens,
                    output_tokens=BatchItem.output_tokens + usage.output_tokens,
                    cost_usd=BatchItem.cost_usd + cost,
                )
            )

    def _note(self, job_id: int, note: str) -> None:
        with self._db.session(write_lock=True) as session:
            session.execute(
                update(BatchJob).where(BatchJob.id == job_id).values(note=note, updated_at=_now())
            )

    def _view(self, job_id: int) -> JobView:
        with self._db.session() as session:
            job = session.get(BatchJob, job_id)
            if job is None:
                raise NotFound(user_message=f"There is no batch job {job_id}.")
            return _view_of(session, job)


def _view_of(session: Session, job: BatchJob) -> JobView:
    counts = dict(
        session.execute(
            select(BatchItem.state, func.count(BatchItem.id))
            .where(BatchItem.job_id == job.id)
            .group_by(BatchItem.state)
        ).all()
    )
    tokens_in, tokens_out, cost = session.execute(
        select(
            func.coalesce(func.sum(BatchItem.input_tokens), 0),
            func.coalesce(func.sum(BatchItem.output_tokens), 0),
            func.coalesce(func.sum(BatchItem.cost_usd), 0.0),
        ).where(BatchItem.job_id == job.id)
    ).one()
    return JobView(
        id=job.id,
        kind=job.kind,
        runner=job.runner,
        state=job.state,
        model=job.model,
        round=job.round,
        items=sum(counts.values()),
        done=counts.get("done", 0),
        skipped=counts.get("skipped", 0),
        failed=counts.get("failed", 0),
        input_tokens=int(tokens_in),
        output_tokens=int(tokens_out),
        cost_usd=float(cost),
        created_at=job.created_at,
        updated_at=job.updated_at,
        ended_at=job.ended_at,
        note=job.note,
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime | None) -> datetime | None:
    """A stored time in UTC (SQLite gives it back without its zone)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


__all__ = ["BatchService", "JobView"]
