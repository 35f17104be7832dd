"""The audit trail's hash chain: intact when untouched, broken exactly where a record was
edited, removed or cut off; several processes append without breaking it; exports."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

from parley.chat.oversight.audit_trail import record_facts
from parley.core.audit_events import AuditEvent, AuditKind, Subject, UserErased
from parley.core.config import Settings
from parley.core.errors import InvalidInput
from parley.store.audit import AuditChain, Checkpoint, Verified, parse_checkpoints
from parley.store.audit_chain import (
    GENESIS,
    content_hash,
    hashed_fields,
    keyed_hash,
    record_hash,
    redacted_content,
)
from parley.store.db import Database
from parley.store.keys import AuditKeys, key_id
from parley.store.models import AuditHead, AuditRecord

ROOT_DIR = Path(__file__).resolve().parents[2]


class Numbered(AuditEvent):
    """A record for these tests: the store hashes any event without reading it."""

    kind = AuditKind.SIGN_IN
    n: int

    def subject(self) -> Subject:
        return Subject.session(self.n)


class Trail(AuditChain):
    """The chain, verified as the console verifies it."""

    def verify(self, anchors: Sequence[Checkpoint] = ()) -> Verified:  # type: ignore[override]
        return super().verify(record_facts, anchors)


@pytest.fixture
def log(database: Database) -> Trail:
    audit = Trail(database)
    for n in range(1, 6):
        audit.append(Numbered(n=n), actor_id=n, actor=f"user{n}")
    return audit


def test_an_untouched_chain_verifies(log: Trail) -> None:
    result = log.verify()
    assert (result.records, result.broken) == (5, None)


def test_an_edited_record_is_found(log: Trail, database: Database) -> None:
    with database.session() as session:
        session.execute(update(AuditRecord).where(AuditRecord.id == 3).values(data='{"n":30}'))
    broken = log.verify().broken
    assert broken is not None and broken.record_id == 3 and "changed" in broken.reason


def rechain(database: Database, key: bytes | None) -> None:
    """What a forger who can write the database does after changing it: recompute every
    record's hash from the first, with `key` if they hold it — else the best they can:
    turn every record into an unkeyed one, hashed with plain SHA-256 as before keys
    existed — and move the head to the new last record."""
    previous = GENESIS
    with database.session() as session:
        rows = session.scalars(select(AuditRecord).order_by(AuditRecord.id)).all()
        for row in rows:
            row.prev_hash = previous
            if key is None:
                row.key_id = row.salt = row.content_hash = row.redacted_hash = None
            elif row.salt is not None:
                row.content_hash = content_hash(row.salt, row.actor, row.subject, row.data)
            fields = hashed_fields(row)
            row.hash = keyed_hash(key, previous, fields) if key else record_hash(previous, fields)
            previous = row.hash
        session.execute(
            update(AuditHead).values(last_id=rows[-1].id if rows else 0, last_hash=previous)
        )


def test_a_record_rehashed_without_the_key_is_found(log: Trail, database: Database) -> None:
    with database.session() as session:  # a careful forger recomputes every hash after it
        session.execute(update(AuditRecord).where(AuditRecord.id == 2).values(actor="someone-else"))
    rechain(database, key=b"a guess at the audit key, wrong")
    broken = log.verify().broken
    assert broken is not None and broken.record_id == 1 and "changed" in broken.reason
    rechain(database, key=None)  # the whole trail downgraded to the unkeyed kind
    broken = log.verify().broken
    assert broken is not None and broken.record_id == 1 and "unkeyed" in broken.reason


def test_records_from_before_keys_are_keyed_once_if_their_chain_holds(
    log: Trail, database: Database
) -> None:
    rechain(database, key=None)  # as an older version wrote them
    assert log.seal_legacy() == 5 and log.seal_legacy() == 0
    result = log.verify()
    assert (result.records, result.broken) == (5, None)
    rechain(database, key=None)
    with database.session() as session:  # a legacy record edited before the upgrade
        session.execute(update(AuditRecord).where(AuditRecord.id == 3).values(data='{"n":33}'))
    with pytest.raises(ValueError, match="broken at record 3"):
        log.seal_legacy()
    broken = log.verify().broken
    assert broken is not None and "unkeyed" in broken.reason  # left as it was


def test_redaction_puts_only_the_form_decided_when_it_was_written(
    log: Trail, database: Database
) -> None:
    """An insider "redacting" a record to rewrite it: any content but the redacted form
    breaks the record; the redacted form itself needs an erasure on record."""
    with database.session() as session:
        row = session.get(AuditRecord, 2)
        assert row is not None
        row.actor, row.subject, row.data = redacted_content(
            row.actor_id, row.actor, row.subject, row.data
        )
        row.salt = None
    broken = log.verify().broken
    assert broken is not None and broken.record_id == 2
    assert "no later erasure of its user" in broken.reason
    with database.session() as session:
        session.execute(
            update(AuditRecord).where(AuditRecord.id == 2).values(data='{"n":"forged"}')
        )
    broken = log.verify().broken
    assert broken is not None and broken.record_id == 2 and "changed" in broken.reason


@pytest.fixture
def anchored(log: Trail) -> list[Checkpoint]:
    """A checkpoint the operator kept elsewhere, then more records."""
    anchor = log.checkpoint()
    for n in range(6, 9):
        log.append(Numbered(n=n), actor_id=n, actor=f"user{n}")
    return parse_checkpoints(anchor.line() + "\n")


def insider_key(database: Database) -> bytes:
    keys = database.audit_keys
    assert keys is not None
    return keys.current


def test_a_rehash_forgery_by_the_key_holder_is_caught_by_a_checkpoint(
    log: Trail, database: Database, anchored: list[Checkpoint]
) -> None:
    with database.session() as session:
        session.execute(update(AuditRecord).where(AuditRecord.id == 3).values(data='{"n":30}'))
    rechain(database, insider_key(database))
    assert log.verify().broken is None  # the chain alone cannot tell: the key signed it
    broken = log.verify(anchored).broken
    assert broken is not None and broken.record_id == 6
    assert "altered, removed or re-ordered since the checkpoint of" in broken.reason


def test_a_deleted_middle_record_is_caught_by_a_checkpoint(
    log: Trail, database: Database, anchored: list[Checkpoint]
) -> None:
    with database.session() as session:
        session.execute(delete(AuditRecord).where(AuditRecord.id == 2))
    rechain(database, insider_key(database))
    assert log.verify().broken is None
    broken = log.verify(anchored).broken
    assert broken is not None and "altered, removed or re-ordered" in broken.reason


def test_a_cut_tail_is_caught_by_a_checkpoint(
    log: Trail, database: Database, anchored: list[Checkpoint]
) -> None:
    with database.session() as session:  # cut the checkpoint and everything after it
        session.execute(delete(AuditRecord).where(AuditRecord.id >= 6))
        last = session.get(AuditRecord, 5)
        assert last is not None
        session.execute(update(AuditHead).values(last_id=5, last_hash=last.hash))
    assert log.verify().broken is None  # the head was moved with it
    broken = log.verify(anchored).broken
    assert broken is not None and broken.record_id == 6
    assert "shorter than the checkpoint" in broken.reason and "6 records" in broken.reason


def test_a_reordered_trail_is_caught_by_a_checkpoint(
    log: Trail, database: Database, anchored: list[Checkpoint]
) -> None:
    with database.session() as session:  # records 2 and 3 swap their contents
        two, three = session.get(AuditRecord, 2), session.get(AuditRecord, 3)
        assert two is not None and three is not None
        for field in ("at", "actor_id", "actor", "subject", "data", "salt"):
            a, b = getattr(two, field), getattr(three, field)
            setattr(two, field, b)
            setattr(three, field, a)
    rechain(database, insider_key(database))
    assert log.verify().broken is None
    broken = log.verify(anchored).broken
    assert broken is not None and "re-ordered" in broken.reason


def test_a_forged_checkpoint_line_is_refused(log: Trail, anchored: list[Checkpoint]) -> None:
    genuine = anchored[0]
    assert log.verify(anchored).broken is None and log.verify(anchored).anchors == 1
    forged = Checkpoint(genuine.records - 1, genuine.head_id - 1, "0" * 64, genuine.at,
                        genuine.key_id, genuine.hmac)  # fmt: skip
    broken = log.verify([forged]).broken
    assert broken is not None and "not genuine" in broken.reason
    with pytest.raises(InvalidInput, match="not a checkpoint line"):
        parse_checkpoints("records=5 head=5\n")


def test_a_rotated_key_starts_a_segment_the_old_key_still_verifies(
    database: Database, settings: Settings, anchored: list[Checkpoint]
) -> None:
    old = insider_key(database).decode()
    new = "a new audit key, rotated in, long enough"
    rotated = Database(
        settings.resolved_database_url, audit_keys=AuditKeys.from_secrets(new, [old])
    )
    after = Trail(rotated)
    after.append(Numbered(n=9), actor_id=9, actor="user9")
    result = after.verify(anchored)  # the checkpoint was signed with the old key
    assert (result.records, result.broken) == (10, None)
    kids = [r.key_id for r in after.records()]
    assert kids[:-1] == [key_id(old.encode())] * 9 and kids[-1] == key_id(new.encode())
    forgot = Trail(Database(settings.resolved_database_url,
                               audit_keys=AuditKeys.from_secrets(new)))  # fmt: skip
    broken = forgot.verify().broken
    assert broken is not None and broken.record_id == 1
    assert "which this server does not hold" in broken.reason
    rotated.dispose()


def test_removed_records_are_found_in_the_middle_and_at_the_end(
    log: Trail, database: Database
) -> None:
    with database.session() as session:
        session.execute(delete(AuditRecord).where(AuditRecord.id == 5))
    broken = log.verify().broken
    assert broken is not None and broken.record_id == 5 and "end" in broken.reason
    with database.session() as session:
        session.execute(delete(AuditRecord).where(AuditRecord.id == 2))
    broken = log.verify().broken
    assert broken is not None and broken.record_id == 3


APPENDER = textwrap.dedent(
    """
    import sys
    from parley.core.audit_events import SignedIn
    from parley.store.audit import AuditChain
    from parley.store.db import Database
    from parley.store.keys import AuditKeys

    log = AuditChain(Database(sys.argv[1], audit_keys=AuditKeys.from_secrets(sys.argv[4])))
    for n in range(int(sys.argv[3])):
        log.append(SignedIn(method="test", client=str(n)), actor_id=None, actor=sys.argv[2])
    """
)


def test_processes_appending_at_once_keep_the_chain_whole(
    database: Database, settings: Settings
) -> None:
    url = settings.resolved_database_url
    key = (settings.data_dir / "audit.key").read_text()  # the fixture's database made it
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, url, f"process{p}", "40", key], cwd=ROOT_DIR
        )
        for p in range(4)
    ]
    assert [w.wait(timeout=120) for w in workers] == [0, 0, 0, 0]
    log = Trail(database)
    result = log.verify()
    assert (result.records, result.broken) == (160, None)
    ids = [r.id for r in log.records()]
    assert ids == list(range(1, 161))  # no gaps, no forks
    assert {r.actor for r in log.records()} == {f"process{p}" for p in range(4)}


def test_export_and_verify_from_the_command_line(log: Trail) -> None:
    from tests.cli.test_main import run

    assert log.verify().records == 5  # the five records the fixture appended
    verified = run("audit", "verify")
    assert verified.returncode == 0 and "intact: 5 records" in verified.stdout
    lines = run("audit", "export", "--user", "user2").stdout.splitlines()
    assert [json.loads(line)["subject"] for line in lines] == ["session 2"]
    table = run("audit", "export", "--format", "csv", "--since", "2000-01-01").stdout
    assert table.splitlines()[0].startswith("id,at,actor_id,actor,about_id,kind")
    assert len(table.splitlines()) == 1 + 5 + 2  # the header, five records, two exports
    assert ",audit_exported," in table.splitlines()[-1]  # each export is on record
    bad = run("audit", "export", "--since", "yesterday")
    assert bad.returncode != 0 and "is not a day" in bad.stderr


def test_unkeyed_records_in_a_keyed_trail_are_never_keyed(log: Trail, database: Database) -> None:
    """A forger without the key turns one record into the unkeyed kind, hoping an
    upgrade keys (launders) it: sealing refuses, and verify keeps pointing at it."""
    with database.session() as session:
        session.execute(update(AuditRecord).where(AuditRecord.id == 4).values(key_id=None))
    with pytest.raises(ValueError, match="appear in a keyed trail"):
        log.seal_legacy()
    broken = log.verify().broken
    assert broken is not None and broken.record_id == 4 and "unkeyed" in broken.reason


def test_an_erasure_of_someone_still_here_is_a_forgery(log: Trail, database: Database) -> None:
    """Even with the key, an erasure record for a user who still has an account (to
    justify redacting their records) breaks verification."""
    from parley.store.audit import append_in
    from parley.store.models import User

    with database.session(write_lock=True) as session:
        user = User(name="still-here", password_hash=None)
        session.add(user)
        session.flush()
        erased = UserErased(user_id=user.id, conversation_ids=[], document_ids=[])
        append_in(session, erased, actor_id=None, actor="system", about_id=user.id)
    broken = log.verify().broken
    assert broken is not None and "still has an account" in broken.reason


class NotAnAnswer(AuditEvent):
    """An `answer` record whose data is not an answer's (written by hand, or drifted)."""

    kind = AuditKind.ANSWER
    messages: str


def test_a_record_the_verifier_must_read_but_cannot_breaks_it(
    log: Trail, database: Database
) -> None:
    """Verification fails closed: an answer whose message references cannot be read is
    not skipped as if it named none."""
    with database.session(write_lock=True) as session:
        from parley.store.audit import append_in

        append_in(session, NotAnAnswer(messages="9:ab"), actor_id=1, actor="user1")
    broken = log.verify().broken
    assert broken is not None and broken.record_id == 6
    assert "does not read as its kind (answer)" in broken.reason
