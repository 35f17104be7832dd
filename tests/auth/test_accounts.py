"""Local accounts: argon2id hashes, authentication, roles, first run."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from parley.core.domain import Role
from parley.core.errors import AuthError, InvalidInput
from parley.store.models import User
from parley.wiring.services import Services
from tests.support import ROOT


def test_password_is_stored_as_argon2id_hash(services: Services) -> None:
    services.accounts.create_user(ROOT, name="carol", password="s3cret-pass")
    with services._database.session() as session:
        user = session.scalars(select(User)).one()
    assert user.password_hash is not None
    assert user.password_hash.startswith("$argon2id$")
    assert "s3cret-pass" not in user.password_hash


def test_authenticate_accepts_the_right_password_only(services: Services) -> None:
    created = services.accounts.create_user(ROOT, name="carol", password="s3cret-pass")
    assert services.accounts.authenticate(name="carol", password="s3cret-pass") == created
    with pytest.raises(AuthError):
        services.accounts.authenticate(name="carol", password="s3cret-pasS")
    with pytest.raises(AuthError):
        services.accounts.authenticate(name="nobody", password="s3cret-pass")


def test_login_records_last_login(services: Services) -> None:
    services.accounts.create_user(ROOT, name="carol", password="s3cret-pass")
    assert services.accounts.list_users(ROOT)[0].last_login_at is None
    services.accounts.authenticate(name="carol", password="s3cret-pass")
    assert services.accounts.list_users(ROOT)[0].last_login_at is not None


def test_duplicate_names_are_refused(services: Services) -> None:
    services.accounts.create_user(ROOT, name="carol", password="s3cret-pass")
    with pytest.raises(InvalidInput, match="already exists"):
        services.accounts.create_user(ROOT, name="carol", password="another-pass")


@pytest.mark.parametrize("name", ["", " ", "a b", "-dash", "x" * 65, "semi;colon", "ünïcode"])
def test_bad_names_are_refused(services: Services, name: str) -> None:
    with pytest.raises(InvalidInput, match="user name"):
        services.accounts.create_user(ROOT, name=name, password="s3cret-pass")


def test_short_passwords_are_refused(services: Services) -> None:
    with pytest.raises(InvalidInput, match="at least 8"):
        services.accounts.create_user(ROOT, name="carol", password="short")
    assert services.accounts.list_users(ROOT) == []


def test_first_admin_only_while_no_user_exists(services: Services) -> None:
    assert not services.accounts.has_users()
    admin = services.accounts.create_first_admin(name="root", password="root-password")
    assert admin.role is Role.ADMIN and admin.is_admin
    assert services.accounts.has_users()
    with pytest.raises(AuthError):
        services.accounts.create_first_admin(name="intruder", password="root-password")
    assert [u.name for u in services.accounts.list_users(ROOT)] == ["root"]


def test_role_changes_take_effect_for_a_logged_in_principal(services: Services) -> None:
    user = services.accounts.create_user(ROOT, name="carol", password="s3cret-pass")
    with services._database.session() as session:
        session.get_one(User, user.user_id).role = Role.ADMIN
    current = services.accounts.refresh(user)
    assert current is not None and current.is_admin


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(password=st.text(min_size=8, max_size=40), other=st.text(min_size=8, max_size=40))
def test_only_the_exact_password_authenticates(
    services: Services, password: str, other: str
) -> None:
    name = f"u{abs(hash(password)) % 10**9}"
    if services.accounts.find_principal(ROOT, name) is None:
        services.accounts.create_user(ROOT, name=name, password=password)
    else:
        return  # a name collision from an earlier example; nothing to check
    assert services.accounts.authenticate(name=name, password=password).name == name
    if other != password:
        with pytest.raises(AuthError):
            services.accounts.authenticate(name=name, password=other)
