"""The audit trail: an append-only record in which each entry carries the hash of the one
before it, so an edited, removed or inserted record breaks the chain where it was.

    hash = SHA-256(previous hash + canonical JSON of the record's own fields)

The first record's previous hash is 64 zeros. `audit_head` (one row) holds the last id
and hash: appending locks it (SQLite's `BEGIN IMMEDIATE`; `FOR UPDATE` on PostgreSQL),
so any number of processes append one at a time and the chain stays whole; it also
lets `verify` notice records cut off the end. Record data is metadata and hashes,
never message text (the messages hold that; a record names them and their hash).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from store.db import Database
from store.models import AuditHead, AuditRecord

GENESIS = "0" * 64
EXPORT_FIELDS = ("id", "at", "actor_id", "actor", "kind", "subject", "data", "prev_hash", "hash")


def canonical(data: Mapping[str, Any]) -> str:
    """JSON with sorted keys and no spaces: the same data always gives the same bytes."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical(fields)).encode("utf-8")).hexdigest()


def _fields(row: AuditRecord) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at,
        "actor_id": row.actor_id,
        "actor": row.actor,
        "kind": row.kind,
        "subject": row.subject,
        "data": row.data,
    }


@dataclass(frozen=True, slots=True)
class Broken:
    """The first place the chain does not hold."""

    record_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Verified:
    records: int
    broken: Broken | None


class AuditLog:
    def __init__(self, database: Database) -> None:
        self._db = database

    def append(
        self,
        kind: str,
        *,
        actor_id: int | None,
        actor: str,
        subject: str = "",
        data: Mapping[str, Any] | None = None,
    ) -> int:
        """Add one record at the end of the chain; its id."""
        with self._db.session(write_lock=True) as session:
            head = session.scalar(select(AuditHead).where(AuditHead.id == 1).with_for_update())
            if head is None:
                raise RuntimeError("audit_head is missing: run `parley db upgrade`")
            row = AuditRecord(
                at=datetime.now(UTC).isoformat(timespec="microseconds"),
                actor_id=actor_id,
                actor=actor[:200],
                kind=kind[:64],
                subject=subject[:200],
                data=canonical(data or {}),
                prev_hash=head.last_hash,
                hash="",
            )
            session.add(row)
            session.flush()  # the id is part of what is hashed
            row.hash = record_hash(row.prev_hash, _fields(row))
            head.last_id, head.last_hash = row.id, row.hash
            return row.id

    def verify(self) -> Verified:
        """Walk the chain from the first record: the first broken link, if any."""
        count = 0
        previous = GENESIS
        last_id = 0
        with self._db.session() as session:
            for row in session.scalars(select(AuditRecord).order_by(AuditRecord.id)).yield_per(
                1000
            ):
                count += 1
                if row.prev_hash != previous:
                    return Verified(
                        count, Broken(row.id, "a record before it was removed or changed")
                    )
                if record_hash(row.prev_hash, _fields(row)) != row.hash:
                    return Verified(count, Broken(row.id, "this record was changed"))
                previous, last_id = row.hash, row.id
            head = session.get(AuditHead, 1)
        if head is not None and (head.last_id, head.last_hash) != (last_id, previous):
            return Verified(count, Broken(head.last_id, "records at the end were removed"))
        return Verified(count, None)

    def records(
        self, *, actor: str | None = None, since: datetime | None = None
    ) -> Iterator[dict[str, Any]]:
        """Records in order, as exported (`data` decoded), by actor name and start time."""
        query = select(AuditRecord).order_by(AuditRecord.id)
        if actor is not None:
            query = query.where(AuditRecord.actor == actor)
        if since is not None:
            query = query.where(AuditRecord.at >= since.astimezone(UTC).isoformat())
        with self._db.session() as session:
            for row in session.scalars(query).yield_per(1000):
                yield {
                    **_fields(row),
                    "data": json.loads(row.data),
                    "prev_hash": row.prev_hash,
                    "hash": row.hash,
                }


def to_jsonl(records: Iterator[dict[str, Any]]) -> Iterator[str]:
    for record in records:
        yield canonical(record) + "\n"


def to_csv(records: Iterator[dict[str, Any]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_FIELDS)
    writer.writeheader()
    for record in records:
        writer.writerow({**record, "data": canonical(record["data"])})
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.getvalue():
        yield buffer.getvalue()


__all__ = [
    "GENESIS",
    "AuditLog",
    "Broken",
    "Verified",
    "canonical",
    "record_hash",
    "to_csv",
    "to_jsonl",
]
