"""What several app processes on one database agree on, and work one of them does at a time.

**Secrets.** A cookie signed by one process must be read by the next, and the audit
trail keyed by one process verified by every other: every process on one database needs
the same session secret and audit key. The database keeps a fingerprint of each (never
the secret), set by the first process; a process whose secret gives another fingerprint
refuses to start with a sentence, rather than signing everyone out or forking the trail.
A rotation names the old secret among the previous ones: the first process that starts
with the new one moves the fingerprint on, and a process still holding only the old one
is then refused.

The fingerprint is scrypt of the secret (4 MiB and about 10 ms a guess), so a copy of
the database does not let anyone test guesses of a weak secret cheaply; a process checks
each secret once.

**Leases.** `try_lease` gives one process at a time a named piece of work (the sweep of
the vector outbox, a summary fold) until a deadline; a process that dies holding one
loses it when the deadline passes. Times are Unix seconds, the same in every process
(keep the hosts' clocks in step).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select, update

from parley.core.errors import ConfigurationError, StorageConflict
from parley.store.db import Database
from parley.store.models import Lease, SecretFingerprint

log = logging.getLogger(__name__)

# Who this process is, in leases and call slots: readable in the table, unique per start.
_AGREED: set[tuple[str, str, str]] = set()  # (database, name, fingerprint) checked once

PROCESS_ID = f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(4)}"


def fingerprint(name: str, secret: str) -> str:
    """A fingerprint of `secret` for the purpose `name` (32 hex digits; not reversible)."""
    return hashlib.scrypt(
        secret.encode("utf-8"),
        salt=b"parley-secret-fingerprint\x00" + name.encode(),
        n=2**12,
        r=8,
        p=1,
        dklen=16,
    ).hex()


def agree_on_secret(
    database: Database,
    name: str,
    current: str,
    previous: Sequence[str] = (),
    *,
    setting: str,
) -> None:
    """Record `current`'s fingerprint under `name`, or check it against the recorded one.

    Raises `ConfigurationError` naming `setting` when the database was set up with another
    secret that `previous` does not hold either.
    """
    mine = fingerprint(name, current)
    agreed = (str(database.url), name, mine)
    if agreed in _AGREED:
        return
    if not _record_or_match(database, name, mine, previous):
        raise ConfigurationError(
            f"This process's {name} is not the one the database was set up with: every "
            f"Parley process on one database needs the same {setting} (to rotate it, give "
            "the old one among the previous ones; see docs/operators.md)."
        )
    _AGREED.add(agreed)


def _record_or_match(database: Database, name: str, mine: str, previous: Sequence[str]) -> bool:
    for attempt in range(3):
        try:
            with database.session(write_lock=True) as session:
                row = session.scalar(
                    select(SecretFingerprint)
                    .where(SecretFingerprint.name == name)
                    .with_for_update()
                )
                if row is None:
                    session.add(SecretFingerprint(name=name, fingerprint=mine))
                    return True
                if row.fingerprint == mine:
                    return True
                if row.fingerprint in {fingerprint(name, old) for old in previous}:
                    log.info("The %s was rotated: the database now expects the new one.", name)
                    row.fingerprint = mine
                    row.set_at = datetime.now(UTC)
                    return True
                return False
        except StorageConflict:  # two first processes inserted at once: read theirs
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def try_lease(database: Database, name: str, seconds: float) -> str | None:
    """Take the lease `name` for `seconds` if nobody holds it (another process, or another
    task of this one); its token, or None. Renew with `renew_lease`, give back with
    `release_lease`: both need the token, so one taker never frees another's lease."""
    token = f"{PROCESS_ID}:{secrets.token_hex(4)}"
    now = time.time()
    try:
        with database.session(write_lock=True) as session:
            row = session.scalar(select(Lease).where(Lease.name == name).with_for_update())
            if row is None:
                session.add(Lease(name=name, holder=token, expires_at=now + seconds))
                return token
            if row.expires_at > now:
                return None
            row.holder = token
            row.expires_at = now + seconds
            return token
    except StorageConflict:  # another process created the row first: it holds the lease
        return None


def renew_lease(database: Database, name: str, token: str, seconds: float) -> bool:
    """Extend a lease this token still holds; False if it was lost (it ran out and was taken)."""
    with database.session(write_lock=True) as session:
        renewed = session.execute(
            update(Lease)
            .where(Lease.name == name, Lease.holder == token)
            .values(expires_at=time.time() + seconds)
        )
        return bool(renewed.rowcount)  # type: ignore[attr-defined]


def release_lease(database: Database, name: str, token: str) -> None:
    """Give the lease back at once (if this token still holds it)."""
    with database.session(write_lock=True) as session:
        session.execute(
            update(Lease)
            .where(Lease.name == name, Lease.holder == token)
            .values(expires_at=time.time())
        )


__all__ = [
    "PROCESS_ID",
    "agree_on_secret",
    "fingerprint",
    "release_lease",
    "renew_lease",
    "try_lease",
]
