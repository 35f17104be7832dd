"""Stored messages as the prompt sees them: which count, and as what `Turn`."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from chat.providers.base import PromptRole
from memory.base import Turn
from store.models import Message, MessageRole, MessageStatus


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
    return Turn(id=message.id, role=role, content=message.content, created_at=message.created_at)


def prompt_turns(session: Session, conversation_id: int) -> list[Turn]:
    return [to_turn(m) for m in visible_messages(session, conversation_id) if in_prompt(m)]
