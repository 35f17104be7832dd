"""Typed SQLAlchemy 2.0 models. The database keeps the history; memory strategies only read it."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from parley.core.domain import CallOutcome, MessageRole, MessageStatus, Purpose, Rating, Role
from parley.core.records import (
    Attachment,
    CitedPassage,
    DocumentSource,
    Provenance,
    SentImage,
)
from parley.store.typed_json import TypedJSON


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


def _enum(cls: type[StrEnum], name: str) -> Enum:
    # Stored as plain strings (no native ENUM type) so SQLite and PostgreSQL
    # share one migration and new values need no ALTER TYPE.
    return Enum(cls, name=name, native_enum=False, length=20, values_callable=_values)


def _values(cls: type[StrEnum]) -> list[str]:
    return [member.value for member in cls]


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("oidc_issuer", "oidc_subject", name="uq_users_oidc"),
        {"sqlite_autoincrement": True},  # an erased user's id is never another's
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(_enum(Role, "role"), default=Role.USER)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Per-user overrides of the daily quotas (None: the settings' default; 0: no limit).
    quota_messages_per_day: Mapped[int | None] = mapped_column(Integer)
    quota_tokens_per_day: Mapped[int | None] = mapped_column(Integer)
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set for users an identity provider signs in (OIDC): the link is issuer and subject.
    oidc_issuer: Mapped[str | None] = mapped_column(String(500))
    oidc_subject: Mapped[str | None] = mapped_column(String(255))
    # When the provider's groups and role were last read (sign-in, or a resync).
    oidc_synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    conversations: Mapped[list[Conversation]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        Index("ix_conversations_user_updated", "user_id", "updated_at"),
        # Ids are never reused: a new conversation never meets a deleted one's vectors.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200), default="New conversation")
    # The memory strategy for this conversation (None: the settings' default).
    memory_strategy: Mapped[str | None] = mapped_column(String(64))
    # Its own memory options by strategy ({"window": {"turns": 3}}), over the environment's;
    # checked by each strategy's options model when written and when read. None: none.
    memory_options: Mapped[dict[str, dict[str, Any]] | None] = mapped_column(JSON)
    # The documents this conversation draws on (ids); None: every document its user may see.
    document_ids: Mapped[list[int] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )
    pinned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # kept on top
    archived_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # out of the list
    # The newest message of the branch shown (`parley/chat/conversation/branches.py`);
    # None: no message yet. A message id of this conversation, kept by the service.
    active_leaf_id: Mapped[int | None] = mapped_column(Integer)

    user: Mapped[User] = relationship(back_populates="conversations")
    messages: Mapped[list[Message]] = relationship(
        back_populates="conversation",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Message.id",
    )


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_conversation_id", "conversation_id", "id"),
        # Counts of a conversation's messages by status (the admins' review filters).
        Index("ix_messages_conversation_status", "conversation_id", "status"),
        Index("ix_messages_created_at", "created_at"),
        Index("ix_messages_parent_id", "parent_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    # The message this one follows (None: the first of its branch). Messages form a tree:
    # an edited question is a sibling of the one it replaces, a regenerated answer of the
    # answer. A parent is always older (a lower id), and always of the same conversation;
    # no foreign key, since messages only ever leave with their whole conversation.
    parent_id: Mapped[int | None] = mapped_column(Integer)
    role: Mapped[MessageRole] = mapped_column(_enum(MessageRole, "message_role"))
    content: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[MessageStatus] = mapped_column(
        _enum(MessageStatus, "message_status"), default=MessageStatus.COMPLETE
    )
    model: Mapped[str | None] = mapped_column(String(100))
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_creation_input_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_read_input_tokens: Mapped[int | None] = mapped_column(Integer)
    estimated_input_tokens: Mapped[int | None] = mapped_column(Integer)
    # The content's own prompt tokens (cl100k, with role markers), counted once when stored.
    tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    # Mixed into the audit trail's hash of the content: once the message is erased, the
    # hash left in the trail cannot be checked against guesses of what it said.
    salt: Mapped[str | None] = mapped_column(String(32), default=lambda: secrets.token_hex(16))
    # What went into the prompt that produced this answer.
    context: Mapped[Provenance | None] = mapped_column(TypedJSON(Provenance))
    # The passages an answer cites, in the answer's order.
    citations: Mapped[list[CitedPassage] | None] = mapped_column(TypedJSON(list[CitedPassage]))
    # The passages an answer's prompt held (shown under an answer that cites none of them).
    sources: Mapped[list[DocumentSource] | None] = mapped_column(TypedJSON(list[DocumentSource]))
    # The files a question was sent with: private documents of its author, which its
    # answers (and the answers to its edits) read first.
    attachments: Mapped[list[Attachment] | None] = mapped_column(TypedJSON(list[Attachment]))
    # The images a question was sent with (`images`): they go with it to the model, and
    # with later questions while it is in their prompt.
    images: Mapped[list[SentImage] | None] = mapped_column(TypedJSON(list[SentImage]))
    # Served from the response cache (no call was made for it).
    cached: Mapped[bool] = mapped_column(default=False, server_default=false())
    stop_reason: Mapped[str | None] = mapped_column(String(40))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    conversation: Mapped[Conversation] = relationship(back_populates="messages")


class Image(Base):
    """An image sent with a question, as the model gets it: checked, scaled to what the
    model reads and re-encoded (no metadata kept), with a small copy the page shows.
    Belongs to its conversation: it goes when the conversation or its user is erased."""

    __tablename__ = "images"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    media_type: Mapped[str] = mapped_column(String(40))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    thumbnail: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CachedResponse(Base):
    """An answer the response cache may serve again (`parley/chat/gateway/response_cache.py`):
    to the same scope (the user, their groups, the versions of the documents it drew
    on) for the same context and question, or a question near it by embedding. Goes
    when it expires, when a document it drew on changes or is unshared (its rows in
    `cached_response_documents`), and with the conversation it was written in."""

    __tablename__ = "cached_responses"
    __table_args__ = (
        Index("ix_cached_responses_partition", "partition", "expires_at"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    exact: Mapped[str] = mapped_column(String(64), unique=True)
    partition: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    conversation_id: Mapped[int | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    question: Mapped[str] = mapped_column(Text)
    vector: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32, normalised
    model: Mapped[str] = mapped_column(String(100))
    text: Mapped[str] = mapped_column(Text)
    citations: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    stop_reason: Mapped[str | None] = mapped_column(String(40))
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    documents: Mapped[int] = mapped_column(Integer, default=0)  # rows it should have below
    hits: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CachedResponseDocument(Base):
    """A document a cached answer drew on: deleting the document deletes the row, and
    an answer missing any of its rows is never served."""

    __tablename__ = "cached_response_documents"

    response_id: Mapped[int] = mapped_column(
        ForeignKey("cached_responses.id", ondelete="CASCADE"), primary_key=True
    )
    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Feedback(Base):
    """A user's rating of an answer in their own conversation, with an optional comment:
    one per answer and user, changed in place. Goes with the answer (erasure)."""

    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("message_id", "user_id", name="uq_feedback_message_user"),
        Index("ix_feedback_rating_updated", "rating", "updated_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    rating: Mapped[Rating] = mapped_column(_enum(Rating, "rating"))
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Summary(Base):
    """A rolling summary of a conversation's oldest turns; each fold adds a version."""

    __tablename__ = "summaries"
    __table_args__ = (UniqueConstraint("conversation_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    first_turn_id: Mapped[int] = mapped_column(Integer)
    last_turn_id: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(String(20))  # "model" or "extractive"
    model: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RateBucket(Base):
    """A token bucket's level, shared by every app process (`PARLEY_LIMITER_STORE=database`)."""

    __tablename__ = "rate_buckets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    level: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)  # Unix time: the same in every process


class SecretFingerprint(Base):
    """A fingerprint of a secret every process on this database must hold (never the
    secret): a process whose secret gives another fingerprint refuses to start."""

    __tablename__ = "secret_fingerprints"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    set_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Lease(Base):
    """Work one process at a time does (the sweep, a summary fold): who holds it, until when."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[float] = mapped_column(Float)  # Unix time: the same in every process


class AnswerDraft(Base):
    """An answer while it streams: its text so far, checkpointed by the process writing it
    (`owner`), which also keeps `heartbeat_at` fresh. When that process dies, another
    settles the draft into an interrupted answer (`chat/conversation/drafts.py`);
    `settled_message_id` names that answer, so an owner that was only slow supersedes it
    instead of it appearing as a second. Deleted with the answer's storing, or with its
    conversation; a settled one is emptied of text and kept an hour for a late owner."""

    __tablename__ = "answer_drafts"
    __table_args__ = (
        Index("ix_answer_drafts_conversation", "conversation_id"),
        Index("ix_answer_drafts_heartbeat", "heartbeat_at"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    user_message_id: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[int] = mapped_column(Integer)
    owner: Mapped[str] = mapped_column(String(32))
    call_id: Mapped[str] = mapped_column(String(32))  # the first call's ledger id
    model: Mapped[str | None] = mapped_column(String(100))
    estimated_input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    content: Mapped[str] = mapped_column(Text, default="")
    context: Mapped[Provenance | None] = mapped_column(TypedJSON(Provenance))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    settled_message_id: Mapped[int | None] = mapped_column(Integer)
    reservation_id: Mapped[int | None] = mapped_column(Integer)  # the quota set aside


class CallSlot(Base):
    """One of the model-call slots every process shares (`PARLEY_LIMITER_STORE=database`):
    free when `holder` is empty or its lease has run out (a process that died)."""

    __tablename__ = "call_slots"

    slot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    holder: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[float] = mapped_column(Float)


class UsageEntry(Base):
    """The usage ledger: one row per provider call, however it ended. Append-only, but
    for one case: a row estimated for a call whose process died mid-answer takes the
    real figures if that process comes back (`estimated`).

    Nothing here points at users or conversations with a foreign key, and nothing
    deletes a row: erasing a conversation or a user never reduces what was used.
    `user_name` keeps who it was as the call was made.
    """

    __tablename__ = "usage_ledger"
    __table_args__ = (
        Index("ix_usage_ledger_user_ended", "user_id", "ended_at"),
        Index("ix_usage_ledger_ended", "ended_at"),
        UniqueConstraint("call_id", name="uq_usage_ledger_call_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(Integer)
    user_name: Mapped[str | None] = mapped_column(String(64))
    conversation_id: Mapped[int | None] = mapped_column(Integer)
    purpose: Mapped[Purpose] = mapped_column(_enum(Purpose, "purpose"))
    outcome: Mapped[CallOutcome] = mapped_column(_enum(CallOutcome, "call_outcome"))
    model: Mapped[str] = mapped_column(String(100))
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    cache_creation_input_tokens: Mapped[int] = mapped_column(Integer)
    cache_read_input_tokens: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The call's own id: a retried write or a drained outbox line adds no second row.
    call_id: Mapped[str | None] = mapped_column(String(32))
    # Tokens estimated by another process for a call whose process died mid-answer;
    # replaced by the real figures if that process comes back after all.
    estimated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The response cache: "hit" (no call; `saved_*` is what the cached answer's call
    # used) or "miss" (the call was made and its answer kept); None: not cacheable.
    cache: Mapped[str | None] = mapped_column(String(8))
    saved_input_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    saved_output_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    saved_usd: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")

    @property
    def tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )


class QuotaReservation(Base):
    """Tokens set aside for a chat call in flight, so concurrent sends cannot overshoot.

    Made under a write lock when a message is sent, deleted when its answer ends; one
    left by a process that died expires at `expires_at`.
    """

    __tablename__ = "quota_reservations"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    tokens: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LoginSession(Base):
    """A browser's sign-in, referenced by a signed cookie holding a random token.

    Only the token's SHA-256 is stored. A sign-in starts with a one-time ticket (also
    stored hashed, valid a minute) that the browser exchanges for the cookie.
    """

    __tablename__ = "login_sessions"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    ticket_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    ticket_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LoginFailures(Base):
    """Failed sign-ins by key (`account:NAME` or `client:ADDRESS`), for throttling;
    `pending` counts an account's attempts whose password is being checked."""

    __tablename__ = "login_failures"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    pending: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_failure_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class VectorErasure(Base):
    """An outbox: a deleted conversation whose vectors are still to be dropped.

    Written in the transaction that deletes the conversation; removed once the vector
    store has dropped the collection. Pending rows are retried at start-up.
    """

    __tablename__ = "vector_erasures"

    conversation_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class Group(Base):
    """A named set of users that documents can be shared with (admins manage them)."""

    __tablename__ = "groups"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Local names (64 characters at most) or a provider's `LABEL#group`.
    name: Mapped[str] = mapped_column(String(160), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class GroupMember(Base):
    __tablename__ = "group_members"

    group_id: Mapped[int] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Document(Base):
    """An uploaded document: private to its owner, shared with groups, or public."""

    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("owner_id", "sha256"),  # the same content is not indexed twice
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    public: Mapped[bool] = mapped_column(default=False)
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # False while an upload is being indexed: every read skips the document until then.
    ready: Mapped[bool] = mapped_column(default=True, server_default=true())
    # What the model wrote of it (a batch job, `parley.chat.batch`), and which model.
    summary: Mapped[str | None] = mapped_column(Text)
    summary_model: Mapped[str | None] = mapped_column(String(100))


class DocumentGroup(Base):
    __tablename__ = "document_groups"

    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True
    )
    group_id: Mapped[int] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )


class DocumentSync(Base):
    """An outbox: a document whose vectors are to be brought in line with the database
    (shared, unshared, deleted). Written in the transaction of the change; removed once
    the vector store has followed. Pending rows are retried at start-up."""

    __tablename__ = "document_syncs"

    document_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Every scope (vector collection) its rows may be in since the last sync.
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class DocumentChunk(Base):
    """A chunk's text, heading and page: the text lives here, Chroma keeps its vector."""

    __tablename__ = "document_chunks"

    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    heading: Mapped[str] = mapped_column(String(500), default="")
    page: Mapped[int | None] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(Integer)
    # Why the injection detector found it suspect; "" nothing; NULL not read yet.
    suspect: Mapped[str | None] = mapped_column(String(100))


class BatchJob(Base):
    """Work nobody waits for, done in bulk (`parley.chat.batch`): through the Message
    Batches API (`runner` "api", `provider_batch_id` its current batch) or on the local
    model in the background ("local")."""

    __tablename__ = "batch_jobs"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    runner: Mapped[str] = mapped_column(String(8))
    # "planned" (to be sent), "sending" and "collecting" (one process at it: `updated_at`
    # is its heartbeat), "running" (a batch out, or queued on the local model), "done",
    # "canceled", "failed" (the API refused it): `parley.chat.batch.service`
    state: Mapped[str] = mapped_column(String(12), index=True)
    model: Mapped[str] = mapped_column(String(100))
    provider_batch_id: Mapped[str | None] = mapped_column(String(100))
    round: Mapped[int] = mapped_column(Integer, default=1)  # 2 and on: failed items again
    created_by: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    note: Mapped[str] = mapped_column(String(500), default="")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel_sent: Mapped[bool] = mapped_column(Boolean, default=False)  # asked at the API
    send_failures: Mapped[int] = mapped_column(Integer, default=0)  # in a row
    # Who holds `sending` or `collecting`: a token each claim draws; every write of that
    # phase names it, so a process whose claim was taken back writes nothing.
    claim: Mapped[str | None] = mapped_column(String(64))
    # When sends began to be refused (none since the last that went): tried for a day.
    refused_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The last send whose fate is unknown (a timeout): when, and how many requests. The
    # next send first looks for a batch the API made of it.
    attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempt_size: Mapped[int] = mapped_column(Integer, default=0)


class BatchItem(Base):
    """One piece of a batch job: a document, or a conversation, and how it went."""

    __tablename__ = "batch_items"
    __table_args__ = (
        UniqueConstraint("job_id", "custom_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("batch_jobs.id", ondelete="CASCADE"), index=True)
    custom_id: Mapped[str] = mapped_column(String(64))
    target_id: Mapped[int] = mapped_column(Integer)
    owner_id: Mapped[int | None] = mapped_column(Integer)  # charged for its calls
    # What the target was when planned (a document's hash, a summary's version): a
    # result for a target that has changed since is not applied.
    fingerprint: Mapped[str] = mapped_column(String(64))
    # "pending", "sent" (in the current batch), "settling" (its result being applied),
    # "running" (on the local model), "done", "skipped" (changed or gone meanwhile),
    # "failed"
    state: Mapped[str] = mapped_column(String(8))
    claim: Mapped[str | None] = mapped_column(String(64))  # who applies or runs it
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(String(300), default="")
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)


class AuditRecord(Base):
    """One record of the audit trail (see `parley/store/audit.py`): append-only, hash-chained."""

    __tablename__ = "audit_records"
    __table_args__ = (
        Index("ix_audit_records_actor_at", "actor", "at"),
        Index("ix_audit_records_actor_id", "actor_id", "id"),
        Index("ix_audit_records_about_id", "about_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[str] = mapped_column(String(40))  # ISO 8601, UTC, microseconds: hashed as is
    actor_id: Mapped[int | None] = mapped_column(Integer)  # no foreign key: outlives users
    actor: Mapped[str] = mapped_column(String(200))
    # The user whose data the record concerns, when not the actor (hashed when set).
    about_id: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(200), default="")
    data: Mapped[str] = mapped_column(Text)  # canonical JSON
    # Keyed records (0016 on): the key's id, and the salted hash through which actor,
    # subject and data enter the chain (the salt goes when a user's erasure redacts it).
    key_id: Mapped[str | None] = mapped_column(String(16))
    salt: Mapped[str | None] = mapped_column(String(32))
    content_hash: Mapped[str | None] = mapped_column(String(64))
    # The hash of the redacted form an erasure may put in place of the personal part.
    redacted_hash: Mapped[str | None] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The audit trail's one head row: the last record's id and hash (locked to append)."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_id: Mapped[int] = mapped_column(Integer)
    last_hash: Mapped[str] = mapped_column(String(64))
