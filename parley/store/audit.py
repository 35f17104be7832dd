"""The audit trail: an append-only record in which each entry carries a keyed hash of
the one before it, so an edited, removed or inserted record breaks the chain where it was.

    content = SHA-256(salt + canonical JSON of actor, subject and data)
    hash    = HMAC-SHA-256(audit key, previous hash + canonical JSON of the record's
              id, time, actor and about ids, kind, key id and content hash)

**Keyed.** The key lives outside the database (`parley/store/keys.py`): whoever can write the
database but lacks the key cannot re-hash the records after a removed or edited one.
Each record names its key by id; rotating the key starts a new segment that the old
key, kept among the previous keys, still verifies. Records written before keys existed
(no key id) hash with plain SHA-256 and verify as such; none may follow a keyed one.

Records written before keys existed are keyed once by `parley db upgrade`
(`seal_legacy`, only if their plain SHA-256 chain holds); after that an unkeyed record
breaks verification, so nobody can downgrade the trail to re-hash it without the key.

**Anchored.** Whoever holds both the database and the key could still rewrite the
whole chain, or cut its newest records and move the head. `checkpoint` gives one line
(record count, head id and hash, time, an HMAC of them) for the operator to keep
elsewhere; `verify(anchors=...)` fails, naming the reason, when an anchored record is
missing, altered or re-ordered, or the trail is shorter than an anchor says.

**Erasable.** The personal part of a record (actor name, subject, data) enters the
chain only through its salted content hash and the hash of its redacted form, decided
when it was written (`parley/store/audit_chain.py`). A user's erasure swaps in exactly that
form and drops the salt (`redact_user_in`): the chain still verifies, the content hash
no longer says anything, any other content breaks it, and `verify`
(`parley/store/audit_verify.py`) accepts a redacted record only when a later `user_erased`
record names one of its users by id.

`audit_head` (one row) holds the last id and hash: appending locks it (SQLite's
`BEGIN IMMEDIATE`; `FOR UPDATE` on PostgreSQL), so any number of processes append one at
a time and the chain stays whole. Record data is metadata and hashes, never message
text: a record names messages with their hash (`message_ref`), so `verify` finds a
message edited afterwards, or removed without an erasure record naming its conversation.

Records are written by the services in the same transaction as what they record
(`append_in`): an action and its record commit together or not at all. `about_id` is
the user whose data a record concerns, so a user's history is what they did and what
was done to their data.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from parley.core.audit_events import AuditCheckpoint, AuditEvent, AuditKind
from parley.core.domain import Principal
from parley.store.audit_chain import (
    GENESIS,
    canonical,
    content_hash,
    hashed_fields,
    keyed_hash,
    keys_of,
    record_hash,
    redacted_content,
    redacted_hash,
    text_hash,
)
from parley.store.audit_verify import (
    Broken,
    Checkpoint,
    FactsReader,
    RecordFacts,
    Verified,
    parse_checkpoints,
    verify_chain,
)
from parley.store.db import Database
from parley.store.models import AuditHead, AuditRecord

log = logging.getLogger(__name__)

EXPORT_FIELDS = (
    "id",
    "at",
    "actor_id",
    "actor",
    "about_id",
    "kind",
    "subject",
    "data",
    "key_id",
    "content_hash",
    "redacted_hash",
    "prev_hash",
    "hash",
)


_channel: str | None = None  # where this process's records come from, when not the app


def set_channel(name: str | None) -> None:
    """Mark every record this process appends from now on with `via` (the command line
    sets "cli": an operator acting for a user is then told apart from the user)."""
    global _channel
    _channel = name


def message_hash(text: str, salt: str | None) -> str:
    """How a record names a message's text: the hash of its salt and text (never the
    text). The salt lives in the message row: erased with it, the hash tells nothing."""
    return text_hash((salt or "") + text)


class Actor(TypedDict):
    actor_id: int | None
    actor: str


def actor_of(principal: Principal | None) -> Actor:
    """Who acted, as `append_in` takes it (None: the system, e.g. start-up work)."""
    if principal is None:
        return {"actor_id": None, "actor": "system"}
    return {"actor_id": principal.user_id, "actor": principal.name}


def append_in(
    session: Session,
    event: AuditEvent,
    *,
    actor_id: int | None,
    actor: str,
    about_id: int | None = None,
) -> int:
    """Add one record of `event` at the end of the chain, in the caller's transaction;
    its id. The store hashes the event's kind, subject and data without reading them.

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
    keys = keys_of(session)
    salt = secrets.token_hex(16)
    data = event.data()
    if _channel:
        data["via"] = _channel
    subject = event.subject()
    row = AuditRecord(
        at=datetime.now(UTC).isoformat(timespec="microseconds"),
        actor_id=actor_id,
        actor=actor[:200],
        about_id=about_id,
        kind=str(event.kind),
        subject=str(subject) if subject is not None else "",
        data=canonical(data),
        key_id=keys.current_id,
        salt=salt,
        prev_hash=head.last_hash,
        hash="",
    )
    row.content_hash = content_hash(salt, row.actor, row.subject, row.data)
    row.redacted_hash = redacted_hash(*redacted_content(actor_id, row.actor, row.subject, row.data))
    session.add(row)
    session.flush()  # the id is part of what is hashed
    row.hash = keyed_hash(keys.current, row.prev_hash, hashed_fields(row))
    head.last_id, head.last_hash = row.id, row.hash
    session.flush()
    return row.id


def redact_user_in(session: Session, user_id: int) -> int:
    """A user's erasure, in its transaction: every record by or about the user keeps
    its place in the chain, but its personal part becomes the redacted form decided when
    it was written (ids, numbers and Parley's own words; `parley/store/audit_chain.py`), and
    its salt goes, so the content hash no longer confirms a guess. `verify` accepts it
    only with a later `user_erased` record for the user. How many were redacted."""
    rows = session.scalars(
        select(AuditRecord).where(
            or_(AuditRecord.actor_id == user_id, AuditRecord.about_id == user_id),
            AuditRecord.salt.is_not(None),
        )
    ).all()
    for row in rows:
        row.actor, row.subject, row.data = redacted_content(
            row.actor_id, row.actor, row.subject, row.data
        )
        row.salt = None
    session.flush()
    return len(rows)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One record as stored: `data` is its canonical JSON text, read by kind through
    `parley.core.audit_events.read_event`."""

    id: int
    at: str
    actor_id: int | None
    actor: str
    about_id: int | None
    kind: str
    subject: str
    data: str
    key_id: str | None
    content_hash: str | None
    redacted_hash: str | None
    prev_hash: str
    hash: str

    def exported(self) -> dict[str, Any]:
        """The record as an export line's object (`data` decoded into it)."""
        return {**asdict(self), "data": json.loads(self.data)}


class AuditChain:
    """The stored chain: append, verify, checkpoint, key old records, read records.
    Authorization is the caller's (`parley.chat.oversight.audit_trail.AuditTrail`)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def append(
        self,
        event: AuditEvent,
        *,
        actor_id: int | None,
        actor: str,
        about_id: int | None = None,
    ) -> int:
        """Add one record at the end of the chain in a transaction of its own; its id."""
        with self._db.session(write_lock=True) as session:
            return append_in(session, event, actor_id=actor_id, actor=actor, about_id=about_id)

    def verify(self, facts_of: FactsReader, anchors: Sequence[Checkpoint] = ()) -> Verified:
        """The first place the trail does not hold (`parley/store/audit_verify.py`);
        `facts_of` reads what each record says about erasures and messages."""
        return verify_chain(self._db, facts_of, anchors)

    def seal_legacy(self) -> int:
        """Key the records written before the trail was keyed (`parley db upgrade`
        does this once): their plain SHA-256 chain is checked first, and only an intact
        one is keyed, from the first record to the head, in one write-locked
        transaction. How many records were keyed; `ValueError` naming the first broken
        record if the old chain does not hold (it is then left as it is)."""
        with self._db.session(write_lock=True) as session:
            if session.scalar(select(AuditRecord.id).where(AuditRecord.key_id.is_(None))) is None:
                return 0
            if session.scalar(select(AuditRecord.id).where(AuditRecord.key_id.is_not(None))):
                # Parley never writes an unkeyed record once the trail is keyed: these were
                # made by hand, and keying them would launder whatever was done.
                raise ValueError("unkeyed audit records appear in a keyed trail; not keyed")
            keys = keys_of(session)
            rows = session.scalars(select(AuditRecord).order_by(AuditRecord.id)).all()
            previous = GENESIS
            for row in rows:  # the old chain first: nothing forged gets keyed
                if row.key_id is not None:
                    break
                if row.prev_hash != previous or record_hash(previous, hashed_fields(row)) != (
                    row.hash
                ):
                    raise ValueError(f"the unkeyed audit trail is broken at record {row.id}")
                previous = row.hash
            previous, sealed = GENESIS, 0
            for row in rows:
                if row.key_id is None:
                    row.salt = secrets.token_hex(16)
                    row.content_hash = content_hash(row.salt, row.actor, row.subject, row.data)
                    row.redacted_hash = redacted_hash(
                        *redacted_content(row.actor_id, row.actor, row.subject, row.data)
                    )
                    row.key_id = keys.current_id
                    sealed += 1
                key = keys.get(row.key_id)
                if key is None:
                    raise ValueError(f"record {row.id} is keyed with a key this server lacks")
                row.prev_hash = previous
                row.hash = keyed_hash(key, previous, hashed_fields(row))
                previous = row.hash
            session.execute(
                update(AuditHead)
                .where(AuditHead.id == 1)
                .values(last_id=rows[-1].id, last_hash=previous)
            )
        log.info("Keyed %d audit records written before the trail was keyed.", sealed)
        return sealed

    def checkpoint(self, principal: Principal | None = None) -> Checkpoint:
        """An anchor for the operator to keep outside the database: the trail's record
        count, head and time, signed with the key. The checkpoint itself goes on record
        first (the console shows when the last one was taken), and is covered by it."""
        with self._db.session(write_lock=True) as session:
            append_in(session, AuditCheckpoint(), **actor_of(principal))
            head = session.get(AuditHead, 1)
            if head is None:
                raise RuntimeError("audit_head is missing: run `parley db upgrade`")
            records = int(session.scalar(select(func.count(AuditRecord.id))) or 0)
            keys = keys_of(session)
            at = datetime.now(UTC).isoformat(timespec="seconds")
            message = Checkpoint.message(records, head.last_id, head.last_hash, at)
            signature = keys.sign(keys.current_id, message)
            assert signature is not None  # the current key is always in the ring
            return Checkpoint(records, head.last_id, head.last_hash, at, keys.current_id, signature)

    def last_checkpoint(self) -> str | None:
        """When the last checkpoint was taken (its record's time), if ever."""
        with self._db.session() as session:
            return session.scalar(
                select(AuditRecord.at)
                .where(AuditRecord.kind == AuditKind.AUDIT_CHECKPOINT)
                .order_by(AuditRecord.id.desc())
                .limit(1)
            )

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
    ) -> Iterator[StoredRecord]:
        """Records as stored: by actor name, by user (what they did
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
                yield StoredRecord(
                    id=row.id,
                    at=row.at,
                    actor_id=row.actor_id,
                    actor=row.actor,
                    about_id=row.about_id,
                    kind=row.kind,
                    subject=row.subject,
                    data=row.data,
                    key_id=row.key_id,
                    content_hash=row.content_hash,
                    redacted_hash=row.redacted_hash,
                    prev_hash=row.prev_hash,
                    hash=row.hash,
                )

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


def to_jsonl(records: Iterator[StoredRecord]) -> Iterator[str]:
    for record in records:
        yield canonical(record.exported()) + "\n"


def to_csv(records: Iterator[StoredRecord]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_FIELDS)
    writer.writeheader()
    for record in records:
        writer.writerow(asdict(record))
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.getvalue():
        yield buffer.getvalue()


__all__ = [
    "GENESIS",
    "Actor",
    "AuditChain",
    "Checkpoint",
    "FactsReader",
    "RecordFacts",
    "StoredRecord",
    "content_hash",
    "keyed_hash",
    "keys_of",
    "parse_checkpoints",
    "redact_user_in",
    "Broken",
    "Verified",
    "actor_of",
    "append_in",
    "canonical",
    "message_hash",
    "record_hash",
    "set_channel",
    "text_hash",
    "to_csv",
    "to_jsonl",
]
