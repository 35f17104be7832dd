"""What a turn hands back: the reply stream, its result, and the text rules for a message."""

from __future__ import annotations

import functools
import inspect
import unicodedata
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass

from opentelemetry.trace import Span

from parley.chat.conversation.context import provenance_of
from parley.core.domain import MessageStatus
from parley.core.errors import InvalidInput
from parley.core.llm import Usage
from parley.core.records import DocumentSource, Provenance
from parley.memory import ContextWindow


@dataclass(frozen=True, slots=True)
class ReplyResult:
    """How an answer ended. `error` is a sentence for the user, or None.

    `message_id` is None only when the database refused the answer for good (logged).
    """

    message_id: int | None
    status: MessageStatus
    text: str
    model: str
    usage: Usage | None
    cost_usd: float | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is MessageStatus.COMPLETE


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

    Iterate it to the end, or call `close()` to stop it early (the partial answer is
    then stored as stopped). It never raises a provider error.
    Set `on_queue` to hear the queue position while the call waits for a slot.
    """

    def __init__(
        self,
        conversation_id: int,
        user_message_id: int,
        estimate: int,
        context: ContextWindow,
        sources: Sequence[DocumentSource],
        *,
        user_id: int,
        reservation: int | None = None,
    ) -> None:
        self.conversation_id = conversation_id
        self.reservation = reservation  # quota set aside until the answer ends
        self.user_message_id = user_message_id
        self.user_id = user_id
        self.estimated_input_tokens = estimate
        self.context = context  # the prompt as the model gets it
        self.sources = tuple(sources)  # the document passages in it
        self.result: ReplyResult | None = None
        self.draft_id: int | None = None  # the answer's draft row while it streams
        self.call_id: str | None = None  # the chat call's ledger id
        self.partial: list[str] = []  # the text so far, which the draft keeper checkpoints
        self.trace: Span | None = None  # the turn's span (`parley.core.tracing`)
        self.on_queue: Callable[[int], None] | None = None
        self._chunks: Generator[str, None, None] | None = None
        self._abandon: Callable[[], None] | None = None

    @functools.cached_property
    def provenance(self) -> Provenance | None:
        """What went into the prompt, kept with the answer: made when first asked (after
        the stream, off the first token's path). None, logged, if the strategy reported
        what cannot be kept: the answer is stored all the same."""
        try:
            return provenance_of(self.context, self.sources)
        except InvalidInput:
            return None

    def __iter__(self) -> Iterator[str]:
        return self._chunks if self._chunks is not None else iter(())

    def close(self) -> None:
        """Stop the answer: the provider's stream is closed, what arrived is stored as
        stopped with the usage metered so far. An answer never started (the page reran
        first) is stored as stopped before it began, and its quota given back."""
        if self._chunks is None:
            return
        if inspect.getgeneratorstate(self._chunks) == inspect.GEN_CREATED:
            self._chunks = None  # closing an unstarted generator would skip its bookkeeping
            if self._abandon is not None:
                self._abandon()
            return
        self._chunks.close()
