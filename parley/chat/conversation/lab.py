"""Memory strategies per conversation, and the strategy lab that replays a stored turn.

Who may do what is decided here, not in a page: a conversation's owner (and an
admin) may read which strategy it uses; only admins choose one or replay any
user's conversation. A conversation that does not exist and one the caller may
not see give the same `NotFound`.
"""

from __future__ import annotations

from sqlalchemy import select

from parley.chat.conversation.context import ContextBuilder, Estimate
from parley.chat.conversation.grants import require_grant
from parley.chat.conversation.history import prompt_turns
from parley.core.domain import MessageRole, Principal
from parley.core.errors import NotFound, PermissionDenied
from parley.memory import ContextWindow
from parley.store.audit import append_in, by
from parley.store.db import Database
from parley.store.models import Conversation, Message


class StrategyLab:
    def __init__(self, *, database: Database, context: ContextBuilder) -> None:
        self._db = database
        self._context = context

    @property
    def strategies(self) -> list[str]:
        """Every installed strategy's name."""
        return self._context.memory.names()

    @property
    def default(self) -> str:
        return self._context.memory.default

    def strategy_of(self, principal: Principal, conversation_id: int) -> str:
        """The conversation's strategy: for its owner, or an admin."""
        with self._db.session() as session:
            query = select(Conversation.memory_strategy).where(Conversation.id == conversation_id)
            if not principal.is_admin:
                query = query.where(Conversation.user_id == principal.user_id)
            row = session.execute(query).first()
        if row is None:
            raise NotFound(f"conversation {conversation_id} not visible to {principal.user_id}")
        return row.memory_strategy or self.default

    def set_memory_strategy(
        self, principal: Principal, conversation_id: int, name: str | None
    ) -> None:
        """Admins choose any conversation's strategy (None: back to the default)."""
        _require_admin(principal, "Only administrators choose memory strategies.")
        if name is not None:
            self._context.memory.get(name)  # validates the name with a clear sentence
        with self._db.session() as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None:
                raise NotFound(user_message=f"There is no conversation {conversation_id}.")
            conversation.memory_strategy = name
            session.flush()
            append_in(
                session,
                "memory_strategy_set",
                **by(principal),
                about_id=conversation.user_id,
                subject=f"conversation {conversation_id}",
                data={"conversation_id": conversation_id, "strategy": name},
            )

    def replay_context(
        self,
        principal: Principal,
        conversation_id: int,
        message_id: int,
        strategy: str,
        *,
        budget: int | None = None,
    ) -> tuple[ContextWindow, Estimate]:
        """The context `strategy` would build for a stored user message: admins only.

        It reads any user's conversation, with the history before that message alone.
        """
        _require_admin(principal, "Only administrators can replay conversations.")
        with self._db.session() as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None:
                raise NotFound(user_message=f"There is no conversation {conversation_id}.")
            require_grant(session, principal, conversation)  # break-glass: a reason first
            question = session.execute(
                select(Message.content).where(
                    Message.id == message_id,
                    Message.conversation_id == conversation_id,
                    Message.role == MessageRole.USER,
                )
            ).first()
            if question is None:
                raise NotFound(user_message="Choose one of the conversation's user messages.")
            history = prompt_turns(session, conversation_id, before_id=message_id)
        context = self._context.build(
            conversation_id=conversation_id,
            strategy=strategy,
            history=history,
            question=question.content,
            budget=budget,
        )
        return context, self._context.estimate(context)


def _require_admin(principal: Principal, sentence: str) -> None:
    if not principal.is_admin:
        raise PermissionDenied(user_message=sentence)


__all__ = ["StrategyLab"]
