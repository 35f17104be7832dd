"""Local accounts: create, authenticate, list. Passwords are argon2id hashes.

Only admins create users, list them or look one up by name; anyone may sign in, and a
signed-in user may refresh only their own login. The first admin is created by the
first-run form, and only while no user exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from auth.passwords import (
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    hash_password,
    needs_rehash,
    verify_password,
)
from parley.domain import Principal, Role
from parley.errors import AuthError, InvalidInput, PermissionDenied, StorageConflict
from store.db import Database
from store.models import User, utcnow

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True, slots=True)
class UserInfo:
    id: int
    name: str
    role: Role
    created_at: datetime
    last_login_at: datetime | None


def validate_name(name: str) -> str:
    name = name.strip()
    if not _NAME_PATTERN.fullmatch(name):
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
    def __init__(self, database: Database) -> None:
        self._db = database

    def has_users(self) -> bool:
        with self._db.session() as session:
            return session.scalar(select(func.count(User.id))) != 0

    def create_user(
        self, principal: Principal, *, name: str, password: str, role: Role = Role.USER
    ) -> Principal:
        """Admins add a local account."""
        _require_admin(principal, "Only administrators add users.")
        return self._insert(name=name, password=password, role=role)

    def _insert(self, *, name: str, password: str, role: Role) -> Principal:
        name = validate_name(name)
        password_hash = hash_password(validate_password(password))
        try:
            with self._db.session() as session:
                user = User(name=name, password_hash=password_hash, role=role)
                session.add(user)
                session.flush()
                return Principal(user_id=user.id, name=user.name, role=user.role)
        except StorageConflict as exc:
            raise InvalidInput(f"A user named {name!r} already exists.") from exc

    def create_first_admin(self, *, name: str, password: str) -> Principal:
        """The first-run form: allowed only while no user exists."""
        if self.has_users():
            raise AuthError(user_message="Parley already has users; please log in.")
        return self._insert(name=name, password=password, role=Role.ADMIN)

    def authenticate(self, *, name: str, password: str) -> Principal:
        with self._db.session() as session:
            user = session.scalar(select(User).where(User.name == name.strip()))
            if not verify_password(user.password_hash if user else None, password):
                raise AuthError()
            assert user is not None  # verify_password is False without a hash
            user.last_login_at = utcnow()
            if user.password_hash and needs_rehash(user.password_hash):
                user.password_hash = hash_password(password)
            return Principal(user_id=user.id, name=user.name, role=user.role)

    def refresh(self, principal: Principal) -> Principal | None:
        """The signed-in user as they are now (role changes and deletions take effect at once)."""
        with self._db.session() as session:
            user = session.get(User, principal.user_id)
            if user is None:
                return None
            return Principal(user_id=user.id, name=user.name, role=user.role)

    def find_principal(self, principal: Principal, name: str) -> Principal | None:
        """Admins look a user up by name (the CLI acts for a named user this way)."""
        _require_admin(principal, "Only administrators look users up.")
        with self._db.session() as session:
            user = session.scalar(select(User).where(User.name == name))
            if user is None:
                return None
            return Principal(user_id=user.id, name=user.name, role=user.role)

    def list_users(self, principal: Principal) -> list[UserInfo]:
        """Every account: admins only."""
        _require_admin(principal, "Only administrators see the list of users.")
        with self._db.session() as session:
            users = session.scalars(select(User).order_by(User.name)).all()
            return [UserInfo(u.id, u.name, u.role, u.created_at, u.last_login_at) for u in users]


def _require_admin(principal: Principal, sentence: str) -> None:
    if not principal.is_admin:
        raise PermissionDenied(user_message=sentence)
