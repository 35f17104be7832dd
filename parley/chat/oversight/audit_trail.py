"""The audit trail as admins read it: a user's history, paginated; exports; the chain's
check. Admins only (checked here); an export is itself recorded."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from parley.core.audit_events import (
    Answered,
    AuditExported,
    AuditKind,
    ConversationErased,
    UserErased,
    read_event,
)
from parley.core.domain import Principal, require_admin
from parley.store.audit import (
    AuditChain,
    Checkpoint,
    RecordFacts,
    StoredRecord,
    Verified,
    actor_of,
    parse_checkpoints,
    to_csv,
    to_jsonl,
)
from parley.store.db import Database

ONLY_ADMINS = "Only administrators read the audit trail."


@dataclass(frozen=True, slots=True)
class AuditPage:
    records: list[StoredRecord]
    total: int


def record_facts(kind: str, data: str) -> RecordFacts:
    """What the chain's verifier checks in a record, read through its kind's model: which
    conversations and user it erases, and which messages it names (by hash)."""
    if kind not in CHECKED_KINDS:
        return RecordFacts()
    event = read_event(kind, data)
    erases_user = kind == AuditKind.USER_ERASED  # the kind is keyed; the data may be erased
    if isinstance(event, UserErased):
        return RecordFacts(erases_user=True, erased_conversations=tuple(event.conversation_ids))
    if isinstance(event, ConversationErased):
        return RecordFacts(erased_conversations=tuple(event.conversation_ids))
    if isinstance(event, Answered):
        return RecordFacts(
            messages=tuple((m.id, m.sha256) for m in event.messages),
            conversation_id=event.conversation_id,
        )
    return RecordFacts(erases_user=erases_user, unreadable=True)  # fails closed


# The kinds whose data the verifier reads: erasures, and answers naming messages.
CHECKED_KINDS = frozenset({AuditKind.ANSWER, AuditKind.CONVERSATION_ERASED, AuditKind.USER_ERASED})


class AuditTrail:
    """The trail as admins (and the operator's `parley audit …`) read it: every call
    checks the principal, and reads the chain through `parley.store.audit.AuditChain`."""

    def __init__(self, database: Database) -> None:
        self._log = AuditChain(database)

    def history(
        self,
        admin: Principal,
        *,
        user_id: int | None = None,
        kinds: Sequence[str] = (),
        page: int = 0,
        per_page: int = 50,
    ) -> AuditPage:
        """Records newest first: of one user (what they did and what was done to their
        data) or everyone's, of the kinds given (all if none)."""
        require_admin(admin, ONLY_ADMINS)
        per_page = max(1, min(per_page, 500))
        records = list(
            self._log.records(
                user_id=user_id,
                kinds=kinds,
                newest_first=True,
                limit=per_page,
                offset=max(0, page) * per_page,
            )
        )
        return AuditPage(records, self._log.count(user_id=user_id, kinds=kinds))

    def kinds(self, admin: Principal) -> list[str]:
        require_admin(admin, ONLY_ADMINS)
        return self._log.kinds()

    def export(
        self,
        admin: Principal,
        *,
        format: Literal["jsonl", "csv"] = "jsonl",
        user_id: int | None = None,
        since: datetime | None = None,
    ) -> str:
        """The records as JSON lines or CSV, oldest first (the export goes on record)."""
        return "".join(self.export_lines(admin, format=format, user_id=user_id, since=since))

    def export_lines(
        self,
        admin: Principal,
        *,
        format: Literal["jsonl", "csv"] = "jsonl",
        user_id: int | None = None,
        actor: str | None = None,
        since: datetime | None = None,
    ) -> Iterator[str]:
        """`export`, streamed: of one user (`user_id`), or of an actor's name that is no
        account (an erased user, a name typed at a refused sign-in). On record first."""
        require_admin(admin, ONLY_ADMINS)
        self._log.append(
            AuditExported(
                format=format,
                user_id=user_id,
                actor=actor,
                since=since.isoformat() if since else None,
            ),
            **actor_of(admin),
            about_id=user_id,
        )
        records = self._log.records(user_id=user_id, actor=actor, since=since)
        return to_jsonl(records) if format == "jsonl" else to_csv(records)

    def verify(self, admin: Principal, anchors: Sequence[Checkpoint] = ()) -> Verified:
        require_admin(admin, ONLY_ADMINS)
        return self._log.verify(record_facts, anchors)

    def verify_against(self, admin: Principal, checkpoints: str) -> Verified:
        """`verify`, with the anchors of a checkpoint file's text (`InvalidInput` with a
        sentence when a line is not one `parley audit checkpoint` printed)."""
        require_admin(admin, ONLY_ADMINS)
        return self._log.verify(record_facts, parse_checkpoints(checkpoints))

    def checkpoint(self, admin: Principal) -> Checkpoint:
        """An anchor line for the operator to keep outside the database (on record)."""
        require_admin(admin, ONLY_ADMINS)
        return self._log.checkpoint(admin)

    def last_checkpoint(self, admin: Principal) -> datetime | None:
        """When the last checkpoint was taken, if ever (the console shows it)."""
        require_admin(admin, ONLY_ADMINS)
        at = self._log.last_checkpoint()
        return datetime.fromisoformat(at) if at else None


__all__ = ["AuditPage", "AuditTrail", "record_facts"]
