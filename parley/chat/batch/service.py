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

import logging
from collections.abc import Callable

from sqlalchemy import select, update

from parley.chat.batch.jobs import JobKind
from parley.chat.batch.local import LocalRuns
from parley.chat.batch.rounds import ApiRounds, Redact
from parley.chat.batch.state import CANCELED, JobStore, Lost, aware, now, rows, token
from parley.chat.batch.views import OPEN, JobView
from parley.chat.gateway.usage import UsageService
from parley.core.audit_events import BatchJobChanged
from parley.core.background import BackgroundWork
from parley.core.config import BatchSettings
from parley.core.domain import Principal, require_admin
from parley.core.errors import InvalidInput, ProviderError
from parley.core.llm import BatchClient, ChatProvider
from parley.store.audit import actor_of, append_in
from parley.store.db import Database
from parley.store.models import BatchJob
from parley.store.shared import release_lease, try_lease

log = logging.getLogger(__name__)

SUBMIT_LEASE_S = 600.0  # planning a job (a scan of conversations) takes less


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
        self._provider = provider
        self._client = client  # made on first use (Claude's module loads the SDK)
        self._capable = capable  # the provider may write summaries (not the 135M model)
        self._store = JobStore(database, kinds=kinds, settings=settings)
        self._rounds = ApiRounds(
            database, self._store, usage=usage, provider=provider, client=client, redact=redact
        )
        self._local = LocalRuns(
            database, self._store, provider=provider, work=work, settings=settings
        )

    @property
    def kinds(self) -> dict[str, str]:
        """Each kind's name and what it does."""
        return {name: kind.description for name, kind in self._kinds.items()}

    def close(self, timeout: float | None = 5.0) -> bool:
        """Stop local jobs after their current item (the next start resumes them)."""
        return self._local.close(timeout)

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
                f"The {kind} job needs Claude: the embedded model is not trusted with "
                "summaries or titles (it would replace better ones). Set an API key to run it."
            )
        lease = try_lease(self._db, "batch submit", SUBMIT_LEASE_S)
        if lease is None:
            raise InvalidInput("Another batch job is being submitted; try again in a moment.")
        try:
            model = client.model if client is not None else self._provider.model
            planned = self._store.plan(principal, chosen, api=client is not None, model=model)
        finally:
            release_lease(self._db, "batch submit", lease)
        if planned is None:
            return None
        job_id, claim = planned
        if client is not None:
            self._step(job_id, lambda: self._rounds.send(job_id, client, claim), claim)
        else:
            self._local.run_soon(job_id)
        return self._store.view(job_id)

    def jobs(self, principal: Principal, *, limit: int = 20) -> list[JobView]:
        """The newest jobs first."""
        require_admin(principal)
        with self._db.session() as session:
            found = list(
                session.scalars(select(BatchJob.id).order_by(BatchJob.id.desc()).limit(limit))
            )
        return [self._store.view(job_id) for job_id in found]

    def job(self, principal: Principal, job_id: int) -> JobView:
        require_admin(principal)
        return self._store.view(job_id)

    def collect(self, principal: Principal, job_id: int) -> JobView:
        """Ask whether the job's batch has ended and, if so, apply its results now (and
        send what goes again); a job not sent yet is sent."""
        require_admin(principal)
        self._store.view(job_id)  # NotFound first
        self._store.take_back_stale()
        self.advance(job_id)
        return self._store.view(job_id)

    def cancel(self, principal: Principal, job_id: int) -> JobView:
        """Stop an open job: a batch out is cancelled at the API (what it had answered is
        still collected and applied, as it is billed), and nothing more is sent."""
        require_admin(principal)
        view = self._store.view(job_id)
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
            if not rows(asked):
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
        self._rounds.cancel_lost_send(job_id)  # a send whose answer was lost, if made
        self._store.finish(job_id, ("planned",), canceled=True)  # nothing out: it ends now
        job = self._store.job(job_id)
        if job is not None and job.state == "running" and job.provider_batch_id is not None:
            self._rounds.cancel_at_api(job_id, job.provider_batch_id)
        return self._store.view(job_id)

    def poll(self) -> None:
        """Advance every open job (the app calls this every `BatchSettings.poll_s`): claims
        whose process went silent are taken back, batches that have ended are collected,
        refused sends are tried again, and local jobs whose process died are resumed. One
        job's trouble is logged and never stops the others'."""
        self._store.take_back_stale()
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
                self._local.run_soon(job_id)
                continue
            try:
                self.advance(job_id)
            except ProviderError as exc:
                log.warning("Batch job %s: %s", job_id, exc.user_message)
            except Exception:
                log.exception("Batch job %s could not be advanced", job_id)

    def advance(self, job_id: int) -> None:
        """One step of an API job: send it if it is planned, else poll it and, once its
        batch has ended, collect it (claimed by a conditional update: once)."""
        job = self._store.job(job_id)
        if job is None or job.runner != "api" or job.state not in ("planned", "running"):
            return
        client = self._client()
        if client is None:
            if job.cancel_requested:  # nothing can be asked of the API: it ends here
                self._store.finish(job_id, ("planned", "running"), canceled=True)
            else:
                self._store.note(job_id, "Claude is no longer configured: the job waits for a key.")
            return
        if job.state == "planned":
            if job.cancel_requested:
                self._rounds.cancel_lost_send(job_id)
                self._store.finish(job_id, ("planned",), canceled=True)
                return
            claim = token()
            if self._store.move(job_id, "planned", "sending", claim_to=claim, unless_canceled=True):
                self._step(job_id, lambda: self._rounds.send(job_id, client, claim), claim)
            return
        batch_id = job.provider_batch_id
        if batch_id is None:  # never the case: a running API job has its batch
            log.error("Batch job %s is running without a batch; it is planned again.", job_id)
            self._store.move(job_id, "running", "planned")
            return
        if job.cancel_requested and not job.cancel_sent:
            self._rounds.cancel_at_api(job_id, batch_id)
        try:
            progress = client.progress(batch_id)
        except ProviderError as exc:
            if exc.retryable:
                raise
            self._store.fail(
                job_id,
                f"The batch {batch_id} cannot be read: {exc.user_message}",
                state="running",
                batch_id=batch_id,
            )
            return
        if not progress.ended:
            self._store.note(job_id, f"{progress.processing} request(s) still processing.")
            return
        claim = token()
        if not self._store.move(job_id, "running", "collecting", batch_id=batch_id, claim_to=claim):
            return  # another process collects it (or a later round is out)
        sent_at = aware(job.sent_at) or now()

        def collect() -> None:
            try:
                self._rounds.collect(job_id, batch_id, client, sent_at, claim)
            except ProviderError as exc:
                if exc.retryable:  # the next poll reads it again
                    self._store.move(job_id, "collecting", "running", held=claim, claim_to=None)
                    raise
                note = f"The results of batch {batch_id} cannot be read: {exc.user_message}"
                self._store.fail(job_id, note, held=claim)
                return
            self._rounds.next_round(job_id, client, claim)

        self._step(job_id, collect, claim)

    def _step(self, job_id: int, step: Callable[[], None], claim: str) -> None:
        """Run a step under `claim`: a claim taken back meanwhile ends it quietly; any
        other failure gives the claim back at once (the next poll tries again) and is
        raised for the caller to log or say."""
        try:
            step()
        except Lost:
            log.info("Batch job %s: its claim was taken back; another process goes on.", job_id)
        except Exception as exc:
            sentence = exc.user_message if isinstance(exc, ProviderError) else "see the log"
            self._store.release(
                job_id, claim, f"A step broke off ({sentence}); the next poll tries again."
            )
            raise


__all__ = ["BatchService", "JobView"]
