"""Claude through the official SDK: `messages.stream`, the SDK's own retries and timeouts."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
from anthropic.types import AssistantMessageParam, MessageParam, UserMessageParam

from chat.providers.base import ChatRequest, PromptMessage, StreamEnd, StreamEvent, TextDelta, Usage
from chat.providers.errors import translate
from parley.errors import StreamInterrupted


class AnthropicProvider:
    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        base_url: str | None = None,
        context_window: int = 200_000,
        timeout_s: float = 60.0,
        max_retries: int = 2,
        send_temperature: bool = False,
    ) -> None:
        self._model = model
        self._send_temperature = send_temperature
        self._context_window = context_window
        self._client = anthropic.Anthropic(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=max_retries
        )

    @property
    def model(self) -> str:
        return self._model

    @property
    def context_window(self) -> int:
        return self._context_window

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        messages = [_message_param(m) for m in request.messages]
        # The current Messages API has no sampling parameters; older models take
        # `temperature` through the body when the operator asks for it.
        extra_body = {"temperature": request.temperature} if self._send_temperature else None
        parts: list[str] = []
        try:
            with self._client.messages.stream(
                model=self._model,
                system=request.system,
                messages=messages,
                max_tokens=request.max_tokens,
                extra_body=extra_body,
            ) as stream:
                for text in stream.text_stream:
                    parts.append(text)
                    yield TextDelta(text)
                final = stream.get_final_message()
        except Exception as exc:  # every SDK and transport error becomes a ProviderError
            raise translate(exc, partial_text="".join(parts)) from exc
        if final.stop_reason is None:
            # The SDK raises nothing when the stream ends without message_stop.
            raise StreamInterrupted(
                "stream ended without message_stop", partial_text="".join(parts)
            )
        usage = final.usage
        yield StreamEnd(
            model=final.model,
            usage=Usage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_creation_input_tokens=usage.cache_creation_input_tokens or 0,
                cache_read_input_tokens=usage.cache_read_input_tokens or 0,
            ),
            stop_reason=final.stop_reason,
        )


def _message_param(message: PromptMessage) -> MessageParam:
    if message.role == "user":
        return UserMessageParam(role="user", content=message.content)
    return AssistantMessageParam(role="assistant", content=message.content)
