"""The provider-neutral model interface: what a prompt is, what a stream yields, who answers.

    class ChatProvider(Protocol):
        model: str; context_window: int
        native_citations: bool  # takes quoted sources, answers with Citation events
        takes_images: bool  # takes PromptMessage.images as native image blocks
        def stream(self, request: ChatRequest) -> Iterator[StreamEvent]: ...
        def count_tokens(self, request: ChatRequest) -> int: ...

Every layer above the leaf speaks these types; only `parley.chat.gateway.providers` knows an SDK.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from parley.core.domain import CallOutcome, Purpose
from parley.core.tokens import count_tokens

PromptRole = Literal["user", "assistant"]

MESSAGE_OVERHEAD_TOKENS = 4  # role markers around each message


@dataclass(frozen=True, slots=True)
class SearchSource:
    """A quoted source the model may cite: `texts` are its citable blocks, in order.
    Only a provider with `native_citations` is given these (Claude: `search_result`
    blocks); for the others the passages are rendered into the message's text."""

    source: str  # a stable reference, e.g. "parley:document/12#3-4"
    title: str
    texts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PromptImage:
    """An image a question was sent with, as the model gets it: already checked, scaled
    and re-encoded (`parley.chat.conversation.images`). `tokens` is what it costs the
    prompt (width × height / 750, the API's own rule). `earlier`: it came with an earlier
    question of the conversation and goes again while that question is in the prompt."""

    image_id: int | None  # the stored image (None: not stored yet)
    name: str
    media_type: str  # image/jpeg, image/png, image/gif or image/webp
    data: bytes = field(repr=False)
    tokens: int
    earlier: bool = False


@dataclass(frozen=True, slots=True)
class PromptMessage:
    """One message of a prompt. `cache`: the prompt cache's breakpoint ends here
    (the rolling summary: the stable prefix). Consecutive messages of one role are
    one turn (the API joins them; the local model's template gets them joined).
    `sources` go before the message's text, as data the answer can cite; `images` before
    both (only to a provider that `takes_images`)."""

    role: PromptRole
    content: str
    cache: bool = False
    sources: tuple[SearchSource, ...] = ()
    images: tuple[PromptImage, ...] = ()


@dataclass(frozen=True, slots=True)
class CacheKey:
    """What a cached answer may be served for. `scope` is who may see it (the user, their
    groups, the versions of the documents it drew on), `context` everything in the prompt
    but the question, logically (texts by their hashes, ids, versions: never the
    rendering, whose envelopes carry random boundaries), and `question` the question as
    asked. The same three, the same answer; a semantic match needs the same scope and
    context. `documents`: the documents it drew on (a change to one drops the answer)."""

    scope: str
    context: str
    question: str
    documents: tuple[int, ...] = ()
    semantic: bool = True  # False: only the same question (a title's exchange)

    @property
    def exact(self) -> str:
        return hashlib.sha256(
            "\x1f".join((self.scope, self.context, self.question)).encode()
        ).hexdigest()

    @property
    def partition(self) -> str:
        """The scope and context: where a semantic match may be looked for."""
        return hashlib.sha256(f"{self.scope}\x1f{self.context}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CallMeta:
    """Whom a call is for and why: the limited provider meters every call by these."""

    purpose: Purpose = Purpose.CHAT
    user_id: int | None = None
    conversation_id: int | None = None
    # The ledger's id for this call, when the caller must know it beforehand (a chat
    # answer's draft: a process that settles it meters the call under the same id).
    call_id: str | None = None
    # The answer may come from the response cache, and goes into it (None: never cached).
    cache: CacheKey | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    system: str
    messages: Sequence[PromptMessage]
    max_tokens: int
    temperature: float
    json_schema: dict[str, object] | None = None  # ask for JSON of this shape (titles, extraction)
    meta: CallMeta = CallMeta()
    # Prompt tokens as the caller already counted them (None: count here when needed).
    estimated_input_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
        )


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last event of every successful stream."""

    model: str
    usage: Usage
    stop_reason: str | None
    cached: bool = False  # served from the response cache: no call was made


@dataclass(frozen=True, slots=True)
class UsageSoFar:
    """What the API has reported so far (at `message_start`, then with each `message_delta`).

    A provider may yield these between text deltas; the limited provider keeps the last
    one, so a call that never reaches `StreamEnd` is still metered with what it used.
    """

    usage: Usage


@dataclass(frozen=True, slots=True)
class Citation:
    """The answer's text so far (up to the end of the text block just finished) cites
    blocks `start_block` to `end_block` (exclusive) of source `source_index` (0-based,
    in the order the request's sources appear)."""

    source_index: int
    cited_text: str
    start_block: int
    end_block: int


StreamEvent = TextDelta | UsageSoFar | StreamEnd | Citation


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One provider call as the usage ledger keeps it, whatever way it ended. `call_id`
    makes recording it idempotent (a retry, or an outbox drained twice, adds one row)."""

    meta: CallMeta
    model: str
    usage: Usage
    outcome: CallOutcome
    started_at: datetime
    ended_at: datetime
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Tokens estimated by another process (this call's process died mid-answer).
    estimated: bool = False
    # The response cache: "hit" (no call: `saved` is what the cached answer's call used)
    # or "miss" (the call was made, and its answer kept); None when not cacheable.
    cache: Literal["hit", "miss"] | None = None
    saved: Usage = field(default_factory=lambda: Usage())
    # Answered through the provider's batch path, at its price (`BatchSettings.price_factor`).
    batch: bool = False


def estimate_tokens(request: ChatRequest) -> int:
    """The local (cl100k) count of a request's prompt: the caller's figure when it gave one."""
    if request.estimated_input_tokens is not None:
        return request.estimated_input_tokens
    return count_tokens(request.system) + sum(
        count_tokens(m.content)
        + MESSAGE_OVERHEAD_TOKENS
        + sources_tokens(m.sources)
        + sum(i.tokens for i in m.images)
        for m in request.messages
    )


def sources_tokens(sources: Sequence[SearchSource]) -> int:
    """The local estimate of quoted sources: their titles, texts and block framing."""
    return sum(
        count_tokens(s.title) + sum(count_tokens(t) + 3 for t in s.texts) + 10 for s in sources
    )


@runtime_checkable
class ChatProvider(Protocol):
    """A model that answers. Implementations raise only `parley.core.errors.ProviderError`s."""

    @property
    def model(self) -> str: ...

    @property
    def context_window(self) -> int:
        """Tokens the model accepts, prompt and answer together."""
        ...

    @property
    def native_citations(self) -> bool:
        """Whether the model takes `PromptMessage.sources` and answers with `Citation`s."""
        ...

    @property
    def takes_images(self) -> bool:
        """Whether the model reads `PromptMessage.images` (the local model does not)."""
        ...

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        """Yield `TextDelta`s (and any `UsageSoFar`) as they arrive, then one `StreamEnd`."""
        ...

    def count_tokens(self, request: ChatRequest) -> int:
        """The prompt's input tokens: the API's count where there is one, else `estimate_tokens`."""
        ...


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """Where a submitted batch stands: how many of its requests are still processing,
    and, once it has `ended`, how each ended (the API tallies them only at the end)."""

    ended: bool
    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """One request of an ended batch: its answer (`text`), or why there is none
    (`error`: the API's error type, "expired" or "canceled")."""

    custom_id: str
    text: str | None
    model: str
    usage: Usage = Usage()
    stop_reason: str | None = None
    error: str | None = None


# How long a batch's create may take to answer (up to 100 MB go up in one request).
BATCH_CREATE_TIMEOUT_S = 600.0


class BatchClient(Protocol):
    """A provider's batch path (Claude's Message Batches API): requests answered within
    a day at a lower price. Implementations raise only `ProviderError`s."""

    @property
    def model(self) -> str: ...

    def submit(self, requests: Sequence[tuple[str, ChatRequest]]) -> str:
        """Send (custom id, request) pairs as one batch; the batch's id."""
        ...

    def progress(self, batch_id: str) -> BatchProgress: ...

    def outcomes(self, batch_id: str) -> Iterator[BatchOutcome]:
        """Each request's outcome, in any order (match them by custom id)."""
        ...

    def cancel(self, batch_id: str) -> None: ...

    def recent(self, since: datetime) -> list[tuple[str, int, datetime]]:
        """Batches made since `since`: (id, how many requests, when made), to find one
        whose send timed out after the API had taken it."""
        ...


class GatewayProvider(ChatProvider, Protocol):
    """A provider behind the gateway's queue: it can say where a call waits."""

    def stream(
        self, request: ChatRequest, *, on_queue: Callable[[int], None] | None = None
    ) -> Generator[StreamEvent, None, None]:
        """As `ChatProvider.stream` (a generator: closing it ends the call); `on_queue`
        hears the call's place while it waits."""
        ...


__all__ = [
    "MESSAGE_OVERHEAD_TOKENS",
    "BATCH_CREATE_TIMEOUT_S",
    "BatchClient",
    "BatchOutcome",
    "BatchProgress",
    "CacheKey",
    "CallMeta",
    "GatewayProvider",
    "CallRecord",
    "ChatProvider",
    "Citation",
    "ChatRequest",
    "PromptImage",
    "PromptMessage",
    "PromptRole",
    "SearchSource",
    "StreamEnd",
    "StreamEvent",
    "TextDelta",
    "UsageSoFar",
    "Usage",
    "estimate_tokens",
    "sources_tokens",
]
