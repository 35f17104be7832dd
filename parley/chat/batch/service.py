"""Batch jobs: work nobody waits for, sent in bulk at the batch price.

An admin submits a job of one kind (`parley.chat.batch.jobs`); its targets are planned
at once, one item each, leaving out targets an open job of the kind already holds.

**With Claude** the items go as Message Batches (`BatchClient`: create, poll, results,
cancel). Every step that changes a job is a conditional update of its state, so any
number of processes may poll at once and each step happens once:

    planned ──claim──▶ sending ──sent──▶ running ──ended──▶ collecting ─┬─▶ done
       ▲   (refused, retryable)│            ▲    (claim)     (next round)│   failed
       └───────────────────────┘            └── sending ◀────────────────┘   canceled

`sending` and `collecting` belong to the process that claimed them; `updated_at` is its
heartbeat, and a claim silent for `STALE_S` is taken back (a `collecting` job's items
being applied go back to `sent`, each applied by whoever claims it from `sent`). An item
that errored, expired or came back invalid goes again in the next round, until
`BatchSettings.attempts` tries; items past one batch's size go in the next round too.
A request the API refuses outright fails the job, with its sentence. Each answered call
is metered in the usage ledger at the batch price (`Purpose.BATCH`, charged to the
target's owner, audited as an `AiCall`, not counted against the owner's quota), once
(the ledger's call id is the batch's and the item's).

**Cancelling** asks: a batch out is cancelled at the API, and what it had answered
(billed) is still collected and applied; no further round is sent.

**Without a key** the items run one at a time on the local model, on the service's own
one-thread pool (the shared pool keeps its workers for the turns' upkeep), through the
limited provider like any call. A lease per job keeps two runners off it; an item is
claimed before it runs, so a crash costs one of its tries, and the next poll resumes a
job whose process died. Kinds that would overwrite better data (conversation
summaries) need a capable model and are refused on the embedded one.

PII redaction applies to what leaves for the batch API; the placeholders are put back
from the same request rebuilt at collection, so no raw value is kept with the job.
Every method that takes a principal is for admins.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from parley.chat.batch.jobs import JobKind, Target
from parley.chat.gateway.redaction import restore
from parley.chat.gateway.usage import UsageService
from parley.core.audit_events import BatchJobChanged
from parley.core.background import BackgroundWork
from parley.core.config import BatchSettings
from parley.core.domain import CallOutcome, Principal, Purpose, require_admin
from parley.core.errors import InvalidInput, NotFound, ProviderError
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

# (request, counted) -> the request as it leaves, and its placeholders
Redact = Callable[[ChatRequest, bool], tuple[ChatRequest, dict[str, str]]]

OPEN = ("planned", "sending", "running", "collecting")
BUSY_ITEMS = ("pending", "sent", "settling", "running")
STALE_S = 900  # a claim silent this long: its process died (or hangs), another takes over
LOCAL_LEASE_S = 600.0  # renewed after each local item
MAX_SEND_FAILURES = 5  # retryable refusals in a row before the job fails
MAX_BATCH_BYTES = 100 * 1024 * 1024  # of one batch's requests (the API takes 256 MB)
MAX_BATCH_REQUESTS = 100_000  # the API's most per batch
HEARTBEAT_EVERY = 100  # items between heartbeats while a batch is built
INVALID = "invalid: "  # an item's error when its answer failed validation
CANCELED = "canceled"
NO_USAGE = Usage()


def _again(item: BatchItem) -> str:
    """Why the item's last answer was not valid ("" if it was not an invalid answer)."""
    return item.error.removeprefix(INVALID) if item.error.startswith(INVALID) else ""


@dataclass(frozen=True, slots=True)
class JobView:
    """A job as the page and the command line show it."""

    id: int
    kind: str
    runner: str  # "api" or "local"
    state: str  # planned, sending, running, collecting, done, canceled, failed
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
    cancel_requested: bool
    errors: tuple[str, ...]  # why items failed, most frequent first (no text of theirs)

    @property
    def finished(self) -> int:
        return self.done + self.skipped + self.failed

    @property
    def is_open(self) -> bool:
        return self.state in OPEN

    @property
    def shown_state(self) -> str:
        return "canceling" if self.is_open and self.cancel_requested else self.state


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
        work: BackgroundWork,
        capable: bool = True,
        redact: Redact | None = None,
    ) -> None:
        self._db = database
        self._kinds = kinds
        self._settings = settings
        self._usage = usage
        self._provider = provider  # the local path: the limited provider, metered
        self._client = client  # made on first use (Claude's module loads the SDK)
        self._work = work  # local jobs, on their own worker
        self._capable = capable  # the provider may write summaries (not the 135M model)
        self._redact = redact
        self._stopping = threading.Event()

    @property
    def kinds(self) -> dict[str, str]:
        """Each kind's name and what it does."""
        return {name: kind.description for name, kind in self._kinds.items()}

    def close(self, timeout: float | None = 5.0) -> bool:
        """Stop local jobs after their current item (the next start resumes them)."""
        self._stopping.set()
        return self._work.close(timeout)

    # -- what admins call -----------------------------------------------------------------

    def submit(self, principal: Principal, kind: str) -> JobView | None:
        """Plan and send a job of `kind`; None when nothing needs it."""
        require_admin(principal)
        chosen = self._kinds.get(kind)
        if chosen is None:
            raise InvalidInput(
                f"There is no batch job {kind!r}: choose one of {', '.join(sorted(self._kinds))}."
            )
        client = self._client()
        if client is None and chosen.needs_capable_model and not self._capable:
            raise InvalidInput(
                f"The {kind} job needs Claude: the embedded model would write worse "
                "summaries than those kept. Set an API key to run it."
            )
        token = try_lease(self._db, "batch submit", 120.0)
        if token is None:
            raise InvalidInput("Another batch job is being submitted; try again in a moment.")
        try:
            job_id = self._plan(principal, chosen, client)
        finally:
            release_lease(self._db, "batch submit", token)
        if job_id is None:
            return None
        if client is not None:
            self._send(job_id, client)
        else:
            self._run_soon(job_id)
        return self._view(job_id)

    def jobs(self, principal: Principal, *, limit: int = 20) -> list[JobView]:
        """The newest jobs first."""
        require_admin(principal)
        with self._db.session() as session:
            found = list(
                session.scalars(select(BatchJob.id).order_by(BatchJob.id.desc()).limit(limit))
            )
        return [self._view(job_id) for job_id in found]

    def job(self, principal: Principal, job_id: int) -> JobView:
        require_admin(principal)
        return self._view(job_id)

    def collect(self, principal: Principal, job_id: int) -> JobView:
        """Ask whether the job's batch has ended and, if so, apply its results now (and
        send what goes again); a job not sent yet is sent."""
        require_admin(principal)
        self._view(job_id)  # NotFound first
        self.advance(job_id)
        return self._view(job_id)

    def cancel(self, principal: Principal, job_id: int) -> JobView:
        """Stop an open job: a batch out is cancelled at the API (what it had answered is
        still collected and applied, as it is billed), and nothing more is sent."""
        require_admin(principal)
        view = self._view(job_id)
        with self._db.session(write_lock=True) as session:
            asked = session.execute(
                update(BatchJob)
                .where(
                    BatchJob.id == job_id,
                    BatchJob.state.in_(OPEN),
                    BatchJob.cancel_requested.is_(False),
                )
                .values(cancel_requested=True)
            )
            if not _rows(asked):
                if not view.is_open:
                    raise InvalidInput(f"Batch job {job_id} has already ended ({view.state}).")
                raise InvalidInput(f"Batch job {job_id} is already being canceled.")
            event = BatchJobChanged(
                job_id=job_id,
                job_kind=view.kind,
                action=CANCELED,
                runner=view.runner,
                items=view.items,
                cost_usd=view.cost_usd,
            )
            append_in(session, event, **actor_of(principal))
        self._finish(job_id, ("planned",), canceled=True)  # nothing out: it ends now
        if view.runner == "api":
            self._cancel_at_api(job_id)
        return self._view(job_id)

    # -- the background's part ------------------------------------------------------------

    def poll(self) -> None:
        """Advance every open job (the app calls this every `BatchSettings.poll_s`): claims
        whose process went silent are taken back, batches that have ended are collected,
        refused sends are tried again, and local jobs whose process died are resumed."""
        self._take_back_stale()
        with self._db.session() as session:
            open_jobs = list(
                session.execute(
                    select(BatchJob.id, BatchJob.runner).where(
                        BatchJob.state.in_(("planned", "running"))
                    )
                )
            )
        for job_id, runner in open_jobs:
            if runner == "local":
                self._run_soon(job_id)
                continue
            try:
                self.advance(job_id)
            except ProviderError as exc:
                log.warning("Batch job %s: %s", job_id, exc.user_message)

    def advance(self, job_id: int) -> None:
        """One step of an API job: send it if it is planned, else poll it and, once its
        batch has ended, collect it (claimed by a conditional update: once)."""
        job = self._job(job_id)
        if job is None or job.runner != "api" or job.state not in ("planned", "running"):
            return
        client = self._client()
        if client is None:
            self._note(job_id, "Claude is no longer configured: the job waits for a key.")
            return
        if job.state == "planned":
            if self._move(job_id, "planned", "sending"):
                self._send(job_id, client)
            return
        batch_id = job.provider_batch_id
        assert batch_id is not None  # running API jobs have one
        if job.cancel_requested:
            self._cancel_at_api(job_id)
        try:
            progress = client.progress(batch_id)
        except ProviderError as exc:
            if exc.retryable:
                raise
            self._fail(job_id, f"The batch {batch_id} cannot be read: {exc.user_message}")
            return
        if not progress.ended:
            self._note(job_id, f"{progress.processing} request(s) still processing.")
            return
        if not self._move(job_id, "running", "collecting", provider_batch_id=batch_id):
            return  # another process collects it
        try:
            self._collect(job_id, batch_id, client, _aware(job.sent_at) or _now())
        except ProviderError:
            self._move(job_id, "collecting", "running")  # the next poll reads it again
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
            with self._db.session(write_lock=True) as session:  # a runner that died mid-item
                for done_trying in (False, True):
                    spent = BatchItem.attempts >= self._settings.attempts
                    session.execute(
                        update(BatchItem)
                        .where(
                            BatchItem.job_id == job_id,
                            BatchItem.state == "running",
                            spent if done_trying else ~spent,
                        )
                        .values(
                            state="failed" if done_trying else "pending",
                            error="its process stopped while it ran" if done_trying else "",
                        )
                    )
            while not self._stopping.is_set():
                job = self._job(job_id)
                if job is None or job.state != "running":
                    return
                if job.cancel_requested:
                    self._finish(job_id, ("running",), canceled=True)
                    return
                item = self._claim_local(job_id)
                if item is None:
                    self._finish(job_id, ("running",))
                    return
                self._run_one(kind, item)
                if not renew_lease(self._db, name, token, LOCAL_LEASE_S):
                    return  # taken over after a stall: leave the rest to its taker
        finally:
            release_lease(self._db, name, token)

    # -- planning and sending -------------------------------------------------------------

    def _plan(self, principal: Principal, kind: JobKind, client: BatchClient | None) -> int | None:
        with self._db.session() as session:
            busy = set(
                session.scalars(
                    select(BatchItem.target_id)
                    .join(BatchJob, BatchJob.id == BatchItem.job_id)
                    .where(
                        BatchJob.kind == kind.name,
                        BatchJob.state.in_(OPEN),
                        BatchItem.state.in_(BUSY_ITEMS),
                    )
                )
            )
        limit = self._settings.max_items
        targets = [t for t in kind.targets(limit + len(busy)) if t.id not in busy][:limit]
        if not targets:
            return None
        runner = "local" if client is None else "api"
        model = client.model if client is not None else self._provider.model
        with self._db.session(write_lock=True) as session:
            job = BatchJob(
                kind=kind.name,
                runner=runner,
                # An API job is claimed for sending by its submitter at once.
                state="sending" if client is not None else "running",
                model=model,
                round=1,
                created_by=principal.user_id,
                note="",
                cancel_requested=False,
                send_failures=0,
            )
            session.add(job)
            session.flush()
            session.add_all(
                BatchItem(
                    job_id=job.id,
                    custom_id=f"{kind.name}-{t.id}",
                    target_id=t.id,
                    owner_id=t.owner_id,
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
                job_id=job.id,
                job_kind=kind.name,
                action="submitted",
                runner=runner,
                items=len(targets),
            )
            append_in(session, event, **actor_of(principal))
            return job.id

    def _send(self, job_id: int, client: BatchClient) -> None:
        """Send the job's pending items as one batch (as many as one batch holds). The
        caller holds the job's `sending` claim."""
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
        pairs: list[tuple[BatchItem, ChatRequest]] = []
        size = 0
        for n, item in enumerate(items, start=1):
            if n % HEARTBEAT_EVERY == 0:
                self._beat(job_id)
            request = kind.request(
                Target(item.target_id, item.fingerprint, item.owner_id),
                window=self._window(),
                again=_again(item),
            )
            if request is None:
                self._settled(item.id, job_id, state="skipped", error="changed or gone")
                continue
            if self._redact is not None:
                request = self._redact(request, True)[0]
            size += _request_bytes(request)
            if pairs and (size > MAX_BATCH_BYTES or len(pairs) >= MAX_BATCH_REQUESTS):
                break  # the rest go in the next round
            pairs.append((item, request))
        if not pairs:
            self._finish(job_id, ("sending",))
            return
        try:
            batch_id = client.submit([(item.custom_id, request) for item, request in pairs])
        except ProviderError as exc:
            self._refused(job_id, exc)
            return
        with self._db.session(write_lock=True) as session:
            sent = session.execute(
                update(BatchJob)
                .where(BatchJob.id == job_id, BatchJob.state == "sending")
                .values(
                    state="running",
                    provider_batch_id=batch_id,
                    sent_at=_now(),
                    updated_at=_now(),
                    send_failures=0,
                    note=f"Sent as {batch_id}.",
                )
            )
            if _rows(sent):
                session.execute(
                    update(BatchItem)
                    .where(
                        BatchItem.id.in_([item.id for item, _ in pairs]),
                        BatchItem.state == "pending",
                    )
                    .values(state="sent", attempts=BatchItem.attempts + 1)
                )
        if not _rows(sent):  # the claim was taken back meanwhile: this batch is nobody's
            log.warning("Batch job %s: its send was taken over; cancelling %s.", job_id, batch_id)
            try:
                client.cancel(batch_id)
            except ProviderError as exc:
                log.warning("Could not cancel batch %s: %s", batch_id, exc)

    def _refused(self, job_id: int, exc: ProviderError) -> None:
        job = self._job(job_id)
        failures = (job.send_failures if job else 0) + 1
        if exc.retryable and failures < MAX_SEND_FAILURES:
            self._move(
                job_id,
                "sending",
                "planned",
                send_failures=failures,
                note=f"Not sent: {exc.user_message} It is sent again at the next poll.",
            )
            log.warning("Batch job %s was not sent: %s", job_id, exc)
            return
        self._fail(job_id, f"Not sent: {exc.user_message}")

    def _fail(self, job_id: int, note: str) -> None:
        """End an open job as failed, its unanswered items with it, on record."""
        with self._db.session(write_lock=True) as session:
            ended = session.execute(
                update(BatchJob)
                .where(BatchJob.id == job_id, BatchJob.state.in_(OPEN))
                .values(state="failed", ended_at=_now(), updated_at=_now(), note=note[:500])
            )
            if not _rows(ended):
                return
            session.execute(
                update(BatchItem)
                .where(BatchItem.job_id == job_id, BatchItem.state.in_(BUSY_ITEMS))
                .values(state="failed", error=note[:300])
            )
            self._audit_end(session, job_id, "failed")
        log.warning("Batch job %s failed: %s", job_id, note)

    def _cancel_at_api(self, job_id: int) -> None:
        job = self._job(job_id)
        client = self._client()
        if job is None or client is None or job.provider_batch_id is None:
            return
        try:
            client.cancel(job.provider_batch_id)
        except ProviderError as exc:  # it ends by itself within a day; it is collected then
            log.warning("Could not cancel batch %s: %s", job.provider_batch_id, exc)

    # -- collecting -----------------------------------------------------------------------

    def _collect(self, job_id: int, batch_id: str, client: BatchClient, sent_at: datetime) -> None:
        kind = self._kind_of(job_id)
        outcomes = list(client.outcomes(batch_id))
        with self._db.session() as session:
            items = {
                item.custom_id: item
                for item in session.scalars(
                    select(BatchItem).where(BatchItem.job_id == job_id, BatchItem.state == "sent")
                )
            }
            session.expunge_all()
        for outcome in outcomes:
            item = items.pop(outcome.custom_id, None)
            if item is not None:  # else: not this round's, or settled already
                self._settle(kind, job_id, item, outcome, batch_id, sent_at)
        for item in items.values():  # the API returned nothing for it
            if self._claim(item.id, "sent", "settling"):
                self._retry_or_fail(item, job_id, "no result came back")

    def _settle(
        self,
        kind: JobKind,
        job_id: int,
        item: BatchItem,
        outcome: BatchOutcome,
        batch_id: str,
        sent_at: datetime,
    ) -> None:
        if not self._claim(item.id, "sent", "settling"):
            return  # another collector has it
        if outcome.text is None:
            self._retry_or_fail(item, job_id, outcome.error or "no answer")
            return
        call = CallRecord(
            meta=CallMeta(
                Purpose.BATCH,
                user_id=item.owner_id,
                conversation_id=item.target_id if kind.conversations else None,
            ),
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
        target = Target(item.target_id, item.fingerprint, item.owner_id)
        request = kind.request(target, window=self._window(), again=_again(item))
        if request is None:
            self._settled(
                item.id,
                job_id,
                state="skipped",
                error="changed or gone meanwhile",
                usage=outcome.usage,
                cost=cost,
            )
            return
        text = outcome.text
        if self._redact is not None:  # the placeholders of the same request, rebuilt
            text = restore(text, self._redact(request, False)[1])
        self._apply(kind, job_id, item, target, text, outcome.model, outcome.usage, cost)

    def _next_round(self, job_id: int, client: BatchClient) -> None:
        job = self._job(job_id)
        if job is None:
            return
        if job.cancel_requested:
            self._finish(job_id, ("collecting",), canceled=True)
            return
        with self._db.session() as session:
            pending = session.scalar(
                select(func.count(BatchItem.id)).where(
                    BatchItem.job_id == job_id, BatchItem.state == "pending"
                )
            )
        if not pending:
            self._finish(job_id, ("collecting",))
            return
        if self._move(
            job_id, "collecting", "sending", round=BatchJob.round + 1, provider_batch_id=None
        ):
            self._send(job_id, client)

    # -- the local model ------------------------------------------------------------------

    def _run_soon(self, job_id: int) -> None:
        self._work.submit(lambda: self.run_local(job_id), name=f"batch job {job_id}")

    def _claim_local(self, job_id: int) -> BatchItem | None:
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
                    .values(state="running", attempts=BatchItem.attempts + 1)
                )
            if _rows(claimed):
                item.attempts += 1
                return item

    def _run_one(self, kind: JobKind, item: BatchItem) -> None:
        job_id = item.job_id
        target = Target(item.target_id, item.fingerprint, item.owner_id)
        try:
            request = kind.request(target, window=self._window(), again=_again(item))
            if request is None:
                self._settled(item.id, job_id, state="skipped", error="changed or gone")
                return
            parts: list[str] = []
            usage, model = Usage(), self._provider.model
            for event in self._provider.stream(request):
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                elif isinstance(event, StreamEnd):
                    usage, model = event.usage, event.model
        except ProviderError as exc:
            self._retry_or_fail(item, job_id, exc.user_message)
            return
        except Exception:  # one bad item never stops the job; it has used one of its tries
            log.exception("Batch job %s: item %s failed", job_id, item.custom_id)
            self._retry_or_fail(item, job_id, "an internal error (see the log)")
            return
        # Metered, and priced, by the limited provider like any call.
        self._apply(kind, job_id, item, target, "".join(parts), model, usage, 0.0)

    # -- items ----------------------------------------------------------------------------

    def _apply(
        self,
        kind: JobKind,
        job_id: int,
        item: BatchItem,
        target: Target,
        text: str,
        model: str,
        usage: Usage,
        cost: float,
    ) -> None:
        applied = kind.apply(target, text, model)
        if applied.outcome == "invalid":  # asked again, told why
            self._retry_or_fail(item, job_id, INVALID + applied.reason, usage=usage, cost=cost)
        else:
            self._settled(item.id, job_id, state=applied.outcome, error="", usage=usage, cost=cost)

    def _retry_or_fail(
        self,
        item: BatchItem,
        job_id: int,
        reason: str,
        *,
        usage: Usage = NO_USAGE,
        cost: float = 0.0,
    ) -> None:
        with self._db.session() as session:
            attempts = session.scalar(select(BatchItem.attempts).where(BatchItem.id == item.id))
        again = (attempts or 0) < self._settings.attempts
        self._settled(
            item.id,
            job_id,
            state="pending" if again else "failed",
            error=reason,
            usage=usage,
            cost=cost,
        )

    def _settled(
        self,
        item_id: int,
        job_id: int,
        *,
        state: str,
        error: str,
        usage: Usage = NO_USAGE,
        cost: float = 0.0,
    ) -> None:
        """An item's outcome, its usage and the job's heartbeat, in one transaction."""
        with self._db.session(write_lock=True) as session:
            session.execute(
                update(BatchItem)
                .where(BatchItem.id == item_id)
                .values(
                    state=state,
                    error=error[:300],
                    input_tokens=BatchItem.input_tokens + usage.input_tokens,
                    output_tokens=BatchItem.output_tokens + usage.output_tokens,
                    cost_usd=BatchItem.cost_usd + cost,
                )
            )
            session.execute(update(BatchJob).where(BatchJob.id == job_id).values(updated_at=_now()))

    def _claim(self, item_id: int, before: str, after: str) -> bool:
        with self._db.session(write_lock=True) as session:
            return _rows(
                session.execute(
                    update(BatchItem)
                    .where(BatchItem.id == item_id, BatchItem.state == before)
                    .values(state=after)
                )
            )

    # -- jobs -----------------------------------------------------------------------------

    def _finish(self, job_id: int, states: Sequence[str], *, canceled: bool = False) -> None:
        """End the job if it is in one of `states`: canceled, failed (nothing came of any
        item) or done; its items not yet answered fail with it."""
        with self._db.session(write_lock=True) as session:
            job = session.get(BatchJob, job_id)
            if job is None or job.state not in states:
                return
            if canceled:
                session.execute(
                    update(BatchItem)
                    .where(BatchItem.job_id == job_id, BatchItem.state.in_(BUSY_ITEMS))
                    .values(state="failed", error=CANCELED)
                )
            counts = _counts(session, job_id)
            final = (
                CANCELED
                if canceled
                else "failed"
                if counts.get("failed") and not (counts.get("done") or counts.get("skipped"))
                else "done"
            )
            ended = session.execute(
                update(BatchJob)
                .where(BatchJob.id == job_id, BatchJob.state.in_(states))
                .values(state=final, ended_at=_now(), updated_at=_now(), note="")
            )
            if _rows(ended):
                self._audit_end(session, job_id, "ended")

    def _audit_end(self, session: Session, job_id: int, action: str) -> None:
        job = session.get(BatchJob, job_id)
        assert job is not None
        view = _view_of(session, job)
        event = BatchJobChanged(
            job_id=job_id,
            job_kind=view.kind,
            action=action,
            runner=view.runner,
            items=view.items,
            cost_usd=view.cost_usd,
        )
        append_in(session, event, **actor_of(None))

    def _take_back_stale(self) -> None:
        """Claims whose process went silent for `STALE_S` go back: `sending` to planned
        (sent again), `collecting` to running (read again; items being applied go back
        to `sent`, and each is applied by whoever claims it)."""
        stale = _now() - timedelta(seconds=STALE_S)
        with self._db.session() as session:
            found = list(
                session.execute(
                    select(BatchJob.id, BatchJob.state).where(
                        BatchJob.state.in_(("sending", "collecting")), BatchJob.updated_at < stale
                    )
                )
            )
        for job_id, state in found:
            back = "planned" if state == "sending" else "running"
            log.warning("Batch job %s was left %s by a silent process; taken back.", job_id, state)
            with self._db.session(write_lock=True) as session:
                moved = session.execute(
                    update(BatchJob)
                    .where(
                        BatchJob.id == job_id,
                        BatchJob.state == state,
                        BatchJob.updated_at < stale,
                    )
                    .values(state=back, updated_at=_now())
                )
                if _rows(moved) and state == "collecting":
                    session.execute(
                        update(BatchItem)
                        .where(BatchItem.job_id == job_id, BatchItem.state == "settling")
                        .values(state="sent")
                    )

    def _move(self, job_id: int, before: str, after: str, **values: Any) -> bool:
        """The job from `before` to `after` (with `values`), if it is still `before`."""
        with self._db.session(write_lock=True) as session:
            return _rows(
                session.execute(
                    update(BatchJob)
                    .where(BatchJob.id == job_id, BatchJob.state == before)
                    .values(state=after, updated_at=_now(), **values)
                )
            )

    def _beat(self, job_id: int) -> None:
        with self._db.session(write_lock=True) as session:
            session.execute(update(BatchJob).where(BatchJob.id == job_id).values(updated_at=_now()))

    def _note(self, job_id: int, note: str) -> None:
        with self._db.session(write_lock=True) as session:
            session.execute(update(BatchJob).where(BatchJob.id == job_id).values(note=note[:500]))

    def _job(self, job_id: int) -> BatchJob | None:
        with self._db.session() as session:
            job = session.get(BatchJob, job_id)
            if job is not None:
                session.expunge(job)
            return job

    def _kind_of(self, job_id: int) -> JobKind:
        job = self._job(job_id)
        if job is None or job.kind not in self._kinds:
            raise NotFound(user_message=f"Batch job {job_id} is of a kind this version lacks.")
        return self._kinds[job.kind]

    def _window(self) -> int:
        return self._provider.context_window

    def _view(self, job_id: int) -> JobView:
        with self._db.session() as session:
            job = session.get(BatchJob, job_id)
            if job is None:
                raise NotFound(user_message=f"There is no batch job {job_id}.")
            return _view_of(session, job)


def _counts(session: Session, job_id: int) -> dict[str, int]:
    return dict(
        session.execute(
            select(BatchItem.state, func.count(BatchItem.id))
            .where(BatchItem.job_id == job_id)
            .group_by(BatchItem.state)
        ).all()
    )


def _view_of(session: Session, job: BatchJob) -> JobView:
    counts = _counts(session, job.id)
    tokens_in, tokens_out, cost = session.execute(
        select(
            func.coalesce(func.sum(BatchItem.input_tokens), 0),
            func.coalesce(func.sum(BatchItem.output_tokens), 0),
            func.coalesce(func.sum(BatchItem.cost_usd), 0.0),
        ).where(BatchItem.job_id == job.id)
    ).one()
    errors = session.execute(
        select(BatchItem.error, func.count(BatchItem.id).label("n"))
        .where(BatchItem.job_id == job.id, BatchItem.state == "failed")
        .group_by(BatchItem.error)
        .order_by(func.count(BatchItem.id).desc())
        .limit(3)
    ).all()
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
        cancel_requested=job.cancel_requested,
        errors=tuple(f"{n} × {error.removeprefix(INVALID)}" for error, n in errors),
    )


def _request_bytes(request: ChatRequest) -> int:
    """About what the request weighs as JSON (its texts, quoted, and their framing)."""
    texts = [request.system] + [m.content for m in request.messages]
    texts += [t for m in request.messages for s in m.sources for t in s.texts]
    return int(sum(len(t.encode()) for t in texts) * 1.1) + 2048


def _rows(result: object) -> bool:
    return bool(getattr(result, "rowcount", 0))


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime | None) -> datetime | None:
    """A stored time in UTC (SQLite gives it back without its zone)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


__all__ = ["BatchService", "JobView"]
