"""OIDC claims to Parley users: the first sign-in provisions, every sign-in syncs groups
and role from the configured claim, a local account is never taken over by name, a
disabled account stays out; all of it on the audit trail."""

from __future__ import annotations

from typing import Any

import pytest

from auth.oidc import ClaimMapping, OidcSignIn, claimed_groups, user_name
from parley.domain import Role
from parley.errors import AuthError
from store.audit import AuditLog
from store.db import Database
from tests.support import ROOT
from wiring.services import Services

ISSUER = "http://127.0.0.1:9400"


def claims(sub: str = "s-1", **extra: Any) -> dict[str, Any]:
    return {"iss": ISSUER, "sub": sub, "email": f"{sub}@example.com", **extra}


@pytest.fixture
def oidc(database: Database) -> OidcSignIn:
    return OidcSignIn(database, ClaimMapping(admin_groups=frozenset({"parley-admins"})))


def test_the_first_sign_in_provisions_and_later_ones_sync(
    oidc: OidcSignIn, services: Services
) -> None:
    first = oidc.sign_in(claims(groups=["staff", "parley-admins"]))
    assert (first.name, first.role) == ("s-1@example.com", Role.ADMIN)
    assert dict(services.groups.list_all(ROOT)) == {
        "parley-admins": ["s-1@example.com"],
        "staff": ["s-1@example.com"],
    }
    again = oidc.sign_in(claims(groups=["research"]))  # the provider moved them
    assert again.user_id == first.user_id and again.role is Role.USER
    assert dict(services.groups.list_all(ROOT)) == {
        "parley-admins": [],
        "research": ["s-1@example.com"],
        "staff": [],
    }
    kinds = [r["kind"] for r in AuditLog(services.database).records()]
    assert kinds.count("sign_in") == 2 and "role_changed" in kinds
    assert kinds.count("group_member_removed") == 2
    assert AuditLog(services.database).verify().broken is None


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
    failed = [r for r in AuditLog(services.database).records() if r["kind"] == "sign_in_failed"]
    assert len(failed) == 1 and failed[0]["about_id"] == user.user_id


def test_claims_of_an_expired_id_token_are_not_replayed(oidc: OidcSignIn) -> None:
    from datetime import UTC, datetime

    from auth.oidc import SignInExpired

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
