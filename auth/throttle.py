"""Throttling of failed sign-ins, per account and per client, with growing delays and a
temporary lockout. Kept in the database, so every app process sees the same counts.

After the n-th failure on a key, the next attempt must wait `delay · 2^(n-1)` seconds
(capped at a minute); after `max_failures`, the key is locked for `lockout`. A
successful sign-in clears the account's and the client's counts. A refused attempt
never reaches the password hash, so guessing costs no argon2 work once throttled.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import overload

from sqlalchemy import delete, select

from parley.errors import AuthError
from store.db import Database
from store.models import LoginFailures

MAX_DELAY_S = 60.0
STALE_AFTER = timedelta(days=1)


@overload
def utc(moment: datetime) -> datetime: ...
@overload
def utc(moment: None) -> None: ...
def utc(moment: datetime | None) -> datetime | None:
    """A stored time as an aware UTC time (SQLite hands back naive ones)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def account_key(name: str) -> str:
    return f"account:{name.strip().lower()[:180]}"


def client_key(address: str) -> str:
    return f"client:{address[:180]}"


class LoginThrottle:
    def __init__(
        self, database: Database, *, max_failures: int, lockout: timedelta, delay_s: float
    ) -> None:
        self._db = database
        self._max_failures = max_failures
        self._lockout = lockout
        self._delay_s = delay_s

    def _delay(self, failures: int) -> timedelta:
        return timedelta(seconds=min(MAX_DELAY_S, self._delay_s * 2 ** (failures - 1)))

    def attempt(self, keys: Sequence[str], now: datetime) -> None:
        """Admit one sign-in attempt, or raise `AuthError` with a sentence.

        The check and the count are one write-locked transaction, and an admitted
        attempt is counted as a failure before the password is even looked at
        (`succeeded` clears it): several sign-ins sent at once cannot all slip
        through the same window.
        """
        with self._db.session(write_lock=True) as session:
            # Counts nobody has added to for a day are stale: keep the table small.
            session.execute(
                delete(LoginFailures).where(LoginFailures.last_failure_at < now - STALE_AFTER)
            )
            rows = {
                key: session.scalar(
                    select(LoginFailures).where(LoginFailures.key == key).with_for_update()
                )
                for key in sorted(set(keys))
            }
            for row in rows.values():
                self._refuse_if_held(row, now)
            for key, row in rows.items():
                if row is None:
                    row = LoginFailures(key=key, failures=0, last_failure_at=now)
                    session.add(row)
                elif row.locked_until is not None and utc(row.locked_until) <= now:
                    row.failures, row.locked_until = 0, None  # the lockout has passed
                row.failures += 1
                row.last_failure_at = now
                if row.failures >= self._max_failures:
                    row.locked_until = now + self._lockout

    def _refuse_if_held(self, row: LoginFailures | None, now: datetime) -> None:
        if row is None:
            return
        locked_until = utc(row.locked_until)
        if locked_until is not None and locked_until > now:
            raise AuthError(
                f"{row.key} locked",
                user_message="Too many failed sign-ins. Please try again at "
                f"{locked_until:%H:%M} UTC.",
            )
        ready = utc(row.last_failure_at) + self._delay(row.failures)
        if row.failures and ready > now:
            wait = max(1, int((ready - now).total_seconds() + 0.999))
            raise AuthError(
                f"{row.key} throttled",
                user_message=f"Please wait {wait} second{'s' if wait != 1 else ''} "
                "before trying again.",
            )

    def succeeded(self, keys: Sequence[str]) -> None:
        """The password was right: the attempt counted in `attempt` and earlier ones go."""
        with self._db.session() as session:
            session.execute(delete(LoginFailures).where(LoginFailures.key.in_(keys)))


__all__ = ["LoginThrottle", "account_key", "client_key", "utc"]
