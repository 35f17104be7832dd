"""Tokens, cost and per-user daily quotas; the meter of every model call.

A day is a UTC calendar day. Cost comes from the settings' price table (US dollars
per million tokens, cache writes and reads priced apart).

Everything is read from the usage ledger (`usage_ledger`), one append-only row per
provider call (chat, continuation, summary, title), written by the limited provider's
meter (`record`) however the call ended. Nothing deletes from it, so erasing
conversations never gives quota back. Quotas are atomic: a send `reserve`s its
estimated tokens (the prompt plus the output cap) under a write lock, counting the
ledger and every reservation in flight, and `release`s them when its answer ends.

Authorization is here: a user reads their own usage and quota; admins read and
set anyone's. Another user's figures give `NotFound`, admin-only calls `PermissionDenied`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.orm import Session

from parley.chat.gateway.usage_report import UsageFact, UsageReport, UsageRow
from parley.core.audit_events import AiCall, QuotaSet
from parley.core.config import ModelPrice, Settings
from parley.core.domain import CallOutcome, Principal, Purpose, require_admin
from parley.core.errors import InvalidInput, NotFound, QuotaExceeded, StorageError
from parley.core.llm import CallRecord, Usage
from parley.store.audit import actor_of, append_in
from parley.store.db import Database
from parley.store.models import (
    Conversation,
    Group,
    GroupMember,
    QuotaReservation,
    UsageEntry,
    User,
)

log = logging.getLogger(__name__)

# A reservation left by a process that died stops counting after this long.
RESERVATION_LIFETIME = timedelta(minutes=15)


def cost_usd(usage: Usage, price: ModelPrice) -> float:
    return (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_creation_input_tokens * price.cache_write
        + usage.cache_read_input_tokens * price.cache_read
    ) / 1_000_000


def day_start(moment: datetime) -> datetime:
    return datetime.combine(moment.astimezone(UTC).date(), time.min, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class DayUsage:
    messages: int
    tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class Quota:
    messages_per_day: int  # 0: no limit
    tokens_per_day: int


class UsageService:
    def __init__(self, database: Database, settings: Settings) -> None:
        self._db = database
        self._settings = settings

    def price(self, model: str) -> ModelPrice | None:
        price = self._settings.price_for(model)
        if price is None:
            log.warning("No price for model %s; its cost is recorded as 0.", model)
        return price

    def cost(self, model: str, usage: Usage) -> float:
        price = self.price(model)
        return cost_usd(usage, price) if price else 0.0

    def estimate_cost(self, model: str, *, input_tokens: int, output_tokens: int = 0) -> float:
        return self.cost(model, Usage(input_tokens=input_tokens, output_tokens=output_tokens))

    def record(self, call: CallRecord) -> None:
        """Append one provider call to the ledger (the limited provider's `Meter`).

        A call that names only its conversation (a summary) is charged to the owner.
        """
        meta = call.meta
        with self._db.session(write_lock=True) as session:
            if session.scalar(select(UsageEntry.id).where(UsageEntry.call_id == call.call_id)):
                return  # recorded already (a retry whose first write did commit)
            user_id = meta.user_id
            if user_id is None and meta.conversation_id is not None:
                user_id = session.scalar(
                    select(Conversation.user_id).where(Conversation.id == meta.conversation_id)
                )
            name = session.scalar(select(User.name).where(User.id == user_id)) if user_id else None
            cost = self.cost(call.model, call.usage)
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
            )
            session.add(entry)
            session.flush()
            append_in(
                session,
                AiCall(
                    ledger_id=entry.id,
                    conversation_id=meta.conversation_id,
                    purpose=str(meta.purpose),
                    model=call.model,
                    outcome=str(call.outcome),
                    input_tokens=call.usage.input_tokens,
                    output_tokens=call.usage.output_tokens,
                    cache_write_tokens=call.usage.cache_creation_input_tokens,
                    cache_read_tokens=call.usage.cache_read_input_tokens,
                    cost_usd=round(cost, 8),
                    latency_ms=round((call.ended_at - call.started_at).total_seconds() * 1000),
                ),
                actor_id=user_id,
                actor=name or "system",
            )

    def today(
        self, principal: Principal, user_id: int | None = None, *, now: datetime | None = None
    ) -> DayUsage:
        """A user's use today from the ledger (default: the principal's own).

        `messages` counts chat calls that reached the model (not failed ones);
        `tokens` and `cost_usd` count every call, summaries and titles included.
        """
        user_id = _visible_user(principal, user_id)
        with self._db.session() as session:
            return _used_today(session, user_id, day_start(now or datetime.now(UTC)))

    def stored_quota(
        self, principal: Principal, user_id: int | None = None
    ) -> tuple[int | None, int | None]:
        """A user's own overrides (None: the settings' default)."""
        user_id = _visible_user(principal, user_id)
        with self._db.session() as session:
            row = session.execute(
                select(User.quota_messages_per_day, User.quota_tokens_per_day).where(
                    User.id == user_id
                )
            ).first()
        if row is None:
            raise NotFound("user not found")
        return row.quota_messages_per_day, row.quota_tokens_per_day

    def quota(self, principal: Principal, user_id: int | None = None) -> Quota:
        """A user's daily quotas in force (default: the principal's own)."""
        messages, tokens = self.stored_quota(principal, user_id)
        return Quota(
            messages_per_day=self._settings.quota_messages_per_day
            if messages is None
            else messages,
            tokens_per_day=self._settings.quota_tokens_per_day if tokens is None else tokens,
        )

    def set_quota(
        self,
        principal: Principal,
        user_id: int,
        *,
        messages_per_day: int | None,
        tokens_per_day: int | None,
    ) -> None:
        """Admins override a user's quotas (None: back to the default; 0: no limit)."""
        require_admin(principal, "Only administrators set quotas.")
        with self._db.session(write_lock=True) as session:
            user = session.get(User, user_id)
            if user is None:
                raise NotFound(user_message=f"There is no user {user_id}.")
            user.quota_messages_per_day = messages_per_day
            user.quota_tokens_per_day = tokens_per_day
            append_in(
                session,
                QuotaSet(
                    user_id=user_id,
                    messages_per_day=messages_per_day,
                    tokens_per_day=tokens_per_day,
                ),
                **actor_of(principal),
                about_id=user_id,
            )

    def check_quota(self, principal: Principal, *, now: datetime | None = None) -> None:
        """Raise `QuotaExceeded`, naming the reset time, when the principal's quota is used up.

        A quick refusal before any work; `reserve` is the check that holds.
        """
        now = now or datetime.now(UTC)
        quota = self.quota(principal)
        if not (quota.messages_per_day or quota.tokens_per_day):
            return  # no limit: nothing to count
        used = self.today(principal, now=now)
        resets_at = day_start(now) + timedelta(days=1)
        if quota.messages_per_day and used.messages >= quota.messages_per_day:
            raise QuotaExceeded(f"{quota.messages_per_day:,} messages", resets_at=resets_at)
        if quota.tokens_per_day and used.tokens >= quota.tokens_per_day:
            raise QuotaExceeded(f"{quota.tokens_per_day:,} tokens", resets_at=resets_at)

    def reserve(
        self, principal: Principal, *, tokens: int, now: datetime | None = None
    ) -> int | None:
        """Set `tokens` aside for one message, or raise `QuotaExceeded`; the reservation's id.

        Runs under a write lock (SQLite's `BEGIN IMMEDIATE`, the user's row `FOR UPDATE`
        on PostgreSQL), counting the ledger and every unexpired reservation, so sends
        from several tabs or processes at once cannot together pass the quota.
        None when the principal has no limits (nothing to reserve).
        """
        now = now or datetime.now(UTC)
        quota = self.quota(principal)
        if not (quota.messages_per_day or quota.tokens_per_day):
            return None
        since = day_start(now)
        resets_at = since + timedelta(days=1)
        with self._db.session(write_lock=True) as session:
            session.scalar(select(User.id).where(User.id == principal.user_id).with_for_update())
            session.execute(delete(QuotaReservation).where(QuotaReservation.expires_at <= now))
            used = _used_today(session, principal.user_id, since)
            held_count, held_tokens = session.execute(
                select(
                    func.count(QuotaReservation.id),
                    func.coalesce(func.sum(QuotaReservation.tokens), 0),
                ).where(QuotaReservation.user_id == principal.user_id)
            ).one()
            if quota.messages_per_day and used.messages + held_count + 1 > quota.messages_per_day:
                raise QuotaExceeded(f"{quota.messages_per_day:,} messages", resets_at=resets_at)
            if quota.tokens_per_day:
                left = quota.tokens_per_day - used.tokens - int(held_tokens)
                if tokens > left:
                    exc = QuotaExceeded(f"{quota.tokens_per_day:,} tokens", resets_at=resets_at)
                    if left > 0:
                        exc.user_message = (
                            f"This message may need up to {tokens:,} tokens (its prompt and the "
                            f"longest answer), and {left:,} of today's "
                            f"{quota.tokens_per_day:,} are left. "
                            f"The quota resets at {resets_at:%H:%M} UTC."
                        )
                    raise exc
            reservation = QuotaReservation(
                user_id=principal.user_id,
                tokens=tokens,
                created_at=now,
                expires_at=now + RESERVATION_LIFETIME,
            )
            session.add(reservation)
            session.flush()
            return reservation.id

    def release(self, reservation_id: int | None) -> None:
        """Give a reservation back (its call has ended and is in the ledger, or never ran)."""
        if reservation_id is None:
            return
        try:
            with self._db.session() as session:
                session.execute(
                    delete(QuotaReservation).where(QuotaReservation.id == reservation_id)
                )
        except StorageError:  # it expires by itself; the answer matters more
            log.warning("Could not release quota reservation %s; it will expire.", reservation_id)

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
        with self._db.session() as session:
            rows = session.execute(
                select(
                    day,
                    who,
                    UsageEntry.model,
                    UsageEntry.purpose,
                    func.count(UsageEntry.id),
                    func.count(UsageEntry.id).filter(_is_message()),
                    func.coalesce(func.sum(UsageEntry.input_tokens), 0),
                    func.coalesce(func.sum(UsageEntry.output_tokens), 0),
                    func.coalesce(func.sum(UsageEntry.cache_read_input_tokens), 0),
                    func.coalesce(func.sum(UsageEntry.cache_creation_input_tokens), 0),
                    func.coalesce(func.sum(UsageEntry.cost_usd), 0.0),
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
            )
            for r in rows
        ]


def _is_message() -> ColumnElement[bool]:
    """A ledger row that counts as one of the user's messages: a chat call that got going."""
    return (UsageEntry.purpose == Purpose.CHAT) & (UsageEntry.outcome != CallOutcome.FAILED)


def _used_today(session: Session, user_id: int, since: datetime) -> DayUsage:
    messages, tokens, cost = session.execute(
        select(
            func.count(UsageEntry.id).filter(_is_message()),
            func.coalesce(
                func.sum(
                    UsageEntry.input_tokens
                    + UsageEntry.output_tokens
                    + UsageEntry.cache_creation_input_tokens
                    + UsageEntry.cache_read_input_tokens
                ),
                0,
            ),
            func.coalesce(func.sum(UsageEntry.cost_usd), 0.0),
        ).where(UsageEntry.user_id == user_id, UsageEntry.ended_at >= since)
    ).one()
    return DayUsage(messages=int(messages or 0), tokens=int(tokens), cost_usd=float(cost or 0.0))


def _visible_user(principal: Principal, user_id: int | None) -> int:
    """`user_id` (default: the principal's own) if the principal may see it, else NotFound."""
    if user_id is None or user_id == principal.user_id:
        return principal.user_id
    if not principal.is_admin:
        raise NotFound(f"user {user_id} not visible to {principal.user_id}")
    return user_id
