"""Sign-in through an OpenID Connect provider (Streamlit's `st.login`, Authlib underneath).

The provider proves who the user is; this turns its ID token claims into a Parley user:

- the first sign-in provisions the account, linked by issuer and subject (never by
  name: a provider cannot take over a local account that happens to share a name);
- every sign-in syncs the groups the configured claim lists and the role, so the
  provider stays the truth for its users. A provider's groups live in its own
  namespace, `LABEL#group` (the label read from the issuer; local group names cannot
  hold `#`): a provider manages only its own groups' memberships, and a user of a second
  provider, or of the first, claiming a local group's name gains nothing by it. The
  admin role comes only from entries of `PARLEY_OIDC_ADMIN_GROUPS` written
  `ISSUER#group`, matched against this issuer's claim; a bare group name is ignored
  (and said so), since it would let any configured provider make administrators;
- a resumed session re-reads the user's claims from the provider's userinfo endpoint
  once `PARLEY_OIDC_RESYNC_MINUTES` have passed since the last sync (`needs_resync`,
  `resync`); if the provider cannot be asked, the user signs in again;
- a disabled account stays disabled whatever the provider says.

All of it is one write-locked transaction with its audit records.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from parley.auth.accounts import DISABLED, NAME_PATTERN
from parley.auth.groups import add_member, remove_member
from parley.core.audit_events import (
    AuditKind,
    GroupCreated,
    GroupMemberAdded,
    RoleChanged,
    SignedIn,
    SignInFailed,
    UserCreated,
    read_event,
)
from parley.core.domain import Principal, Role
from parley.core.errors import AuthError
from parley.store.audit import Actor, append_in
from parley.store.db import Database
from parley.store.models import AuditRecord, Group, GroupMember, User, utcnow

log = logging.getLogger(__name__)

_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.@-]")
_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
ACTOR = "oidc"
NAMESPACE = "#"


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    name_claim: str = "email"
    groups_claim: str = "groups"
    # `ISSUER#group` entries: members of that provider's group are administrators.
    admin_groups: frozenset[str] = frozenset()


def issuer_label(issuer: str) -> str:
    """The namespace of an issuer's groups: its host and path made readable (every
    character a group name may not hold becomes `_`, lowercased, at most 40), then a
    hash of the whole issuer (96 bits), so two issuers never share a label however alike
    they read (`idp.example.com-3fa2c1d0`, `kc.example_realms_staff-9be07a12`)."""
    exact = issuer.strip().rstrip("/")
    parts = urlsplit(exact)
    readable = _LABEL_CHARS.sub("_", (parts.netloc + parts.path) or exact).lower()[:40]
    return f"{readable}-{hashlib.sha256(exact.encode('utf-8')).hexdigest()[:24]}"


def discovery_url(issuer: str) -> str:
    """The issuer's own discovery document (OpenID Connect Discovery 1.0, section 4)."""
    return issuer.strip().rstrip("/") + "/.well-known/openid-configuration"


def namespaced(issuer: str, group: str) -> str:
    """The Parley group that stands for `group` of the provider `issuer`."""
    return f"{issuer_label(issuer)}{NAMESPACE}{group}"


def is_admin_of(issuer: str, groups: Sequence[str], mapping: ClaimMapping) -> bool:
    """Whether `groups` claimed at `issuer` include an admin group written for it."""
    home = issuer.strip().rstrip("/")
    wanted = {
        entry.rsplit(NAMESPACE, 1)[1]
        for entry in mapping.admin_groups
        if NAMESPACE in entry and entry.rsplit(NAMESPACE, 1)[0].strip().rstrip("/") == home
    }
    return bool(wanted & set(groups))


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
    def __init__(
        self,
        database: Database,
        mapping: ClaimMapping,
        *,
        resync_after: timedelta = timedelta(minutes=60),
    ) -> None:
        self._db = database
        self._mapping = mapping
        self._resync_after = resync_after
        bare = sorted(g for g in mapping.admin_groups if NAMESPACE not in g)
        if bare:
            log.warning(
                "PARLEY_OIDC_ADMIN_GROUPS entries %s name no issuer and are ignored: write "
                "them ISSUER#group (e.g. https://idp.example.com#parley-admins).",
                bare,
            )

    def sign_in(
        self,
        claims: Mapping[str, object],
        *,
        now: datetime | None = None,
        metadata_url: str | None = None,
    ) -> Principal:
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
        if metadata_url is not None and metadata_url.strip() != discovery_url(issuer):
            # The provider section the user signed in with must be this issuer's own:
            # another configured provider could otherwise claim it and act as it.
            raise AuthError(
                "claims of an issuer another provider section names",
                user_message="That sign-in provider may not speak for its issuer. "
                "Please ask an administrator.",
            )
        name = user_name(claims, self._mapping)
        groups = claimed_groups(claims, self._mapping)
        role = Role.ADMIN if is_admin_of(issuer, groups, self._mapping) else Role.USER
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
                    SignInFailed(method="oidc", issuer=issuer, reason=refused or "refused"),
                    actor_id=None,
                    actor=name,
                    about_id=user.id if user is not None else None,
                )
            else:
                user.last_login_at = utcnow()
                self._sync(session, user, role, [namespaced(issuer, g) for g in groups])
                append_in(
                    session,
                    SignedIn(method="oidc", issuer=issuer, groups=groups),
                    actor_id=user.id,
                    actor=user.name,
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
            UserCreated(user_id=user.id, role=str(role), sign_in="oidc", issuer=issuer),
            actor_id=None,
            actor=ACTOR,
            about_id=user.id,
        )
        return user

    def needs_resync(self, user_id: int, *, now: datetime | None = None) -> bool:
        """Whether this user came from a provider and their groups were last read from
        it longer ago than the resync interval (a resumed session asks it again)."""
        with self._db.session() as session:
            row = session.execute(
                select(User.oidc_issuer, User.oidc_synced_at).where(User.id == user_id)
            ).first()
        if row is None or row.oidc_issuer is None:
            return False
        synced: datetime | None = row.oidc_synced_at
        if synced is None:
            return True
        if synced.tzinfo is None:
            synced = synced.replace(tzinfo=UTC)
        return bool((now or datetime.now(UTC)) - synced >= self._resync_after)

    def resync(self, user_id: int, claims: Mapping[str, object]) -> Principal | None:
        """Groups and role from claims the provider gave again (its userinfo endpoint)
        for a user already signed in; None if the claims are not this user's, or the
        user is gone or disabled (their session must end)."""
        issuer, subject = claims.get("iss"), claims.get("sub")
        with self._db.session(write_lock=True) as session:
            user = session.get(User, user_id)
            if (
                user is None
                or user.disabled_at is not None
                or user.oidc_subject is None
                or subject != user.oidc_subject
                or (isinstance(issuer, str) and issuer != user.oidc_issuer)
            ):
                return None
            issuer = user.oidc_issuer or ""
            groups = claimed_groups(claims, self._mapping)
            role = Role.ADMIN if is_admin_of(issuer, groups, self._mapping) else Role.USER
            self._sync(session, user, role, [namespaced(issuer, g) for g in groups])
            return Principal(user_id=user.id, name=user.name, role=user.role)

    def resync_from_provider(
        self,
        user_id: int,
        *,
        access_token: str | None,
        metadata_urls: Sequence[str],
        timeout_s: float = 5.0,
    ) -> Principal | None:
        """Ask the user's provider for their claims again (its userinfo endpoint, with the
        access token of their sign-in) and `resync`; None when the provider cannot be
        asked or refuses (no token, expired, unreachable): the session must end, and the
        user sign in again, rather than keep groups nobody has confirmed."""
        with self._db.session() as session:
            issuer = session.scalar(select(User.oidc_issuer).where(User.id == user_id))
        if not access_token or issuer is None:
            return None
        # Only the issuer's own discovery document (OIDC Discovery: the issuer plus
        # /.well-known/openid-configuration): another configured provider's document
        # claiming this issuer must never receive this user's token.
        own = discovery_url(issuer)
        try:
            with httpx.Client(timeout=timeout_s, trust_env=False) as client:
                for url in metadata_urls:
                    if url.strip() != own:
                        continue
                    metadata = client.get(url).raise_for_status().json()
                    if str(metadata.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
                        return None
                    endpoint = metadata.get("userinfo_endpoint")
                    if not isinstance(endpoint, str):
                        return None
                    answer = client.get(
                        endpoint, headers={"Authorization": f"Bearer {access_token}"}
                    )
                    claims = answer.raise_for_status().json()
                    if not isinstance(claims, dict):
                        return None
                    return self.resync(user_id, {**claims, "iss": issuer})
        except (httpx.HTTPError, ValueError) as exc:
            log.info("Re-reading a user's claims from the provider failed: %s", exc)
        return None

    def _sync(self, session: Session, user: User, role: Role, groups: list[str]) -> None:
        # The user's row changes before any audit record: every transaction takes the
        # rows it changes first and the audit head last, so two can never deadlock.
        previous, user.role = user.role, role
        user.oidc_synced_at = utcnow()
        session.flush()
        if previous is not role:
            append_in(
                session,
                RoleChanged(user_id=user.id, previous=str(previous), role=str(role)),
                actor_id=None,
                actor=ACTOR,
                about_id=user.id,
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
                    GroupCreated(group_id=group_id, group=group_name),
                    actor_id=None,
                    actor=ACTOR,
                )
            wanted[group_id] = group_name
        # Only this provider's own groups: local groups and another provider's are
        # the business of admins and of that provider.
        own = issuer_label(user.oidc_issuer or "") + NAMESPACE
        current = dict(
            session.execute(
                select(Group.id, Group.name)
                .join(GroupMember, GroupMember.group_id == Group.id)
                .where(GroupMember.user_id == user.id, Group.name.startswith(own, autoescape=True))
            ).all()
        )
        oidc: Actor = {"actor_id": None, "actor": ACTOR}
        # Versions before namespacing put provider users into groups by bare name, local
        # ones included: those memberships the provider made go now (once, on record).
        current.update(_legacy_memberships(session, user.id))
        for group_id in sorted(set(wanted) - set(current)):
            add_member(session, (group_id, wanted[group_id]), (user.id, user.name), oidc)
        for group_id in sorted(set(current) - set(wanted)):
            remove_member(session, (group_id, current[group_id]), (user.id, user.name), oidc)


def _legacy_memberships(session: Session, user_id: int) -> dict[int, str]:
    """The user's memberships of groups without a namespace that a provider, not an
    admin, made: the newest membership record of each such group is by `oidc`."""
    bare = dict(
        session.execute(
            select(Group.id, Group.name)
            .join(GroupMember, GroupMember.group_id == Group.id)
            .where(GroupMember.user_id == user_id, Group.name.not_like("%#%"))
        ).all()
    )
    if not bare:
        return {}
    newest: dict[int, tuple[str, int | None]] = {}
    records = session.execute(
        select(AuditRecord.actor, AuditRecord.actor_id, AuditRecord.kind, AuditRecord.data)
        .where(
            AuditRecord.about_id == user_id,
            AuditRecord.kind.in_((AuditKind.GROUP_MEMBER_ADDED, AuditKind.GROUP_MEMBER_REMOVED)),
        )
        .order_by(AuditRecord.id.desc())
    )
    for actor, actor_id, kind, data in records:
        event = read_event(kind, data)
        if isinstance(event, GroupMemberAdded) and event.group_id in bare:
            newest.setdefault(event.group_id, (actor, actor_id))
    # The provider acts with no account (an admin named "oidc" has an id).
    return {g: bare[g] for g, by in newest.items() if by == (ACTOR, None)}


__all__ = [
    "ClaimMapping",
    "OidcSignIn",
    "SignInExpired",
    "claimed_groups",
    "is_admin_of",
    "issuer_label",
    "namespaced",
    "user_name",
]
