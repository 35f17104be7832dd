"""Server-side sign-in sessions behind a signed cookie.

    sign in (the page)      start(principal) -> (session id, one-time ticket)
    /auth/session?ticket=   exchange(ticket) -> cookie value: a random token, signed
    every page load         resume(cookie)   -> the session, or None
    every rerun             check(session id) -> the principal, or None
    log out                 end(session id); disabling or a new password: end_all(user)

Only SHA-256 hashes of tokens and tickets are stored; the cookie holds the random
token and an HMAC of it (`itsdangerous`), so a forged or altered cookie is refused
before the database is asked. Nothing reusable (password, hash) is ever in the
cookie or a URL: the ticket in the URL works once, for a minute. A session ends at
logout, after `session_idle_minutes` without use, `session_lifetime_hours` after it
began, when its user is disabled or given a new password.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from itsdangerous import BadSignature, Signer
from sqlalchemy import delete, select, update

from parley.auth.throttle import utc
from parley.core.audit_events import SessionEnded, SessionsRevoked
from parley.core.domain import Principal
from parley.core.errors import ConfigurationError
from parley.store.audit import actor_of, append_in
from parley.store.db import Database
from parley.store.models import LoginSession, User

COOKIE_NAME = "parley_session"
TICKET_LIFETIME = timedelta(minutes=1)
TOUCH_EVERY = timedelta(minutes=1)  # last_seen_at is written at most this often
KEEP_ENDED = timedelta(days=1)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def secret_from_file(path: Path) -> str:
    """The session-signing secret kept at `path`, made (readable by the owner only) if
    missing. Written whole to a temporary file and linked into place, so a process
    starting at the same moment reads either no file or the whole secret."""
    for _ in range(3):
        try:
            found = path.read_text().strip()
        except FileNotFoundError:
            found = ""
        if found:
            return found
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
        try:
            os.link(partial, path)  # fails if another process got there first: use theirs
        except FileExistsError:
            pass
        finally:
            partial.unlink()
    raise ConfigurationError(f"The session secret file {path} is empty; delete it to make one.")


@dataclass(frozen=True, slots=True)
class Resumed:
    session_id: int
    principal: Principal


class SessionService:
    def __init__(
        self,
        database: Database,
        *,
        secret: str,
        idle: timedelta,
        lifetime: timedelta,
        previous_secrets: Sequence[str] = (),
    ) -> None:
        self._db = database
        # Signs with the last key; a cookie signed with a rotated-out one still reads.
        self._signer = Signer([*previous_secrets, secret], salt="parley-session")
        self._idle = idle
        self._lifetime = lifetime

    def start(self, principal: Principal, *, now: datetime | None = None) -> tuple[int, str]:
        """A new session for a user who just proved who they are: its id and a ticket."""
        now = now or datetime.now(UTC)
        ticket = secrets.token_urlsafe(32)
        with self._db.session(write_lock=True) as session:
            # Sessions that ended over a day ago are of no further use: keep the table small.
            session.execute(
                delete(LoginSession).where(
                    (LoginSession.expires_at < now - KEEP_ENDED)
                    | (LoginSession.revoked_at < now - KEEP_ENDED)
                )
            )
            row = LoginSession(
                user_id=principal.user_id,
                ticket_hash=_digest(ticket),
                ticket_expires_at=now + TICKET_LIFETIME,
                created_at=now,
                last_seen_at=now,
                expires_at=now + self._lifetime,
            )
            session.add(row)
            session.flush()
            return row.id, ticket

    def exchange(self, ticket: str, *, now: datetime | None = None) -> str | None:
        """The cookie value for a ticket, once; None for an unknown, used or old ticket."""
        now = now or datetime.now(UTC)
        token = secrets.token_urlsafe(32)
        with self._db.session(write_lock=True) as session:
            claimed = session.execute(
                update(LoginSession)
                .where(
                    LoginSession.ticket_hash == _digest(ticket),
                    LoginSession.ticket_expires_at > now,
                    LoginSession.revoked_at.is_(None),
                )
                .values(ticket_hash=None, ticket_expires_at=None, token_hash=_digest(token))
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None
        return self._signer.sign(token).decode()

    def resume(self, cookie: str | None, *, now: datetime | None = None) -> Resumed | None:
        """The live session a cookie names, or None (unsigned, unknown or ended)."""
        if not cookie:
            return None
        try:
            token = self._signer.unsign(cookie).decode()
        except BadSignature:
            return None
        with self._db.session() as session:
            session_id = session.scalar(
                select(LoginSession.id).where(LoginSession.token_hash == _digest(token))
            )
        if session_id is None:
            return None
        principal = self.check(session_id, now=now)
        return Resumed(session_id, principal) if principal is not None else None

    def check(self, session_id: int, *, now: datetime | None = None) -> Principal | None:
        """The session's user as they are now, or None if the session has ended.

        Ends it (for good) when idle or past its lifetime, or when the user is disabled
        or gone. The read is a plain transaction and each write a write-locked one of its
        own: a read-then-write transaction on SQLite fails at once ("database is locked")
        when another writer committed in between, where a write-locked one waits its turn.
        """
        now = now or datetime.now(UTC)
        with self._db.session() as session:
            row = session.get(LoginSession, session_id)
            if row is None or row.revoked_at is not None:
                return None
            user = session.get(User, row.user_id)
            user_id = row.user_id
            gone = user is None or user.disabled_at is not None
            ended = gone or now >= utc(row.expires_at) or now - utc(row.last_seen_at) > self._idle
            touch = now - utc(row.last_seen_at) >= TOUCH_EVERY
            principal = (
                Principal(user_id=user.id, name=user.name, role=user.role)
                if user is not None
                else None
            )
        if ended:
            with self._db.session(write_lock=True) as session:
                claimed = session.execute(  # one of several tabs or processes ends it
                    update(LoginSession)
                    .where(LoginSession.id == session_id, LoginSession.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
                if claimed.rowcount == 1:  # type: ignore[attr-defined]
                    append_in(
                        session,
                        SessionEnded(
                            session_id=session_id,
                            reason="user disabled or gone" if gone else "expired",
                        ),
                        actor_id=None,
                        actor="system",
                        about_id=user_id,
                    )
            return None
        if touch:
            with self._db.session(write_lock=True) as session:
                touched = session.execute(
                    update(LoginSession)
                    .where(LoginSession.id == session_id, LoginSession.revoked_at.is_(None))
                    .values(last_seen_at=now)
                )
                if touched.rowcount != 1:  # type: ignore[attr-defined]
                    return None  # revoked in between
        return principal

    def end(self, session_id: int, *, now: datetime | None = None) -> None:
        """Log out: the session is revoked; its cookie opens nothing any more."""
        with self._db.session(write_lock=True) as session:
            result = session.execute(
                update(LoginSession)
                .where(LoginSession.id == session_id, LoginSession.revoked_at.is_(None))
                .values(revoked_at=now or datetime.now(UTC), ticket_hash=None)
                .returning(LoginSession.user_id)
            )
            user_id = result.scalar()
            if user_id is not None:
                name = session.scalar(select(User.name).where(User.id == user_id)) or "?"
                append_in(
                    session,
                    SessionEnded(session_id=session_id, reason="signed out"),
                    actor_id=user_id,
                    actor=name,
                )

    def end_all(
        self,
        user_id: int,
        *,
        by: Principal | None = None,
        reason: str = "",
        now: datetime | None = None,
    ) -> int:
        """Revoke every session of a user (disabled, or a new password); how many ended."""
        with self._db.session(write_lock=True) as session:
            result = session.execute(
                update(LoginSession)
                .where(LoginSession.user_id == user_id, LoginSession.revoked_at.is_(None))
                .values(revoked_at=now or datetime.now(UTC), ticket_hash=None)
            )
            count = int(result.rowcount)  # type: ignore[attr-defined]
            if count:
                append_in(
                    session,
                    SessionsRevoked(user_id=user_id, sessions=count, reason=reason),
                    **actor_of(by),
                    about_id=user_id,
                )
            return count


__all__ = ["COOKIE_NAME", "Resumed", "SessionService", "secret_from_file"]
