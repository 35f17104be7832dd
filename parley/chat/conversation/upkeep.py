"""What follows an answer, off the hot path: memory upkeep (indexing, summary folds) and titles.

Both run on the services' one `BackgroundWork` pool. Neither can fail a turn: upkeep
is derived state that the next turn's upkeep catches up on, and a title falls back
to the first message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select

from parley.chat.conversation.history import HistoryCache
from parley.chat.conversation.titles import fallback_title, generate_title
from parley.core.background import BackgroundWork
from parley.core.config import Settings
from parley.core.domain import MessageRole, MessageStatus, Purpose
from parley.core.llm import CallMeta, ChatProvider
from parley.memory import StrategyRegistry
from parley.store.db import Database
from parley.store.models import Conversation, Message

log = logging.getLogger(__name__)


class Upkeep:
    def __init__(
        self,
        *,
        database: Database,
        memory: StrategyRegistry,
        provider: ChatProvider,
        work: BackgroundWork,
        settings: Settings,
        model_titles: bool,
        history: HistoryCache,
        drain_metering: Callable[[], None] | None = None,
    ) -> None:
        self._history = history
        self._drain_metering = drain_metering
        self._db = database
        self._memory = memory
        self._provider = provider
        self._work = work
        self._settings = settings
        self._model_titles = model_titles

    def after_answer(
        self, *, user_id: int, conversation_id: int, answer_id: int | None, answered: bool
    ) -> None:
        """Queue the conversation's memory upkeep and, after its first answer, a title."""
        self._work.submit(lambda: self.observe(conversation_id), name=f"observe {conversation_id}")
        if answered and answer_id is not None and self._model_titles:
            self._work.submit(
                lambda: self.title(user_id, conversation_id, answer_id),
                name=f"title {conversation_id}",
            )
        if self._drain_metering is not None:  # calls metered while the database refused
            self._work.submit(self._drain_metering, name="drain the metering outbox")

    def observe(self, conversation_id: int) -> None:
        """Let the conversation's strategy index new turns and fold summaries."""
        with self._db.session() as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None:
                return  # deleted meanwhile
            strategy = conversation.memory_strategy
            history = self._history.turns(session, conversation)
        self._memory.resolve(strategy).observe(conversation_id, history)

    def title(self, user_id: int, conversation_id: int, answer_id: int) -> None:
        """After the conversation's first complete answer, ask the model for a title (a
        metered call), from that answer and the question it answers. Once: the job of any
        later answer does nothing, however quickly the next question came (a quick second
        question used to make the first answer's job skip the title)."""
        with self._db.session() as session:
            first_answer = session.execute(
                select(Message.id, Message.content)
                .where(
                    Message.conversation_id == conversation_id,
                    Message.role == MessageRole.ASSISTANT,
                    Message.status == MessageStatus.COMPLETE,
                )
                .order_by(Message.id)
                .limit(1)
            ).first()
            if first_answer is None or first_answer.id != answer_id:
                return
            questions = (
                select(Message.content)
                .where(Message.conversation_id == conversation_id, Message.role == MessageRole.USER)
                .limit(1)
            )
            # The title the conversation began with is the first message's; the answer
            # may be to a later one (the first answer failed, and the user asked again).
            first = session.scalar(questions.order_by(Message.id))
            question = session.scalar(
                questions.where(Message.id < first_answer.id).order_by(Message.id.desc())
            )
        if first is None or question is None:
            return
        answer = first_answer.content
        title, calls = generate_title(
            self._provider,
            meta=CallMeta(Purpose.TITLE, user_id, conversation_id),
            question=question,
            answer=answer,
            temperature=self._settings.temperature.title,
            attempts=self._settings.title_attempts,
        )
        with self._db.session() as session:
            conversation = session.get(Conversation, conversation_id)
            # Keep a title the user has set meanwhile.
            if conversation is not None and conversation.title == fallback_title(first):
                conversation.title = title
        log.info("Titled conversation %s after %d call(s).", conversation_id, calls)


__all__ = ["Upkeep"]
