"""Sending a message and streaming the answer, with nothing lost on the way.

The order is fixed: validate the text, assemble the context, **commit the user's
message**, then call the provider. The answer is committed when the stream ends:
`complete`, or the partial text as `interrupted` (or `error` when nothing
arrived) with one sentence for the user. The page and the CLI both use this.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from auth.principal import Principal
from chat.conversations import owned_conversation
from chat.providers.base import (
    ChatProvider,
    ChatRequest,
    PromptRole,
    StreamEnd,
    TextDelta,
    Usage,
)
from memory.base import ContextWindow, MemoryStrategy, Turn
from parley.config import Settings
from parley.errors import InvalidInput, ParleyError, ProviderError, StreamInterrupted
from store.db import Database
from store.models import Conversation, Message, MessageRole, MessageStatus, utcnow

log = logging.getLogger(__name__)

TITLE_CHARS = 60
# cl100k counts run a little below Claude's and SmolLM2's tokenizers; keep headroom.
BUDGET_MARGIN = 0.9


@dataclass(frozen=True, slots=True)
class ReplyResult:
    """How an answer ended. `error` is a sentence for the user, or None."""

    message_id: int
    status: MessageStatus
    text: str
    model: str
    usage: Usage | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is MessageStatus.COMPLETE


def clean_message_text(text: str, *, max_chars: int) -> str:
    """The text as it will be stored and sent, or `InvalidInput` with a sentence to show."""
    if not isinstance(text, str):
        raise InvalidInput("A message must be text.")
    # Lone surrogates (from broken encodings) cannot be stored as UTF-8; NUL breaks PostgreSQL.
    text = text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()
    if not text:
        raise InvalidInput("The message is empty. Type something to send.")
    if len(text) > max_chars:
        raise InvalidInput(
            f"The message has {len(text):,} characters; the limit is {max_chars:,}. "
            "Please shorten it or split it up."
        )
    return text


class ReplyStream:
    """The answer as an iterator of text chunks; `result` is set once it has ended.

    Iterate it to the end, or call `close()` when giving up early (the partial
    answer is then stored as interrupted). It never raises a provider error.
    """

    def __init__(self, conversation_id: int, user_message_id: int, chunks: Iterator[str]) -> None:
        self.conversation_id = conversation_id
        self.user_message_id = user_message_id
        self.result: ReplyResult | None = None
        self._chunks = chunks

    def __iter__(self) -> Iterator[str]:
        return self._chunks

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


class ChatService:
    def __init__(
        self,
        *,
        database: Database,
        provider: ChatProvider,
        memory: MemoryStrategy,
        settings: Settings,
    ) -> None:
        self._db = database
        self._provider = provider
        self._memory = memory
        self._settings = settings

    @property
    def model(self) -> str:
        return self._provider.model

    def send(self, principal: Principal, conversation_id: int | None, text: str) -> ReplyStream:
        """Store the user's message and start the answer. Raises `InvalidInput`/`NotFound`."""
        text = clean_message_text(text, max_chars=self._settings.max_message_chars)
        with self._db.session() as session:
            if conversation_id is None:
                conversation = Conversation(user_id=principal.user_id, title=_title_from(text))
                session.add(conversation)
                session.flush()
            else:
                conversation = owned_conversation(session, principal, conversation_id)
            history = _prompt_turns(session, conversation.id)
            context = self._build_context(history, text)
            user_message = Message(
                conversation_id=conversation.id,
                role=MessageRole.USER,
                content=text,
                status=MessageStatus.COMPLETE,
                completed_at=utcnow(),
            )
            session.add(user_message)
            conversation.updated_at = utcnow()
            session.flush()
            ids = (conversation.id, user_message.id)
        # The user's message is committed here, before the provider is called.
        return self._start(ids[0], ids[1], context)

    def retry(self, principal: Principal, conversation_id: int) -> ReplyStream:
        """Answer the last user message again; a failed answer to it is kept as superseded."""
        with self._db.session() as session:
            conversation = owned_conversation(session, principal, conversation_id)
            rows = _visible_messages(session, conversation.id)
            last_user_index = max(
                (i for i, m in enumerate(rows) if m.role is MessageRole.USER), default=None
            )
            if last_user_index is None:
                raise InvalidInput("There is no message to retry.")
            question = rows[last_user_index]
            later = rows[last_user_index + 1 :]
            if any(m.status is MessageStatus.COMPLETE for m in later):
                raise InvalidInput("The last message already has an answer.")
            for failed in later:
                failed.status = MessageStatus.SUPERSEDED
            history = [_to_turn(m) for m in rows[:last_user_index] if _in_prompt(m)]
            context = self._build_context(history, question.content)
            ids = (conversation.id, question.id)
        return self._start(ids[0], ids[1], context)

    def needs_retry(self, principal: Principal, conversation_id: int) -> bool:
        """True when the last user message has no complete answer."""
        with self._db.session() as session:
            conversation = owned_conversation(session, principal, conversation_id)
            rows = _visible_messages(session, conversation.id)
        if not rows:
            return False
        last = rows[-1]
        return last.role is MessageRole.USER or last.status is not MessageStatus.COMPLETE

    def _build_context(self, history: Sequence[Turn], question: str) -> ContextWindow:
        budget = int(
            (self._provider.context_window - self._settings.max_output_tokens) * BUDGET_MARGIN
        )
        return self._memory.build(
            system=self._settings.system_prompt, history=history, question=question, budget=budget
        )

    def _start(
        self, conversation_id: int, user_message_id: int, context: ContextWindow
    ) -> ReplyStream:
        request = ChatRequest(
            system=context.system,
            messages=context.messages,
            max_tokens=self._settings.max_output_tokens,
            temperature=self._settings.temperature.chat,
        )
        stream = ReplyStream(conversation_id, user_message_id, iter(()))
        stream._chunks = self._generate(stream, request)
        return stream

    def _generate(self, stream: ReplyStream, request: ChatRequest) -> Iterator[str]:
        parts: list[str] = []
        end: StreamEnd | None = None
        error: ProviderError | None = None
        events = self._provider.stream(request)
        try:
            for event in events:
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                    yield event.text
                else:
                    end = event
        except ProviderError as exc:
            error = exc
        except GeneratorExit:
            error = StreamInterrupted("reader left")
            error.user_message = "The answer was stopped before it finished."
            raise
        except Exception as exc:  # a bug in a provider must not lose the answer
            log.exception("Provider %s failed unexpectedly", self._provider.model)
            error = ProviderError(f"unexpected {type(exc).__name__}")
        finally:
            events_close = getattr(events, "close", None)
            if events_close is not None:
                events_close()
            stream.result = self._store_answer(stream, "".join(parts), end, error)

    def _store_answer(
        self, stream: ReplyStream, text: str, end: StreamEnd | None, error: ParleyError | None
    ) -> ReplyResult:
        if error is None and end is not None:
            status, sentence = MessageStatus.COMPLETE, None
        else:
            error = error or StreamInterrupted("stream ended without a result")
            status = MessageStatus.INTERRUPTED if text else MessageStatus.ERROR
            sentence = error.user_message
            log.warning(
                "Answer in conversation %s ended %s: %s", stream.conversation_id, status, error
            )
        model = end.model if end else self._provider.model
        with self._db.session() as session:
            message = Message(
                conversation_id=stream.conversation_id,
                role=MessageRole.ASSISTANT,
                content=text,
                status=status,
                model=model,
                input_tokens=end.usage.input_tokens if end else None,
                output_tokens=end.usage.output_tokens if end else None,
                stop_reason=end.stop_reason if end else None,
                error=sentence,
                completed_at=utcnow(),
            )
            session.add(message)
            conversation = session.get(Conversation, stream.conversation_id)
            if conversation is not None:
                conversation.updated_at = utcnow()
            session.flush()
            message_id = message.id
        return ReplyResult(
            message_id=message_id,
            status=status,
            text=text,
            model=model,
            usage=end.usage if end else None,
            error=sentence,
        )


def _title_from(text: str) -> str:
    first_line = " ".join(text.split())
    if len(first_line) <= TITLE_CHARS:
        return first_line
    return first_line[: TITLE_CHARS - 1].rstrip() + "…"


def _visible_messages(session: Session, conversation_id: int) -> list[Message]:
    return list(
        session.scalars(
            select(Message)
            .where(
                Message.conversation_id == conversation_id,
                Message.status != MessageStatus.SUPERSEDED,
            )
            .order_by(Message.id)
        )
    )


def _in_prompt(message: Message) -> bool:
    """Failed answers with no text stay out of the prompt; partial answers go in."""
    return bool(message.content) and message.status is not MessageStatus.SUPERSEDED


def _to_turn(message: Message) -> Turn:
    role: PromptRole = "user" if message.role is MessageRole.USER else "assistant"
    return Turn(id=message.id, role=role, content=message.content, created_at=message.created_at)


def _prompt_turns(session: Session, conversation_id: int) -> list[Turn]:
    return [_to_turn(m) for m in _visible_messages(session, conversation_id) if _in_prompt(m)]
