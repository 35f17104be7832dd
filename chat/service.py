"""Sending a message and streaming the answer, with nothing lost on the way.

The order is fixed: validate the text, check the user's daily quota, assemble
the context, **commit the user's message**, then call the provider (through the
concurrency queue and the rate limiter). The answer is committed when the
stream ends: `complete`, or the partial text as `interrupted` (or `error` when
nothing arrived) with one sentence for the user. A stream that breaks after
some text is continued once by sending the partial answer back as a prefill.
The page and the CLI both use this.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import replace

from sqlalchemy import select

from auth.principal import Principal
from chat.conversations import owned_conversation
from chat.history import in_prompt, prompt_turns, to_turn, visible_messages
from chat.limits import ConcurrencyGate, RateLimiter, limited_stream
from chat.providers.base import (
    ChatProvider,
    ChatRequest,
    PromptMessage,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
)
from chat.replies import (
    Background,
    Estimate,
    ReplyResult,
    ReplyStream,
    clean_message_text,
    run_in_thread,
    run_inline,
)
from chat.titles import fallback_title, generate_title
from chat.usage import UsageService
from memory.base import ContextRequest, ContextWindow, Turn
from memory.registry import StrategyRegistry
from parley.config import Settings
from parley.errors import (
    InvalidInput,
    NotFound,
    ParleyError,
    PermissionDenied,
    ProviderError,
    StreamInterrupted,
)
from store.db import Database
from store.models import Conversation, Message, MessageRole, MessageStatus, utcnow

log = logging.getLogger(__name__)

# cl100k counts run a little below Claude's and SmolLM2's tokenizers; keep headroom.
BUDGET_MARGIN = 0.9


class ChatService:
    def __init__(
        self,
        *,
        database: Database,
        provider: ChatProvider,
        memory: StrategyRegistry,
        settings: Settings,
        usage: UsageService,
        limiter: RateLimiter,
        gate: ConcurrencyGate,
        background: Background = run_in_thread,
        model_titles: bool = True,
    ) -> None:
        self._model_titles = model_titles
        self._db = database
        self._provider = provider
        self._memory = memory
        self._settings = settings
        self._usage = usage
        self._limiter = limiter
        self._gate = gate
        self._background = background

    @property
    def model(self) -> str:
        return self._provider.model

    def send(self, principal: Principal, conversation_id: int | None, text: str) -> ReplyStream:
        """Store the user's message and start the answer.

        Raises `InvalidInput`, `NotFound` or `QuotaExceeded` before anything is stored.
        """
        text = clean_message_text(text, max_chars=self._settings.max_message_chars)
        self._usage.check_quota(principal)
        with self._db.session() as session:
            if conversation_id is None:
                conversation = Conversation(user_id=principal.user_id, title=fallback_title(text))
                session.add(conversation)
                session.flush()
            else:
                conversation = owned_conversation(session, principal, conversation_id)
            history = prompt_turns(session, conversation.id)
            context = self._build_context(conversation, history, text)
            user_message = Message(
                conversation_id=conversation.id,
                role=MessageRole.USER,
                content=text,
                status=MessageStatus.COMPLETE,
                estimated_input_tokens=context.total_tokens,
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
        self._usage.check_quota(principal)
        with self._db.session() as session:
            conversation = owned_conversation(session, principal, conversation_id)
            rows = visible_messages(session, conversation.id)
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
            history = [to_turn(m) for m in rows[:last_user_index] if in_prompt(m)]
            context = self._build_context(conversation, history, question.content)
            ids = (conversation.id, question.id)
        return self._start(ids[0], ids[1], context)

    def needs_retry(self, principal: Principal, conversation_id: int) -> bool:
        """True when the last user message has no complete answer."""
        with self._db.session() as session:
            conversation = owned_conversation(session, principal, conversation_id)
            rows = visible_messages(session, conversation.id)
        if not rows:
            return False
        last = rows[-1]
        return last.role is MessageRole.USER or last.status is not MessageStatus.COMPLETE

    def estimate_next(self, principal: Principal, conversation_id: int | None) -> Estimate:
        """Cost of the next message's context (the new message adds its own tokens)."""
        model = self._provider.model
        price = self._usage.price(model)
        if price is None or not (price.input or price.output):
            return Estimate(input_tokens=0, input_cost_usd=0.0, max_output_cost_usd=0.0)
        with self._db.session() as session:
            if conversation_id is None:
                conversation = Conversation(id=0, user_id=principal.user_id)
                history: list[Turn] = []
            else:
                conversation = owned_conversation(session, principal, conversation_id)
                history = prompt_turns(session, conversation.id)
            context = self._build_context(conversation, history, "?")
        return self._estimate(context)

    def set_memory_strategy(
        self, principal: Principal, conversation_id: int, name: str | None
    ) -> None:
        """Admins choose a conversation's strategy (None: back to the default)."""
        if not principal.is_admin:
            raise PermissionDenied(user_message="Only administrators choose memory strategies.")
        if name is not None:
            self._memory.get(name)  # validates the name with a clear sentence
        with self._db.session() as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None:
                raise NotFound(user_message=f"There is no conversation {conversation_id}.")
            conversation.memory_strategy = name

    @property
    def strategies(self) -> list[str]:
        return self._memory.names()

    def replay_context(
        self,
        principal: Principal,
        conversation_id: int,
        message_id: int,
        strategy: str,
        *,
        budget: int | None = None,
    ) -> tuple[ContextWindow, Estimate]:
        """The context `strategy` would build for a stored user message (the strategy lab).

        Admins only: it reads any user's conversation.
        """
        if not principal.is_admin:
            raise PermissionDenied(user_message="Only administrators can replay conversations.")
        with self._db.session() as session:
            rows = visible_messages(session, conversation_id)
        index = next((i for i, m in enumerate(rows) if m.id == message_id), None)
        if index is None or rows[index].role is not MessageRole.USER:
            raise NotFound(user_message="Choose one of the conversation's user messages.")
        history = [to_turn(m) for m in rows[:index] if in_prompt(m)]
        limit = self._budget()
        context = self._memory.get(strategy).build(
            ContextRequest(
                conversation_id=conversation_id,
                system=self._settings.system_prompt,
                history=history,
                question=rows[index].content,
                budget=min(budget or limit, limit),
            )
        )
        return context, self._estimate(context)

    def strategy_of(self, conversation_id: int | None) -> str:
        if conversation_id is None:
            return self._memory.default
        with self._db.session() as session:
            conversation = session.get(Conversation, conversation_id)
            chosen = conversation.memory_strategy if conversation else None
        return chosen or self._memory.default

    def _budget(self) -> int:
        """Prompt tokens allowed: the model's context minus the answer's reserve, less a margin."""
        return int(
            (self._provider.context_window - self._settings.max_output_tokens) * BUDGET_MARGIN
        )

    def _estimate(self, context: ContextWindow) -> Estimate:
        model = self._provider.model
        return Estimate(
            input_tokens=context.total_tokens,
            input_cost_usd=self._usage.estimate_cost(model, input_tokens=context.total_tokens),
            max_output_cost_usd=self._usage.estimate_cost(
                model, input_tokens=0, output_tokens=self._settings.max_output_tokens
            ),
        )

    def _build_context(
        self, conversation: Conversation, history: Sequence[Turn], question: str
    ) -> ContextWindow:
        budget = self._budget()
        strategy = self._memory.get(conversation.memory_strategy)
        return strategy.build(
            ContextRequest(
                conversation_id=conversation.id,
                system=self._settings.system_prompt,
                history=history,
                question=question,
                budget=budget,
            )
        )

    def _observe(self, conversation_id: int) -> None:
        """Let the conversation's strategy index new turns and fold summaries (background)."""
        try:
            with self._db.session() as session:
                conversation = session.get(Conversation, conversation_id)
                if conversation is None:
                    return
                name = conversation.memory_strategy
                history = prompt_turns(session, conversation_id)
            self._memory.get(name).observe(conversation_id, history)
        except Exception:  # memory upkeep must never break a turn
            log.exception("Memory upkeep for conversation %s failed", conversation_id)

    def _start(
        self, conversation_id: int, user_message_id: int, context: ContextWindow
    ) -> ReplyStream:
        request = ChatRequest(
            system=context.system,
            messages=context.messages,
            max_tokens=self._settings.max_output_tokens,
            temperature=self._settings.temperature.chat,
        )
        estimate = context.total_tokens
        counter = getattr(self._provider, "count_tokens", None)
        if self._settings.anthropic_count_tokens and counter is not None:
            try:
                estimate = int(counter(request))
            except ProviderError as exc:  # an estimate is not worth failing a turn for
                log.info("count_tokens failed (%s); using the local estimate.", type(exc).__name__)
        stream = ReplyStream(conversation_id, user_message_id, estimate, context)
        stream._chunks = self._generate(stream, request)
        return stream

    def _call(
        self, request: ChatRequest, *, estimate: int, on_queue: Callable[[int], None] | None
    ) -> Generator[StreamEvent, None, None]:
        """One provider call through the queue and the rate limiter."""
        yield from limited_stream(
            self._provider, self._gate, self._limiter, request, estimate=estimate, on_queue=on_queue
        )

    def _generate(self, stream: ReplyStream, request: ChatRequest) -> Iterator[str]:
        parts: list[str] = []
        ends: list[StreamEnd] = []
        error: ParleyError | None = None
        attempt = request
        continued = False
        strip_leading_space = False
        try:
            while True:
                events = self._call(
                    attempt, estimate=stream.estimated_input_tokens, on_queue=stream.on_queue
                )
                try:
                    for event in events:
                        if isinstance(event, TextDelta):
                            text = event.text
                            if strip_leading_space:
                                text, strip_leading_space = text.lstrip(), not text.strip()
                            if text:
                                parts.append(text)
                                yield text
                        else:
                            ends.append(event)
                    break
                except StreamInterrupted:
                    if continued or not parts:
                        raise
                    continued = True
                    so_far = "".join(parts)
                    prefill = so_far.rstrip()  # the API refuses a prefill ending in whitespace
                    strip_leading_space = prefill != so_far
                    log.info("Stream broke after %d chars; continuing once.", len(so_far))
                    attempt = replace(
                        request,
                        messages=(*request.messages, PromptMessage("assistant", prefill)),
                    )
                finally:
                    events.close()
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
            stream.result = self._store_answer(stream, "".join(parts), ends, error)
            self._background(lambda: self._observe(stream.conversation_id))
            if stream.result.ok:
                self._maybe_title(stream.conversation_id)

    def _store_answer(
        self,
        stream: ReplyStream,
        text: str,
        ends: list[StreamEnd],
        error: ParleyError | None,
    ) -> ReplyResult:
        if error is None and ends:
            status, sentence = MessageStatus.COMPLETE, None
        else:
            error = error or StreamInterrupted("stream ended without a result")
            status = MessageStatus.INTERRUPTED if text else MessageStatus.ERROR
            sentence = error.user_message
            log.warning(
                "Answer in conversation %s ended %s: %s", stream.conversation_id, status, error
            )
        model = ends[-1].model if ends else self._provider.model
        usage = _sum_usage(ends) if ends else None
        cost = self._usage.cost(model, usage) if usage else None
        with self._db.session() as session:
            message = Message(
                conversation_id=stream.conversation_id,
                role=MessageRole.ASSISTANT,
                content=text,
                status=status,
                model=model,
                input_tokens=usage.input_tokens if usage else None,
                output_tokens=usage.output_tokens if usage else None,
                cache_creation_input_tokens=usage.cache_creation_input_tokens if usage else None,
                cache_read_input_tokens=usage.cache_read_input_tokens if usage else None,
                estimated_input_tokens=stream.estimated_input_tokens,
                cost_usd=cost,
                context=stream.context.provenance(),
                stop_reason=ends[-1].stop_reason if ends else None,
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
            usage=usage,
            cost_usd=cost,
            error=sentence,
        )

    def _maybe_title(self, conversation_id: int) -> None:
        """After the first complete answer, ask the model for a title, off the hot path."""
        with self._db.session() as session:
            rows = session.execute(
                select(Message.role, Message.content)
                .where(
                    Message.conversation_id == conversation_id,
                    Message.status == MessageStatus.COMPLETE,
                )
                .order_by(Message.id)
                .limit(3)
            ).all()
        if len(rows) != 2 or not self._model_titles:
            return
        question, answer = rows[0][1], rows[1][1]

        def make_title() -> None:
            try:
                title, calls = generate_title(
                    lambda r: self._call(r, estimate=400, on_queue=None),
                    question=question,
                    answer=answer,
                    temperature=self._settings.temperature.title,
                    attempts=self._settings.title_attempts,
                )
                with self._db.session() as session:
                    conversation = session.get(Conversation, conversation_id)
                    # Keep a title the user has set meanwhile.
                    if conversation is not None and conversation.title == fallback_title(question):
                        conversation.title = title
                log.info("Titled conversation %s after %d call(s).", conversation_id, calls)
            except Exception:  # a title must never break anything
                log.exception("Titling conversation %s failed", conversation_id)

        self._background(make_title)


def _sum_usage(ends: Sequence[StreamEnd]) -> Usage:
    return Usage(
        input_tokens=sum(e.usage.input_tokens for e in ends),
        output_tokens=sum(e.usage.output_tokens for e in ends),
        cache_creation_input_tokens=sum(e.usage.cache_creation_input_tokens for e in ends),
        cache_read_input_tokens=sum(e.usage.cache_read_input_tokens for e in ends),
    )


__all__ = [
    "BUDGET_MARGIN",
    "Background",
    "ChatService",
    "Estimate",
    "ReplyResult",
    "ReplyStream",
    "clean_message_text",
    "run_in_thread",
    "run_inline",
]
