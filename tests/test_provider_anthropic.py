"""AnthropicProvider through the real SDK against the local fake server."""

from __future__ import annotations

import pytest

from chat.providers.anthropic import AnthropicProvider
from chat.providers.base import ChatRequest, PromptMessage, StreamEnd, TextDelta
from parley.errors import ProviderError, StreamInterrupted
from tests.fake_anthropic import FakeAnthropic, Fault, Reply

REQUEST = ChatRequest(
    system="Be brief.",
    messages=[
        PromptMessage("user", "Hi"),
        PromptMessage("assistant", "Hello"),
        PromptMessage("user", "Capital of France?"),
    ],
    max_tokens=100,
    temperature=0.3,
)


def provider(fake: FakeAnthropic, *, send_temperature: bool = False) -> AnthropicProvider:
    return AnthropicProvider(
        api_key="sk-ant-test",
        model="claude-test",
        base_url=fake.base_url,
        max_retries=0,
        timeout_s=5,
        send_temperature=send_temperature,
    )


def test_streams_text_then_usage(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.enqueue(
        Reply(
            text="Paris is the capital.",
            chunks=["Paris", " is", " the capital."],
            input_tokens=42,
            output_tokens=5,
            cache_read_input_tokens=7,
        )
    )
    events = list(provider(fake_anthropic).stream(REQUEST))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Paris", " is", " the capital."]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.model == "claude-test"
    assert (end.usage.input_tokens, end.usage.output_tokens, end.usage.cache_read_input_tokens) == (
        42,
        5,
        7,
    )
    assert end.stop_reason == "end_turn"
    body = fake_anthropic.requests[-1].body
    assert body["system"] == "Be brief." and body["max_tokens"] == 100 and body["stream"] is True
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert "temperature" not in body


def test_temperature_is_sent_only_when_asked(fake_anthropic: FakeAnthropic) -> None:
    list(provider(fake_anthropic, send_temperature=True).stream(REQUEST))
    assert fake_anthropic.requests[-1].body["temperature"] == 0.3


def test_authentication_failure_becomes_a_provider_error(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.enqueue(Fault("auth"))
    with pytest.raises(ProviderError) as caught:
        list(provider(fake_anthropic).stream(REQUEST))
    assert "key" in caught.value.user_message
    assert "sk-ant-test" not in str(caught.value) + caught.value.user_message


def test_dropped_connection_keeps_the_partial_text(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.enqueue(Fault("drop_mid_stream", text="one two three", after_chunks=2))
    received: list[str] = []
    with pytest.raises(StreamInterrupted) as caught:
        for event in provider(fake_anthropic).stream(REQUEST):
            if isinstance(event, TextDelta):
                received.append(event.text)
    assert received and caught.value.partial_text == "".join(received)


def test_stream_without_message_stop_is_interrupted(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.enqueue(Fault("no_message_stop", text="almost done", after_chunks=2))
    with pytest.raises(StreamInterrupted) as caught:
        list(provider(fake_anthropic).stream(REQUEST))
    assert caught.value.partial_text


def test_error_event_before_text_is_a_provider_error(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.enqueue(Fault("error_event", after_chunks=0))
    with pytest.raises(ProviderError) as caught:
        list(provider(fake_anthropic).stream(REQUEST))
    assert not isinstance(caught.value, StreamInterrupted)
