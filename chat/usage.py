"""Tokens, cost and per-user daily quotas; the meter of every model call.

A day is a UTC calendar day. Cost is charged per message from the settings'
price table (US dollars per million tokens, cache writes and reads priced apart).
Quotas are still read from the messages table; every model call (chat, continuation,
summary, title) is also recorded in `model_calls` by user and purpose (`record`).

Authorization is here: a user reads their own usage and quota; admins read and
set anyone's. Another user's figures give `NotFound`, admin-only calls `PermissionDenied`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import func, select

from parley.config import ModelPrice, Settings
from parley.domain import MessageRole, Principal
from parley.errors import NotFound, PermissionDenied, QuotaExceeded
from parley.llm import CallMeta, StreamEnd, Usage
from store.db import Database
from store.models import Conversation, Message, ModelCall, User

log = logging.getLogger(__name__)


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
class UsageRow:
    day: date
    user: str
    messages: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
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

    def record(self, meta: CallMeta, *, model: str, end: StreamEnd) -> None:
        """Meter one finished model call (the limited provider's `Meter`).

        A call that names only its conversation (a summary) is charged to the owner.
        """
        with self._db.session() as session:
            user_id = meta.user_id
            if user_id is None and meta.conversation_id is not None:
                user_id = session.scalar(
                    select(Conversation.user_id).where(Conversation.id == meta.conversation_id)
                )
            session.add(
                ModelCall(
                    user_id=user_id,
                    conversation_id=meta.conversation_id,
                    purpose=meta.purpose,
                    model=model,
                    input_tokens=end.usage.input_tokens,
                    output_tokens=end.usage.output_tokens,
                    cache_creation_input_tokens=end.usage.cache_creation_input_tokens,
                    cache_read_input_tokens=end.usage.cache_read_input_tokens,
                    cost_usd=self.cost(model, end.usage),
                )
            )

    def today(
        self, principal: Principal, user_id: int | None = None, *, now: datetime | None = None
    ) -> DayUsage:
        """A user's use today (default: the principal's own)."""
        user_id = _visible_user(principal, user_id)
        since = day_start(now or datetime.now(UTC))
        with self._db.session() as session:
            owned = select(Conversation.id).where(Conversation.user_id == user_id)
            messages = session.scalar(
                select(func.count(Message.id)).where(
                    Message.conversation_id.in_(owned),
                    Message.role == MessageRole.USER,
                    Message.created_at >= since,
                )
            )
            tokens, cost = session.execute(
                select(
                    func.coalesce(
                        func.sum(
                            func.coalesce(Message.input_tokens, 0)
                            + func.coalesce(Message.output_tokens, 0)
                            + func.coalesce(Message.cache_creation_input_tokens, 0)
                            + func.coalesce(Message.cache_read_input_tokens, 0)
                        ),
                        0,
                    ),
                    func.coalesce(func.sum(Message.cost_usd), 0.0),
                ).where(
                    Message.conversation_id.in_(owned),
                    Message.role == MessageRole.ASSISTANT,
                    Message.created_at >= since,
                )
            ).one()
        return DayUsage(messages=messages or 0, tokens=int(tokens), cost_usd=float(cost or 0.0))

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
        if not principal.is_admin:
            raise PermissionDenied(user_message="Only administrators set quotas.")
        with self._db.session() as session:
            user = session.get(User, user_id)
            if user is None:
                raise NotFound(user_message=f"There is no user {user_id}.")
            user.quota_messages_per_day = messages_per_day
            user.quota_tokens_per_day = tokens_per_day

    def check_quota(self, principal: Principal, *, now: datetime | None = None) -> None:
        """Raise `QuotaExceeded`, naming the reset time, when the principal's quota is used up."""
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

    def by_user_and_day(
        self, principal: Principal, *, days: int = 7, now: datetime | None = None
    ) -> list[UsageRow]:
        """Tokens and cost per user per day, newest day first: admins only."""
        if not principal.is_admin:
            raise PermissionDenied(user_message="Only administrators see everyone's usage.")
        since = day_start(now or datetime.now(UTC)) - timedelta(days=days - 1)
        day = func.date(Message.created_at)  # SQLite and PostgreSQL both have date()
        with self._db.session() as session:
            rows = session.execute(
                select(
                    day.label("day"),
                    User.name,
                    func.count(Message.id),
                    func.coalesce(func.sum(Message.input_tokens), 0),
                    func.coalesce(func.sum(Message.output_tokens), 0),
                    func.coalesce(func.sum(Message.cache_read_input_tokens), 0),
                    func.coalesce(func.sum(Message.cache_creation_input_tokens), 0),
                    func.coalesce(func.sum(Message.cost_usd), 0.0),
                )
                .join(Conversation, Conversation.id == Message.conversation_id)
                .join(User, User.id == Conversation.user_id)
                .where(Message.role == MessageRole.ASSISTANT, Message.created_at >= since)
                .group_by(day, User.name)
                .order_by(day.desc(), User.name)
            ).all()
        return [
            UsageRow(
                day=r[0] if isinstance(r[0], date) else date.fromisoformat(str(r[0])),
                user=r[1],
                messages=r[2],
                input_tokens=int(r[3]),
                output_tokens=int(r[4]),
                cache_read_tokens=int(r[5]),
                cache_write_tokens=int(r[6]),
                cost_usd=float(r[7]),
            )
            for r in rows
        ]


def _visible_user(principal: Principal, user_id: int | None) -> int:
    """`user_id` (default: the principal's own) if the principal may see it, else NotFound."""
    if user_id is None or user_id == principal.user_id:
        return principal.user_id
    if not principal.is_admin:
        raise NotFound(f"user {user_id} not visible to {principal.user_id}")
    return user_id
