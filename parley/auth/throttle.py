"""Throttling of failed sign-ins. Kept in the database, so every app process sees the
same counts.

Two keys, two different rules, because one address is often many people (everyone
behind an office proxy) while one account is one person:

- **The account** (`account:NAME`) is what a guesser attacks. After its n-th failure
  the next attempt must wait `delay · 2^(n-1)` seconds (capped at a minute) and is
  refused unheard before then; after `max_failures` it is locked for `lockout`
  (`parley user unlock NAME` or the Users page clears it). One attempt per account is
  checked at a time (`pending`): a burst of guesses sent at once gets one password
  check, the rest wait as after a failure. A right password clears the account's counts.
- **The address** (`client:ADDRESS`) is only slowed down, never locked: after its n-th
  recent failure, an attempt from it waits `delay · 2^(n-1)` seconds (capped at
  `MAX_CLIENT_WAIT_S`) before its password is checked, and is then checked. Only a
  failure counts (an attempt in flight does not), so people signing in together from
  one address never refuse each other, and a right password is never refused because
  of someone else's typos. A success does not clear the address (a guesser with an
  account of their own would reset it); its count fades after `lockout`.

A refused attempt never reaches the password hash, and nothing here runs argon2:
the checks are short write-locked transactions, and the caller hashes between them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import overload

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from parley.core.errors import AuthError
from parley.store.db import Database
from parley.store.models import LoginFailures

MAX_DELAY_S = 60.0
MAX_CLIENT_WAIT_S = 8.0
STALE_AFTER = timedelta(days=1)
# An attempt still "in flight" after this long crashed with its process: not counted.
PENDING_FOR = timedelta(minutes=2)


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


@dataclass(frozen=True, slots=True)
class Admitted:
    """An attempt let through: how long to wait before checking its password."""

    wait_s: float


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

    def admit(self, account: str, client: str | None, now: datetime) -> Admitted:
        """Let one sign-in attempt through, or raise `AuthError` with a sentence.

        Refused only for the account's own failures (a lock, or its wait not yet over).
        The attempt is counted as pending on the account until `failed` or `succeeded`.
        """
        refused: AuthError | None = None
        wait = timedelta(0)
        with self._db.session(write_lock=True) as session:
            # Counts nobody has added to for a day are stale: keep the table small.
            session.execute(
                delete(LoginFailures).where(LoginFailures.last_failure_at < now - STALE_AFTER)
            )
            row = _row(session, account)
            if row is None:
                row = LoginFailures(key=account, failures=0, pending=0, last_failure_at=now)
                session.add(row)
            refused = self._refusal(row, now)
            if refused is None:
                if row.locked_until is not None:  # a lockout that has passed
                    row.failures, row.locked_until = 0, None
                if row.last_attempt_at is None or now - utc(row.last_attempt_at) > PENDING_FOR:
                    row.pending = 0
                if row.pending:  # one check at a time per account, as if it had failed
                    refused = AuthError(
                        f"{account} busy",
                        user_message="Please wait 1 second before trying again.",
                    )
                else:
                    row.pending += 1
                    row.last_attempt_at = now
            if client is not None:
                held = _row(session, client)
                if refused is not None:  # a refused guess still slows its address
                    self._count(session, held, client, now)
                elif held is not None and held.failures and not self._faded(held, now):
                    ready = utc(held.last_failure_at) + self._delay(held.failures)
                    wait = max(timedelta(0), ready - now)
        if refused is not None:
            raise refused
        return Admitted(min(MAX_CLIENT_WAIT_S, wait.total_seconds()))

    def _faded(self, row: LoginFailures, now: datetime) -> bool:
        return now - utc(row.last_failure_at) > self._lockout

    def _refusal(self, row: LoginFailures, now: datetime) -> AuthError | None:
        locked_until = utc(row.locked_until)
        if locked_until is not None and locked_until > now:
            return AuthError(
                f"{row.key} locked",
                user_message="Too many failed sign-ins. Please try again at "
                f"{locked_until:%H:%M} UTC, or ask an administrator to unlock the account.",
            )
        ready = utc(row.last_failure_at) + self._delay(row.failures)
        if row.failures and locked_until is None and ready > now:
            wait = max(1, int((ready - now).total_seconds() + 0.999))
            return AuthError(
                f"{row.key} throttled",
                user_message=f"Please wait {wait} second{'s' if wait != 1 else ''} "
                "before trying again.",
            )
        return None

    def failed(self, account: str, client: str | None, now: datetime) -> None:
        """The password was wrong: the account's failure (maybe a lock), the address's."""
        with self._db.session(write_lock=True) as session:
            row = _row(session, account)
            if row is None:  # unlocked meanwhile: count afresh
                row = LoginFailures(key=account, failures=0, pending=1, last_failure_at=now)
                session.add(row)
            row.pending = max(0, row.pending - 1)
            row.failures += 1
            row.last_failure_at = now
            if row.failures >= self._max_failures and row.locked_until is None:
                row.locked_until = now + self._lockout
            if client is not None:
                self._count(session, _row(session, client), client, now)

    def _count(
        self, session: Session, held: LoginFailures | None, client: str, now: datetime
    ) -> None:
        """One more failure from an address (a count that has faded starts again)."""
        if held is None:
            held = LoginFailures(key=client, failures=0, pending=0, last_failure_at=now)
            session.add(held)
        elif self._faded(held, now):
            held.failures = 0
        held.failures += 1
        held.last_failure_at = now

    def release(self, account: str) -> None:
        """The check itself failed (the database, say): the attempt is no longer pending
        and counts as nothing."""
        with self._db.session(write_lock=True) as session:
            row = _row(session, account)
            if row is not None:
                row.pending = max(0, row.pending - 1)

    def succeeded(self, account: str) -> None:
        """The password was right: the account's counts go (not the address's)."""
        self.clear([account])

    def clear(self, keys: Iterable[str]) -> int:
        """Forget the counts of `keys` (an unlock); how many there were."""
        with self._db.session() as session:
            result = session.execute(delete(LoginFailures).where(LoginFailures.key.in_(keys)))
            return int(result.rowcount)  # type: ignore[attr-defined]

    def locked(self, now: datetime) -> dict[str, datetime]:
        """Every key locked now, with the moment its lock ends."""
        with self._db.session() as session:
            rows = session.execute(
                select(LoginFailures.key, LoginFailures.locked_until).where(
                    LoginFailures.locked_until.is_not(None)
                )
            ).all()
        return {key: utc(until) for key, until in rows if until is not None and utc(until) > now}


def _row(session: Session, key: str) -> LoginFailures | None:
    return session.scalar(select(LoginFailures).where(LoginFailures.key == key).with_for_update())


__all__ = ["Admitted", "LoginThrottle", "account_key", "client_key", "utc"]
