"""Claude through the official SDK: `messages.stream`, the SDK's own retries and timeouts.

What Parley adds around the SDK, and why:

- `_RetryPolicy` is SDK middleware (it runs inside the SDK's retry loop, once per
  attempt). It caps the SDK's unbounded `retry-after` wait: a longer wait ends
  the call with `RateLimited`, whose sentence says when to try again. It also
  hands every response's headers to the rate limiter (`anthropic-ratelimit-*`).
- The key comes from a `KeySource` before each call; after a 401 the key is
  reloaded once and the call retried if the key changed (rotation without restart).
- When the main model is overloaded before any text arrives, the fallback model
  answers; `StreamEnd.model` says which one did.
- The system prompt is sent as a block marked `cache_control` so the stable
  prefix is cached between turns.
- Quoted sources go as `search_result` blocks with citations enabled; each text
  block of the answer that cites them is followed by its `Citation` events.
- Images go as base64 `image` blocks first in their message (Claude reads an image
  before the text about it best), each after a line naming it ("Image 1: cat.png").
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import anthropic
from anthropic.types import (
    AssistantMessageParam,
    ContentBlockParam,
    ImageBlockParam,
    MessageParam,
    SearchResultBlockParam,
    TextBlockParam,
    UserMessageParam,
)

from parley.chat.gateway.providers.errors import retry_after_seconds, translate
from parley.chat.gateway.providers.keys import KeySource
from parley.core import metrics
from parley.core.errors import (
    AuthenticationFailed,
    ConfigurationError,
    Overloaded,
    ProviderMisconfigured,
    RateLimited,
    StreamInterrupted,
)
from parley.core.llm import (
    ChatRequest,
    Citation,
    PromptMessage,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
    UsageSoFar,
)

log = logging.getLogger(__name__)

HeadersObserver = Callable[[Mapping[str, str]], None]


class _RetryPolicy(anthropic.Middleware):
    def __init__(self, *, max_wait_s: float, on_headers: HeadersObserver | None) -> None:
        self._max_wait_s = max_wait_s
        self._on_headers = on_headers

    def handle(self, request: Any, call_next: Any) -> Any:
        response = call_next(request)
        headers = response.headers
        if self._on_headers is not None:
            self._on_headers(headers)
        status = response.status_code
        if status in (408, 409, 429) or status >= 500:
            metrics.guarded(metrics.RETRYABLE_RESPONSES.labels(status=str(status)).inc)
        if response.status_code in (429, 503, 529):
            wait = retry_after_seconds(headers)
            if wait is not None and wait > self._max_wait_s:
                # Raised inside the SDK's retry loop: not retried, reaches the caller as is.
                raise RateLimited(
                    f"retry-after {wait:.0f}s exceeds the cap",
                    retry_after=wait,
                    now=datetime.now(UTC),
                )
        return response


class AnthropicProvider:
    def __init__(
        self,
        *,
        keys: KeySource,
        model: str,
        base_url: str | None = None,
        context_window: int = 200_000,
        timeout_s: float = 60.0,
        max_retries: int = 2,
        max_retry_wait_s: float = 20.0,
        fallback_model: str | None = None,
        send_temperature: bool = False,
        on_headers: HeadersObserver | None = None,
    ) -> None:
        self._keys = keys
        self._model = model
        self._fallback_model = fallback_model
        self._context_window = context_window
        self._send_temperature = send_temperature
        self._client_options: dict[str, Any] = {
            "base_url": base_url,
            "timeout": timeout_s,
            "max_retries": max_retries,
            "middleware": [_RetryPolicy(max_wait_s=max_retry_wait_s, on_headers=on_headers)],
        }
        self._lock = threading.Lock()
        self._client: anthropic.Anthropic | None = None
        self._client_key: str | None = None

    @property
    def model(self) -> str:
        return self._model

    @property
    def context_window(self) -> int:
        return self._context_window

    @property
    def native_citations(self) -> bool:
        return True

    @property
    def takes_images(self) -> bool:
        return True

    def _client_for(self, key: str) -> anthropic.Anthropic:
        with self._lock:
            if self._client is None or key != self._client_key:
                self._client = anthropic.Anthropic(api_key=key, **self._client_options)
                self._client_key = key
            return self._client

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        models = [self._model] + ([self._fallback_model] if self._fallback_model else [])
        key = _read_key(self._keys.get)
        rotated = False
        index = 0
        while True:
            model = models[index]
            produced = False
            try:
                for event in self._stream_once(self._client_for(key), model, request):
                    produced = True
                    yield event
                return
            except AuthenticationFailed:
                if produced or rotated:
                    raise
                rotated = True
                fresh = _read_key(self._keys.refresh)
                if fresh == key:
                    raise
                log.warning("The API key was rejected; retrying once with the reloaded key.")
                key = fresh
            except Overloaded:
                if produced or index + 1 >= len(models):
                    raise
                index += 1
                log.warning("%s is overloaded; answering with %s.", model, models[index])

    def _stream_once(
        self, client: anthropic.Anthropic, model: str, request: ChatRequest
    ) -> Iterator[StreamEvent]:
        parts: list[str] = []
        try:
            with client.messages.stream(**self._params(model, request)) as stream:
                for event in stream:
                    if event.type == "text":
                        parts.append(event.text)
                        yield TextDelta(event.text)
                    elif event.type == "content_block_stop":
                        yield from _citations(event.content_block)
                    elif event.type in ("message_start", "message_delta"):
                        # What the API has counted so far: metered even if the stream breaks.
                        yield UsageSoFar(_usage(stream.current_message_snapshot.usage))
                final = stream.get_final_message()
        except Exception as exc:  # every SDK and transport error becomes a ProviderError
            raise translate(exc, partial_text="".join(parts)) from exc
        if final.stop_reason is None:
            # The SDK raises nothing when the stream ends without message_stop.
            raise StreamInterrupted(
                "stream ended without message_stop", partial_text="".join(parts)
            )
        yield StreamEnd(model=final.model, usage=_usage(final.usage), stop_reason=final.stop_reason)

    def count_tokens(self, request: ChatRequest) -> int:
        """The API's own count of the prompt's input tokens."""
        params = self._params(self._model, request)
        try:
            result = self._client_for(_read_key(self._keys.get)).messages.count_tokens(
                model=params["model"], system=params["system"], messages=params["messages"]
            )
        except Exception as exc:
            raise translate(exc) from exc
        return result.input_tokens

    def _params(self, model: str, request: ChatRequest) -> dict[str, Any]:
        system: list[TextBlockParam] = []
        if request.system:
            system.append(
                TextBlockParam(
                    type="text", text=request.system, cache_control={"type": "ephemeral"}
                )
            )
        params: dict[str, Any] = {
            "model": model,
            "system": system,
            "messages": [_message_param(m) for m in request.messages],
            "max_tokens": request.max_tokens,
        }
        if request.json_schema is not None:
            params["output_config"] = {
                "format": {"type": "json_schema", "schema": request.json_schema}
            }
        if self._send_temperature:
            # The current Messages API has no sampling parameters; older models take one.
            params["extra_body"] = {"temperature": request.temperature}
        return params


def _usage(usage: anthropic.types.Usage) -> Usage:
    return Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_creation_input_tokens=usage.cache_creation_input_tokens or 0,
        cache_read_input_tokens=usage.cache_read_input_tokens or 0,
    )


def _read_key(read: Callable[[], str]) -> str:
    """A key from its source; a source that fails is the operator's set-up, said as such."""
    try:
        return read()
    except ConfigurationError as exc:
        raise ProviderMisconfigured(exc.user_message) from exc


def _message_param(message: PromptMessage) -> MessageParam:
    if message.cache or message.sources or message.images:
        blocks: list[ContentBlockParam] = [*_image_blocks(message)]
        blocks.extend(
            SearchResultBlockParam(
                type="search_result",
                source=source.source,
                title=source.title,
                content=[TextBlockParam(type="text", text=t) for t in source.texts],
                citations={"enabled": True},
            )
            for source in message.sources
        )
        text = TextBlockParam(type="text", text=message.content)
        if message.cache:  # the end of the stable prefix: a prompt-cache breakpoint
            text["cache_control"] = {"type": "ephemeral"}
        blocks.append(text)
        if message.role == "user":
            return UserMessageParam(role="user", content=blocks)
        return AssistantMessageParam(role="assistant", content=blocks)
    if message.role == "user":
        return UserMessageParam(role="user", content=message.content)
    return AssistantMessageParam(role="assistant", content=message.content)


def _image_blocks(message: PromptMessage) -> Iterator[ContentBlockParam]:
    """Each image after a line naming it, so the question can say which it means."""
    for n, image in enumerate(message.images, start=1):
        when = " (sent with an earlier question)" if image.earlier else ""
        yield TextBlockParam(type="text", text=f"Image {n}: {image.name}{when}")
        yield ImageBlockParam(
            type="image",
            source={
                "type": "base64",
                "media_type": image.media_type,  # type: ignore[typeddict-item]
                "data": base64.b64encode(image.data).decode("ascii"),
            },
        )


def _citations(block: Any) -> Iterator[Citation]:
    """The search-result citations of a finished text block of the answer."""
    if getattr(block, "type", None) != "text":
        return
    for citation in block.citations or ():
        if getattr(citation, "type", None) == "search_result_location":
            yield Citation(
                source_index=citation.search_result_index,
                cited_text=citation.cited_text,
                start_block=citation.start_block_index,
                end_block=citation.end_block_index,
            )


__all__ = ["AnthropicProvider", "HeadersObserver"]
