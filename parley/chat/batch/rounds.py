"""Batch jobs through Claude's Message Batches API: sending a round, finding a send
whose answer was lost, and collecting an ended batch (`parley.chat.batch.service` says
when each runs, and under which claim)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, select, update

from parley.chat.batch.jobs import JobKind
from parley.chat.batch.state import (
    INTERNAL,
    JobStore,
    Lost,
    again,
    aware,
    now,
    rows,
    target,
)
from parley.chat.gateway.redaction import restore
from parley.chat.gateway.usage import UsageService
from parley.core.domain import CallOutcome, Purpose
from parley.core.errors import ProviderError, ProviderUnavailable
from parley.core.llm import (
    BATCH_CREATE_TIMEOUT_S,
    BatchClient,
    BatchOutcome,
    CallMeta,
    CallRecord,
    ChatProvider,
    ChatRequest,
)
from parley.store.db import Database
from parley.store.models import BatchItem, BatchJob

log = logging.getLogger(__name__)

# (request, counted) -> the request as it leaves, and its placeholders
Redact = Callable[[ChatRequest, bool], tuple[ChatRequest, dict[str, str]]]

MAX_BATCH_BYTES = 100 * 1024 * 1024  # of one batch's requests (the API takes 256 MB)
MAX_BATCH_REQUESTS = 100_000  # the API's most per batch
HEARTBEAT_EVERY = 100  # items between heartbeats while a batch is built
SEND_RETRY_FOR = timedelta(hours=24)  # a send refused for a while is tried this long


class ApiRounds:
    def __init__(
        self,
        database: Database,
        store: JobStore,
        *,
        usage: UsageService,
        provider: ChatProvider,
        client: Callable[[], BatchClient | None],
        redact: Redact | None,
    ) -> None:
        self._db = database
        self._store = store
        self._usage = usage
        self._provider = provider
        self._client = client
        self._redact = redact

    def _window(self) -> int:
        return self._provider.context_window

    def send(self, job_id: int, client: BatchClient, claim: str) -> None:
        """Send the job's pending items as one batch (as many as one batch holds). The
        caller holds the job's `sending` claim."""
        job = self._store.job(job_id)
        if job is None:
            return
        if job.attempt_at is not None and self.adopted(job, client, claim):
            return
        kind = self._store.kind_of(job_id)
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
                self._store.beat(job_id, claim)
            try:
                request = kind.request(target(item), window=self._window(), again=again(item))
                if request is not None and self._redact is not None:
                    request = self._redact(request, True)[0]
            except Exception:  # one bad target never stops the job
                log.exception("Batch job %s: item %s could not be built", job_id, item.custom_id)
                self._store.end_item(item.id, job_id, "failed", INTERNAL, from_state="pending")
                continue
            if request is None:
                self._store.end_item(
                    item.id, job_id, "skipped", "changed or gone", from_state="pending"
                )
                continue
            size += request_bytes(request)
            if pairs and (size > MAX_BATCH_BYTES or len(pairs) >= MAX_BATCH_REQUESTS):
                break  # the rest go in the next round
            pairs.append((item, request))
        current = self._store.job(job_id)
        if current is None or current.claim != claim:
            raise Lost
        if not pairs or current.cancel_requested:
            self._store.finish(job_id, ("sending",), held=claim)
            return
        ids = [item.id for item, _ in pairs]
        with self._db.session(write_lock=True) as session:  # marked first: its fate is known
            marked = session.execute(
                update(BatchJob)
                .where(BatchJob.id == job_id, BatchJob.claim == claim)
                .values(attempt_at=now(), attempt_size=len(pairs), updated_at=now())
            )
            if not rows(marked):
                raise Lost
            session.execute(
                update(BatchItem)
                .where(BatchItem.id.in_(ids), BatchItem.state == "pending")
                .values(state="sent", attempts=BatchItem.attempts + 1)
            )
        try:
            batch_id = client.submit([(item.custom_id, request) for item, request in pairs])
        except ProviderError as exc:
            if not isinstance(exc, ProviderUnavailable):  # surely not made: the items go back
                self.unsend(job_id, claim)
            self.refused(job_id, claim, exc)
            return
        if not self.sent(job_id, claim, batch_id):
            # Taken back meanwhile: whoever holds it now finds this batch (`_adopted`).
            log.warning(
                "Batch job %s: %s was sent after its claim was taken back.", job_id, batch_id
            )

    def sent(self, job_id: int, claim: str, batch_id: str) -> bool:
        with self._db.session(write_lock=True) as session:
            job = session.get(BatchJob, job_id)
            return rows(
                session.execute(
                    update(BatchJob)
                    .where(BatchJob.id == job_id, BatchJob.claim == claim)
                    .values(
                        state="running",
                        claim=None,
                        provider_batch_id=batch_id,
                        sent_at=job.attempt_at if job is not None else now(),
                        attempt_at=None,
                        attempt_size=0,
                        updated_at=now(),
                        send_failures=0,
                        refused_since=None,
                        note=f"Sent as {batch_id}.",
                    )
                )
            )

    def adopted(self, job: BatchJob, client: BatchClient, claim: str) -> bool:
        """After a send whose fate is unknown: the batch the API made of it, if it did
        (then the job runs on it), else its items go back to be sent now."""
        made = self.lost_send(job, client)
        if len(made) == 1:
            log.warning("Batch job %s: the API had made %s of an unanswered send.", job.id, made[0])
            return self.sent(job.id, claim, made[0])
        self.unsend(job.id, claim)
        return False

    def lost_send(self, job: BatchJob, client: BatchClient) -> list[str]:
        """Batches the API made of the job's send whose answer was lost: of its number of
        requests, made within the send's time, held by no job."""
        attempted = aware(job.attempt_at) or now()
        since = attempted - timedelta(minutes=2)
        until = attempted + timedelta(seconds=BATCH_CREATE_TIMEOUT_S + 120)
        with self._db.session() as session:
            held = set(
                session.scalars(
                    select(BatchJob.provider_batch_id).where(
                        BatchJob.provider_batch_id.is_not(None)
                    )
                )
            )
        return [
            batch_id
            for batch_id, total, made in client.recent(since)
            if total == job.attempt_size
            and batch_id not in held
            and (aware(made) or until) <= until
        ]

    def cancel_lost_send(self, job_id: int) -> None:
        """A job that ends with a send whose fate is unknown: a batch the API made of it
        is cancelled there (it is billed for what it answered before)."""
        job = self._store.job(job_id)
        client = self._client()
        if job is None or job.attempt_at is None or client is None:
            return
        try:
            for batch_id in self.lost_send(job, client):
                client.cancel(batch_id)
        except ProviderError as exc:
            log.warning("Batch job %s: a lost send could not be looked for: %s", job_id, exc)

    def unsend(self, job_id: int, claim: str) -> None:
        """The items of a send the API did not take go back, their try not spent."""
        with self._db.session(write_lock=True) as session:
            held = session.execute(
                update(BatchJob)
                .where(BatchJob.id == job_id, BatchJob.claim == claim)
                .values(attempt_at=None, attempt_size=0)
            )
            if not rows(held):
                raise Lost
            session.execute(
                update(BatchItem)
                .where(BatchItem.job_id == job_id, BatchItem.state == "sent")
                .values(state="pending", attempts=BatchItem.attempts - 1)
            )

    def refused(self, job_id: int, claim: str, exc: ProviderError) -> None:
        job = self._store.job(job_id)
        if job is None:
            return
        unknown = isinstance(exc, ProviderUnavailable)
        if job.cancel_requested:
            if unknown:
                self.cancel_lost_send(job_id)
            self.unsend(job_id, claim)
            self._store.finish(job_id, ("sending",), held=claim, canceled=True)
            return
        since = aware(job.refused_since) or now()
        if exc.retryable and now() - since < SEND_RETRY_FOR:
            what = (
                "The batch's send went unanswered; the next poll looks for it at the API"
                " and sends it again if it was not made."
                if unknown
                else "The next poll sends it again."
            )
            self._store.move(
                job_id,
                "sending",
                "planned",
                held=claim,
                claim_to=None,
                send_failures=job.send_failures + 1,
                refused_since=since,
                note=f"{what} ({exc.user_message})",
            )
            log.warning("Batch job %s was not sent: %s", job_id, exc)
            return
        if unknown:
            self.cancel_lost_send(job_id)
        self.unsend(job_id, claim)
        self._store.fail(job_id, f"Not sent: {exc.user_message}", held=claim)

    def cancel_at_api(self, job_id: int, batch_id: str) -> None:
        client = self._client()
        if client is None:
            return
        try:
            client.cancel(batch_id)
        except ProviderError as exc:  # asked again at the next poll; it ends within a day
            log.warning("Could not cancel batch %s: %s", batch_id, exc)
            return
        with self._db.session(write_lock=True) as session:
            session.execute(
                update(BatchJob)
                .where(BatchJob.id == job_id, BatchJob.provider_batch_id == batch_id)
                .values(cancel_sent=True)
            )

    def collect(
        self, job_id: int, batch_id: str, client: BatchClient, sent_at: datetime, claim: str
    ) -> None:
        kind = self._store.kind_of(job_id)
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
                self.settle(kind, job_id, item, outcome, batch_id, sent_at, claim)
        for item in items.values():  # the API returned nothing for it
            if self._store.claim_item(item.id, "sent", "settling", claim, job_id=job_id):
                self._store.retry_or_fail(item, job_id, claim, "no result came back")

    def settle(
        self,
        kind: JobKind,
        job_id: int,
        item: BatchItem,
        outcome: BatchOutcome,
        batch_id: str,
        sent_at: datetime,
        claim: str,
    ) -> None:
        if not self._store.claim_item(item.id, "sent", "settling", claim, job_id=job_id):
            return  # another collector has it
        if outcome.text is None:
            self._store.retry_or_fail(item, job_id, claim, outcome.error or "no answer")
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
            ended_at=now(),
            call_id=hashlib.sha256(f"batch:{batch_id}:{item.custom_id}".encode()).hexdigest()[:32],
            batch=True,
        )
        self._usage.record(call)  # the ledger (at the batch price) and the audit's AiCall
        cost = self._usage.cost(call)
        try:
            request = kind.request(target(item), window=self._window(), again=again(item))
            if request is None:
                self._store.end_item(
                    item.id,
                    job_id,
                    "skipped",
                    "changed or gone meanwhile",
                    claim=claim,
                    usage=outcome.usage,
                    cost=cost,
                )
                return
            text = outcome.text
            if self._redact is not None:  # the placeholders of the same request, rebuilt
                text = restore(text, self._redact(request, False)[1])
            self._store.apply(kind, job_id, item, text, outcome.model, claim, outcome.usage, cost)
        except Lost:
            raise
        except Exception:  # one bad item never stops the job
            log.exception("Batch job %s: item %s could not be applied", job_id, item.custom_id)
            self._store.end_item(
                item.id, job_id, "failed", INTERNAL, claim=claim, usage=outcome.usage, cost=cost
            )

    def next_round(self, job_id: int, client: BatchClient, claim: str) -> None:
        job = self._store.job(job_id)
        if job is None or job.claim != claim:
            raise Lost
        with self._db.session() as session:
            pending = session.scalar(
                select(func.count(BatchItem.id)).where(
                    BatchItem.job_id == job_id, BatchItem.state == "pending"
                )
            )
        if not pending or job.cancel_requested:
            self._store.finish(job_id, ("collecting",), held=claim)
            return
        if self._store.move(
            job_id,
            "collecting",
            "sending",
            held=claim,
            unless_canceled=True,
            round=BatchJob.round + 1,
            provider_batch_id=None,
            cancel_sent=False,
        ):
            self.send(job_id, client, claim)
        else:
            self._store.finish(job_id, ("collecting",), held=claim)  # canceled meanwhile


def request_bytes(request: ChatRequest) -> int:
    """About what the request weighs as JSON (its texts, quoted, and their framing)."""
    texts = [request.system] + [m.content for m in request.messages]
    texts += [t for m in request.messages for s in m.sources for t in s.texts]
    return int(sum(len(t.encode()) for t in texts) * 1.1) + 2048


__all__ = ["ApiRounds", "Redact"]
