"""Per-user daily quotas: messages and tokens, counted from the usage ledger.

A day is a UTC calendar day. Quotas are atomic: a send `reserve`s its estimated tokens
(the prompt plus the output cap) under a write lock, counting the ledger and every
reservation in flight, and `release`s them when its answer ends. `check_quota` is a
quick refusal before any work; `reserve` is the check that holds.

Authorization is here: a user reads their own usage and quota; admins read and set
anyone's. Another user's figures give `NotFound`, admin-only calls `PermissionDenied`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from parley.chat.gateway.usage import counts_as_message
from parley.core.audit_events import QuotaSet
from parley.core.config import Settings
from parley.core.domain import Principal, Purpose, require_admin
from parley.core.errors import NotFound, QuotaExceeded, StorageError
from parley.store.audit import actor_of, append_in
from parley.store.db import Database
from parley.store.models import QuotaReservation, UsageEntry, User

log = logging.getLogger(__name__)

# A reservation left by a process that died stops counting after this long.
RESERVATION_LIFETIME = timedelta(minutes=15)


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


class QuotaService:
    def __init__(self, database: Database, settings: Settings) -> None:
        self._db = database
        self._settings = settings

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


def _used_today(session: Session, user_id: int, since: datetime) -> DayUsage:
    messages, tokens, cost = session.execute(
        select(
            func.count(UsageEntry.id).filter(counts_as_message()),
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
        ).where(
            UsageEntry.user_id == user_id,
            UsageEntry.ended_at >= since,
            # Batch jobs are the operator's work on the user's data: not the user's use.
            UsageEntry.purpose != Purpose.BATCH,
        )
    ).one()
    return DayUsage(messages=int(messages or 0), tokens=int(tokens), cost_usd=float(cost or 0.0))


def _visible_user(principal: Principal, user_id: int | None) -> int:
    """`user_id` (default: the principal's own) if the principal may see it, else NotFound."""
    if user_id is None or user_id == principal.user_id:
        return principal.user_id
    if not principal.is_admin:
        raise NotFound(f"user {user_id} not visible to {principal.user_id}")
    return user_id


__all__ = ["RESERVATION_LIFETIME", "DayUsage", "Quota", "QuotaService", "day_start"]
