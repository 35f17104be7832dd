"""A chat turn, from the user's text to the stored answer, with nothing lost on the way.

The order is fixed: validate the text, check the user's daily quota, assemble the
context, **commit the user's message**, then call the model (through the limited
provider: queue, buckets, metering). The answer is committed when the stream ends
(`parley.chat.conversation.answer`): `complete`, or the partial text as
`interrupted` (or `error` when nothing arrived) with one sentence for the user. A
stream that breaks after some text is continued once by sending the partial answer
back as a prefill.
The page and the CLI both use this; upkeep after the answer is `parley.chat.conversation.upkeep`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace

from opentelemetry.trace import Span
from sqlalchemy.orm import Session

from parley.chat.conversation.answer import AnswerStore
from parley.chat.conversation.branches import load_tree, message_in
from parley.chat.conversation.cache_keys import turn_cache_key
from parley.chat.conversation.context import ContextBuilder, Estimate
from parley.chat.conversation.conversations import owned_conversation
from parley.chat.conversation.drafts import DraftKeeper, DraftSettler, DraftTicket
from parley.chat.conversation.history import HistoryCache
from parley.chat.conversation.images import (
    IMAGE_SUFFIXES,
    PreparedImage,
    earlier_images,
    is_image,
    prepare_image,
    prompt_images,
    store_images,
    stored_as,
    with_images,
)
from parley.chat.conversation.replies import ReplyStream, clean_message_text
from parley.chat.conversation.titles import fallback_title
from parley.chat.conversation.upkeep import Upkeep
from parley.chat.documents.library import (
    MAX_FILES_PER_MESSAGE,
    SUPPORTED_SUFFIXES,
    DocumentService,
    SentFiles,
)
from parley.chat.documents.passages import NO_PASSAGES, Passages, find_passages
from parley.chat.gateway.output_guard import OutputBlocked
from parley.chat.gateway.pricing import Pricing
from parley.chat.gateway.quotas import QuotaService
from parley.core import tracing
from parley.core.config import Settings
from parley.core.domain import MessageRole, MessageStatus, Principal, Purpose
from parley.core.errors import (
    AnswerStopped,
    InvalidInput,
    ParleyError,
    ProviderError,
    StreamInterrupted,
)
from parley.core.llm import (
    CacheKey,
    CallMeta,
    ChatRequest,
    Citation,
    GatewayProvider,
    PromptImage,
    PromptMessage,
    StreamEnd,
    TextDelta,
)
from parley.core.records import Attachment, CitedPassage, SentImage
from parley.memory import ContextWindow, Turn, message_tokens
from parley.store.db import Database
from parley.store.models import Conversation, Message, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a turn answers: the question's text, the message it follows, the stored
    question when it is asked again (None: store `text` as a new one), and the failed
    answers a retry puts out of the way."""

    text: str
    parent_id: int | None
    question: Message | None = None
    replaced: Sequence[Message] = field(default_factory=tuple)
    attachments: Sequence[Attachment] = ()  # files sent with the question
    images: Sequence[SentImage] = ()  # images the stored question was sent with
    new_images: Sequence[PreparedImage] = ()  # images sent with a new question


class ChatService:
    def __init__(
        self,
        *,
        database: Database,
        provider: GatewayProvider,
        context: ContextBuilder,
        settings: Settings,
        quotas: QuotaService,
        pricing: Pricing,
        upkeep: Upkeep,
        history: HistoryCache,
        documents: DocumentService | None = None,
        drafts: DraftKeeper | None = None,
        settler: DraftSettler | None = None,
    ) -> None:
        self._documents = documents
        self._drafts = drafts  # the answers being written, checkpointed while they stream
        self._settler = settler  # keeps the answers of processes that died writing them
        self._db = database
        self._history = history
        self._provider = provider
        self._context = context
        self._settings = settings
        self._quotas = quotas
        self._answers = AnswerStore(database, pricing, fallback_model=lambda: provider.model)
        self._upkeep = upkeep

    @property
    def model(self) -> str:
        return self._provider.model

    @property
    def takes_images(self) -> bool:
        """Whether a question may be sent with images (the model reads them)."""
        return self._provider.takes_images

    def file_types(self) -> list[str]:
        """The suffixes a message may be sent with ("pdf", …): the documents' kinds, and
        the images' when the model reads images."""
        kinds = [*SUPPORTED_SUFFIXES, *(IMAGE_SUFFIXES if self.takes_images else ())]
        return [suffix.lstrip(".") for suffix in kinds]

    def send(
        self,
        principal: Principal,
        conversation_id: int | None,
        text: str,
        *,
        documents: Sequence[int] | None = None,
        after: int | None = None,
        files: Sequence[tuple[str, bytes]] = (),
    ) -> ReplyStream:
        """Store the user's message and start the answer. A new conversation draws on
        `documents` (ids; None: every document the user may see); an existing one on
        what it was set to. The message follows `after` (a message of the conversation;
        None: the end of the branch shown), so a page showing an older branch adds to
        the branch it shows. `files` (name, bytes) become private documents of the user,
        which this question reads first and the conversation draws on from then on;
        images among them go to the model as images (`parley.chat.conversation.images`).

        Raises `InvalidInput`, `NotFound` or `QuotaExceeded` before anything is stored
        (a file's kind, size or number before any file is).
        """
        text = clean_message_text(text, max_chars=self._settings.max_message_chars)
        if files:
            self._quotas.check_quota(principal)  # before any file is read
        images = self._images(files)
        self._room(0, sum(i.tokens for i in images), text)  # before any file is stored
        documents_sent = [(name, data) for name, data in files if not is_image(name)]
        attached = SentFiles([], [])
        if documents_sent:  # refusals that come before any file is stored
            if self._documents is None:
                raise InvalidInput("This server takes no files: it has no document store.")
            if conversation_id is not None:  # another's conversation
                with self._db.session() as session:
                    owned_conversation(session, principal, conversation_id)
            self._quotas.check_quota(principal)
            attached = self._documents.add_files(principal, documents_sent)
        kept = [Attachment(document_id=d.id, name=d.name) for d in attached.documents]

        def plan(session: Session, conversation: Conversation | None) -> _Plan:
            parent: int | None = None
            if conversation is not None:  # `active_leaf_id` is kept by every write
                parent = conversation.active_leaf_id
                if after is not None:
                    parent = message_in(session, conversation, after).id
            return _Plan(text, parent_id=parent, attachments=kept, new_images=images)

        # No settling of dead processes' drafts here (it would cost the first token a
        # transaction): the page settles when it shows the conversation, before anyone
        # can send; a draft settled after a send is kept as superseded, in order.
        try:
            return self._turn(principal, conversation_id, plan, text=text, documents=documents)
        except BaseException:
            if self._documents is not None:  # not sent: the files it brought go too
                self._documents.remove_quietly(principal, attached.new)
            raise

    def edit(
        self, principal: Principal, conversation_id: int, message_id: int, text: str
    ) -> ReplyStream:
        """Ask an earlier question again in other words: the new question follows what
        the old one followed (a new branch), and the old branch is kept."""
        text = clean_message_text(text, max_chars=self._settings.max_message_chars)
        self._settle(principal, conversation_id)

        def plan(session: Session, conversation: Conversation | None) -> _Plan:
            assert conversation is not None
            old = message_in(session, conversation, message_id, role=MessageRole.USER)
            return _Plan(
                text,
                parent_id=old.parent_id,
                attachments=old.attachments or (),
                images=old.images or (),
            )

        return self._turn(principal, conversation_id, plan, text=text, edited=True)

    def regenerate(self, principal: Principal, conversation_id: int, answer_id: int) -> ReplyStream:
        """Answer a question again: the new answer is a sibling of `answer_id`, which is kept."""
        self._settle(principal, conversation_id)

        def plan(session: Session, conversation: Conversation | None) -> _Plan:
            assert conversation is not None
            answer = message_in(session, conversation, answer_id, role=MessageRole.ASSISTANT)
            question = session.get(Message, answer.parent_id) if answer.parent_id else None
            if question is None or question.role is not MessageRole.USER:
                raise InvalidInput("That answer follows no question to ask again.")
            return _Plan(
                question.content,
                parent_id=question.parent_id,
                question=question,
                attachments=question.attachments or (),
                images=question.images or (),
            )

        return self._turn(principal, conversation_id, plan, regenerated=True)

    def retry(
        self, principal: Principal, conversation_id: int, *, leaf: int | None = None
    ) -> ReplyStream:
        """Answer the last question of the branch ending at `leaf` again (None: the branch
        the conversation shows); a failed answer to it is kept as superseded (out of the
        way: no sibling to step to)."""
        self._settle(principal, conversation_id)

        def plan(session: Session, conversation: Conversation | None) -> _Plan:
            assert conversation is not None
            tree = load_tree(session, conversation.id)
            leaf_id = tree.newest_under(leaf) if tree.shown(leaf) else None
            leaf_id = leaf_id or tree.leaf(conversation.active_leaf_id)
            last = session.get(Message, leaf_id) if leaf_id is not None else None
            failed: list[Message] = []
            if last is not None and last.role is MessageRole.ASSISTANT:
                if last.status in (MessageStatus.COMPLETE, MessageStatus.STOPPED):
                    raise InvalidInput("The last message already has an answer.")
                failed = [last]
                last = session.get(Message, last.parent_id) if last.parent_id else None
            if last is None or last.role is not MessageRole.USER:
                raise InvalidInput("There is no message to retry.")
            return _Plan(
                last.content,
                parent_id=last.parent_id,
                question=last,
                replaced=failed,
                attachments=last.attachments or (),
                images=last.images or (),
            )

        return self._turn(principal, conversation_id, plan, retry=True)

    def _turn(
        self,
        principal: Principal,
        conversation_id: int | None,
        plan: Callable[[Session, Conversation | None], _Plan],
        *,
        text: str | None = None,
        documents: Sequence[int] | None = None,
        **attributes: bool,
    ) -> ReplyStream:
        """One answer: plan it in the conversation, assemble its context on the branch the
        question follows, store the question (a new one, unless asked again), then call."""
        self._quotas.check_quota(principal)  # a quick refusal; the reservation below holds
        if text is not None:
            self._context.prepare(text)  # the question's embedding runs while we go on
        reservation: int | None = None
        turn = tracing.start(
            "parley.chat.turn", None, conversation_id=conversation_id, **attributes
        )
        try:
            with self._db.session() as session:
                conversation = (
                    owned_conversation(session, principal, conversation_id)
                    if conversation_id is not None
                    else None
                )
                planned = plan(session, conversation)
                history: Sequence[Turn] = ()
                if conversation is not None:
                    history = self._history.turns(session, conversation, planned.parent_id)
                    documents = conversation.document_ids
                attached = [a.document_id for a in planned.attachments]
                pictures = self._question_images(session, principal, conversation, planned)
                context, passages = self._assemble(
                    turn,
                    principal,
                    planned.text,
                    history,
                    conversation,
                    documents,
                    attached,
                    pictures,
                )
                if self._provider.takes_images:  # and earlier questions' still in the prompt
                    context = with_images(
                        session,
                        context,
                        user_id=principal.user_id,
                        conversation_id=conversation.id if conversation else None,
                        question=pictures,
                        budget=self._context.budget(),
                    )
                # Before this session writes anything: the reservation takes the write lock.
                reservation = self._reserve(principal, context)
                if conversation is None:
                    conversation = Conversation(
                        user_id=principal.user_id,
                        title=fallback_title(planned.text),
                        document_ids=None if documents is None else sorted(set(documents)),
                    )
                    session.add(conversation)
                    session.flush()
                if attached and conversation.document_ids is not None:  # drawn on from now
                    conversation.document_ids = sorted({*conversation.document_ids, *attached})
                sent_images = list(planned.images)
                if planned.new_images:  # kept with the question, in its transaction
                    sent_images = store_images(
                        session, principal.user_id, conversation.id, planned.new_images
                    )
                    context = stored_as(context, sent_images)
                for failed in planned.replaced:
                    failed.status = MessageStatus.SUPERSEDED
                question = planned.question
                if question is None:
                    question = Message(
                        conversation_id=conversation.id,
                        parent_id=planned.parent_id,
                        role=MessageRole.USER,
                        content=planned.text,
                        status=MessageStatus.COMPLETE,
                        tokens=message_tokens(planned.text),
                        estimated_input_tokens=context.total_tokens,
                        completed_at=utcnow(),
                        attachments=list(planned.attachments) or None,
                        images=sent_images or None,
                    )
                    session.add(question)
                    session.flush()
                # The page shows the question's branch while its answer is written.
                conversation.active_leaf_id = question.id
                conversation.updated_at = utcnow()  # on PostgreSQL: the row's lock, which
                session.flush()  # a settler takes too before it decides (drafts.py)
                ids = (conversation.id, question.id)
                ticket = self._open_draft(session, principal, *ids, context, reservation)
                key = None
                if self._cacheable(attributes):  # an answer asked for again is a new one
                    key = turn_cache_key(
                        session,
                        principal,
                        model=self._provider.model,
                        temperature=self._settings.temperature.chat,
                        max_tokens=self._settings.max_output_tokens,
                        context=context,
                        history=history,
                        question=planned.text,
                        sources=passages.sources(),
                        conversation_id=conversation.id,
                    )
            # The user's message is committed here, before the provider is called.
            return self._start(
                principal, ids[0], ids[1], context, reservation, passages, ticket, turn, key
            )
        except BaseException as exc:
            self._quotas.release(reservation)
            tracing.failed(turn, exc)
            turn.end()
            raise

    def _assemble(
        self,
        turn: Span,
        principal: Principal,
        question: str,
        history: Sequence[Turn],
        conversation: Conversation | None,
        documents: Sequence[int] | None,
        attached: Sequence[int] = (),
        images: Sequence[PromptImage] = (),
    ) -> tuple[ContextWindow, Passages]:
        """The passages the question finds and the prompt the memory strategy builds. A
        question sent with files reads those files' best passages, however faintly they
        match its words ("what does this say?" matches no passage well). The question's
        `images` take their tokens from the strategy's budget."""
        with tracing.child(turn, "parley.chat.retrieve") as span:
            passages = self._passages(principal, question, attached or documents, bool(attached))
            span.set_attribute("parley.passages", len(passages.sources()))
        with tracing.child(turn, "parley.chat.assemble", turns=len(history)):
            context = passages.attach(
                self._context.build(
                    conversation_id=conversation.id if conversation else 0,
                    strategy=conversation.memory_strategy if conversation else None,
                    options=conversation.memory_options if conversation else None,
                    history=history,
                    question=question,
                    budget=self._room(passages.tokens, sum(i.tokens for i in images), question),
                ),
                native=self._provider.native_citations,
            )
        return context, passages

    def _room(self, passages: int, images: int, question: str) -> int | None:
        """The strategy's budget once passages and the question's images have taken their
        tokens (None: all of it); `InvalidInput` when the images leave too little for the
        question (passages never do: `document_prompt_tokens` bounds them)."""
        if not passages and not images:
            return None
        room = self._context.budget() - passages - images
        if images and room < message_tokens(question) + 256:  # and the system prompt
            raise InvalidInput(
                f"The images take about {images:,} tokens of a prompt of "
                f"{self._context.budget():,}; send fewer or smaller ones."
            )
        return room

    def _images(self, files: Sequence[tuple[str, bytes]]) -> list[PreparedImage]:
        """The images among `files`, checked and scaled; `InvalidInput` (nothing stored)
        when the model reads none or one cannot be read."""
        named = [(name, data) for name, data in files if is_image(name)]
        if named and not self._provider.takes_images:
            raise InvalidInput(
                f"{named[0][0]}: the model here ({self._provider.model}) reads no images. "
                "Describe it in words, or ask on a server that uses Claude."
            )
        if len(files) > MAX_FILES_PER_MESSAGE:
            raise InvalidInput(
                f"A message takes at most {MAX_FILES_PER_MESSAGE} files; this one has {len(files)}."
            )
        return [prepare_image(name, data) for name, data in named]

    def _question_images(
        self,
        session: Session,
        principal: Principal,
        conversation: Conversation | None,
        planned: _Plan,
    ) -> list[PromptImage]:
        """The images the question goes with: new ones, or the stored question's again.
        A question with images asked of a model that reads none is refused."""
        if planned.new_images:
            return [image.prompt() for image in planned.new_images]
        if not planned.images or conversation is None:
            return []
        if not self._provider.takes_images:
            raise InvalidInput(
                f"That question was sent with images, which the model here "
                f"({self._provider.model}) cannot read."
            )
        return prompt_images(session, principal.user_id, conversation.id, planned.images)

    def _cacheable(self, attributes: dict[str, bool]) -> bool:
        """Whether the response cache may answer: it is on, the chat temperature is at
        or below its threshold, and this is not "Answer again"."""
        cache = self._settings.response_cache
        return (
            cache.enabled
            and self._settings.temperature.chat <= cache.max_temperature
            and not attributes.get("regenerated")
        )

    def _settle(self, principal: Principal, conversation_id: int) -> None:
        """Keep the answers of a process that died writing them, before going on: only
        in the principal's own conversation (another's is `NotFound`, untouched)."""
        if self._settler is None:
            return
        with self._db.session() as session:
            owned_conversation(session, principal, conversation_id)
        self._settler.settle_quietly(conversation_id)

    def _open_draft(
        self,
        session: Session,
        principal: Principal,
        conversation_id: int,
        user_message_id: int,
        context: ContextWindow,
        reservation: int | None,
    ) -> DraftTicket | None:
        if self._drafts is None:
            return None
        return self._drafts.open(
            session,
            conversation_id=conversation_id,
            user_message_id=user_message_id,
            user_id=principal.user_id,
            model=self._provider.model,
            estimated_input_tokens=context.total_tokens,
            reservation_id=reservation,
        )

    def _passages(
        self,
        principal: Principal,
        question: str,
        chosen: Sequence[int] | None,
        any_score: bool = False,
    ) -> Passages:
        if self._documents is None:
            return NO_PASSAGES
        return find_passages(
            self._documents,
            principal,
            question,
            max_tokens=self._settings.document_prompt_tokens,
            min_score=-1.0 if any_score else self._settings.document_min_score,
            native=self._provider.native_citations,
            chosen=chosen,
        )

    def _reserve(self, principal: Principal, context: ContextWindow) -> int | None:
        """The quota for this answer: its prompt and the longest answer it may get."""
        tokens = context.total_tokens + self._settings.max_output_tokens
        return self._quotas.reserve(principal, tokens=tokens)

    def needs_retry(
        self, principal: Principal, conversation_id: int, *, leaf: int | None = None
    ) -> bool:
        """True when the last question of the branch ending at `leaf` (None: the one the
        conversation shows) has no complete answer (an answer its reader stopped counts
        as one: the user meant it)."""
        self._settle(principal, conversation_id)
        with self._db.session() as session:
            conversation = owned_conversation(session, principal, conversation_id)
            last = session.get(Message, leaf) if leaf is not None else None
            if last is None or last.conversation_id != conversation.id:
                end = conversation.active_leaf_id
                last = session.get(Message, end) if end is not None else None
            if last is None or last.status is MessageStatus.SUPERSEDED:
                return False
            return last.role is MessageRole.USER or last.status not in (
                MessageStatus.COMPLETE,
                MessageStatus.STOPPED,
            )

    def estimate_next(self, principal: Principal, conversation_id: int | None) -> Estimate:
        """Cost of the next message's context (the new message adds its own tokens)."""
        free = self._context.is_free()
        strategy: str | None = None
        history: Sequence[Turn] = ()
        cid = 0  # a new conversation has no id yet
        with self._db.session() as session:
            if conversation_id is not None:
                # Checked even when nothing is estimated: a foreign conversation is NotFound.
                conversation = owned_conversation(session, principal, conversation_id)
                strategy, cid = conversation.memory_strategy, conversation.id
                if not free:
                    history = self._history.turns(
                        session, conversation, conversation.active_leaf_id
                    )
        if free:
            return Estimate(input_tokens=0, input_cost_usd=0.0, max_output_cost_usd=0.0)
        context = self._context.build(
            conversation_id=cid, strategy=strategy, history=history, question="?"
        )
        if self.takes_images and cid:  # earlier questions' images go again
            with self._db.session() as session:
                room = self._context.budget() - context.total_tokens
                tokens = sum(i.tokens for i in earlier_images(session, context, cid, room))
            context = replace(context, section_tokens={**context.section_tokens, "images": tokens})
        return self._context.estimate(context)

    def _start(
        self,
        principal: Principal,
        conversation_id: int,
        user_message_id: int,
        context: ContextWindow,
        reservation: int | None,
        passages: Passages = NO_PASSAGES,
        ticket: DraftTicket | None = None,
        turn: Span | None = None,
        cache: CacheKey | None = None,
    ) -> ReplyStream:
        request = ChatRequest(
            system=context.system,
            messages=context.messages,
            max_tokens=self._settings.max_output_tokens,
            temperature=self._settings.temperature.chat,
            meta=CallMeta(Purpose.CHAT, principal.user_id, conversation_id, cache=cache),
            estimated_input_tokens=context.total_tokens,
        )
        estimate = self._provider.count_tokens(request)
        # The chat call's ledger id only now: a count through the API is a call of its own.
        meta = replace(request.meta, call_id=ticket.call_id if ticket else None)
        request = replace(request, estimated_input_tokens=estimate, meta=meta)
        stream = ReplyStream(
            conversation_id,
            user_message_id,
            estimate,
            context,
            passages.sources(),
            user_id=principal.user_id,
            reservation=reservation,
        )
        stream.trace = turn
        if turn is not None:
            turn.set_attribute("parley.conversation_id", conversation_id)
        stream.call_id = meta.call_id
        stream._chunks = self._generate(stream, request, passages)
        stream._abandon = lambda: self._abandoned(stream)
        if ticket is not None and self._drafts is not None:
            stream.draft_id = ticket.draft_id
            self._drafts.track(stream)
        return stream

    def _abandoned(self, stream: ReplyStream) -> None:
        """The reader gave up before the answer began: say so, and free the quota."""
        stopped = AnswerStopped("reader left before the answer began")
        try:
            with tracing.child(stream.trace, "parley.answer.store"):
                stream.result = self._answers.store(stream, "", (), stopped, [])
        finally:
            self._forget_draft(stream)
            self._quotas.release(stream.reservation)
            self._end_trace(stream)

    @staticmethod
    def _end_trace(stream: ReplyStream) -> None:
        if stream.trace is None:
            return
        if stream.result is not None:
            stream.trace.set_attribute("parley.status", stream.result.status.value)
            stream.trace.set_attribute("parley.answer_chars", len(stream.result.text))
        stream.trace.end()

    def _forget_draft(self, stream: ReplyStream) -> None:
        """Stop checkpointing the draft: stored with the answer, or (the database refused
        the answer) left to be settled from its last checkpoint."""
        if self._drafts is not None:
            self._drafts.forget(stream.draft_id)

    def _generate(
        self, stream: ReplyStream, request: ChatRequest, passages: Passages
    ) -> Generator[str, None, None]:
        parts = stream.partial  # the draft keeper checkpoints it from its own thread
        citations: list[CitedPassage] = []
        ends: list[StreamEnd] = []
        error: ParleyError | None = None
        attempt = request
        continued = False
        strip_leading_space = False
        try:
            while True:
                events = self._provider.stream(attempt, on_queue=stream.on_queue)
                call = tracing.start(
                    "parley.provider.call",
                    stream.trace,
                    purpose=attempt.meta.purpose.value,
                    model=self._provider.model,
                )
                first = True
                try:
                    for event in events:
                        if isinstance(event, TextDelta):
                            if first:
                                call.add_event("first_token")
                                first = False
                            text = event.text
                            if strip_leading_space:
                                text, strip_leading_space = text.lstrip(), not text.strip()
                            if text:
                                parts.append(text)
                                yield text
                        elif isinstance(event, Citation):
                            cited = passages.cited(event, sum(len(p) for p in parts))
                            if cited is not None:
                                citations.append(cited)
                        elif isinstance(event, StreamEnd):
                            ends.append(event)
                            call.set_attribute("parley.input_tokens", event.usage.input_tokens)
                            call.set_attribute("parley.output_tokens", event.usage.output_tokens)
                    break
                except StreamInterrupted as exc:
                    tracing.failed(call, exc)
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
                        meta=replace(
                            request.meta, purpose=Purpose.CONTINUATION, call_id=None, cache=None
                        ),
                        estimated_input_tokens=None,
                    )
                except BaseException as exc:
                    tracing.failed(call, exc)
                    raise
                finally:
                    events.close()
                    call.end()
        except OutputBlocked as exc:  # a leak: none of its text is kept
            parts.clear()
            citations.clear()
            error = exc
        except ProviderError as exc:
            error = exc
        except Exception as exc:  # a bug in a provider must not lose the answer
            log.exception("Provider %s failed unexpectedly", self._provider.model)
            error = ProviderError(f"unexpected {type(exc).__name__}")
        except BaseException:  # the reader stopped it: closed (`GeneratorExit`), Ctrl-C, or
            # the page's rerun raised in its queue callback; the provider's stream is closed
            error = AnswerStopped("reader left")
            raise
        finally:
            text = "".join(parts)
            if passages.hits and not self._provider.native_citations:
                citations = passages.numbered(text)
            with tracing.child(stream.trace, "parley.answer.store"):
                stream.result = self._answers.store(stream, text, ends, error, citations)
            self._forget_draft(stream)
            # Every call of this answer is in the ledger by now (the limited provider's meter).
            self._quotas.release(stream.reservation)
            self._end_trace(stream)
            self._upkeep.after_answer(
                user_id=stream.user_id,
                conversation_id=stream.conversation_id,
                answer_id=stream.result.message_id,
                answered=stream.result.ok,
            )


__all__ = ["ChatService"]
