"""The audit trail: an append-only record in which each entry carries the hash of the one
before it, so an edited, removed or inserted record breaks the chain where it was.

    hash = SHA-256(previous hash + canonical JSON of the record's own fields)

The first record's previous hash is 64 zeros. `audit_head` (one row) holds the last id
and hash: appending locks it (SQLite's `BEGIN IMMEDIATE`; `FOR UPDATE` on PostgreSQL),
so any number of processes append one at a time and the chain stays whole; it also
lets `verify` notice records cut off the end. Record data is metadata and hashes,
never message text: the messages hold that, and a record names them with their hash
(`message_ref`), so `verify` finds a message edited afterwards, or removed without an
erasure record (a tombstone naming its conversation) to say why.

Records are written by the services in the same transaction as what they record
(`append_in`): an action and its record commit together or not at all. `about_id` is
the user whose data a record concerns (the owner of a conversation an admin opened,
the user whose quota was set), so a user's history is what they did and what was
done to their data.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from parley.domain import Principal
from store.db import Database
from store.models import AuditHead, AuditRecord, Message

GENESIS = "0" * 64
EXPORT_FIELDS = (
    "id",
    "at",
    "actor_id",
    "actor",
    "about_id",
    "kind",
    "subject",
    "data",
    "prev_hash",
    "hash",
)
# Records whose `data.conversation_ids` were erased: their messages may be gone.
ERASURE_KINDS = frozenset({"conversation_erased", "user_erased"})
_CHECK_BATCH = 500


def canonical(data: Mapping[str, Any]) -> str:
    """JSON with sorted keys and no spaces: the same data always gives the same bytes."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical(fields)).encode("utf-8")).hexdigest()


_channel: str | None = None  # where this process's records come from, when not the app


def set_channel(name: str | None) -> None:
    """Mark every record this process appends from now on with `via` (the command line
    sets "cli": an operator acting for a user is then told apart from the user)."""
    global _channel
    _channel = name


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def message_ref(message_id: int, text: str, salt: str | None) -> dict[str, Any]:
    """How a record names a message: its id and the hash of its salt and text (never the
    text). The salt lives in the message row: erased with it, the hash tells nothing."""
    return {"id": message_id, "sha256": text_hash((salt or "") + text)}


def by(principal: Principal | None) -> dict[str, Any]:
    """The actor fields for `append_in` (None: the system, e.g. start-up work)."""
    if principal is None:
        return {"actor_id": None, "actor": "system"}
    return {"actor_id": principal.user_id, "actor": principal.name}


def _fields(row: AuditRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "id": row.id,
        "at": row.at,
        "actor_id": row.actor_id,
        "actor": row.actor,
        "kind": row.kind,
        "subject": row.subject,
        "data": row.data,
    }
    if row.about_id is not None:
        fields["about_id"] = row.about_id
    return fields


def append_in(
    session: Session,
    kind: str,
    *,
    actor_id: int | None,
    actor: str,
    about_id: int | None = None,
    subject: str = "",
    data: Mapping[str, Any] | None = None,
) -> int:
    """Add one record at the end of the chain, in the caller's transaction; its id.

    The head row is updated first: that takes SQLite's write lock (or PostgreSQL's row
    lock) before the last hash is read, so appenders in any number of processes queue
    up there and the chain never forks.
    """
    session.execute(update(AuditHead).where(AuditHead.id == 1).values(last_id=AuditHead.last_id))
    head = session.scalar(
        select(AuditHead)
        .where(AuditHead.id == 1)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if head is None:
        raise RuntimeError("audit_head is missing: run `parley db upgrade`")
    row = AuditRecord(
        at=datetime.now(UTC).isoformat(timespec="microseconds"),
        actor_id=actor_id,
        actor=actor[:200],
        about_id=about_id,
        kind=kind[:64],
        subject=subject[:200],
        data=canonical({**(data or {}), "via": _channel} if _channel else (data or {})),
        prev_hash=head.last_hash,
        hash="",
    )
    session.add(row)
    session.flush()  # the id is part of what is hashed
    row.hash = record_hash(row.prev_hash, _fields(row))
    head.last_id, head.last_hash = row.id, row.hash
    session.flush()
    return row.id


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
        about_id: int | None = None,
        subject: str = "",
        data: Mapping[str, Any] | None = None,
    ) -> int:
        """Add one record at the end of the chain in a transaction of its own; its id."""
        with self._db.session(write_lock=True) as session:
            return append_in(
                session,
                kind,
                actor_id=actor_id,
                actor=actor,
                about_id=about_id,
                subject=subject,
                data=data,
            )

    def verify(self) -> Verified:
        """Walk the chain from the first record: the first broken link, if any.

        Then the messages the records name: each must still hash as recorded, and one
        that is gone must belong to a conversation an erasure record names.
        """
        count = 0
        previous = GENESIS
        last_id = 0
        problems: list[Broken] = []
        refs: dict[int, tuple[int, str, int | None]] = {}  # message -> record, hash, conv.
        missing: dict[int, tuple[int, int | None]] = {}
        erased: set[int] = set()
        with self._db.session() as session:
            rows = session.scalars(select(AuditRecord).order_by(AuditRecord.id))
            for row in rows.yield_per(1000):
                count += 1
                if row.prev_hash != previous:
                    return Verified(
                        count, Broken(row.id, "a record before it was removed or changed")
                    )
                if record_hash(row.prev_hash, _fields(row)) != row.hash:
                    return Verified(count, Broken(row.id, "this record was changed"))
                previous, last_id = row.hash, row.id
                data = json.loads(row.data)
                if row.kind in ERASURE_KINDS:
                    erased.update(int(c) for c in data.get("conversation_ids", ()))
                refs_here = data.get("messages")
                for ref in refs_here if isinstance(refs_here, list) else ():
                    refs[int(ref["id"])] = (row.id, str(ref["sha256"]), data.get("conversation_id"))
                if len(refs) >= _CHECK_BATCH:
                    problems += _check_messages(session, refs, missing)
                    refs.clear()
            problems += _check_messages(session, refs, missing)
            head = session.get(AuditHead, 1)
        if head is not None and (head.last_id, head.last_hash) != (last_id, previous):
            return Verified(count, Broken(head.last_id, "records at the end were removed"))
        problems += [
            Broken(record_id, f"message {message_id} was removed with no erasure record")
            for message_id, (record_id, conversation_id) in missing.items()
            if conversation_id not in erased
        ]
        return Verified(count, min(problems, key=lambda b: b.record_id) if problems else None)

    def records(
        self,
        *,
        actor: str | None = None,
        user_id: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        kinds: Sequence[str] = (),
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Records as exported (`data` decoded): by actor name, by user (what they did
        and what was done to their data), kinds and time; oldest first unless asked."""
        order = AuditRecord.id.desc() if newest_first else AuditRecord.id
        query = select(AuditRecord).order_by(order).offset(offset)
        if actor is not None:
            query = query.where(AuditRecord.actor == actor)
        if user_id is not None:
            query = query.where(
                or_(AuditRecord.actor_id == user_id, AuditRecord.about_id == user_id)
            )
        if kinds:
            query = query.where(AuditRecord.kind.in_(kinds))
        if since is not None:
            query = query.where(AuditRecord.at >= since.astimezone(UTC).isoformat())
        if until is not None:
            query = query.where(AuditRecord.at < until.astimezone(UTC).isoformat())
        if limit is not None:
            query = query.limit(limit)
        with self._db.session() as session:
            for row in session.scalars(query).yield_per(1000):
                yield {
                    **_fields(row),
                    "about_id": row.about_id,
                    "data": json.loads(row.data),
                    "prev_hash": row.prev_hash,
                    "hash": row.hash,
                }

    def count(self, *, user_id: int | None = None, kinds: Sequence[str] = ()) -> int:
        query = select(func.count(AuditRecord.id))
        if user_id is not None:
            query = query.where(
                or_(AuditRecord.actor_id == user_id, AuditRecord.about_id == user_id)
            )
        if kinds:
            query = query.where(AuditRecord.kind.in_(kinds))
        with self._db.session() as session:
            return int(session.scalar(query) or 0)

    def kinds(self) -> list[str]:
        with self._db.session() as session:
            return sorted(session.scalars(select(AuditRecord.kind).distinct()))


def _check_messages(
    session: Session,
    refs: Mapping[int, tuple[int, str, int | None]],
    missing: dict[int, tuple[int, int | None]],
) -> list[Broken]:
    """Messages whose text no longer hashes as recorded; gone ones go into `missing`."""
    if not refs:
        return []
    found = {
        row[0]: (row[2] or "") + row[1]
        for row in session.execute(
            select(Message.id, Message.content, Message.salt).where(Message.id.in_(list(refs)))
        )
    }
    problems = []
    for message_id, (record_id, digest, conversation_id) in refs.items():
        if message_id not in found:
            missing[message_id] = (record_id, conversation_id)
        elif text_hash(found[message_id]) != digest:
            problems.append(Broken(record_id, f"message {message_id} was changed"))
    return problems


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
    "ERASURE_KINDS",
    "GENESIS",
    "AuditLog",
    "Broken",
    "Verified",
    "append_in",
    "by",
    "canonical",
    "message_ref",
    "record_hash",
    "set_channel",
    "text_hash",
    "to_csv",
    "to_jsonl",
]
