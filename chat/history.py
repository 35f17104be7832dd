"""Stored messages as the prompt sees them: which count, and as what `Turn`.

The prompt's history is read as plain columns (no ORM objects, no provenance JSON),
with each message's stored token count, so a send stays cheap in a long conversation.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from memory.base import Turn
from parley.domain import MessageRole, MessageStatus
from parley.llm import PromptRole
from store.models import Message


def visible_messages(session: Session, conversation_id: int) -> list[Message]:
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


def in_prompt(message: Message) -> bool:
    """Failed answers with no text stay out of the prompt; partial answers go in."""
    return bool(message.content) and message.status is not MessageStatus.SUPERSEDED


def to_turn(message: Message) -> Turn:
    role: PromptRole = "user" if message.role is MessageRole.USER else "assistant"
    return Turn(
        id=message.id,
        role=role,
        content=message.content,
        created_at=message.created_at,
        tokens=message.tokens,
    )


def prompt_turns(
    session: Session, conversation_id: int, *, before_id: int | None = None
) -> list[Turn]:
    """The turns a prompt may use, oldest first (only those before `before_id` if given)."""
    query = select(
        Message.id, Message.role, Message.content, Message.created_at, Message.tokens
    ).where(
        Message.conversation_id == conversation_id,
        Message.status != MessageStatus.SUPERSEDED,
        Message.content != "",
    )
    if before_id is not None:
        query = query.where(Message.id < before_id)
    return [
        Turn(
            id=row.id,
            role="user" if row.role is MessageRole.USER else "assistant",
            content=row.content,
            created_at=row.created_at,
            tokens=row.tokens,
        )
        for row in session.execute(query.order_by(Message.id))
    ]
