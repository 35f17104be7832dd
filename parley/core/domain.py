"""Shared values every layer speaks: roles, message states, call purposes and the acting user.

They live in the leaf so that the store, the services and the pages agree on them
without importing one another (pages never import `store` to name a role).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from parley.core.errors import PermissionDenied


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"


class MessageRole(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


class MessageStatus(StrEnum):
    """How a message ended. User messages are `complete` once committed."""

    COMPLETE = "complete"
    INTERRUPTED = "interrupted"  # the answer broke off; `content` holds the partial text
    ERROR = "error"  # no usable answer; `error` says why
    STOPPED = "stopped"  # the user stopped the answer; `content` holds the text so far
    SUPERSEDED = "superseded"  # a failed answer the user retried; kept for the audit trail


class Rating(StrEnum):
    """A user's feedback on an answer."""

    UP = "up"
    DOWN = "down"


class Purpose(StrEnum):
    """Why a model call was made; every call is metered under one."""

    CHAT = "chat"
    CONTINUATION = "continuation"  # a broken answer continued from its partial text
    SUMMARY = "summary"
    TITLE = "title"
    BATCH = "batch"
    EVALUATION = "evaluation"
    COUNT_TOKENS = "count_tokens"  # the API's token count: no tokens, but a request


class CallOutcome(StrEnum):
    """How a model call ended, as the usage ledger records it."""

    COMPLETE = "complete"  # the API sent message_stop
    INTERRUPTED = "interrupted"  # the API had started answering, then the stream broke
    ABORTED = "aborted"  # the reader left (stop, Ctrl-C, a closed tab) before the end
    FAILED = "failed"  # refused or broken before anything was answered


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking. Every service method that touches a user's data takes one."""

    user_id: int
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


__all__ = [
    "require_admin",
    "CallOutcome",
    "MessageRole",
    "MessageStatus",
    "Principal",
    "Purpose",
    "Rating",
    "Role",
]


def require_admin(principal: Principal, sentence: str = "Only administrators may do that.") -> None:
    """The one check of admin-only actions: `PermissionDenied` with `sentence` (which
    says what only administrators do, never where) unless the principal is an admin."""
    if not principal.is_admin:
        raise PermissionDenied(user_message=sentence)
