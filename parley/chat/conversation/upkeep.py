"""What follows an answer, off the hot path: memory upkeep (indexing, summary folds) and titles.

Both run on the services' one `BackgroundWork` pool. Neither can fail a turn: upkeep
is derived state that the next turn's upkeep catches up on, and a title falls back
to the first message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from parley.chat.conversation.branches import path_rows
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
        self._work.submit(
            lambda: self.observe(conversation_id, answer_id), name=f"observe {conversation_id}"
        )
        if answered and answer_id is not None and self._model_titles:
            self._work.submit(
                lambda: self.title(user_id, conversation_id, answer_id),
                name=f"title {conversation_id}",
            )
        if self._drain_metering is not None:  # calls metered while the database refused
            self._work.submit(self._drain_metering, name="drain the metering outbox")

    def observe(self, conversation_id: int, leaf: int | None = None) -> None:
        """Let the conversation's strategy index new turns and fold summaries, on the
        branch down to `leaf` (None: the branch shown)."""
        with self._db.session() as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None:
                return  # deleted meanwhile
            strategy = conversation.memory_strategy
            history = self._history.turns(
                session, conversation, leaf if leaf is not None else conversation.active_leaf_id
            )
        self._memory.resolve(strategy).observe(conversation_id, history)

    def title(self, user_id: int, conversation_id: int, answer_id: int) -> None:
        """After the first complete answer of a branch, ask the model for a title (a
        metered call), from that answer and the question it answers: what the title
        reads is on that branch alone. Only while the title is still the stand-in (the
        conversation's first message): a title the model or the user has written is
        kept, and an answer asked for again or an edit after it costs no call. The job
        of any later answer on the branch does nothing, however quickly it came."""
        with self._db.session() as session:
            path = path_rows(session, answer_id)
            answer = path[-1] if path else None
            if (
                answer is None
                or answer.id != answer_id
                or answer.role is not MessageRole.ASSISTANT
                or answer.status is not MessageStatus.COMPLETE
                or any(
                    r.role is MessageRole.ASSISTANT and r.status is MessageStatus.COMPLETE
                    for r in path[:-1]
                )
            ):
                return
            users = [r.content for r in path if r.role is MessageRole.USER]
            # The answer may be to a later question (the first answer failed, and the
            # user asked again).
            question = users[-1] if users else None
            answer_text = answer.content
            stand_in = _stand_in(session, conversation_id)
        if question is None or stand_in is None:
            return  # titled already (by the model or its user): no call to pay for
        title, calls = generate_title(
            self._provider,
            meta=CallMeta(Purpose.TITLE, user_id, conversation_id),
            question=question,
            answer=answer_text,
            temperature=self._settings.temperature.title,
            attempts=self._settings.title_attempts,
            cached=self._settings.response_cache.enabled,
        )
        with self._db.session() as session:
            # Keep a title the user, or another branch's answer, has set meanwhile.
            conversation = session.get(Conversation, conversation_id)
            if conversation is not None and _stand_in(session, conversation_id) is not None:
                conversation.title = title
        log.info("Titled conversation %s after %d call(s).", conversation_id, calls)


def _stand_in(session: Session, conversation_id: int) -> str | None:
    """The conversation's title while it is still its first message's stand-in, else None."""
    conversation = session.get(Conversation, conversation_id)
    first = session.scalar(
        select(Message.content)
        .where(Message.conversation_id == conversation_id, Message.role == MessageRole.USER)
        .order_by(Message.id)
        .limit(1)
    )
    if conversation is None or first is None or conversation.title != fallback_title(first):
        return None
    return conversation.title


__all__ = ["Upkeep"]
