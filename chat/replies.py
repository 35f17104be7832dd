"""What a turn hands back: the reply stream, its result, and the text rules for a message."""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from chat.providers.base import Usage
from memory.base import ContextWindow
from parley.errors import InvalidInput
from store.models import MessageStatus

Background = Callable[[Callable[[], None]], None]


def run_in_thread(task: Callable[[], None]) -> None:
    threading.Thread(target=task, name="parley-background", daemon=True).start()


def run_inline(task: Callable[[], None]) -> None:
    task()


@dataclass(frozen=True, slots=True)
class ReplyResult:
    """How an answer ended. `error` is a sentence for the user, or None."""

    message_id: int
    status: MessageStatus
    text: str
    model: str
    usage: Usage | None
    cost_usd: float | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is MessageStatus.COMPLETE


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the next message is expected to cost, before it is sent."""

    input_tokens: int
    input_cost_usd: float
    max_output_cost_usd: float


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
    Set `on_queue` to hear the queue position while the call waits for a slot.
    """

    def __init__(
        self, conversation_id: int, user_message_id: int, estimate: int, context: ContextWindow
    ) -> None:
        self.conversation_id = conversation_id
        self.user_message_id = user_message_id
        self.estimated_input_tokens = estimate
        self.context = context
        self.result: ReplyResult | None = None
        self.on_queue: Callable[[int], None] | None = None
        self._chunks: Iterator[str] = iter(())

    def __iter__(self) -> Iterator[str]:
        return self._chunks

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
