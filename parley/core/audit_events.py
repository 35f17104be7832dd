"""What the audit trail records: one kind per action, a typed subject, typed data.

Every service that records an action builds one of the events below and hands it to the
store (`parley.store.audit.append_in`), which hashes it into the chain without knowing
what any kind means. Reading goes the other way: `read_event` validates a stored
record's data against its kind's model, so no raw dict of stored JSON leaves the store's
callers.

    event = DocumentShared(document_id=7, group="finance", public=False)
    append_in(session, event, **actor_of(principal), about_id=owner_id)
    str(event.subject())        # "document 7"

Subjects carry ids, never names: a name belongs to its owner and goes when they are
erased, an id stays true. `Subject.parse` reads records of any age back.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from parley.core.records import Provenance

log = logging.getLogger(__name__)


class AuditKind(StrEnum):
    """Every kind of record in the trail (the `kind` column)."""

    USER_CREATED = "user_created"
    USER_DISABLED = "user_disabled"
    USER_ENABLED = "user_enabled"
    PASSWORD_SET = "password_set"
    ROLE_CHANGED = "role_changed"
    ACCOUNT_UNLOCKED = "account_unlocked"
    SIGN_IN = "sign_in"
    SIGN_IN_FAILED = "sign_in_failed"
    SESSION_ENDED = "session_ended"
    SESSIONS_REVOKED = "sessions_revoked"
    GROUP_CREATED = "group_created"
    GROUP_MEMBER_ADDED = "group_member_added"
    GROUP_MEMBER_REMOVED = "group_member_removed"
    AI_CALL = "ai_call"
    ANSWER = "answer"
    QUOTA_SET = "quota_set"
    MEMORY_STRATEGY_SET = "memory_strategy_set"
    MEMORY_OPTIONS_SET = "memory_options_set"
    CONVERSATION_ERASED = "conversation_erased"
    CONVERSATION_OPENED = "conversation_opened"
    CONVERSATIONS_SEARCHED = "conversations_searched"
    FEEDBACK_GIVEN = "feedback_given"
    CONVERSATION_IMPORTED = "conversation_imported"
    DOCUMENT_ADDED = "document_added"
    DOCUMENT_SHARED = "document_shared"
    DOCUMENT_UNSHARED = "document_unshared"
    DOCUMENT_DELETED = "document_deleted"
    DOCUMENT_CHUNK_OPENED = "document_chunk_opened"
    USER_ERASED = "user_erased"
    AUDIT_EXPORTED = "audit_exported"
    AUDIT_CHECKPOINT = "audit_checkpoint"
    OUTPUT_BLOCKED = "output_blocked"
    INJECTION_FLAGGED = "injection_flagged"
    BATCH_JOB = "batch_job"


class SubjectKind(StrEnum):
    USER = "user"
    GROUP = "group"
    DOCUMENT = "document"
    CONVERSATION = "conversation"
    SESSION = "session"


@dataclass(frozen=True, slots=True)
class Subject:
    """What a record is about, by kind and id: `str()` is the stored form ("user 12")."""

    kind: SubjectKind
    id: int

    def __str__(self) -> str:
        return f"{self.kind} {self.id}"

    @classmethod
    def user(cls, user_id: int) -> Subject:
        return cls(SubjectKind.USER, user_id)

    @classmethod
    def group(cls, group_id: int) -> Subject:
        return cls(SubjectKind.GROUP, group_id)

    @classmethod
    def document(cls, document_id: int) -> Subject:
        return cls(SubjectKind.DOCUMENT, document_id)

    @classmethod
    def conversation(cls, conversation_id: int) -> Subject:
        return cls(SubjectKind.CONVERSATION, conversation_id)

    @classmethod
    def session(cls, session_id: int) -> Subject:
        return cls(SubjectKind.SESSION, session_id)

    @classmethod
    def parse(cls, text: str) -> Subject | None:
        """The subject a stored record names; None for none, or for an old record that
        named someone by name (or an erased one: "user [erased]")."""
        kind, _, rest = text.partition(" ")
        if kind not in SubjectKind.__members__.values() or not rest.isdigit():
            return None
        return cls(SubjectKind(kind), int(rest))


class AuditEvent(BaseModel):
    """One kind's data. Subclasses set `kind` and, when the record is about one thing,
    `subject()`. `via` is filled by the store for records made from the command line.

    Every record ever written must read back (the verifier and "who looked" rely on
    it): a field added later has a default, and keys a model does not know are ignored.
    `tests/core/test_audit_events.py` reads each kind's older shapes."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    kind: ClassVar[AuditKind]
    via: str | None = None

    def subject(self) -> Subject | None:
        return None

    def data(self) -> dict[str, Any]:
        """The JSON the record stores: a field left unset at None is left out (so old and
        new records of a kind read alike, and `via` appears only when there is one)."""
        dumped = self.model_dump(mode="json", by_alias=True)
        aliases = {f.alias or name: name for name, f in type(self).model_fields.items()}
        return {
            key: value
            for key, value in dumped.items()
            if value is not None or aliases.get(key, key) in self.model_fields_set
        }


# Accounts and sign-in -------------------------------------------------------------------


class UserCreated(AuditEvent):
    kind = AuditKind.USER_CREATED
    user_id: int | None = None  # None in records written before it was kept
    role: str
    sign_in: str  # "local" or "oidc"
    first_run: bool = False
    issuer: str | None = None

    def subject(self) -> Subject | None:
        return None if self.user_id is None else Subject.user(self.user_id)


class UserDisabled(AuditEvent):
    kind = AuditKind.USER_DISABLED
    user_id: int | None = None  # None in records written before it was kept

    def subject(self) -> Subject | None:
        return None if self.user_id is None else Subject.user(self.user_id)


class UserEnabled(UserDisabled):
    kind = AuditKind.USER_ENABLED


class PasswordSet(UserDisabled):
    kind = AuditKind.PASSWORD_SET


class RoleChanged(AuditEvent):
    kind = AuditKind.ROLE_CHANGED
    model_config = ConfigDict(populate_by_name=True)
    user_id: int | None = None  # None in records written before it was kept
    previous: str = Field(alias="from")
    role: str = Field(alias="to")

    def subject(self) -> Subject | None:
        return None if self.user_id is None else Subject.user(self.user_id)


class AccountUnlocked(AuditEvent):
    kind = AuditKind.ACCOUNT_UNLOCKED
    user_id: int | None = None  # None in records written before it was kept
    had_failures: bool

    def subject(self) -> Subject | None:
        return None if self.user_id is None else Subject.user(self.user_id)


class SignedIn(AuditEvent):
    kind = AuditKind.SIGN_IN
    method: str  # "password" or "oidc"
    client: str | None = None
    issuer: str | None = None
    groups: list[str] | None = None


class SignInFailed(AuditEvent):
    kind = AuditKind.SIGN_IN_FAILED
    method: str
    reason: str | None = None
    client: str | None = None
    issuer: str | None = None
    typed_hmac: str | None = None  # a typed name that is no account, keyed


class SessionEnded(AuditEvent):
    kind = AuditKind.SESSION_ENDED
    session_id: int | None = None  # None in records written before it was kept
    reason: str

    def subject(self) -> Subject | None:
        return None if self.session_id is None else Subject.session(self.session_id)


class SessionsRevoked(AuditEvent):
    kind = AuditKind.SESSIONS_REVOKED
    user_id: int | None = None  # None in records written before it was kept
    sessions: int
    reason: str

    def subject(self) -> Subject | None:
        return None if self.user_id is None else Subject.user(self.user_id)


# Groups ---------------------------------------------------------------------------------


class GroupCreated(AuditEvent):
    kind = AuditKind.GROUP_CREATED
    group_id: int | None = None  # None in records written before it was kept
    group: str | None = None

    def subject(self) -> Subject | None:
        return None if self.group_id is None else Subject.group(self.group_id)


class GroupMemberAdded(AuditEvent):
    kind = AuditKind.GROUP_MEMBER_ADDED
    group_id: int | None = None  # None in records written before it was kept
    group: str | None = None  # None in records written before it was kept
    user: str

    def subject(self) -> Subject | None:
        return None if self.group_id is None else Subject.group(self.group_id)


class GroupMemberRemoved(GroupMemberAdded):
    kind = AuditKind.GROUP_MEMBER_REMOVED


# Model calls and answers ----------------------------------------------------------------


class AiCall(AuditEvent):
    kind = AuditKind.AI_CALL
    ledger_id: int
    conversation_id: int | None
    purpose: str
    model: str
    outcome: str
    input_tokens: int
    output_tokens: int
    cache_write_tokens: int
    cache_read_tokens: int
    cost_usd: float
    latency_ms: int

    def subject(self) -> Subject | None:
        return Subject.conversation(self.conversation_id) if self.conversation_id else None


class MessageRef(BaseModel):
    """How a record names a message: its id and the hash of its salt and text."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: int
    sha256: str


class CitedRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    n: int
    document_id: int
    chunks: list[int]


class Answered(AuditEvent):
    kind = AuditKind.ANSWER
    conversation_id: int
    messages: list[MessageRef]
    status: str
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    prompt: Provenance | None  # what went into the prompt, documents by id only
    cited: list[CitedRef] = []

    def subject(self) -> Subject:
        return Subject.conversation(self.conversation_id)


class QuotaSet(AuditEvent):
    kind = AuditKind.QUOTA_SET
    user_id: int | None = None  # None in records written before it was kept
    messages_per_day: int | None
    tokens_per_day: int | None

    def subject(self) -> Subject | None:
        return None if self.user_id is None else Subject.user(self.user_id)


class MemoryStrategySet(AuditEvent):
    kind = AuditKind.MEMORY_STRATEGY_SET
    conversation_id: int
    strategy: str | None  # None: back to the default

    def subject(self) -> Subject:
        return Subject.conversation(self.conversation_id)


class MemoryOptionsSet(AuditEvent):
    kind = AuditKind.MEMORY_OPTIONS_SET
    conversation_id: int
    strategy: str
    # The values now stored ({}: back to the environment's), as canonical JSON text: a
    # plug-in's option names are its own, so erasure treats the whole text as personal.
    options: str

    def subject(self) -> Subject:
        return Subject.conversation(self.conversation_id)


# Erasure, review and documents ----------------------------------------------------------


class ConversationErased(AuditEvent):
    kind = AuditKind.CONVERSATION_ERASED
    conversation_ids: list[int]
    message_count: int

    def subject(self) -> Subject | None:
        ids = self.conversation_ids
        return Subject.conversation(ids[0]) if len(ids) == 1 else None


class UserErased(AuditEvent):
    kind = AuditKind.USER_ERASED
    model_config = ConfigDict(extra="allow")  # one count per kind of thing erased
    user_id: int | None = None  # None in records written before it was kept
    conversation_ids: list[int]
    document_ids: list[int]

    def subject(self) -> Subject | None:
        return None if self.user_id is None else Subject.user(self.user_id)


class ConversationOpened(AuditEvent):
    kind = AuditKind.CONVERSATION_OPENED
    conversation_id: int
    reason: str

    def subject(self) -> Subject:
        return Subject.conversation(self.conversation_id)


class ConversationsSearched(AuditEvent):
    kind = AuditKind.CONVERSATIONS_SEARCHED
    model_config = ConfigDict(extra="allow")  # the filters used, the text only keyed
    found: int
    matched: bool


class ConversationImported(AuditEvent):
    """A user imported a conversation from a file (its size only: a hash would outlive
    the conversation's erasure as a fingerprint of its text)."""

    kind = AuditKind.CONVERSATION_IMPORTED
    conversation_id: int
    message_count: int
    size_bytes: int

    def subject(self) -> Subject:
        return Subject.conversation(self.conversation_id)


class FeedbackGiven(AuditEvent):
    """A user rated an answer (or took the rating back: `rating` None). The comment is
    named by hash only, as messages are."""

    kind = AuditKind.FEEDBACK_GIVEN
    conversation_id: int
    message_id: int
    rating: str | None
    comment_sha256: str | None = None

    def subject(self) -> Subject:
        return Subject.conversation(self.conversation_id)


class DocumentAdded(AuditEvent):
    kind = AuditKind.DOCUMENT_ADDED
    document_id: int
    sha256: str
    chunks: int
    groups: list[str]
    public: bool

    def subject(self) -> Subject:
        return Subject.document(self.document_id)


class DocumentShared(AuditEvent):
    kind = AuditKind.DOCUMENT_SHARED
    document_id: int
    group: str | None
    public: bool

    def subject(self) -> Subject:
        return Subject.document(self.document_id)


class DocumentUnshared(DocumentShared):
    kind = AuditKind.DOCUMENT_UNSHARED


class DocumentDeleted(AuditEvent):
    kind = AuditKind.DOCUMENT_DELETED
    document_id: int

    def subject(self) -> Subject:
        return Subject.document(self.document_id)


class DocumentChunkOpened(AuditEvent):
    kind = AuditKind.DOCUMENT_CHUNK_OPENED
    document_id: int
    chunk: int

    def subject(self) -> Subject:
        return Subject.document(self.document_id)


class AuditExported(AuditEvent):
    kind = AuditKind.AUDIT_EXPORTED
    format: str
    user_id: int | None
    actor: str | None
    since: str | None


class AuditCheckpoint(AuditEvent):
    kind = AuditKind.AUDIT_CHECKPOINT


class InjectionFlagged(AuditEvent):
    """Chunks of a document the injection detector found suspect: by index, with the
    reason for each (never the text)."""

    kind = AuditKind.INJECTION_FLAGGED
    document_id: int
    chunks: list[int]
    reasons: list[str]
    when: str  # "ingestion" or "retrieval"

    def subject(self) -> Subject:
        return Subject.document(self.document_id)


class OutputBlocked(AuditEvent):
    """The output guard stopped an answer that repeated the system prompt or its canary
    (the text is not kept: it was a leak)."""

    kind = AuditKind.OUTPUT_BLOCKED
    conversation_id: int | None
    purpose: str
    reason: str  # "canary" or "system prompt"
    chars_seen: int

    def subject(self) -> Subject | None:
        return Subject.conversation(self.conversation_id) if self.conversation_id else None


class BatchJobChanged(AuditEvent):
    """A batch job submitted, cancelled or ended (its calls are each an `AiCall`)."""

    kind = AuditKind.BATCH_JOB
    job_id: int
    job_kind: str
    action: str  # "submitted", "canceled" or "ended"
    runner: str  # "api" (the Message Batches API) or "local"
    items: int
    cost_usd: float = 0.0

    def subject(self) -> Subject | None:
        return None


EVENTS: dict[AuditKind, type[AuditEvent]] = {
    cls.kind: cls
    for cls in (
        UserCreated, UserDisabled, UserEnabled, PasswordSet, RoleChanged, AccountUnlocked,
        SignedIn, SignInFailed, SessionEnded, SessionsRevoked, GroupCreated, GroupMemberAdded,
        GroupMemberRemoved, AiCall, Answered, BatchJobChanged, QuotaSet, MemoryStrategySet,
        MemoryOptionsSet,
        ConversationErased, UserErased, ConversationOpened, ConversationsSearched, FeedbackGiven,
        ConversationImported,
        DocumentAdded,
        DocumentShared, DocumentUnshared, DocumentDeleted, DocumentChunkOpened, AuditExported,
        AuditCheckpoint, OutputBlocked, InjectionFlagged,
    )
}  # fmt: skip


def read_event(kind: str, data: str | dict[str, Any]) -> AuditEvent | None:
    """A stored record's data as its kind's model; None when it is not one (a record
    written before data was typed, or an erased one whose strings became `[erased]`)."""
    try:
        model = EVENTS[AuditKind(kind)]
    except ValueError:
        return None
    try:
        raw = json.loads(data) if isinstance(data, str) else data
        return model.model_validate(raw)
    except (ValidationError, ValueError, TypeError):
        return None


__all__ = [
    "EVENTS",
    "BatchJobChanged",
    "InjectionFlagged",
    "OutputBlocked",
    "AccountUnlocked",
    "AiCall",
    "Answered",
    "AuditCheckpoint",
    "AuditEvent",
    "AuditExported",
    "AuditKind",
    "CitedRef",
    "ConversationErased",
    "ConversationImported",
    "ConversationOpened",
    "ConversationsSearched",
    "DocumentAdded",
    "DocumentChunkOpened",
    "DocumentDeleted",
    "DocumentShared",
    "DocumentUnshared",
    "FeedbackGiven",
    "GroupCreated",
    "GroupMemberAdded",
    "GroupMemberRemoved",
    "MemoryOptionsSet",
    "MemoryStrategySet",
    "MessageRef",
    "PasswordSet",
    "QuotaSet",
    "RoleChanged",
    "SessionEnded",
    "SessionsRevoked",
    "SignInFailed",
    "SignedIn",
    "Subject",
    "SubjectKind",
    "UserCreated",
    "UserDisabled",
    "UserEnabled",
    "UserErased",
    "read_event",
]
