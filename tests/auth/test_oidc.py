"""OIDC claims to Parley users: the first sign-in provisions, every sign-in syncs groups
and role from the configured claim, a local account is never taken over by name, a
disabled account stays out; all of it on the audit trail."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from parley.auth.groups import group_id_named
from parley.auth.oidc import (
    ClaimMapping,
    OidcSignIn,
    claimed_groups,
    is_admin_of,
    issuer_label,
    namespaced,
    user_name,
)
from parley.core.audit_events import AuditEvent, AuditKind
from parley.core.domain import Role
from parley.core.errors import AuthError
from parley.store.audit import append_in
from parley.store.db import Database
from parley.store.models import GroupMember
from parley.wiring.services import Services
from tests.support import ROOT, audit_records, verify_audit

ISSUER = "http://127.0.0.1:9400"
ADMINS = f"{ISSUER}#parley-admins"
LABEL = issuer_label(ISSUER)
OTHER = "https://other-idp.example/realms/staff"


def claims(sub: str = "s-1", **extra: Any) -> dict[str, Any]:
    return {"iss": ISSUER, "sub": sub, "email": f"{sub}@example.com", **extra}


@pytest.fixture
def oidc(database: Database) -> OidcSignIn:
    return OidcSignIn(database, ClaimMapping(admin_groups=frozenset({ADMINS})))


def test_the_first_sign_in_provisions_and_later_ones_sync(
    oidc: OidcSignIn, services: Services
) -> None:
    first = oidc.sign_in(claims(groups=["staff", "parley-admins"]))
    assert (first.name, first.role) == ("s-1@example.com", Role.ADMIN)
    assert dict(services.groups.list_all(ROOT)) == {
        f"{LABEL}#parley-admins": ["s-1@example.com"],
        f"{LABEL}#staff": ["s-1@example.com"],
    }
    again = oidc.sign_in(claims(groups=["research"]))  # the provider moved them
    assert again.user_id == first.user_id and again.role is Role.USER
    assert dict(services.groups.list_all(ROOT)) == {
        f"{LABEL}#parley-admins": [],
        f"{LABEL}#research": ["s-1@example.com"],
        f"{LABEL}#staff": [],
    }
    kinds = [r["kind"] for r in audit_records(services._database)]
    assert kinds.count("sign_in") == 2 and "role_changed" in kinds
    assert kinds.count("group_member_removed") == 2
    assert verify_audit(services._database).broken is None


def test_a_local_account_with_the_same_name_is_not_taken_over(
    oidc: OidcSignIn, services: Services
) -> None:
    local = services.accounts.create_user(ROOT, name="s-1@example.com", password="local-password")
    with pytest.raises(AuthError) as refused:
        oidc.sign_in(claims(groups=["parley-admins"]))
    assert "already exists" in refused.value.user_message
    assert services.accounts.find_principal(ROOT, "s-1@example.com") == local  # still a user


def test_a_disabled_account_stays_out_and_bad_claims_are_a_sentence(
    oidc: OidcSignIn, services: Services
) -> None:
    user = oidc.sign_in(claims())
    services.accounts.set_disabled(ROOT, user.name, disabled=True)
    with pytest.raises(AuthError) as refused:
        oidc.sign_in(claims())
    assert "disabled" in refused.value.user_message
    with pytest.raises(AuthError):
        oidc.sign_in({"sub": "no-issuer"})
    failed = [r for r in audit_records(services._database) if r["kind"] == "sign_in_failed"]
    assert len(failed) == 1 and failed[0]["about_id"] == user.user_id


def test_claims_of_an_expired_id_token_are_not_replayed(oidc: OidcSignIn) -> None:
    from datetime import UTC, datetime

    from parley.auth.oidc import SignInExpired

    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    fresh = claims(exp=now.timestamp() + 60)
    assert oidc.sign_in(fresh, now=now).name == "s-1@example.com"
    with pytest.raises(SignInExpired):
        oidc.sign_in(claims(exp=now.timestamp() - 1), now=now)


def test_the_same_subject_at_another_issuer_is_another_user(oidc: OidcSignIn) -> None:
    one = oidc.sign_in(claims(sub="same", email="one@example.com"))
    other = oidc.sign_in({**claims(sub="same", email="two@example.com"), "iss": "https://idp"})
    assert one.user_id != other.user_id


def test_names_and_groups_from_untidy_claims() -> None:
    mapping = ClaimMapping(name_claim="preferred_username", groups_claim="roles")
    assert user_name({"sub": "x", "preferred_username": "Ann Lee!"}, mapping) == "AnnLee"
    assert user_name({"sub": "x"}, mapping).startswith("user-")
    assert claimed_groups({"roles": "staff"}, mapping) == ["staff"]
    assert claimed_groups({"roles": ["ok", "not ok", 3, "ok"]}, mapping) == ["ok"]
    assert claimed_groups({"roles": {"a": 1}}, mapping) == []


def test_a_second_providers_user_claiming_local_and_admin_groups_gains_nothing(
    oidc: OidcSignIn, services: Services
) -> None:
    """Groups are namespaced per issuer: a local group's name or the admin group's name,
    claimed at another provider, names that provider's own group, and nothing more."""
    services.groups.create(ROOT, "staff")
    services.accounts.create_user(ROOT, name="owner", password="owner-password")
    services.groups.assign(ROOT, "staff", "owner")
    stranger = oidc.sign_in(
        {"iss": OTHER, "sub": "x", "email": "x@example.com", "groups": ["staff", "parley-admins"]}
    )
    assert stranger.role is Role.USER
    groups = dict(services.groups.list_all(ROOT))
    assert groups["staff"] == ["owner"]  # the local group is untouched
    assert groups[f"{issuer_label(OTHER)}#staff"] == ["x@example.com"]
    assert groups[f"{issuer_label(OTHER)}#parley-admins"] == ["x@example.com"]


def test_a_provider_manages_only_its_own_groups(oidc: OidcSignIn, services: Services) -> None:
    user = oidc.sign_in(claims(groups=["staff"]))
    services.groups.create(ROOT, "local-team")
    services.groups.assign(ROOT, "local-team", user.name)  # an admin's doing
    oidc.sign_in(claims(groups=[]))  # the provider dropped its own group only
    groups = dict(services.groups.list_all(ROOT))
    assert groups["local-team"] == [user.name] and groups[f"{LABEL}#staff"] == []


def test_a_bare_admin_group_names_no_issuer_and_makes_nobody_admin(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="parley.auth.oidc"):
        bare = OidcSignIn(database, ClaimMapping(admin_groups=frozenset({"parley-admins"})))
    assert any("name no issuer and are ignored" in r.getMessage() for r in caplog.records)
    assert bare.sign_in(claims(groups=["parley-admins"])).role is Role.USER
    assert not is_admin_of(OTHER, ["parley-admins"], ClaimMapping(admin_groups=frozenset({ADMINS})))
    assert is_admin_of(
        ISSUER + "/", ["parley-admins"], ClaimMapping(admin_groups=frozenset({ADMINS}))
    )


class Userinfo(BaseHTTPRequestHandler):
    """A provider's discovery document and userinfo endpoint (what a resync asks);
    `claimed_issuer` is the issuer its discovery document says it is."""

    groups: ClassVar[list[str]] = []
    claimed_issuer: ClassVar[str | None] = None
    asked: ClassVar[list[str]] = []
    token = "access-token-1"

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        base = f"http://127.0.0.1:{self.server.server_port}"
        Userinfo.asked.append(self.path)
        if self.path == "/.well-known/openid-configuration":
            issuer = self.claimed_issuer or base
            body: dict[str, Any] = {"issuer": issuer, "userinfo_endpoint": f"{base}/userinfo"}
        elif self.headers.get("Authorization") == f"Bearer {self.token}":
            body = {"sub": "s-1", "email": "s-1@example.com", "groups": self.groups}
        else:
            self.send_response(401)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def provider() -> Iterator[str]:
    """The issuer URL of a provider served on 127.0.0.1."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Userinfo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Userinfo.asked, Userinfo.claimed_issuer = [], None
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_a_resumed_session_re_reads_groups_from_the_provider_after_a_while(
    database: Database, services: Services, provider: str
) -> None:
    discovery = f"{provider}/.well-known/openid-configuration"
    oidc = OidcSignIn(
        database,
        ClaimMapping(admin_groups=frozenset({f"{provider}#parley-admins"})),
        resync_after=timedelta(0),
    )
    user = oidc.sign_in({**claims(groups=["parley-admins"]), "iss": provider})
    assert user.role is Role.ADMIN
    assert OidcSignIn(database, ClaimMapping()).needs_resync(user.user_id) is False  # an hour
    assert oidc.needs_resync(user.user_id)
    Userinfo.groups = ["research"]  # the provider took them out of the admins
    token = Userinfo.token
    fresh = oidc.resync_from_provider(user.user_id, access_token=token, metadata_urls=[discovery])
    assert fresh is not None and fresh.role is Role.USER
    groups = dict(services.groups.list_all(ROOT))
    assert groups[namespaced(provider, "research")] == [user.name]
    # No token, a token the provider refuses, or no provider: the session must end.
    for access_token, urls in ((None, [discovery]), ("stale", [discovery]), (token, [])):
        assert (
            oidc.resync_from_provider(user.user_id, access_token=access_token, metadata_urls=urls)
            is None
        )


def test_another_providers_discovery_document_never_gets_the_token(
    database: Database, provider: str
) -> None:
    """A second configured provider whose discovery document claims the user's issuer:
    never asked, and the user's groups stay as their own provider last said."""
    oidc = OidcSignIn(database, ClaimMapping(), resync_after=timedelta(0))
    user = oidc.sign_in(claims(groups=["staff"]))  # signed in at ISSUER
    Userinfo.claimed_issuer, Userinfo.groups = ISSUER, ["parley-admins"]
    elsewhere = f"{provider}/.well-known/openid-configuration"
    assert (
        oidc.resync_from_provider(
            user.user_id, access_token=Userinfo.token, metadata_urls=[elsewhere]
        )
        is None
    )
    assert Userinfo.asked == []  # not even its discovery document was fetched


def test_issuers_that_read_alike_never_share_a_namespace() -> None:
    alike = [
        "https://kc.example/realms/engineering-contractors-of-the-northern-region",
        "https://kc.example/realms/engineering-contractors-of-the-northern-region-ext",
        "https://idp.example.com:8443",
        "https://idp.example.com/8443",
        "https://IDP.example.com",
        "https://idp.example.com",
    ]
    labels = [issuer_label(i) for i in alike]
    assert len(set(labels)) == len(alike)
    assert issuer_label("https://idp.example.com/") == issuer_label("https://idp.example.com")


class OlderMembership(AuditEvent):
    """A membership record as versions before typed audit events wrote it."""

    kind = AuditKind.GROUP_MEMBER_ADDED
    group_id: int
    user: str


def test_memberships_a_provider_made_before_namespacing_are_dropped_once(
    oidc: OidcSignIn, services: Services, database: Database
) -> None:
    """Earlier versions joined a provider's user to groups by bare name, local ones
    included: at their next sign-in those go; an admin's own additions stay."""
    services.groups.create(ROOT, "staff")
    services.groups.create(ROOT, "chosen")
    user = oidc.sign_in(claims(groups=[]))
    with database.session(write_lock=True) as session:  # what an older version wrote
        staff = group_id_named(session, "staff")
        session.add(GroupMember(group_id=staff, user_id=user.user_id))
        append_in(  # its record's data had no group name: {"group_id", "user"}
            session,
            OlderMembership(group_id=staff, user=user.name),
            actor_id=None,
            actor="oidc",
            about_id=user.user_id,
        )
    services.groups.assign(ROOT, "chosen", user.name)  # an admin's choice
    oidc.sign_in(claims(groups=[]))
    groups = dict(services.groups.list_all(ROOT))
    assert groups["staff"] == [] and groups["chosen"] == [user.name]


def test_a_provider_section_cannot_speak_for_another_issuer(oidc: OidcSignIn) -> None:
    """The claims must come from the issuer whose discovery document the provider
    section the browser signed in with names: a second section claiming it is refused."""
    with pytest.raises(AuthError) as refused:
        oidc.sign_in(claims(), metadata_url="https://evil.example/.well-known/openid-configuration")
    assert "may not speak for its issuer" in refused.value.user_message
    own = f"{ISSUER}/.well-known/openid-configuration"
    assert oidc.sign_in(claims(), metadata_url=own).name == "s-1@example.com"
