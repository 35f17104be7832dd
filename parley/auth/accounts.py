"""Local accounts: create, authenticate, list, disable, new passwords (argon2id hashes).

Only admins create users, list them, look one up by name, disable or enable them and
set their passwords; anyone may sign in, and a signed-in user may refresh only their
own login. The first admin is created by the first-run form, and only while no user
exists: the check and the insert hold the database's write lock together, so two
submissions at once make exactly one admin.

Sign-in is throttled per account and per client (`parley/auth/throttle.py`: failures lock
only the account under attack and slow an address down); a password longer than the
limit is refused before any hashing, and argon2 never runs inside a write lock.
Disabling a user or giving them a new password ends all their sessions.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from parley.auth.passwords import (
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    hash_password,
    needs_rehash,
    verify_password,
)
from parley.auth.sessions import SessionService
from parley.auth.throttle import LoginThrottle, account_key, client_key
from parley.core.audit_events import (
    AccountUnlocked,
    PasswordSet,
    SignedIn,
    SignInFailed,
    UserCreated,
    UserDisabled,
    UserEnabled,
)
from parley.core.domain import Principal, Role, require_admin
from parley.core.errors import AuthError, InvalidInput, NotFound, StorageConflict
from parley.store.audit import actor_of, append_in, keys_of
from parley.store.db import Database
from parley.store.models import User, utcnow

DISABLED = "This account is disabled. Please ask an administrator."

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True, slots=True)
class _Verified:
    id: int
    password_hash: str
    rehashed: str | None  # a new hash when the cost parameters have changed


@dataclass(frozen=True, slots=True)
class UserInfo:
    id: int
    name: str
    role: Role
    created_at: datetime
    last_login_at: datetime | None
    disabled: bool = False


def validate_name(name: str) -> str:
    name = name.strip()
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidInput(
            "A user name has 1 to 64 characters: letters, digits and . _ @ - "
            "(starting with a letter or digit)."
        )
    return name


def validate_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"A password needs at least {MIN_PASSWORD_LENGTH} characters.")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInput(f"A password may have at most {MAX_PASSWORD_LENGTH} characters.")
    return password


class AccountService:
    def __init__(
        self,
        database: Database,
        *,
        throttle: LoginThrottle | None = None,
        sessions: SessionService | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._db = database
        self._throttle = throttle
        self._sessions = sessions
        self._sleep = sleep

    def has_users(self) -> bool:
        with self._db.session() as session:
            return session.scalar(select(func.count(User.id))) != 0

    def create_user(
        self, principal: Principal, *, name: str, password: str, role: Role = Role.USER
    ) -> Principal:
        """Admins add a local account."""
        require_admin(principal, "Only administrators add users.")
        return self._insert(principal, name=name, password=password, role=role)

    def _insert(self, principal: Principal, *, name: str, password: str, role: Role) -> Principal:
        name = validate_name(name)
        password_hash = hash_password(validate_password(password))
        try:
            with self._db.session(write_lock=True) as session:
                user = User(name=name, password_hash=password_hash, role=role)
                session.add(user)
                session.flush()
                append_in(
                    session,
                    UserCreated(user_id=user.id, role=str(role), sign_in="local"),
                    **actor_of(principal),
                    about_id=user.id,
                )
                return Principal(user_id=user.id, name=user.name, role=user.role)
        except StorageConflict as exc:
            raise InvalidInput(f"A user named {name!r} already exists.") from exc

    def create_first_admin(self, *, name: str, password: str) -> Principal:
        """The first-run form: allowed only while no user exists, exactly once."""
        already = AuthError(user_message="Parley already has users; please log in.")
        if self.has_users():
            raise already
        name = validate_name(name)
        password_hash = hash_password(validate_password(password))  # slow: before the lock
        with self._db.session(write_lock=True) as session:
            if self._db.engine.dialect.name == "postgresql":
                session.execute(text("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE"))
            if session.scalar(select(func.count(User.id))):
                raise already
            user = User(name=name, password_hash=password_hash, role=Role.ADMIN)
            session.add(user)
            session.flush()
            append_in(
                session,
                UserCreated(user_id=user.id, role=str(Role.ADMIN), sign_in="local", first_run=True),
                actor_id=user.id,
                actor=name,
                about_id=user.id,
            )
            return Principal(user_id=user.id, name=user.name, role=user.role)

    def authenticate(
        self,
        *,
        name: str,
        password: str,
        client: str | None = None,
        now: datetime | None = None,
    ) -> Principal:
        """The user, if `password` is theirs; else `AuthError` with one sentence.

        Throttled (`parley/auth/throttle.py`): an account's own failures make its next try wait
        and then lock it; an address's failures only slow it down. The password is
        hashed outside any write lock: argon2 takes tens of milliseconds, and inside the
        lock every other sign-in, quota reservation and ledger write would queue behind it.
        """
        clock_given = now is not None  # tests pass the time; then it stands still
        now = now or datetime.now(UTC)
        account = account_key(name) if isinstance(name, str) else account_key("")
        address = client_key(client) if isinstance(client, str) and client else None
        if self._throttle is not None:
            try:
                admitted = self._throttle.admit(account, address, now)
            except AuthError:
                self._failed(name, client, "throttled")
                raise
            if admitted.wait_s > 0:
                self._sleep(admitted.wait_s)
        try:
            verified = self._check_password(name, password)
        except BaseException:
            if self._throttle is not None:  # not the user's failure: the attempt just ends
                self._throttle.release(account)
            raise
        if verified is None:
            if self._throttle is not None:
                # Stamped when the check ended, not when it began: the wait and the
                # hashing must not eat into the next attempt's delay.
                ended = now if clock_given else datetime.now(UTC)
                self._throttle.failed(account, address, ended)
            self._failed(name, client, "wrong name or password")
            raise AuthError()
        if self._throttle is not None:
            self._throttle.succeeded(account)  # the password was right
        with self._db.session(write_lock=True) as session:
            user = session.get(User, verified.id)
            if user is None:
                raise AuthError()  # erased while the password was checked
            if user.disabled_at is not None:  # the right password for a disabled account
                append_in(
                    session,
                    SignInFailed(method="password", client=_address(client), reason="disabled"),
                    actor_id=None,
                    actor=user.name,
                    about_id=user.id,
                )
                disabled = True
            else:
                disabled = False
                user.last_login_at = utcnow()
                if verified.rehashed is not None and user.password_hash == verified.password_hash:
                    user.password_hash = verified.rehashed
                append_in(
                    session,
                    SignedIn(method="password", client=_address(client)),
                    actor_id=user.id,
                    actor=user.name,
                )
            principal = Principal(user_id=user.id, name=user.name, role=user.role)
        if disabled:
            raise AuthError(f"{principal.name} is disabled", user_message=DISABLED)
        return principal

    def _check_password(self, name: object, password: object) -> _Verified | None:
        """The account whose password this is, checked with no lock held; None if not."""
        if not isinstance(password, str) or len(password) > MAX_PASSWORD_LENGTH:
            return None  # refused before any hashing
        typed = name.strip() if isinstance(name, str) else ""
        with self._db.session() as session:
            row = session.execute(
                select(User.id, User.password_hash).where(User.name == typed)
            ).first()
        stored = row.password_hash if row is not None else None
        if not verify_password(stored, password) or row is None or stored is None:
            return None
        rehashed = hash_password(password) if needs_rehash(stored) else None
        return _Verified(row.id, stored, rehashed)

    def unlock(self, principal: Principal, name: str) -> bool:
        """Admins clear an account's sign-in lock and failures (on record); True if there
        was anything to clear."""
        require_admin(principal, "Only administrators unlock accounts.")
        with self._db.session() as session:
            user = _user_named(session, name)
            user_id, user_name = user.id, user.name
        cleared = self._throttle.clear([account_key(user_name)]) if self._throttle else 0
        with self._db.session(write_lock=True) as session:
            append_in(
                session,
                AccountUnlocked(user_id=user_id, had_failures=bool(cleared)),
                **actor_of(principal),
                about_id=user_id,
            )
        return bool(cleared)

    def locked_until(
        self, principal: Principal, *, now: datetime | None = None
    ) -> dict[str, datetime]:
        """Admins see which accounts are locked now, and until when (by user name)."""
        require_admin(principal, "Only administrators see locked accounts.")
        if self._throttle is None:
            return {}
        locks = self._throttle.locked(now or datetime.now(UTC))
        with self._db.session() as session:
            names = session.scalars(select(User.name)).all()
        return {n: locks[account_key(n)] for n in names if account_key(n) in locks}

    def _failed(self, name: object, client: str | None, reason: str) -> None:
        """A refused sign-in, in the audit trail: an account's name when it is one; any
        other typed name only by its hash (it may be a password typed in the wrong box)."""
        typed = name.strip()[:64] if isinstance(name, str) else ""
        with self._db.session(write_lock=True) as session:
            user_id = session.scalar(select(User.id).where(User.name == typed))
            # keyed: a password typed in the name box cannot be guessed
            typed_hmac = None if user_id else keys_of(session).keyed_hash("typed name", typed)
            append_in(
                session,
                SignInFailed(
                    method="password",
                    client=_address(client),
                    reason=reason,
                    typed_hmac=typed_hmac,
                ),
                actor_id=None,
                actor=typed if user_id is not None else "?",
                about_id=user_id,
            )

    def refresh(self, principal: Principal) -> Principal | None:
        """The signed-in user as they are now (role changes, disabling and deletions take
        effect at once)."""
        with self._db.session() as session:
            user = session.get(User, principal.user_id)
            if user is None or user.disabled_at is not None:
                return None
            return Principal(user_id=user.id, name=user.name, role=user.role)

    def set_disabled(self, principal: Principal, name: str, *, disabled: bool) -> None:
        """Admins disable (all their sessions end, sign-in refused) or enable a user."""
        require_admin(principal, "Only administrators disable or enable users.")
        with self._db.session(write_lock=True) as session:
            user = _user_named(session, name)
            if disabled and user.id == principal.user_id:
                raise InvalidInput("You cannot disable your own account.")
            user.disabled_at = (user.disabled_at or utcnow()) if disabled else None
            user_id = user.id
            append_in(
                session,
                UserDisabled(user_id=user_id) if disabled else UserEnabled(user_id=user_id),
                **actor_of(principal),
                about_id=user_id,
            )
        if disabled and self._sessions is not None:
            self._sessions.end_all(user_id, by=principal, reason="disabled")

    def set_password(self, principal: Principal, name: str, password: str) -> None:
        """Admins set a user's password; every session of that user ends."""
        require_admin(principal, "Only administrators set passwords.")
        password_hash = hash_password(validate_password(password))
        with self._db.session(write_lock=True) as session:
            user = _user_named(session, name)
            user.password_hash = password_hash
            user_id = user.id
            append_in(
                session, PasswordSet(user_id=user_id), **actor_of(principal), about_id=user_id
            )
        if self._sessions is not None:
            self._sessions.end_all(user_id, by=principal, reason="new password")

    def find_principal(self, principal: Principal, name: str) -> Principal | None:
        """Admins look a user up by name (the CLI acts for a named user this way)."""
        require_admin(principal, "Only administrators look users up.")
        with self._db.session() as session:
            user = session.scalar(select(User).where(User.name == name))
            if user is None:
                return None
            return Principal(user_id=user.id, name=user.name, role=user.role)

    def list_users(self, principal: Principal) -> list[UserInfo]:
        """Every account: admins only."""
        require_admin(principal, "Only administrators see the list of users.")
        with self._db.session() as session:
            users = session.scalars(select(User).order_by(User.name)).all()
            return [
                UserInfo(
                    u.id, u.name, u.role, u.created_at, u.last_login_at, u.disabled_at is not None
                )
                for u in users
            ]


def _user_named(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name.strip()))
    if user is None:
        raise NotFound(user_message=f"There is no user named {name.strip()!r}.")
    return user


def _address(client: object) -> str | None:
    """The client's address as the audit keeps it (only ever a short string)."""
    return client[:64] if isinstance(client, str) else None
