"""Sign-in: throttling, the bounded password, one first admin, disabling, new passwords,
and server-side sessions behind a signed cookie."""

from __future__ import annotations

import contextlib
import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from parley.auth import accounts as accounts_module
from parley.auth.passwords import MAX_PASSWORD_LENGTH
from parley.auth.sessions import SessionService, secret_from_file
from parley.core.domain import Principal, Role
from parley.core.errors import AuthError, InvalidInput, NotFound, PermissionDenied
from parley.store.models import LoginFailures, LoginSession, User
from parley.wiring.services import Services
from tests.support import ROOT

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
        f"Too many failed sign-ins. Please try again at {unlock:%H:%M} UTC, "
        "or ask an administrator to unlock the account."
    )
    after = unlock + timedelta(seconds=1)
    assert sign_in(services, "alice", "alice-password", after, client="5.6.7.8") == alice
    # Success cleared the counts: one failure now waits only the first delay again.
    with pytest.raises(AuthError, match="Wrong"):
        sign_in(services, "alice", "wrong-password", after)
    at = after + timedelta(seconds=delay + 0.01)
    assert sign_in(services, "alice", "alice-password", at) == alice


@pytest.fixture
def waits(services: Services, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits sign-in imposed on a slowed address, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(services.accounts, "_sleep", recorded.append)
    return recorded


@pytest.mark.usefixtures("alice")
def test_one_client_guessing_is_slowed_but_never_refuses_a_right_password(
    services: Services, bob: Principal, waits: list[float]
) -> None:
    with pytest.raises(AuthError, match="Wrong"):
        sign_in(services, "alice", "guess-one", T0, client="6.6.6.6")
    assert waits == []  # the first failure costs nothing yet
    # Another account from the same address: slowed by the delay, then let in.
    at = T0 + timedelta(milliseconds=100)
    assert sign_in(services, "bob", "bob-password", at, client="6.6.6.6") == bob
    assert waits == [pytest.approx(services.settings.login_delay_s - 0.1)]
    # Bob from his own machine is not held up by the guesser.
    assert sign_in(services, "bob", "bob-password", T0, client="7.7.7.7") == bob
    assert len(waits) == 1


@pytest.mark.usefixtures("alice")
def test_an_address_full_of_failures_never_locks_out_another_account(
    services: Services, waits: list[float]
) -> None:
    """Ten wrong passwords for one account from one address; the admin's right password
    from the same address still gets in (slowed, not refused), and only the attacked
    account is locked."""
    admin = services.accounts.create_user(
        ROOT, name="admin", password="admin-password", role=Role.ADMIN
    )
    at = T0
    for _ in range(10):
        at += timedelta(minutes=1)  # past the account's own delay each time
        with pytest.raises(AuthError):
            sign_in(services, "alice", "wrong-password", at, client="10.0.0.1")
    at += timedelta(seconds=1)
    assert sign_in(services, "admin", "admin-password", at, client="10.0.0.1") == admin
    assert waits[-1] == 8.0  # slowed, by at most the cap
    with pytest.raises(AuthError) as locked:
        sign_in(services, "alice", "alice-password", at, client="10.0.0.2")
    assert locked.value.user_message.startswith("Too many failed sign-ins")
    assert set(services.accounts.locked_until(ROOT, now=at)) == {"alice"}


@pytest.mark.usefixtures("waits")
def test_unlock_clears_the_lock_and_is_on_record(services: Services, alice: Principal) -> None:
    at = T0
    for _ in range(services.settings.login_max_failures):
        with pytest.raises(AuthError):
            sign_in(services, "alice", "wrong-password", at)
        at += timedelta(minutes=1)
    with pytest.raises(AuthError) as locked:
        sign_in(services, "alice", "alice-password", at)
    assert locked.value.user_message.startswith("Too many failed sign-ins")
    with pytest.raises(PermissionDenied):
        services.accounts.unlock(alice, "alice")
    assert set(services.accounts.locked_until(ROOT, now=at)) == {"alice"}
    assert services.accounts.unlock(ROOT, "alice") is True
    assert services.accounts.locked_until(ROOT, now=at) == {}
    assert sign_in(services, "alice", "alice-password", at) == alice
    assert services.accounts.unlock(ROOT, "alice") is False  # nothing left to clear
    records = services.audit.history(ROOT, kinds=["account_unlocked"]).records
    assert [(r.about_id, json.loads(r.data)["had_failures"]) for r in records] == [
        (alice.user_id, False),  # newest first
        (alice.user_id, True),
    ]


@pytest.mark.usefixtures("waits")
def test_twelve_people_sign_in_at_once_from_one_address(services: Services) -> None:
    """Everyone behind one proxy, at the same moment, some after a typo: all get in."""
    people = [
        services.accounts.create_user(ROOT, name=f"user{n}", password=f"password-{n}")
        for n in range(12)
    ]
    barrier = threading.Barrier(len(people))
    signed_in: list[Principal] = []
    refused: list[str] = []

    def arrive(n: int) -> None:
        barrier.wait()
        try:
            if n % 4 == 0:  # a typo first
                with contextlib.suppress(AuthError):
                    typed = datetime.now(UTC) - timedelta(seconds=5)  # then typed it again
                    sign_in(services, f"user{n}", "typo-password", typed, "10.9.9.9")
            signed_in.append(
                sign_in(services, f"user{n}", f"password-{n}", datetime.now(UTC), "10.9.9.9")
            )
        except Exception as exc:
            refused.append(f"user{n}: {exc!r}")

    threads = [threading.Thread(target=arrive, args=(n,)) for n in range(len(people))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert refused == []
    assert sorted(p.user_id for p in signed_in) == sorted(p.user_id for p in people)


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
    with services._database.session() as session:
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
    with services._database.session() as session:
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
        services._database,
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
    with services._database.session() as session:
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
