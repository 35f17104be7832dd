"""Batch jobs' state, kept in the database: jobs and items, and every change of theirs
as a conditional update (see `parley.chat.batch.service` for the states).

`JobStore` is the only writer of `batch_jobs` and `batch_items`. A step that runs under
a claim (`sending`, `collecting`; an item's `settling` or `running`) names its claim in
every write; a write whose claim was taken back changes nothing and raises `Lost`, and
the step ends there (another process goes on with it).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from parley.chat.batch.jobs import JobKind, Target
from parley.chat.batch.views import INVALID, OPEN, JobView, item_counts, view_of
from parley.core.audit_events import BatchJobChanged
from parley.core.config import BatchSettings
from parley.core.domain import Principal
from parley.core.errors import NotFound
from parley.core.llm import Usage
from parley.store.audit import actor_of, append_in
from parley.store.db import Database
from parley.store.models import BatchItem, BatchJob

log = logging.getLogger(__name__)

BUSY_ITEMS = ("pending", "sent", "settling", "running")
STALE_S = 900  # a claim silent this long: its process died (or hangs), another takes over
CANCELED = "canceled"
NO_USAGE = Usage()
INTERNAL = "an internal error (see the log)"
KEEP = object()  # `_move`: leave the claim as it is


class Lost(Exception):
    """The claim this step ran under was taken back: another process goes on."""


def token() -> str:
    return secrets.token_hex(16)


def target(item: BatchItem) -> Target:
    return Target(item.target_id, item.fingerprint, item.owner_id)


def again(item: BatchItem) -> str:
    """Why the item's last answer was not valid ("" if it was not an invalid answer)."""
    return item.error.removeprefix(INVALID) if item.error.startswith(INVALID) else ""


class JobStore:
    def __init__(
        self, database: Database, *, kinds: dict[str, JobKind], settings: BatchSettings
    ) -> None:
        self._db = database
        self._kinds = kinds
        self._settings = settings

    def job(self, job_id: int) -> BatchJob | None:
        with self._db.session() as session:
            job = session.get(BatchJob, job_id)
            if job is not None:
                session.expunge(job)
            return job

    def kind_of(self, job_id: int) -> JobKind:
        job = self.job(job_id)
        if job is None or job.kind not in self._kinds:
            raise NotFound(user_message=f"Batch job {job_id} is of a kind this version lacks.")
        return self._kinds[job.kind]

    def view(self, job_id: int) -> JobView:
        with self._db.session() as session:
            job = session.get(BatchJob, job_id)
            if job is None:
                raise NotFound(user_message=f"There is no batch job {job_id}.")
            return view_of(session, job)

    def move(
        self,
        job_id: int,
        before: str,
        after: str,
        *,
        held: str | None = None,
        batch_id: str | None = None,
        claim_to: str | None | object = KEEP,
        unless_canceled: bool = False,
        **values: Any,
    ) -> bool:
        """The job from `before` to `after` (with `values`), if it is still `before` (and
        under the claim `held`, with the batch `batch_id` out, not canceled)."""
        conditions = [BatchJob.id == job_id, BatchJob.state == before]
        if held is not None:
            conditions.append(BatchJob.claim == held)
        if batch_id is not None:
            conditions.append(BatchJob.provider_batch_id == batch_id)
        if unless_canceled:
            conditions.append(BatchJob.cancel_requested.is_(False))
        if claim_to is not KEEP:
            values["claim"] = claim_to
        with self._db.session(write_lock=True) as session:
            return rows(
                session.execute(
                    update(BatchJob)
                    .where(*conditions)
                    .values(state=after, updated_at=now(), **values)
                )
            )

    def beat(self, job_id: int, claim: str) -> None:
        with self._db.session(write_lock=True) as session:
            beat = session.execute(
                update(BatchJob)
                .where(BatchJob.id == job_id, BatchJob.claim == claim)
                .values(updated_at=now())
            )
            if not rows(beat):
                raise Lost

    def note(self, job_id: int, note: str) -> None:
        with self._db.session(write_lock=True) as session:
            session.execute(update(BatchJob).where(BatchJob.id == job_id).values(note=note[:500]))

    def finish(
        self,
        job_id: int,
        states: Sequence[str],
        *,
        held: str | None = None,
        canceled: bool = False,
    ) -> bool:
        """End the job if it is in one of `states` (and, with `held`, under that claim):
        canceled (asked for), failed (nothing came of any item) or done. A job not
        canceled ends only once no item is waiting; a canceled one fails those."""
        with self._db.session(write_lock=True) as session:
            job = session.get(BatchJob, job_id)
            if job is None or job.state not in states or (held is not None and job.claim != held):
                return False
            canceled = canceled or job.cancel_requested
            counts = item_counts(session, job_id)
            if not canceled and any(counts.get(state) for state in BUSY_ITEMS):
                return False
            if canceled:
                session.execute(
                    update(BatchItem)
                    .where(BatchItem.job_id == job_id, BatchItem.state.in_(BUSY_ITEMS))
                    .values(state="failed", claim=None, error=CANCELED)
                )
            final = (
                CANCELED
                if canceled
                else "failed"
                if counts.get("failed") and not (counts.get("done") or counts.get("skipped"))
                else "done"
            )
            conditions = [BatchJob.id == job_id, BatchJob.state.in_(states)]
            if held is not None:
                conditions.append(BatchJob.claim == held)
            ended = session.execute(
                update(BatchJob)
                .where(*conditions)
                .values(state=final, claim=None, ended_at=now(), updated_at=now(), note="")
            )
            if rows(ended):
                self.audit_end(session, job_id, "ended")
                return True
            return False

    def audit_end(self, session: Session, job_id: int, action: str) -> None:
        job = session.get(BatchJob, job_id)
        assert job is not None
        view = view_of(session, job)
        event = BatchJobChanged(
            job_id=job_id,
            job_kind=view.kind,
            action=action,
            runner=view.runner,
            items=view.items,
            cost_usd=view.cost_usd,
        )
        append_in(session, event, **actor_of(None))

    def fail(
        self,
        job_id: int,
        note: str,
        *,
        held: str | None = None,
        state: str | None = None,
        batch_id: str | None = None,
    ) -> None:
        """End the job as failed, its unanswered items with it, on record: from the claim
        `held`, or from `state` (with `batch_id` out)."""
        conditions = [BatchJob.id == job_id]
        if held is not None:
            conditions.append(BatchJob.claim == held)
        if state is not None:
            conditions.append(BatchJob.state == state)
        if batch_id is not None:
            conditions.append(BatchJob.provider_batch_id == batch_id)
        with self._db.session(write_lock=True) as session:
            ended = session.execute(
                update(BatchJob)
                .where(*conditions, BatchJob.state.in_(OPEN))
                .values(
                    state="failed", claim=None, ended_at=now(), updated_at=now(), note=note[:500]
                )
            )
            if not rows(ended):
                return
            session.execute(
                update(BatchItem)
                .where(BatchItem.job_id == job_id, BatchItem.state.in_(BUSY_ITEMS))
                .values(state="failed", claim=None, error=note[:300])
            )
            self.audit_end(session, job_id, "failed")
        log.warning("Batch job %s failed: %s", job_id, note)

    def take_back_stale(self) -> None:
        """Claims whose process went silent for `STALE_S` go back: `sending` to planned
        (its items' send is looked for before it goes again), `collecting` to running
        (read again; items being applied go back to `sent`, each applied by whoever
        claims it next; the silent process, should it wake, writes nothing more)."""
        stale = now() - timedelta(seconds=STALE_S)
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
            with self._db.session(write_lock=True) as session:
                moved = session.execute(
                    update(BatchJob)
                    .where(
                        BatchJob.id == job_id,
                        BatchJob.state == state,
                        BatchJob.updated_at < stale,
                    )
                    .values(state=back, claim=None, updated_at=now())
                )
                if rows(moved) and state == "collecting":
                    session.execute(
                        update(BatchItem)
                        .where(BatchItem.job_id == job_id, BatchItem.state == "settling")
                        .values(state="sent", claim=None)
                    )
            if rows(moved):
                log.warning(
                    "Batch job %s was left %s by a silent process; taken back.", job_id, state
                )

    def claim_item(
        self, item_id: int, before: str, after: str, claim: str, *, job_id: int | None = None
    ) -> bool:
        """The item from `before` to `after` under `claim`; with `job_id`, only while the
        job itself is still under that claim (a collector taken back claims nothing)."""
        conditions = [BatchItem.id == item_id, BatchItem.state == before]
        if job_id is not None:
            conditions.append(
                BatchItem.job_id.in_(
                    select(BatchJob.id).where(BatchJob.id == job_id, BatchJob.claim == claim)
                )
            )
        with self._db.session(write_lock=True) as session:
            return rows(
                session.execute(
                    update(BatchItem).where(*conditions).values(state=after, claim=claim)
                )
            )

    def give_back(self, item_id: int, claim: str) -> None:
        """A claimed item back to `pending` with its try: it never reached the model."""
        with self._db.session(write_lock=True) as session:
            session.execute(
                update(BatchItem)
                .where(BatchItem.id == item_id, BatchItem.claim == claim)
                .values(state="pending", claim=None, attempts=BatchItem.attempts - 1)
            )

    def release(self, job_id: int, claim: str, note: str) -> None:
        """Give a claim back after a step broke: `sending` to planned, `collecting` to
        running (the next poll tries again), items it was applying back to `sent`."""
        with self._db.session(write_lock=True) as session:
            job = session.get(BatchJob, job_id)
            if job is None or job.claim != claim or job.state not in ("sending", "collecting"):
                return
            back = "planned" if job.state == "sending" else "running"
            session.execute(
                update(BatchJob)
                .where(BatchJob.id == job_id, BatchJob.claim == claim)
                .values(state=back, claim=None, updated_at=now(), note=note[:500])
            )
            session.execute(
                update(BatchItem)
                .where(BatchItem.job_id == job_id, BatchItem.claim == claim)
                .values(state="sent", claim=None)
            )

    def end_item(
        self,
        item_id: int,
        job_id: int,
        state: str,
        error: str,
        *,
        claim: str | None = None,
        from_state: str | None = None,
        usage: Usage = NO_USAGE,
        cost: float = 0.0,
    ) -> None:
        """An item's outcome and usage, and the job's heartbeat, in one transaction: from
        the item's claim (`claim`), or from `from_state` (unclaimed: being built)."""
        held = BatchItem.claim == claim if claim is not None else BatchItem.state == from_state
        with self._db.session(write_lock=True) as session:
            ended = session.execute(
                update(BatchItem)
                .where(BatchItem.id == item_id, held)
                .values(
                    state=state,
                    claim=None,
                    error=error[:300],
                    input_tokens=BatchItem.input_tokens + usage.input_tokens,
                    output_tokens=BatchItem.output_tokens + usage.output_tokens,
                    cost_usd=BatchItem.cost_usd + cost,
                )
            )
            if not rows(ended):
                raise Lost  # taken back meanwhile: another holds it
            if claim is not None:
                session.execute(
                    update(BatchJob)
                    .where(BatchJob.id == job_id, BatchJob.claim == claim)
                    .values(updated_at=now())
                )

    def retry_or_fail(
        self,
        item: BatchItem,
        job_id: int,
        claim: str,
        reason: str,
        usage: Usage = NO_USAGE,
        cost: float = 0.0,
    ) -> None:
        with self._db.session() as session:
            attempts = session.scalar(select(BatchItem.attempts).where(BatchItem.id == item.id))
        again = (attempts or 0) < self._settings.attempts
        state = "pending" if again else "failed"
        self.end_item(item.id, job_id, state, reason, claim=claim, usage=usage, cost=cost)

    def apply(
        self,
        kind: JobKind,
        job_id: int,
        item: BatchItem,
        text: str,
        model: str,
        claim: str,
        usage: Usage,
        cost: float,
    ) -> None:
        applied = kind.apply(target(item), text, model)
        if applied.outcome == "invalid":  # asked again, told why
            self.retry_or_fail(item, job_id, claim, INVALID + applied.reason, usage, cost)
        else:
            self.end_item(item.id, job_id, applied.outcome, "", claim=claim, usage=usage, cost=cost)

    def plan(
        self, principal: Principal, kind: JobKind, *, api: bool, model: str
    ) -> tuple[int, str] | None:
        """A new job of `kind` for its targets that no open job holds: its id and its
        claim (an API job is claimed for sending by its submitter); None: nothing to do."""
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
        runner = "api" if api else "local"
        claim = token()
        with self._db.session(write_lock=True) as session:
            job = BatchJob(
                kind=kind.name,
                runner=runner,
                # An API job is claimed for sending by its submitter at once.
                state="sending" if api else "running",
                claim=claim if api else None,
                model=model,
                round=1,
                created_by=principal.user_id,
                note="",
                cancel_requested=False,
                cancel_sent=False,
                send_failures=0,
                attempt_size=0,
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
            return job.id, claim


def rows(result: object) -> bool:
    return bool(getattr(result, "rowcount", 0))


def now() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime | None) -> datetime | None:
    """A stored time in UTC (SQLite gives it back without its zone)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
