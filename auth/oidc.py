"""Sign-in through an OpenID Connect provider (Streamlit's `st.login`, Authlib underneath).

The provider proves who the user is; this turns its ID token claims into a Parley user:

- the first sign-in provisions the account, linked by issuer and subject (never by
  name: a provider cannot take over a local account that happens to share a name);
- every sign-in syncs the groups the configured claim lists (groups are created as
  needed; memberships not in the claim are removed) and the role (admin when one of
  those groups is an admin group), so the provider stays the truth for its users;
- a disabled account stays disabled whatever the provider says.

All of it is one write-locked transaction with its audit records.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from auth.accounts import DISABLED, NAME_PATTERN
from auth.groups import add_member, remove_member
from parley.domain import Principal, Role
from parley.errors import AuthError
from store.audit import append_in
from store.db import Database
from store.models import Group, GroupMember, User, utcnow

log = logging.getLogger(__name__)

_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.@-]")
ACTOR = "oidc"


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    name_claim: str = "email"
    groups_claim: str = "groups"
    admin_groups: frozenset[str] = frozenset({"parley-admins"})


def user_name(claims: Mapping[str, object], mapping: ClaimMapping) -> str:
    """The Parley name for these claims: the configured claim (or email, then subject),
    cut to the characters names allow."""
    for key in (mapping.name_claim, "email", "preferred_username"):
        value = claims.get(key)
        if isinstance(value, str) and value.strip():
            cleaned = _NAME_CHARS.sub("", value.strip())[:64].lstrip("_.@-")
            if cleaned:
                return cleaned
    subject = str(claims.get("sub", ""))
    return "user-" + hashlib.sha256(subject.encode()).hexdigest()[:10]


def claimed_groups(claims: Mapping[str, object], mapping: ClaimMapping) -> list[str]:
    """The group names the claim lists (a list, or one string), those that are valid."""
    value = claims.get(mapping.groups_claim)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return []
    names: Sequence[object] = value
    valid = sorted(
        {n.strip() for n in names if isinstance(n, str) and NAME_PATTERN.fullmatch(n.strip())}
    )
    if len(valid) != len(names):
        log.info("Some groups in the %r claim are not valid names; skipped.", mapping.groups_claim)
    return valid


class SignInExpired(AuthError):
    """The provider's sign-in this browser holds is older than its ID token allows: the
    user must go back to the provider (claims are never replayed from an old token)."""


class OidcSignIn:
    def __init__(self, database: Database, mapping: ClaimMapping) -> None:
        self._db = database
        self._mapping = mapping

    def sign_in(self, claims: Mapping[str, object], *, now: datetime | None = None) -> Principal:
        """The Parley user for a provider's claims, provisioned and synced; `AuthError`
        with a sentence when they cannot sign in, `SignInExpired` when the ID token the
        claims came from has expired (Streamlit keeps them in a cookie for 30 days)."""
        expires = claims.get("exp")
        moment = (now or datetime.now(UTC)).timestamp()
        if isinstance(expires, (int, float)) and not isinstance(expires, bool) and expires < moment:
            raise SignInExpired(
                "expired ID token claims",
                user_message="Your single sign-on has expired. Please sign in again.",
            )
        issuer, subject = claims.get("iss"), claims.get("sub")
        if not (isinstance(issuer, str) and issuer and isinstance(subject, str) and subject):
            raise AuthError(
                "claims without iss or sub",
                user_message="The sign-in provider did not say who you are. Please try again.",
            )
        name = user_name(claims, self._mapping)
        groups = claimed_groups(claims, self._mapping)
        role = Role.ADMIN if set(groups) & self._mapping.admin_groups else Role.USER
        refused: str | None = None
        with self._db.session(write_lock=True) as session:
            user = session.scalar(
                select(User).where(User.oidc_issuer == issuer[:500], User.oidc_subject == subject)
            )
            if user is None:
                if session.scalar(select(User.id).where(User.name == name)) is not None:
                    refused = (
                        f"An account named {name!r} already exists here. "
                        "Please ask an administrator to link or rename it."
                    )
                else:
                    user = self._provision(session, issuer, subject, name, role)
            if user is not None and user.disabled_at is not None:
                refused = DISABLED
            if refused is not None or user is None:
                append_in(
                    session,
                    "sign_in_failed",
                    actor_id=None,
                    actor=name,
                    about_id=user.id if user is not None else None,
                    data={"method": "oidc", "issuer": issuer, "reason": refused},
                )
            else:
                user.last_login_at = utcnow()
                self._sync(session, user, role, groups)
                append_in(
                    session,
                    "sign_in",
                    actor_id=user.id,
                    actor=user.name,
                    data={"method": "oidc", "issuer": issuer, "groups": groups},
                )
                principal = Principal(user_id=user.id, name=user.name, role=user.role)
        if refused is not None:
            raise AuthError(f"oidc sign-in refused for {name}", user_message=refused)
        return principal

    def _provision(
        self, session: Session, issuer: str, subject: str, name: str, role: Role
    ) -> User:
        user = User(
            name=name, password_hash=None, role=role, oidc_issuer=issuer, oidc_subject=subject
        )
        session.add(user)
        session.flush()
        append_in(
            session,
            "user_created",
            actor_id=None,
            actor=ACTOR,
            about_id=user.id,
            subject=f"user {name}",
            data={"role": str(role), "sign_in": "oidc", "issuer": issuer},
        )
        return user

    def _sync(self, session: Session, user: User, role: Role, groups: list[str]) -> None:
        # The user's row changes before any audit record: every transaction takes the
        # rows it changes first and the audit head last, so two can never deadlock.
        previous, user.role = user.role, role
        session.flush()
        if previous is not role:
            append_in(
                session,
                "role_changed",
                actor_id=None,
                actor=ACTOR,
                about_id=user.id,
                subject=f"user {user.name}",
                data={"from": str(previous), "to": str(role)},
            )
        wanted: dict[int, str] = {}
        for group_name in groups:
            group_id = session.scalar(select(Group.id).where(Group.name == group_name))
            if group_id is None:
                group = Group(name=group_name)
                session.add(group)
                session.flush()
                group_id = group.id
                append_in(
                    session,
                    "group_created",
                    actor_id=None,
                    actor=ACTOR,
                    subject=f"group {group_name}",
                )
            wanted[group_id] = group_name
        current = dict(
            session.execute(
                select(Group.id, Group.name)
                .join(GroupMember, GroupMember.group_id == Group.id)
                .where(GroupMember.user_id == user.id)
            ).all()
        )
        oidc = {"actor_id": None, "actor": ACTOR}
        for group_id in sorted(set(wanted) - set(current)):
            add_member(session, (group_id, wanted[group_id]), (user.id, user.name), oidc)
        for group_id in sorted(set(current) - set(wanted)):
            remove_member(session, (group_id, current[group_id]), (user.id, user.name), oidc)


__all__ = ["ClaimMapping", "OidcSignIn", "SignInExpired", "claimed_groups", "user_name"]
