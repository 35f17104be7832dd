"""Memory strategies per conversation, and the strategy lab that replays a stored turn.

Who may do what is decided here, not in a page: a conversation's owner (and an
admin) may read which strategy it uses; only admins choose one, read or set its
options, or replay any user's conversation. A conversation that does not exist and
one the caller may not see give the same `NotFound`.

A conversation's own memory options (`conversations.memory_options`, by strategy name)
are checked by the strategy's options model here when written, and by the memory
registry whenever they are read; values that no longer suit are kept as they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from parley.chat.conversation.context import ContextBuilder, Estimate
from parley.chat.conversation.grants import require_grant
from parley.chat.conversation.history import path_turns
from parley.core.audit_events import MemoryOptionsSet, MemoryStrategySet
from parley.core.domain import MessageRole, Principal, require_admin
from parley.core.errors import InvalidInput, NotFound
from parley.memory import ContextWindow, describe_options
from parley.store.audit import actor_of, append_in
from parley.store.db import Database
from parley.store.models import Conversation, Message


def stored_memory_options(database: Database, conversation_id: int) -> dict[str, Any] | None:
    """What a conversation stored as its memory options, by strategy (None: none, or no
    such conversation). For the memory registry, which checks them: not for pages."""
    with database.session() as session:
        stored = session.scalar(
            select(Conversation.memory_options).where(Conversation.id == conversation_id)
        )
    return dict(stored) if isinstance(stored, dict) else None


@dataclass(frozen=True, slots=True)
class OptionRow:
    """One option of a strategy, as it stands for one conversation."""

    name: str
    type: str
    description: str | None
    default: object  # the strategy's own default
    environment: object  # what the environment makes it (the default when not set there)
    conversation: object | None  # this conversation's own value; None: none
    overridden: bool  # the conversation sets it


@dataclass(frozen=True, slots=True)
class StrategyOptions:
    """A strategy's options for one conversation."""

    strategy: str
    rows: tuple[OptionRow, ...]
    # Why the conversation's own values no longer suit the strategy (None: they do).
    problem: str | None

    @property
    def overrides(self) -> dict[str, object]:
        return {row.name: row.conversation for row in self.rows if row.overridden}


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

    def set_conversation_strategy(
        self, principal: Principal, conversation_id: int, name: str | None
    ) -> None:
        """Admins choose any conversation's strategy (None: back to the default)."""
        require_admin(principal, "Only administrators choose memory strategies.")
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
                MemoryStrategySet(conversation_id=conversation_id, strategy=name),
                **actor_of(principal),
                about_id=conversation.user_id,
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

        It reads any user's conversation, with the history before that message alone (on
        its branch).
        """
        require_admin(principal, "Only administrators can replay conversations.")
        with self._db.session() as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None:
                raise NotFound(user_message=f"There is no conversation {conversation_id}.")
            require_grant(session, principal, conversation)  # break-glass: a reason first
            question = session.execute(
                select(Message.content, Message.parent_id).where(
                    Message.id == message_id,
                    Message.conversation_id == conversation_id,
                    Message.role == MessageRole.USER,
                )
            ).first()
            if question is None:
                raise NotFound(user_message="Choose one of the conversation's user messages.")
            history = path_turns(session, question.parent_id)
        context = self._context.build(
            conversation_id=conversation_id,
            strategy=strategy,
            history=history,
            question=question.content,
            budget=budget,
        )
        return context, self._context.estimate(context)

    def options_of(
        self, principal: Principal, conversation_id: int, strategy: str
    ) -> StrategyOptions:
        """`strategy`'s options for one conversation, where each value comes from: admins."""
        require_admin(principal, "Only administrators see memory options.")
        memory = self._context.memory
        environment = memory.options(strategy).model_dump(mode="json")
        with self._db.session() as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None:
                raise NotFound(user_message=f"There is no conversation {conversation_id}.")
            own = dict((conversation.memory_options or {}).get(strategy) or {})
        problem: str | None = None
        try:
            memory.options_for(strategy, conversation_id)
        except InvalidInput as exc:
            problem = exc.user_message
        rows = tuple(
            OptionRow(
                name=info.name,
                type=info.type,
                description=info.description,
                default=info.default,
                environment=environment.get(info.name),
                conversation=own.get(info.name),
                overridden=info.name in own,
            )
            for info in describe_options(memory.options_model(strategy))
        )
        return StrategyOptions(strategy=strategy, rows=rows, problem=problem)

    def set_memory_options(
        self,
        principal: Principal,
        conversation_id: int,
        strategy: str,
        values: Mapping[str, object] | None,
    ) -> dict[str, object]:
        """Admins set `strategy`'s options for one conversation (None or {}: back to the
        environment's). Checked by the strategy's model first: an `InvalidInput` sentence,
        and nothing changed, when they do not suit it. The stored values, as JSON."""
        require_admin(principal, "Only administrators choose memory options.")
        checked = self._context.memory.check_options(strategy, values or {})
        with self._db.session(write_lock=True) as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None:
                raise NotFound(user_message=f"There is no conversation {conversation_id}.")
            stored = {k: dict(v) for k, v in (conversation.memory_options or {}).items()}
            if checked:
                stored[strategy] = checked
            else:
                stored.pop(strategy, None)
            conversation.memory_options = stored or None  # a new dict: the JSON is saved
            session.flush()
            append_in(  # last: the audit head stays locked until the commit
                session,
                MemoryOptionsSet(
                    conversation_id=conversation_id,
                    strategy=strategy,
                    options=json.dumps(checked, sort_keys=True, separators=(",", ":")),
                ),
                **actor_of(principal),
                about_id=conversation.user_id,
            )
        return checked


__all__ = ["OptionRow", "StrategyLab", "StrategyOptions", "stored_memory_options"]
