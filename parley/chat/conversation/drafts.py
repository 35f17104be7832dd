"""Answers while they stream, so that a process that dies mid-answer loses nothing.

A chat turn writes a draft row (`answer_drafts`) in the same transaction as the
user's message. While the answer streams, one thread per process (`DraftKeeper`)
checkpoints every open draft's text and keeps its heartbeat fresh, in one short
transaction every `HEARTBEAT_S`, off the streaming path. Storing the answer deletes
the draft in the answer's own transaction.

A draft whose heartbeat is older than `STALE_S` belongs to a process that died (or is
stuck): any process settles it (`settle`) — when the conversation is next opened or
answered, and every `SETTLE_EVERY_S` in the app — into an assistant message:
`interrupted` with the checkpointed text (or `error` if none had arrived), or
`superseded` if the conversation went on without it (a retry, a newer question), so
the order of what is shown never changes. The settled answer gets its audit record,
and the call its ledger row under the call's own id, with tokens estimated from the
prompt and the checkpointed text (a row the dead process did write is not doubled).
An owner that was only slow finds its draft settled and stores its answer as a new
message that supersedes the kept one (`answer.AnswerStore`): a stored turn's text never
changes, so other processes' history caches stay right.
"""

from __future__ import annotations

import logging
import threading
import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from parley.chat.conversation.answer import append_answered
from parley.chat.conversation.branches import advance
from parley.chat.conversation.replies import ReplyStream
from parley.chat.gateway.usage import UsageService
from parley.core.domain import CallOutcome, MessageRole, MessageStatus, Purpose
from parley.core.errors import StorageError
from parley.core.llm import CallMeta, CallRecord, Usage
from parley.memory import message_tokens
from parley.store.db import Database
from parley.store.models import AnswerDraft, Conversation, Message, QuotaReservation, utcnow

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0  # how often a process checkpoints its drafts
STALE_S = 10.0  # a draft not checkpointed for this long belongs to a dead process
SETTLE_EVERY_S = 30.0  # how often the app looks for drafts of dead processes
KEEP_SETTLED_S = 3600.0  # a settled draft waits this long for an owner that was only stuck
BROKE_OFF = (
    "The answer broke off before it was finished: the server writing it stopped. "
    "What had arrived is kept; Retry to ask again."
)


@dataclass(frozen=True, slots=True)
class DraftTicket:
    """The draft of one answer: its row and the ledger id of its first call."""

    draft_id: int
    call_id: str


class DraftKeeper:
    """This process's open drafts, checkpointed by one daemon thread.

    Streams are held weakly: a stream dropped without being read to the end stops
    being checkpointed, and its draft is settled as a dead process's would be.
    """

    def __init__(
        self, database: Database, *, heartbeat_s: float = HEARTBEAT_S, token: str | None = None
    ) -> None:
        self._db = database
        self._heartbeat_s = heartbeat_s
        self.token = token or uuid.uuid4().hex  # this process, in the drafts it owns
        self._streams: weakref.WeakValueDictionary[int, ReplyStream] = weakref.WeakValueDictionary()
        self._saved: dict[int, int] = {}  # draft id -> characters checkpointed
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def open(
        self,
        session: Session,
        *,
        conversation_id: int,
        user_message_id: int,
        user_id: int,
        model: str,
        estimated_input_tokens: int,
        reservation_id: int | None = None,
    ) -> DraftTicket:
        """A draft row in the caller's transaction (the one that stores the question)."""
        now = utcnow()
        draft = AnswerDraft(
            conversation_id=conversation_id,
            user_message_id=user_message_id,
            user_id=user_id,
            owner=self.token,
            call_id=uuid.uuid4().hex,
            model=model,
            estimated_input_tokens=estimated_input_tokens,
            reservation_id=reservation_id,
            content="",
            started_at=now,
            heartbeat_at=now,
        )
        session.add(draft)
        session.flush()
        return DraftTicket(draft.id, draft.call_id)

    def track(self, stream: ReplyStream) -> None:
        """Checkpoint this stream's draft until `forget`."""
        if stream.draft_id is None:
            return
        with self._lock:
            self._streams[stream.draft_id] = stream
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="parley-draft-keeper", daemon=True
                )
                self._thread.start()

    def forget(self, draft_id: int | None) -> None:
        if draft_id is None:
            return
        with self._lock:
            self._streams.pop(draft_id, None)
            self._saved.pop(draft_id, None)

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                self.checkpoint()
            except StorageError as exc:  # the database is away: the next beat tries again
                log.warning("Could not checkpoint the answers being written: %s", exc)
            except Exception:  # never let the keeper die: a dead keeper loses answers
                log.exception("Checkpointing the answers being written failed")

    def checkpoint(self) -> int:
        """Write each open draft's new text and heartbeat; the number of drafts kept."""
        with self._lock:
            streams = [(draft_id, s) for draft_id, s in self._streams.items()]
        if not streams:
            return 0
        now = utcnow()
        written: dict[int, int] = {}
        with self._db.session() as session:
            for draft_id, stream in streams:
                text = "".join(stream.partial)
                values: dict[str, object] = {"heartbeat_at": now}
                saved = self._saved.get(draft_id)
                if len(text) != saved:
                    values["content"] = text
                    if not saved and text:  # made once, off the first token's path
                        values["context"] = stream.provenance
                session.execute(
                    update(AnswerDraft)
                    .where(AnswerDraft.id == draft_id, AnswerDraft.owner == self.token)
                    .values(**values)
                )
                written[draft_id] = len(text)
        with self._lock:  # only once committed: a failed beat writes it all again
            for draft_id, length in written.items():
                if draft_id in self._streams:
                    self._saved[draft_id] = length
            for gone in self._saved.keys() - self._streams.keys():  # dropped streams
                del self._saved[gone]
        return len(streams)


class DraftSettler:
    """Turns the drafts of dead processes into stored answers (see the module's text)."""

    def __init__(
        self, database: Database, usage: UsageService, *, stale_s: float = STALE_S
    ) -> None:
        self._db = database
        self._usage = usage
        self._stale = timedelta(seconds=stale_s)

    def settle_quietly(self, conversation_id: int) -> int:
        """`settle` for a page or a turn on its way: a failure is logged, never raised
        (the conversation is shown, or answered, all the same)."""
        try:
            return self.settle(conversation_id)
        except StorageError as exc:
            log.warning("Could not keep the answers of stopped processes: %s", exc)
            return 0

    def settle(self, conversation_id: int | None = None, *, now: datetime | None = None) -> int:
        """Settle the stale drafts (of one conversation, or all); how many were settled.
        A cheap read first: a conversation with none takes no write lock."""
        cutoff = (now or utcnow()) - self._stale
        stale = select(AnswerDraft.id).where(
            AnswerDraft.heartbeat_at < cutoff, AnswerDraft.settled_message_id.is_(None)
        )
        if conversation_id is not None:
            stale = stale.where(AnswerDraft.conversation_id == conversation_id)
        expired = select(AnswerDraft.id).where(
            AnswerDraft.settled_message_id.is_not(None),
            AnswerDraft.heartbeat_at < cutoff - timedelta(seconds=KEEP_SETTLED_S),
        )
        with self._db.session() as session:
            pending = session.scalar(stale.limit(1)) is not None
            if not pending and (
                conversation_id is not None or session.scalar(expired.limit(1)) is None
            ):
                return 0
        settled = 0
        with self._db.session(write_lock=True) as session:
            query = select(AnswerDraft).where(
                AnswerDraft.id.in_(stale), AnswerDraft.settled_message_id.is_(None)
            )
            if not self._db.is_sqlite:
                query = query.with_for_update(skip_locked=True)  # another settler has it
            for draft in session.scalars(query.order_by(AnswerDraft.id).limit(100)).all():
                self._settle_one(session, draft, now or utcnow())
                settled += 1
            # Settled drafts whose owner never came back: nothing will complete them now.
            session.execute(
                delete(AnswerDraft)
                .where(
                    AnswerDraft.settled_message_id.is_not(None),
                    AnswerDraft.heartbeat_at < cutoff - timedelta(seconds=KEEP_SETTLED_S),
                )
                .execution_options(synchronize_session=False)
            )
        if settled:
            log.warning("Kept %d answer(s) whose process stopped while writing them.", settled)
        return settled

    def _settle_one(self, session: Session, draft: AnswerDraft, now: datetime) -> None:
        if not self._db.is_sqlite:  # a question being sent now commits first, or waits
            session.scalar(
                select(Conversation.id)
                .where(Conversation.id == draft.conversation_id)
                .with_for_update()
            )
        # Whether its question went on without it since it began: something that follows
        # the question and came after (a retry's answer, a question asked after it), or a
        # newer answer to the same question on its way. Answers to the question from
        # before it began (an answer asked for again) and other branches leave it be.
        went_on = session.scalar(
            select(Message.id)
            .where(
                Message.parent_id == draft.user_message_id,
                Message.status != MessageStatus.SUPERSEDED,
                Message.created_at >= draft.started_at,
            )
            .limit(1)
        ) or session.scalar(
            select(AnswerDraft.id)
            .where(
                AnswerDraft.user_message_id == draft.user_message_id,
                AnswerDraft.id > draft.id,
            )
            .limit(1)
        )
        text = draft.content
        if went_on is not None:
            status = MessageStatus.SUPERSEDED  # kept for the record, out of the way
        else:
            status = MessageStatus.INTERRUPTED if text else MessageStatus.ERROR
        output_tokens = message_tokens(text) if text else 0
        message = Message(
            conversation_id=draft.conversation_id,
            parent_id=draft.user_message_id,
            role=MessageRole.ASSISTANT,
            content=text,
            status=status,
            model=draft.model,
            tokens=output_tokens,
            estimated_input_tokens=draft.estimated_input_tokens,
            context=draft.context,
            sources=list(draft.context.sources) or None if draft.context else None,
            error=BROKE_OFF,
            created_at=draft.started_at,
            completed_at=now,
        )
        session.add(message)
        session.flush()
        conversation = session.get(Conversation, draft.conversation_id)
        if conversation is not None and status is not MessageStatus.SUPERSEDED:
            advance(conversation, message)
        draft.settled_message_id = message.id
        # The text lives in the message now; the draft stays, empty, for a late owner.
        draft.content, draft.context = "", None
        if draft.reservation_id is not None:  # the dead process's quota hold
            session.execute(
                delete(QuotaReservation).where(QuotaReservation.id == draft.reservation_id)
            )
        append_answered(
            session,
            message,
            question_id=draft.user_message_id,
            user_id=draft.user_id,
            context=message.context,  # the draft's, emptied above
            citations=None,
        )
        if text and draft.model:  # the API had answered: the call is metered, estimated
            call = CallRecord(
                CallMeta(Purpose.CHAT, draft.user_id, draft.conversation_id),
                draft.model,
                Usage(input_tokens=draft.estimated_input_tokens, output_tokens=output_tokens),
                CallOutcome.INTERRUPTED,
                draft.started_at,
                draft.heartbeat_at,
                call_id=draft.call_id,
                estimated=True,
            )
            try:
                with session.begin_nested():  # the owner's meter may write it meanwhile
                    self._usage.record_in(session, call)
            except IntegrityError:
                log.info("The call of draft %s was metered by its own process.", draft.id)


__all__ = ["BROKE_OFF", "KEEP_SETTLED_S", "DraftKeeper", "DraftSettler", "DraftTicket"]
