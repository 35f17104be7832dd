"""What every provider in front of another shares: the inner provider's model, window
and abilities passed through, and closing an inner stream that is left early.

The gateway's layers (`GuardedProvider`, `RedactingProvider`, `CachingProvider`,
`LimitedProvider`) each change what a call sends or gets back; none changes what
model answers, so each derives from `Wrapping` and says only what it adds.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from parley.core.llm import ChatProvider, ChatRequest

P = TypeVar("P", bound=ChatProvider)


class Wrapping(Generic[P]):
    """A provider in front of `inner`; a `ChatProvider` once it has `stream`."""

    def __init__(self, inner: P) -> None:
        self._inner = inner

    @property
    def inner(self) -> P:
        return self._inner

    @property
    def model(self) -> str:
        return self._inner.model

    @property
    def context_window(self) -> int:
        return self._inner.context_window

    @property
    def native_citations(self) -> bool:
        return self._inner.native_citations

    @property
    def takes_images(self) -> bool:
        return self._inner.takes_images

    def count_tokens(self, request: ChatRequest) -> int:
        return self._inner.count_tokens(request)


def close_stream(events: object) -> None:
    """End an inner stream left before its end (a generator's `close`: its call ends)."""
    close = getattr(events, "close", None)
    if close is not None:
        close()


__all__ = ["Wrapping", "close_stream"]
