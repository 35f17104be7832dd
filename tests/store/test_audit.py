"""The audit trail's hash chain: intact when untouched, broken exactly where a record was
edited, removed or cut off; several processes append without breaking it; exports."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import delete, update

from parley.config import Settings
from store.audit import AuditLog
from store.db import Database
from store.models import AuditRecord

ROOT_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture
def log(database: Database) -> AuditLog:
    audit = AuditLog(database)
    for n in range(1, 6):
        audit.append("login", actor_id=n, actor=f"user{n}", subject=f"session:{n}", data={"n": n})
    return audit


def test_an_untouched_chain_verifies(log: AuditLog) -> None:
    result = log.verify()
    assert (result.records, result.broken) == (5, None)


def test_an_edited_record_is_found(log: AuditLog, database: Database) -> None:
    with database.session() as session:
        session.execute(update(AuditRecord).where(AuditRecord.id == 3).values(data='{"n":30}'))
    broken = log.verify().broken
    assert broken is not None and broken.record_id == 3 and "changed" in broken.reason


def test_a_record_rehashed_after_editing_breaks_the_next_link(
    log: AuditLog, database: Database
) -> None:
    from store.audit import record_hash

    with database.session() as session:  # a careful forger recomputes the record's hash
        row = session.get(AuditRecord, 2)
        assert row is not None
        row.actor = "someone-else"
        session.flush()
        row.hash = record_hash(
            row.prev_hash,
            {
                "id": row.id,
                "at": row.at,
                "actor_id": row.actor_id,
                "actor": row.actor,
                "kind": row.kind,
                "subject": row.subject,
                "data": row.data,
            },
        )
    broken = log.verify().broken
    assert broken is not None and broken.record_id == 3  # the next record no longer links


def test_removed_records_are_found_in_the_middle_and_at_the_end(
    log: AuditLog, database: Database
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
    from store.audit import AuditLog
    from store.db import Database

    log = AuditLog(Database(sys.argv[1]))
    for n in range(int(sys.argv[3])):
        log.append("admin_action", actor_id=None, actor=sys.argv[2], data={"n": n})
    """
)


def test_processes_appending_at_once_keep_the_chain_whole(
    database: Database, settings: Settings
) -> None:
    url = settings.resolved_database_url
    workers = [
        subprocess.Popen([sys.executable, "-c", APPENDER, url, f"process{p}", "40"], cwd=ROOT_DIR)
        for p in range(4)
    ]
    assert [w.wait(timeout=120) for w in workers] == [0, 0, 0, 0]
    log = AuditLog(database)
    result = log.verify()
    assert (result.records, result.broken) == (160, None)
    ids = [r["id"] for r in log.records()]
    assert ids == list(range(1, 161))  # no gaps, no forks
    assert {r["actor"] for r in log.records()} == {f"process{p}" for p in range(4)}


def test_export_and_verify_from_the_command_line(log: AuditLog) -> None:
    from tests.cli.test_main import run

    assert log.verify().records == 5  # the five records the fixture appended
    verified = run("audit", "verify")
    assert verified.returncode == 0 and "intact: 5 records" in verified.stdout
    lines = run("audit", "export", "--user", "user2").stdout.splitlines()
    assert [json.loads(line)["subject"] for line in lines] == ["session:2"]
    table = run("audit", "export", "--format", "csv", "--since", "2000-01-01").stdout
    assert table.splitlines()[0].startswith("id,at,actor_id,actor,about_id,kind")
    assert len(table.splitlines()) == 1 + 5 + 2  # the header, five records, two exports
    assert ",audit_exported," in table.splitlines()[-1]  # each export is on record
    bad = run("audit", "export", "--since", "yesterday")
    assert bad.returncode != 0 and "is not a day" in bad.stderr
