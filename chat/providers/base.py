"""The provider interface: stream text for a prompt, end with usage and a stop reason."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

PromptRole = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True)
class PromptMessage:
    role: PromptRole
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    system: str
    messages: Sequence[PromptMessage]
    max_tokens: int
    temperature: float
    json_schema: dict[str, object] | None = None  # ask for JSON of this shape (titles, extraction)


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last event of every successful stream."""

    model: str
    usage: Usage
    stop_reason: str | None


StreamEvent = TextDelta | StreamEnd


@runtime_checkable
class ChatProvider(Protocol):
    """A model that answers. Implementations raise only `parley.errors.ProviderError`s."""

    @property
    def model(self) -> str: ...

    @property
    def context_window(self) -> int:
        """Tokens the model accepts, prompt and answer together."""
        ...

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        """Yield `TextDelta`s as they arrive, then exactly one `StreamEnd`."""
        ...
