"""Sign-in: throttling, the bounded password, one first admin, disabling, new passwords,
and server-side sessions behind a signed cookie."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from auth import accounts as accounts_module
from auth.passwords import MAX_PASSWORD_LENGTH
from auth.sessions import SessionService, secret_from_file
from parley.domain import Principal, Role
from parley.errors import AuthError, InvalidInput, NotFound, PermissionDenied
from store.models import LoginFailures, LoginSession, User
from tests.support import ROOT
from wiring.services import Services

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def sign_in(services: Services, name: str, password: str, at: datetime, client: str = "1.2.3.4"):  # type: ignore[no-untyped-def]
    return services.accounts.authenticate(name=name, password=password, client=client, now=at)


# ---------------------------------------------------------------- throttling


def test_failures_grow_the_wait_then_lock_the_account(services: Services, alice: Principal) -> None:
    settings = services.settings
    delay, limit = settings.login_delay_s, settings.login_max_failures
    at = T0
    for n in range(1, limit):
        with pytest.raises(AuthError, match="Wrong user name or password"):
            sign_in(services, "alice", "wrong-password", at)
        wait = delay * 2 ** (n - 1)
        with pytest.raises(AuthError) as early:  # before the wait is over: refused unheard
            sign_in(services, "alice", "alice-password", at + timedelta(seconds=wait / 2))
        assert early.value.user_message.startswith("Please wait")
        at += timedelta(seconds=wait + 0.01)
    with pytest.raises(AuthError, match="Wrong user name or password"):
        sign_in(services, "alice", "wrong-password", at)  # the limit: locked
    later = at + timedelta(minutes=1)
    with pytest.raises(AuthError) as locked:
        sign_in(services, "alice", "alice-password", later, client="5.6.7.8")
    unlock = at + timedelta(minutes=settings.login_lockout_minutes)
    assert locked.value.user_message == (
        f"Too many failed sign-ins. Please try again at {unlock:%H:%M} UTC."
    )
    after = unlock + timedelta(seconds=1)
    assert sign_in(services, "alice", "alice-password", after, client="5.6.7.8") == alice
    # Success cleared the counts: one failure now waits only the first delay again.
    with pytest.raises(AuthError, match="Wrong"):
        sign_in(services, "alice", "wrong-password", after)
    at = after + timedelta(seconds=delay + 0.01)
    assert sign_in(services, "alice", "alice-password", at) == alice


@pytest.mark.usefixtures("alice")
def test_one_client_guessing_many_accounts_is_throttled(services: Services, bob: Principal) -> None:
    with pytest.raises(AuthError, match="Wrong"):
        sign_in(services, "alice", "guess-one", T0, client="6.6.6.6")
    with pytest.raises(AuthError) as caught:  # another account, the same client: must wait
        sign_in(services, "bob", "bob-password", T0 + timedelta(milliseconds=100), client="6.6.6.6")
    assert caught.value.user_message.startswith("Please wait")
    # Bob from his own machine is not held up by the guesser.
    assert sign_in(services, "bob", "bob-password", T0, client="7.7.7.7") == bob


@pytest.mark.usefixtures("alice")
def test_an_over_long_password_is_refused_before_hashing(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_hashing(*_args: object) -> bool:
        raise AssertionError("the password was hashed")

    monkeypatch.setattr(accounts_module, "verify_password", no_hashing)
    with pytest.raises(AuthError, match="Wrong user name or password"):
        sign_in(services, "alice", "x" * (MAX_PASSWORD_LENGTH + 1), T0)


def test_exactly_one_first_admin_under_concurrent_submissions(services: Services) -> None:
    barrier = threading.Barrier(6)
    made: list[Principal] = []
    refused: list[str] = []

    def submit(n: int) -> None:
        barrier.wait()
        try:
            made.append(
                services.accounts.create_first_admin(name=f"admin{n}", password="pw-123456")
            )
        except AuthError as exc:
            refused.append(exc.user_message)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(made) == 1 and made[0].role is Role.ADMIN
    assert refused == ["Parley already has users; please log in."] * 5
    with services.database.session() as session:
        assert session.scalar(select(func.count(User.id))) == 1


# ---------------------------------------------------------------- disable, enable, passwords


def test_disable_and_enable(services: Services, alice: Principal) -> None:
    services.accounts.set_disabled(ROOT, "alice", disabled=True)
    with pytest.raises(AuthError) as caught:
        sign_in(services, "alice", "alice-password", T0)
    assert caught.value.user_message == "This account is disabled. Please ask an administrator."
    assert services.accounts.refresh(alice) is None
    assert [u.disabled for u in services.accounts.list_users(ROOT)] == [True]
    services.accounts.set_disabled(ROOT, "alice", disabled=False)
    assert sign_in(services, "alice", "alice-password", T0) == alice


def test_only_admins_disable_or_set_passwords_and_not_themselves(
    services: Services, alice: Principal, bob: Principal
) -> None:
    with pytest.raises(PermissionDenied):
        services.accounts.set_disabled(alice, "bob", disabled=True)
    with pytest.raises(PermissionDenied):
        services.accounts.set_password(alice, "bob", "new-password")
    with pytest.raises(NotFound, match="no user named 'carol'"):
        services.accounts.set_disabled(ROOT, "carol", disabled=True)
    root = services.accounts.create_user(ROOT, name="root", password="root-pass", role=Role.ADMIN)
    with pytest.raises(InvalidInput, match="your own account"):
        services.accounts.set_disabled(root, "root", disabled=True)
    assert sign_in(services, "bob", "bob-password", T0) == bob


def test_a_new_password_replaces_the_old_and_ends_sessions(
    services: Services, alice: Principal
) -> None:
    session_id, ticket = services.sessions.start(alice)
    cookie = services.sessions.exchange(ticket)
    services.accounts.set_password(ROOT, "alice", "brand-new-pass")
    assert services.sessions.check(session_id) is None
    assert services.sessions.resume(cookie) is None
    with pytest.raises(AuthError):
        sign_in(services, "alice", "alice-password", T0)
    at = T0 + timedelta(seconds=services.settings.login_delay_s + 0.01)
    assert sign_in(services, "alice", "brand-new-pass", at) == alice


# ---------------------------------------------------------------- sessions


def test_a_ticket_buys_one_cookie_and_the_cookie_resumes_the_session(
    services: Services, alice: Principal
) -> None:
    session_id, ticket = services.sessions.start(alice)
    cookie = services.sessions.exchange(ticket)
    assert cookie is not None
    assert services.sessions.exchange(ticket) is None  # once only
    resumed = services.sessions.resume(cookie)
    assert resumed is not None and resumed.session_id == session_id and resumed.principal == alice
    with services.database.session() as session:
        row = session.get(LoginSession, session_id)
        assert row is not None and row.ticket_hash is None
        token = cookie.rsplit(".", 1)[0]
        assert row.token_hash != token and token not in (row.token_hash or "")  # hashed


def test_forged_altered_and_unknown_cookies_open_nothing(
    services: Services, alice: Principal
) -> None:
    _, ticket = services.sessions.start(alice)
    cookie = services.sessions.exchange(ticket)
    assert cookie is not None
    token, signature = cookie.rsplit(".", 1)
    assert services.sessions.resume(f"{token}x.{signature}") is None
    assert services.sessions.resume(f"{token}.{signature[:-2]}AA") is None
    assert services.sessions.resume("") is None and services.sessions.resume(None) is None
    other = SessionService(
        services.database,
        secret="another-secret",
        idle=timedelta(hours=1),
        lifetime=timedelta(days=1),
    )
    assert other.resume(cookie) is None  # signed with another secret
    assert services.sessions.resume(cookie) is not None


def test_an_old_ticket_is_refused(services: Services, alice: Principal) -> None:
    _, ticket = services.sessions.start(alice, now=T0)
    assert services.sessions.exchange(ticket, now=T0 + timedelta(minutes=2)) is None


def test_sessions_end_at_logout_idle_lifetime_and_disabling(
    services: Services, alice: Principal
) -> None:
    idle = timedelta(minutes=services.settings.session_idle_minutes)
    lifetime = timedelta(hours=services.settings.session_lifetime_hours)

    def fresh(at: datetime = T0) -> int:
        session_id, ticket = services.sessions.start(alice, now=at)
        assert services.sessions.exchange(ticket, now=at)
        return session_id

    logged_out = fresh()
    services.sessions.end(logged_out)
    assert services.sessions.check(logged_out, now=T0) is None

    quiet = fresh()
    assert services.sessions.check(quiet, now=T0 + idle - timedelta(minutes=1)) == alice
    # Used a minute before the idle limit, so still alive a minute after it...
    assert services.sessions.check(quiet, now=T0 + idle + timedelta(minutes=1)) == alice
    assert services.sessions.check(quiet, now=T0 + 2 * idle + timedelta(minutes=2)) is None
    assert services.sessions.check(quiet, now=T0) is None  # ended for good

    busy = fresh()
    at = T0
    while at + idle / 2 < T0 + lifetime:
        at += idle / 2
        assert services.sessions.check(busy, now=at) == alice
    assert services.sessions.check(busy, now=T0 + lifetime) is None  # however busy

    disabled = fresh()
    services.accounts.set_disabled(ROOT, "alice", disabled=True)
    assert services.sessions.check(disabled, now=T0) is None


def test_the_signing_secret_is_made_once_and_private(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "secret"
    first = secret_from_file(path)
    assert len(first) >= 48 and secret_from_file(path) == first
    assert path.stat().st_mode & 0o077 == 0


def test_ended_sessions_and_stale_failures_are_cleared_away(
    services: Services, alice: Principal
) -> None:
    old, _ = services.sessions.start(alice, now=T0)
    services.sessions.end(old, now=T0)
    with pytest.raises(AuthError):
        sign_in(services, "nobody", "guess-password", T0)
    later = T0 + timedelta(days=2)
    services.sessions.start(alice, now=later)
    with pytest.raises(AuthError):
        sign_in(services, "someone", "guess-password", later, client="9.9.9.9")
    with services.database.session() as session:
        assert session.get(LoginSession, old) is None
        keys = set(session.scalars(select(LoginFailures.key)))
    assert keys == {"account:someone", "client:9.9.9.9"}


@pytest.mark.usefixtures("alice")
def test_concurrent_guesses_cannot_share_one_window(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six sign-ins sent at once: one reaches the password check, five must wait."""
    checked: list[str] = []
    real_verify = accounts_module.verify_password

    def counting_verify(password_hash: str | None, password: str) -> bool:
        checked.append(password)
        return real_verify(password_hash, password)

    monkeypatch.setattr(accounts_module, "verify_password", counting_verify)
    barrier = threading.Barrier(6)
    sentences: list[str] = []

    def guess(n: int) -> None:
        barrier.wait()
        try:
            sign_in(services, "alice", f"guess-{n}", T0, client=f"10.0.0.{n}")
        except AuthError as exc:
            sentences.append(exc.user_message)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(checked) == 1
    assert sorted(sentences)[-1] == "Wrong user name or password."
    assert sum(s.startswith("Please wait") for s in sentences) == 5
