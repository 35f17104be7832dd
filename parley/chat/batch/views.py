"""A batch job as the page and the command line show it, read from its items."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from parley.store.models import BatchItem, BatchJob

OPEN = ("planned", "sending", "running", "collecting")
INVALID = "invalid: "  # an item's error when its answer failed validation


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


def item_counts(session: Session, job_id: int) -> dict[str, int]:
    return dict(
        session.execute(
            select(BatchItem.state, func.count(BatchItem.id))
            .where(BatchItem.job_id == job_id)
            .group_by(BatchItem.state)
        ).all()
    )


def view_of(session: Session, job: BatchJob) -> JobView:
    counts = item_counts(session, job.id)
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


__all__ = ["INVALID", "OPEN", "JobView", "item_counts", "view_of"]
