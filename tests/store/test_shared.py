"""Several processes on one database: they must hold the same secrets (a fingerprint in
the database, never the secret, refuses one that differs), and a lease gives a piece of
work to one of them at a time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from parley.auth.sessions import SessionService
from parley.core.domain import Principal, Role
from parley.core.errors import ConfigurationError
from parley.store import shared
from parley.store.db import Database
from parley.store.migrate import upgrade
from parley.store.models import SecretFingerprint
from parley.store.shared import (
    agree_on_secret,
    fingerprint,
    release_lease,
    renew_lease,
    try_lease,
)

PARLEY = str(Path(sys.executable).with_name("parley"))


@pytest.fixture
def database(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'shared.db'}")
    upgrade(db)
    return db


@pytest.fixture(autouse=True)
def checked_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each test stands for processes that have not yet checked their secrets.
    monkeypatch.setattr(shared, "_AGREED", set())


def test_the_first_secret_is_recorded_as_a_fingerprint_and_a_different_one_is_refused(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    agree_on_secret(database, "session secret", "first-secret-0123456789", setting="S")
    with database.session() as session:
        stored = session.scalar(select(SecretFingerprint.fingerprint))
    assert stored == fingerprint("session secret", "first-secret-0123456789")
    assert "first-secret" not in (stored or "")

    monkeypatch.setattr(shared, "_AGREED", set())  # another process, same secret
    agree_on_secret(database, "session secret", "first-secret-0123456789", setting="S")

    with pytest.raises(ConfigurationError, match="PARLEY_SESSION_SECRET") as refused:
        agree_on_secret(
            database, "session secret", "other-secret-0123456789", setting="PARLEY_SESSION_SECRET"
        )
    assert "other-secret" not in str(refused.value)
    # A secret of one name says nothing of another's.
    agree_on_secret(database, "audit key", "other-secret-0123456789", setting="A")


def test_a_rotation_moves_the_fingerprint_on_and_then_refuses_the_old_secret(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    agree_on_secret(database, "audit key", "old-key-0123456789abcdef", setting="A")
    agree_on_secret(
        database, "audit key", "new-key-0123456789abcdef", ["old-key-0123456789abcdef"], setting="A"
    )
    monkeypatch.setattr(shared, "_AGREED", set())
    with pytest.raises(ConfigurationError):  # a process left on the old key alone
        agree_on_secret(database, "audit key", "old-key-0123456789abcdef", setting="A")
    agree_on_secret(database, "audit key", "new-key-0123456789abcdef", setting="A")


def in_processes(code: str, args: list[list[str]]) -> list[str]:
    """Run `code` in one fresh interpreter per argument list, all released at once (they
    wait for a start time); each one's last printed line, in order."""
    start = str(time.time() + 1.5)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code, start, *arg],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for arg in args
    ]
    lines = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        lines.append(out.strip().splitlines()[-1])
    return lines


AGREE = """
import sys, time
from parley.core.errors import ConfigurationError
from parley.store.db import Database
from parley.store.shared import agree_on_secret
start, url, secret = float(sys.argv[1]), sys.argv[2], sys.argv[3]
database = Database(url)
time.sleep(max(0.0, start - time.time()))
try:
    agree_on_secret(database, "session secret", secret, setting="PARLEY_SESSION_SECRET")
    print("agreed")
except ConfigurationError:
    print("refused")
"""


def test_processes_starting_together_agree_on_the_first_secret_and_refuse_another(
    database: Database,
) -> None:
    url = database.url.render_as_string(hide_password=False)
    secrets = ["shared-secret-0123456789"] * 5 + ["stray-secret-0123456789"]
    got = sorted(in_processes(AGREE, [[url, s] for s in secrets]))
    # Whichever of the six wrote first, the others agree with it; the odd one out is
    # either refused, or was first and then every other is refused.
    assert got in (["agreed"] * 5 + ["refused"], ["agreed"] + ["refused"] * 5)


def test_a_cookie_signed_with_the_rotated_out_secret_still_resumes(database: Database) -> None:
    with database.session() as session:
        from parley.store.models import User

        user = User(name="ada", role=Role.USER)
        session.add(user)
        session.flush()
        principal = Principal(user_id=user.id, name="ada", role=Role.USER)
    week = timedelta(days=7)
    old = SessionService(database, secret="old-secret-0123456789", idle=week, lifetime=week)
    _, ticket = old.start(principal)
    cookie = old.exchange(ticket)
    assert cookie is not None
    rotated = SessionService(
        database,
        secret="new-secret-0123456789",
        previous_secrets=["old-secret-0123456789"],
        idle=week,
        lifetime=week,
    )
    resumed = rotated.resume(cookie)
    assert resumed is not None and resumed.principal.user_id == principal.user_id
    plain_new = SessionService(database, secret="new-secret-0123456789", idle=week, lifetime=week)
    assert plain_new.resume(cookie) is None


def test_one_holder_at_a_time_until_release_or_expiry(database: Database) -> None:
    first = try_lease(database, "sweep", 60)
    assert first is not None
    assert try_lease(database, "sweep", 60) is None  # not even a second task of this process
    assert renew_lease(database, "sweep", first, 60)
    release_lease(database, "sweep", "someone-else")  # not theirs to give back
    assert try_lease(database, "sweep", 60) is None
    release_lease(database, "sweep", first)
    second = try_lease(database, "sweep", 0.2)
    assert second is not None
    assert try_lease(database, "sweep", 60) is None
    time.sleep(0.3)  # the second holder died: its lease runs out
    third = try_lease(database, "sweep", 60)
    assert third is not None
    assert not renew_lease(database, "sweep", second, 60)  # lost, and it can tell
    release_lease(database, "sweep", second)  # a late release frees nothing
    assert try_lease(database, "sweep", 60) is None


RACE = """
import sys, time
from parley.store.db import Database
from parley.store.shared import try_lease
start, url = float(sys.argv[1]), sys.argv[2]
database = Database(url)
time.sleep(max(0.0, start - time.time()))
print("won" if try_lease(database, "nightly", 60) is not None else "lost")
"""


def test_processes_racing_for_a_new_lease_give_it_to_exactly_one(database: Database) -> None:
    url = database.url.render_as_string(hide_password=False)
    got = in_processes(RACE, [[url]] * 6)
    assert sorted(got) == ["lost"] * 5 + ["won"]


def _parley(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PARLEY, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


def test_a_second_host_with_its_own_secrets_is_refused_with_a_sentence(tmp_path: Path) -> None:
    """Two data dirs (two hosts) on one database: the second made its own random secrets
    on first start, and is told which setting to share, not left to sign people out."""
    url = f"sqlite:///{tmp_path / 'one.db'}"
    first = {"PARLEY_DATA_DIR": str(tmp_path / "a"), "PARLEY_DATABASE_URL": url}
    assert _parley("db", "upgrade", env=first).returncode == 0
    assert _parley("user", "list", env=first).returncode == 0

    second = {"PARLEY_DATA_DIR": str(tmp_path / "b"), "PARLEY_DATABASE_URL": url}
    refused = _parley("user", "list", env=second)
    assert refused.returncode != 0
    assert "PARLEY_AUDIT_KEY" in refused.stderr and "Traceback" not in refused.stderr

    audit_key = (tmp_path / "a" / "audit.key").read_text().strip()
    refused = _parley("user", "list", env={**second, "PARLEY_AUDIT_KEY": audit_key})
    assert refused.returncode != 0
    assert "PARLEY_SESSION_SECRET" in refused.stderr and "Traceback" not in refused.stderr

    secret = (tmp_path / "a" / "session_secret").read_text().strip()
    shared_env = {**second, "PARLEY_AUDIT_KEY": audit_key, "PARLEY_SESSION_SECRET": secret}
    assert _parley("user", "list", env=shared_env).returncode == 0
