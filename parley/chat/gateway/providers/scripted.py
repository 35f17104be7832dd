"""A provider that says what a test scripts, like simonw/llm's MockModel.

provider = ScriptedProvider()
provider.enqueue("Hello", "there")           # one answer, streamed in two chunks
provider.enqueue("Yes.", Citation(0, "quoted", 0, 1))  # a text, then the citation it has
provider.enqueue_error(StreamInterrupted(partial_text="Hel"), chunks=["Hel"])
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from parley.core.errors import ProviderError
from parley.core.llm import (
    ChatRequest,
    Citation,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
    estimate_tokens,
)


@dataclass
class _Script:
    chunks: list[str | Citation]
    error: ProviderError | None = None
    stop_reason: str | None = "end_turn"


@dataclass
class ScriptedProvider:
    model: str = "scripted"
    context_window: int = 8192
    native_citations: bool = False
    takes_images: bool = False
    default_answer: str = "OK"
    requests: list[ChatRequest] = field(default_factory=list)
    on_request: Callable[[ChatRequest], None] | None = None
    _queue: deque[_Script] = field(default_factory=deque)

    def enqueue(self, *chunks: str | Citation, stop_reason: str | None = "end_turn") -> None:
        self._queue.append(_Script(list(chunks), stop_reason=stop_reason))

    def enqueue_error(self, error: ProviderError, *, chunks: list[str] | None = None) -> None:
        """Stream `chunks`, then raise `error`."""
        self._queue.append(_Script(list(chunks or []), error=error))

    def count_tokens(self, request: ChatRequest) -> int:
        return estimate_tokens(request)

    def stream(
        self, request: ChatRequest, *, on_queue: Callable[[int], None] | None = None
    ) -> Generator[StreamEvent, None, None]:
        del on_queue  # no queue: it answers at once
        self.requests.append(request)
        if self.on_request is not None:
            self.on_request(request)
        script = self._queue.popleft() if self._queue else _Script([self.default_answer])
        for chunk in script.chunks:
            if isinstance(chunk, Citation):
                yield chunk
            else:
                yield TextDelta(chunk)
        if script.error is not None:
            raise script.error
        prompt_chars = len(request.system) + sum(len(m.content) for m in request.messages)
        usage = Usage(input_tokens=max(1, prompt_chars // 4), output_tokens=len(script.chunks))
        yield StreamEnd(model=self.model, usage=usage, stop_reason=script.stop_reason)
