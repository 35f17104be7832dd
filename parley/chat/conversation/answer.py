"""Storing an answer when its stream ends, with its audit record, come what may.

`complete` when the stream ended with a result; `stopped` when its reader stopped it
after some text (with the usage the meter recorded for the call); otherwise the partial
text as `interrupted` (or `error` when nothing arrived) with the error's one sentence
for the user. Storing survives a passing database error (tried again, then logged) and never
raises into the reader: an answer the database would not take comes back as a result
that says so (`NOT_SAVED`), its text still in hand.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from parley.chat.conversation.branches import advance
from parley.chat.conversation.replies import ReplyResult, ReplyStream
from parley.chat.gateway.pricing import Pricing
from parley.core.audit_events import Answered, CitedRef, MessageRef
from parley.core.domain import MessageRole, MessageStatus
from parley.core.errors import (
    AnswerStopped,
    ParleyError,
    StorageError,
    StorageUnavailable,
    StreamInterrupted,
)
from parley.core.llm import StreamEnd, Usage
from parley.core.records import CitedPassage, DocumentSource, Provenance
from parley.core.retry import retried
from parley.memory import message_tokens
from parley.store.audit import append_in, message_hash
from parley.store.db import Database
from parley.store.models import AnswerDraft, Conversation, Message, UsageEntry, User, utcnow

log = logging.getLogger(__name__)

# Waits between attempts to store an answer when the database fails for a moment.
STORE_RETRY_DELAYS_S = (0.05, 0.25, 1.0)
STOPPED_BEFORE = "The answer was stopped before it began."
NOT_SAVED = (
    "The answer could not be saved (the database did not take it); "
    "what you see was not kept. Please retry."
)


@dataclass(frozen=True, slots=True)
class AnswerRow:
    """The assistant message's columns, as stored."""

    conversation_id: int
    content: str
    status: MessageStatus
    model: str
    tokens: int
    input_tokens: int | None
    output_tokens: int | None
    cache_creation_input_tokens: int | None
    cache_read_input_tokens: int | None
    estimated_input_tokens: int
    cost_usd: float | None
    context: Provenance | None
    citations: list[CitedPassage] | None
    sources: list[DocumentSource] | None
    stop_reason: str | None
    error: str | None
    cached: bool = False  # served from the response cache


class AnswerStore:
    def __init__(
        self, database: Database, pricing: Pricing, *, fallback_model: Callable[[], str]
    ) -> None:
        self._db = database
        self._pricing = pricing
        self._fallback_model = fallback_model  # when no call got as far as naming its model

    def store(
        self,
        stream: ReplyStream,
        text: str,
        ends: Sequence[StreamEnd],
        error: ParleyError | None,
        citations: list[CitedPassage],
    ) -> ReplyResult:
        """Commit the answer; a database that fails for a moment is tried again, then logged."""
        stopped = isinstance(error, AnswerStopped)
        if error is None and ends:
            status, sentence = MessageStatus.COMPLETE, None
        elif stopped and text:
            status, sentence = MessageStatus.STOPPED, None
            log.info("Answer in conversation %s stopped by its reader", stream.conversation_id)
        else:
            error = error or StreamInterrupted("stream ended without a result")
            status = MessageStatus.INTERRUPTED if text else MessageStatus.ERROR
            sentence = STOPPED_BEFORE if stopped else error.user_message
            log.warning(
                "Answer in conversation %s ended %s: %s", stream.conversation_id, status, error
            )
        model = ends[-1].model if ends else self._fallback_model()
        usage = sum((e.usage for e in ends), Usage()) if ends else None
        cost = self._pricing.cost(model, usage) if usage else None
        if usage is None and stopped and stream.call_id is not None:
            # The call never reached its end: its usage is what the meter recorded.
            model, usage, cost = self._metered(stream.call_id, model)
        provenance = stream.provenance  # made after the stream, off the first token's path
        row = AnswerRow(
            conversation_id=stream.conversation_id,
            content=text,
            status=status,
            model=model,
            tokens=message_tokens(text) if text else 0,
            input_tokens=usage.input_tokens if usage else None,
            output_tokens=usage.output_tokens if usage else None,
            cache_creation_input_tokens=usage.cache_creation_input_tokens if usage else None,
            cache_read_input_tokens=usage.cache_read_input_tokens if usage else None,
            estimated_input_tokens=stream.estimated_input_tokens,
            cost_usd=cost,
            context=provenance,
            citations=citations or None,
            sources=list(provenance.sources) or None if provenance else None,
            stop_reason=ends[-1].stop_reason if ends else None,
            error=sentence,
            cached=any(e.cached for e in ends),
        )
        try:
            # A passing outage is tried again; a conflict (the conversation was deleted
            # meanwhile) will not get better.
            message_id = retried(
                lambda: self._insert(row, stream),
                STORE_RETRY_DELAYS_S,
                retry_on=StorageUnavailable,
                on_retry=_storing_again,
            )
        except StorageError:
            log.exception(
                "Could not store the answer in conversation %s (%d characters lost)",
                stream.conversation_id,
                len(text),
            )
            return ReplyResult(None, MessageStatus.ERROR, text, model, usage, cost, NOT_SAVED)
        return ReplyResult(message_id, status, text, model, usage, cost, sentence)

    def _metered(self, call_id: str, model: str) -> tuple[str, Usage | None, float | None]:
        """A call's model, usage and cost as the ledger holds them (or nothing, when the
        meter's write waits in its outbox or the database fails: the ledger is what counts)."""
        try:
            with self._db.session() as session:
                entry = session.scalar(select(UsageEntry).where(UsageEntry.call_id == call_id))
        except StorageError:
            return model, None, None
        if entry is None:
            return model, None, None
        usage = Usage(
            input_tokens=entry.input_tokens,
            output_tokens=entry.output_tokens,
            cache_creation_input_tokens=entry.cache_creation_input_tokens,
            cache_read_input_tokens=entry.cache_read_input_tokens,
        )
        return entry.model, usage, entry.cost_usd

    def _insert(self, row: AnswerRow, stream: ReplyStream) -> int:
        """The answer, and in the same transaction its audit record: who asked, the
        question and answer by id and hash, what went into the prompt, what it cost.
        The answer's draft goes in the same transaction; if another process settled it
        (it took this one for dead), the answer it stored is superseded by this one."""
        now = utcnow()
        with self._db.session(write_lock=True) as session:
            columns = {field: getattr(row, field) for field in AnswerRow.__slots__}
            draft = (
                session.get(AnswerDraft, stream.draft_id, with_for_update=True)
                if stream.draft_id is not None
                else None
            )
            settled = (
                session.get(Message, draft.settled_message_id)
                if draft is not None and draft.settled_message_id is not None
                else None
            )
            message = Message(
                **columns,
                parent_id=stream.user_message_id,
                role=MessageRole.ASSISTANT,
                created_at=now,
                completed_at=now,
            )
            # Locked on PostgreSQL (SQLite's write lock holds already): which branch is
            # shown is decided on the row as it is, not as another writer left it.
            conversation = session.get(
                Conversation, row.conversation_id, with_for_update=not self._db.is_sqlite
            )
            if settled is not None:
                # Another process took this one for dead and kept what had arrived. A
                # stored turn's text never changes (other processes cache it), so that
                # answer is superseded by this one. If the user had moved on (the kept
                # answer was out of the way, or anything follows it), the kept one stays
                # as it is and this one is kept out of the way, so what was shown, and
                # its order, never change.
                moved_on = settled.status is MessageStatus.SUPERSEDED or session.scalar(
                    select(Message.id)
                    .where(
                        Message.parent_id == settled.id,
                        Message.status != MessageStatus.SUPERSEDED,
                    )
                    .limit(1)
                )
                if moved_on:
                    message.status = MessageStatus.SUPERSEDED
                else:
                    settled.status = MessageStatus.SUPERSEDED
                    if conversation is not None and conversation.active_leaf_id == settled.id:
                        conversation.active_leaf_id = stream.user_message_id  # then this one
            session.add(message)
            if draft is not None:
                session.delete(draft)
            if conversation is not None:
                conversation.updated_at = now
            session.flush()
            if conversation is not None and message.status is not MessageStatus.SUPERSEDED:
                advance(conversation, message)
            append_answered(
                session,
                message,
                question_id=stream.user_message_id,
                user_id=stream.user_id,
                context=row.context,
                citations=row.citations,
            )
            return message.id


def append_answered(
    session: Session,
    message: Message,
    *,
    question_id: int,
    user_id: int,
    context: Provenance | None,
    citations: Sequence[CitedPassage] | None,
) -> None:
    """The answer's audit record, in the caller's transaction."""
    question = session.get(Message, question_id)
    asker = session.get(User, user_id)
    refs = [
        MessageRef(id=m.id, sha256=message_hash(m.content, m.salt))
        for m in (question, message)
        if m is not None
    ]
    append_in(
        session,
        Answered(
            conversation_id=message.conversation_id,
            messages=refs,
            status=str(message.status),
            model=message.model,
            input_tokens=message.input_tokens,
            output_tokens=message.output_tokens,
            cost_usd=message.cost_usd,
            prompt=context.without_names() if context else None,
            cited=[
                CitedRef(n=c.n, document_id=c.document_id, chunks=c.chunks) for c in citations or ()
            ],
        ),
        actor_id=user_id,
        actor=asker.name if asker else "system",
    )


def _storing_again(exc: Exception) -> None:
    log.warning("Storing an answer failed (%s); trying again.", exc)


__all__ = [
    "NOT_SAVED",
    "STOPPED_BEFORE",
    "STORE_RETRY_DELAYS_S",
    "AnswerRow",
    "AnswerStore",
    "append_answered",
]
