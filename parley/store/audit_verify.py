"""Checking the audit trail: the chain, the messages its records name, and anchors.

`verify_chain` walks every record from the first: each must link to the one before and
hash, under the key it names, to what it says (its content to its content hash, or,
once redacted, to the redacted hash the key covered when it was written); a redacted
record needs a later `user_erased` record naming one of its users (by id); an unkeyed
record means the trail was not keyed at upgrade. Then the messages the records name
must still hash as recorded (or be gone with an erasure on record), and each anchor —
a `Checkpoint` line kept outside the database — must still hold.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from parley.core.errors import InvalidInput
from parley.store.audit_chain import (
    GENESIS,
    content_hash,
    hashed_fields,
    keyed_hash,
    redacted_hash,
    text_hash,
)
from parley.store.db import Database
from parley.store.keys import AuditKeys
from parley.store.models import AuditHead, AuditRecord, Message, User

_CHECK_BATCH = 500


@dataclass(frozen=True, slots=True)
class RecordFacts:
    """What the verifier needs from a record's data, read by the caller (who knows the
    kinds and their data; this module knows neither)."""

    erases_user: bool = False  # the record erases its `about_id` user
    # The record's kind is one the verifier must read (it names messages or erasures)
    # and its data is not that kind's: unless redacted, the record is broken.
    unreadable: bool = False
    erased_conversations: tuple[int, ...] = ()  # their messages may be gone
    messages: tuple[tuple[int, str], ...] = ()  # (message id, sha256) it names
    conversation_id: int | None = None  # where those messages were


# The caller's reading of a record: its kind and stored data (JSON) to its facts.
FactsReader = Callable[[str, str], RecordFacts]


@dataclass(frozen=True, slots=True)
class Broken:
    """The first place the chain does not hold."""

    record_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Verified:
    records: int
    broken: Broken | None
    anchors: int = 0  # checkpoints checked


CHECKPOINT_TAG = "parley-audit-checkpoint"
_CHECKPOINT = re.compile(
    rf"^{CHECKPOINT_TAG} v1 records=(?P<records>\d+) head=(?P<head>\d+) "
    r"hash=(?P<hash>[0-9a-f]{64}) at=(?P<at>\S+) key=(?P<key>[0-9a-f]{16}) "
    r"hmac=(?P<hmac>[0-9a-f]{64})$"
)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """An anchor: how many records the trail held, its head, when; signed with the key."""

    records: int
    head_id: int
    head_hash: str
    at: str
    key_id: str
    hmac: str

    @staticmethod
    def message(records: int, head_id: int, head_hash: str, at: str) -> str:
        return f"{CHECKPOINT_TAG}|{records}|{head_id}|{head_hash}|{at}"

    def line(self) -> str:
        return (
            f"{CHECKPOINT_TAG} v1 records={self.records} head={self.head_id} "
            f"hash={self.head_hash} at={self.at} key={self.key_id} hmac={self.hmac}"
        )

    @classmethod
    def parse(cls, line: str) -> Checkpoint:
        found = _CHECKPOINT.match(line.strip())
        if found is None:
            raise InvalidInput(
                f"This is not a checkpoint line of `parley audit checkpoint`: {line.strip()[:80]!r}"
            )
        return cls(
            int(found["records"]),
            int(found["head"]),
            found["hash"],
            found["at"],
            found["key"],
            found["hmac"],
        )


def parse_checkpoints(text: str) -> list[Checkpoint]:
    """Every checkpoint line in `text` (blank lines and `#` comments skipped)."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not lines:
        raise InvalidInput("The checkpoint file holds no checkpoint line.")
    return [Checkpoint.parse(line) for line in lines]


def verify_chain(
    database: Database, facts_of: FactsReader, anchors: Sequence[Checkpoint] = ()
) -> Verified:
    """The first place the chain, the messages it names or an anchor does not hold.
    `facts_of` reads what a record says about erasures and messages."""
    keys = database.audit_keys
    count = 0
    previous = GENESIS
    last_id = 0
    problems: list[Broken] = []
    refs: dict[int, tuple[int, str, int | None]] = {}  # message -> record, hash, conv.
    missing: dict[int, tuple[int, int | None]] = {}
    erased: set[int] = set()
    redacted: list[tuple[int, frozenset[int]]] = []  # record, the users it may be of
    erased_users: dict[int, int] = {}  # user -> the last record erasing them
    hashes: dict[int, tuple[int, str]] = {}  # anchored id -> (position, hash)
    anchored = {a.head_id for a in anchors}
    with database.session() as session:
        rows = session.scalars(select(AuditRecord).order_by(AuditRecord.id))
        for row in rows.yield_per(1000):
            count += 1
            if row.prev_hash != previous:
                return Verified(count, Broken(row.id, "a record before it was removed or changed"))
            broken = _check_record(row, keys)
            if broken is not None:
                return Verified(count, broken)
            if row.id in anchored:
                hashes[row.id] = (count, row.hash)
            previous, last_id = row.hash, row.id
            facts = facts_of(row.kind, row.data)
            if facts.unreadable and row.salt is not None:
                problems.append(Broken(row.id, f"its data does not read as its kind ({row.kind})"))
            # Kind and ids are keyed; the ids in a redacted record's data survive it.
            if facts.erases_user and row.about_id is not None:
                erased_users[row.about_id] = row.id
            erased.update(facts.erased_conversations)
            if row.salt is None:
                users = frozenset(u for u in (row.actor_id, row.about_id) if u is not None)
                redacted.append((row.id, users))
                continue  # its data is the redacted form: no message refs left
            for message_id, digest in facts.messages:
                refs[message_id] = (row.id, digest, facts.conversation_id)
            if len(refs) >= _CHECK_BATCH:
                problems += _check_messages(session, refs, missing)
                refs.clear()
        problems += _check_messages(session, refs, missing)
        head = session.get(AuditHead, 1)
        alive = set(session.scalars(select(User.id).where(User.id.in_(list(erased_users)))))
    problems += [  # an erasure on record of someone who is still here: a forged one
        Broken(erased_users[user], f"it erases user {user}, who still has an account")
        for user in sorted(alive)
    ]
    for anchor in anchors:
        broken = _check_anchor(anchor, keys, hashes, count, last_id)
        if broken is not None:
            return Verified(count, broken, len(anchors))
    if head is not None and (head.last_id, head.last_hash) != (last_id, previous):
        return Verified(count, Broken(head.last_id, "records at the end were removed"))
    problems += [
        Broken(record_id, f"message {message_id} was removed with no erasure record")
        for message_id, (record_id, conversation_id) in missing.items()
        if conversation_id not in erased
    ]
    problems += [
        Broken(record_id, "it was redacted, but no later erasure of its user is on record")
        for record_id, users in redacted
        if not any(erased_users.get(user, 0) > record_id for user in users)
    ]
    first = min(problems, key=lambda b: b.record_id) if problems else None
    return Verified(count, first, len(anchors))


def _check_record(row: AuditRecord, keys: AuditKeys | None) -> Broken | None:
    """This record's own hash, and its content's (as written, or as redacted)."""
    if row.key_id is None:
        return Broken(row.id, "an unkeyed record (Parley writes none once the trail is keyed)")
    key = keys.get(row.key_id) if keys is not None else None
    if key is None:
        return Broken(
            row.id,
            f"it is keyed with audit key {row.key_id}, which this server does not hold "
            "(add it to PARLEY_AUDIT_PREVIOUS_KEYS)",
        )
    if not hmac.compare_digest(keyed_hash(key, row.prev_hash, hashed_fields(row)), row.hash):
        return Broken(row.id, "this record was changed")
    if row.salt is not None:
        written = content_hash(row.salt, row.actor, row.subject, row.data)
    else:  # redacted: only the form decided when it was written will do
        written = redacted_hash(row.actor, row.subject, row.data)
        if row.redacted_hash is None or written != row.redacted_hash:
            return Broken(row.id, "this record was changed")
        return None
    if written != row.content_hash:
        return Broken(row.id, "this record was changed")
    return None


def _check_anchor(
    anchor: Checkpoint,
    keys: AuditKeys | None,
    hashes: Mapping[int, tuple[int, str]],
    count: int,
    last_id: int,
) -> Broken | None:
    when = f"the checkpoint of {anchor.at}"
    signature = (
        keys.sign(
            anchor.key_id,
            Checkpoint.message(anchor.records, anchor.head_id, anchor.head_hash, anchor.at),
        )
        if keys is not None
        else None
    )
    if signature is None:
        return Broken(anchor.head_id, f"{when} is signed with a key this server does not hold")
    if not hmac.compare_digest(signature, anchor.hmac):
        return Broken(anchor.head_id, f"{when} is not genuine (its signature does not match)")
    if anchor.head_id not in hashes:
        if last_id < anchor.head_id or count < anchor.records:
            return Broken(
                anchor.head_id,
                f"the trail is shorter than {when} says: it held {anchor.records:,} records "
                f"up to record {anchor.head_id}, and now holds {count:,} up to record {last_id}",
            )
        return Broken(anchor.head_id, f"record {anchor.head_id}, anchored by {when}, is missing")
    position, found = hashes[anchor.head_id]
    if found != anchor.head_hash:
        return Broken(
            anchor.head_id,
            f"records up to {anchor.head_id} were altered, removed or re-ordered since {when}",
        )
    if position != anchor.records:
        return Broken(
            anchor.head_id,
            f"{when} counted {anchor.records:,} records up to record {anchor.head_id}; "
            f"there are {position:,}",
        )
    return None


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


__all__ = [
    "CHECKPOINT_TAG",
    "Broken",
    "Checkpoint",
    "FactsReader",
    "RecordFacts",
    "Verified",
    "parse_checkpoints",
    "verify_chain",
]
