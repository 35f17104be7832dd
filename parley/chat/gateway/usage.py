"""The usage ledger: the meter of every model call, and the reports read from it.

`usage_ledger` holds one append-only row per provider call (chat, continuation,
summary, title), written by the limited provider's meter (`record`) however the call
ended, with its cost (`Pricing`) and an audit record in the same transaction. Nothing
deletes from it, so erasing conversations never gives quota back (`quotas.py` counts
it). One row may change once: a row another process estimated for a call whose process
died mid-answer takes the real figures if that process comes back. A day is a UTC
calendar day.

Reports are for admins: another principal's call is `PermissionDenied`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from parley.chat.gateway.pricing import Pricing
from parley.chat.gateway.usage_report import UsageFact, UsageReport, UsageRow
from parley.core.audit_events import AiCall
from parley.core.domain import CallOutcome, Principal, Purpose, require_admin
from parley.core.errors import InvalidInput
from parley.core.llm import CallRecord
from parley.store.audit import append_in
from parley.store.db import Database
from parley.store.models import Conversation, Group, GroupMember, UsageEntry, User


def counts_as_message() -> ColumnElement[bool]:
    """A ledger row that counts as one of the user's messages: a chat call that got going."""
    return (UsageEntry.purpose == Purpose.CHAT) & (UsageEntry.outcome != CallOutcome.FAILED)


class UsageService:
    def __init__(self, database: Database, pricing: Pricing) -> None:
        self._db = database
        self._pricing = pricing

    def record(self, call: CallRecord) -> None:
        """Append one provider call to the ledger (the limited provider's `Meter`).

        A call that names only its conversation (a summary) is charged to the owner.
        """
        with self._db.session(write_lock=True) as session:
            self.record_in(session, call)

    def cost(self, call: CallRecord) -> float:
        """What the ledger charges for `call` (at the batch price for a batch's)."""
        return self._pricing.cost(call.model, call.usage, batch=call.batch)

    def record_in(self, session: Session, call: CallRecord) -> None:
        """`record` inside the caller's transaction (which holds the write lock)."""
        meta = call.meta
        recorded = session.scalar(select(UsageEntry).where(UsageEntry.call_id == call.call_id))
        if recorded is not None:  # a retry whose first write did commit
            if recorded.estimated and not call.estimated:
                self._correct(session, recorded, call)  # its process came back after all
            return
        user_id = meta.user_id
        if user_id is None and meta.conversation_id is not None:
            user_id = session.scalar(
                select(Conversation.user_id).where(Conversation.id == meta.conversation_id)
            )
        name = session.scalar(select(User.name).where(User.id == user_id)) if user_id else None
        cost = self.cost(call)
        entry = UsageEntry(
            user_id=user_id,
            user_name=name,
            conversation_id=meta.conversation_id,
            purpose=meta.purpose,
            outcome=call.outcome,
            model=call.model,
            input_tokens=call.usage.input_tokens,
            output_tokens=call.usage.output_tokens,
            cache_creation_input_tokens=call.usage.cache_creation_input_tokens,
            cache_read_input_tokens=call.usage.cache_read_input_tokens,
            cost_usd=cost,
            started_at=call.started_at,
            ended_at=call.ended_at,
            call_id=call.call_id,
            estimated=call.estimated,
            cache=call.cache,
            saved_input_tokens=call.saved.input_tokens,
            saved_output_tokens=call.saved.output_tokens,
            saved_usd=self._pricing.cost(call.model, call.saved) if call.cache == "hit" else 0.0,
        )
        session.add(entry)
        session.flush()
        _audit(session, entry, call)

    def _correct(self, session: Session, entry: UsageEntry, call: CallRecord) -> None:
        """The real figures of a call another process had metered by estimate (it took the
        call's process for dead); the audit trail records the correction."""
        entry.outcome = call.outcome
        entry.model = call.model
        entry.input_tokens = call.usage.input_tokens
        entry.output_tokens = call.usage.output_tokens
        entry.cache_creation_input_tokens = call.usage.cache_creation_input_tokens
        entry.cache_read_input_tokens = call.usage.cache_read_input_tokens
        entry.cost_usd = self._pricing.cost(call.model, call.usage)
        entry.ended_at = call.ended_at
        entry.estimated = False
        session.flush()
        _audit(session, entry, call)

    def by_user_and_day(
        self, principal: Principal, *, days: int = 7, now: datetime | None = None
    ) -> list[UsageRow]:
        """Totals per user per day over the last `days` UTC days, newest day first (the
        same aggregation as `report`): admins only. Users are named as they were when the
        calls were made, so erased users remain (as "user #ID")."""
        until = (now or datetime.now(UTC)).astimezone(UTC).date()
        since = until - timedelta(days=max(1, days) - 1)
        return self.report(principal, since=since, until=until).per_user_and_day()

    def report(self, principal: Principal, *, since: date, until: date) -> UsageReport:
        """Usage between two UTC days (both included) for chargeback, with the groups'
        members: admins only."""
        facts = self.facts(principal, since=since, until=until)
        with self._db.session() as session:
            rows = session.execute(
                select(Group.name, User.name)
                .join(GroupMember, GroupMember.group_id == Group.id)
                .join(User, User.id == GroupMember.user_id)
            ).all()
            groups: dict[str, list[str]] = {
                name: [] for name in session.scalars(select(Group.name))
            }
        for group, user in rows:
            groups[group].append(user)
        return UsageReport(since, until, tuple(facts), groups)

    def _utc_day(self) -> ColumnElement[Any]:
        """The UTC day a call ended. SQLite stores UTC already; PostgreSQL's date() of a
        timestamptz would use the session's time zone, so it is converted first."""
        if self._db.is_sqlite:
            return func.date(UsageEntry.ended_at)
        return func.date(func.timezone("UTC", UsageEntry.ended_at))

    def facts(self, principal: Principal, *, since: date, until: date) -> list[UsageFact]:
        """Calls, tokens and cost per UTC day, user, model and purpose between two days
        (both included), for chargeback charts: admins only."""
        require_admin(principal, "Only administrators see everyone's usage.")
        if since > until:
            raise InvalidInput("The first day comes after the last.")
        start = datetime.combine(since, time.min, UTC)
        end = datetime.combine(until + timedelta(days=1), time.min, UTC)
        day = self._utc_day()
        who = func.coalesce(UsageEntry.user_name, "(no user)")
        served = case((UsageEntry.cache == "hit", 1), else_=None)  # by the response cache
        with self._db.session() as session:
            rows = session.execute(
                select(
                    day,
                    who,
                    UsageEntry.model,
                    UsageEntry.purpose,
                    func.count(UsageEntry.id).filter(served.is_(None)),  # calls made
                    func.count(UsageEntry.id).filter(counts_as_message()),
                    func.coalesce(func.sum(UsageEntry.input_tokens), 0),
                    func.coalesce(func.sum(UsageEntry.output_tokens), 0),
                    func.coalesce(func.sum(UsageEntry.cache_read_input_tokens), 0),
                    func.coalesce(func.sum(UsageEntry.cache_creation_input_tokens), 0),
                    func.coalesce(func.sum(UsageEntry.cost_usd), 0.0),
                    func.count(UsageEntry.id).filter(served.is_not(None)),
                    func.count(UsageEntry.id).filter(UsageEntry.cache == "miss"),
                    func.coalesce(
                        func.sum(UsageEntry.saved_input_tokens + UsageEntry.saved_output_tokens),
                        0,
                    ),
                    func.coalesce(func.sum(UsageEntry.saved_usd), 0.0),
                )
                .where(UsageEntry.ended_at >= start, UsageEntry.ended_at < end)
                .group_by(day, who, UsageEntry.model, UsageEntry.purpose)
                .order_by(day, who)
            ).all()
        return [
            UsageFact(
                day=r[0] if isinstance(r[0], date) else date.fromisoformat(str(r[0])),
                user=r[1],
                model=r[2],
                purpose=str(r[3]),
                calls=int(r[4]),
                messages=int(r[5]),
                input_tokens=int(r[6]),
                output_tokens=int(r[7]),
                cache_read_tokens=int(r[8]),
                cache_write_tokens=int(r[9]),
                cost_usd=float(r[10]),
                cache_hits=int(r[11]),
                cache_misses=int(r[12]),
                saved_tokens=int(r[13]),
                saved_usd=float(r[14]),
            )
            for r in rows
        ]


def _audit(session: Session, entry: UsageEntry, call: CallRecord) -> None:
    """The call's audit record, as its ledger row now holds it."""
    append_in(
        session,
        AiCall(
            ledger_id=entry.id,
            conversation_id=entry.conversation_id,
            purpose=str(entry.purpose),
            model=entry.model,
            outcome=str(entry.outcome),
            input_tokens=entry.input_tokens,
            output_tokens=entry.output_tokens,
            cache_write_tokens=entry.cache_creation_input_tokens,
            cache_read_tokens=entry.cache_read_input_tokens,
            cost_usd=round(entry.cost_usd, 8),
            latency_ms=round((call.ended_at - call.started_at).total_seconds() * 1000),
        ),
        actor_id=entry.user_id,
        actor=entry.user_name or "system",
    )


__all__ = ["UsageService", "counts_as_message"]
