"""Tests of the fake Anthropic server, driven through the real ``anthropic`` SDK."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types import MessageParam, TextBlockParam

from parley.fakes.anthropic_server import (
    FakeAnthropic,
    Fault,
    RecordedRequest,
    Reply,
    rough_tokens,
    running_fake,
    split_words,
)

MODEL = "claude-test-model"
PROMPT = "Say hello to the test suite please."
USER: list[MessageParam] = [{"role": "user", "content": PROMPT}]


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with running_fake() as server:
        yield server


def client_for(fake: FakeAnthropic, key: str = "test-key", **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=key, base_url=fake.base_url, max_retries=0, **kw)


def stream_text(client: anthropic.Anthropic, received: list[str]) -> anthropic.types.Message:
    """Stream one reply, appending each text delta to ``received``; return the final message."""
    with client.messages.stream(model=MODEL, max_tokens=64, messages=USER) as stream:
        for piece in stream.text_stream:
            received.append(piece)
        return stream.get_final_message()


def create(client: anthropic.Anthropic) -> anthropic.types.Message:
    return client.messages.create(model=MODEL, max_tokens=64, messages=USER)


def test_split_words_keeps_spaces() -> None:
    assert split_words("Hello from the fake.") == ["Hello ", "from ", "the ", "fake."]
    assert "".join(split_words("  two  words ")) == "  two  words "
    assert split_words("") == []


def test_stream_yields_scripted_chunks_and_usage(fake: FakeAnthropic) -> None:
    chunks = ["Hel", "lo, ", "wor", "ld!"]
    fake.enqueue(
        Reply(
            text="ignored when chunks are given",
            chunks=chunks,
            input_tokens=11,
            output_tokens=7,
            cache_read_input_tokens=3,
            cache_creation_input_tokens=2,
        )
    )
    received: list[str] = []
    final = stream_text(client_for(fake), received)
    assert received == chunks
    assert final.content[0].type == "text"
    assert final.content[0].text == "Hello, world!"
    assert final.stop_reason == "end_turn"
    assert final.model == MODEL
    assert final.usage.input_tokens == 11
    assert final.usage.output_tokens == 7
    assert final.usage.cache_read_input_tokens == 3
    assert final.usage.cache_creation_input_tokens == 2
    [req] = fake.requests
    assert (req.method, req.path) == ("POST", "/v1/messages")
    # SDK 2.x sends the key as "authorization: Bearer KEY", not x-api-key.
    assert req.api_key == "test-key"
    assert req.body["stream"] is True
    assert req.body["messages"] == USER


def test_stream_response_headers_include_extras(fake: FakeAnthropic) -> None:
    fake.enqueue(Reply(headers={"anthropic-ratelimit-requests-remaining": "42"}))
    client = client_for(fake)
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=8, messages=USER)
    assert raw.parse().stop_reason == "end_turn"
    assert raw.headers["anthropic-ratelimit-requests-remaining"] == "42"
    assert raw.headers["request-id"].startswith("req_")


def test_non_stream_create_with_system_blocks_and_prefill(fake: FakeAnthropic) -> None:
    fake.enqueue(Reply(text="Plain answer here", stop_reason="max_tokens", model="claude-x"))
    messages: list[MessageParam] = [*USER, {"role": "assistant", "content": "Sure:"}]
    system: list[TextBlockParam] = [{"type": "text", "text": "You are terse."}]
    msg = client_for(fake).messages.create(
        model=MODEL, max_tokens=64, messages=messages, system=system
    )
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "Plain answer here"
    assert msg.stop_reason == "max_tokens"
    assert msg.model == "claude-x"
    assert msg.id.startswith("msg_")
    assert msg.usage.output_tokens == 3  # default: one token per chunk
    body = fake.requests[0].body
    assert msg.usage.input_tokens == rough_tokens(body)
    assert body["messages"][-1] == {"role": "assistant", "content": "Sure:"}
    assert body["system"] == system
    assert "stream" not in body or body["stream"] is False


def test_default_reply_when_queue_is_empty() -> None:
    with running_fake(default_reply=Reply(text="always this")) as fake:
        client = client_for(fake)
        texts = [create(client).content[0] for _ in range(2)]
        assert [t.text for t in texts if t.type == "text"] == ["always this"] * 2


def test_a_default_reply_to_a_structured_output_request_is_an_object_of_its_schema() -> None:
    """The load test's titles: a long default answer would not parse as a title."""
    from parley.chat.conversation.titles import TitleOutput, parse_title

    schema = TitleOutput.model_json_schema()
    with running_fake(default_reply=Reply(text="a long answer " * 50)) as fake:
        message = client_for(fake).messages.create(
            model=MODEL,
            max_tokens=60,
            messages=USER,
            extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}},
        )
        text = "".join(block.text for block in message.content if block.type == "text")
        assert parse_title(text).title == "A fake title"
        plain = create(client_for(fake)).content[0]
        assert plain.type == "text" and plain.text.startswith("a long answer")


def test_rate_limit_raises_with_retry_after(fake: FakeAnthropic) -> None:
    fake.enqueue(Fault("rate_limit", retry_after=7))
    with pytest.raises(anthropic.RateLimitError) as info:
        create(client_for(fake))
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.response.headers["request-id"].startswith("req_")
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "rate_limit_error"


def test_overloaded_is_529(fake: FakeAnthropic) -> None:
    fake.enqueue(Fault("overloaded"))
    with pytest.raises(anthropic.APIStatusError) as info:
        stream_text(client_for(fake), [])
    assert info.value.status_code == 529
    assert isinstance(info.value, anthropic.OverloadedError)


@pytest.mark.parametrize(
    ("kind", "error", "status", "needle"),
    [
        ("server_error", anthropic.InternalServerError, 500, "api_error"),
        ("auth", anthropic.AuthenticationError, 401, "authentication_error"),
        ("invalid_request", anthropic.BadRequestError, 400, "invalid_request_error"),
        ("context_too_long", anthropic.BadRequestError, 400, "prompt is too long"),
    ],
)
def test_http_error_faults(
    fake: FakeAnthropic, kind: Any, error: type[anthropic.APIStatusError], status: int, needle: str
) -> None:
    fake.enqueue(Fault(kind))
    with pytest.raises(error) as info:
        create(client_for(fake))
    assert info.value.status_code == status
    assert needle in str(info.value)


def test_api_keys_can_rotate() -> None:
    with running_fake(api_keys={"old-key"}) as fake:
        assert create(client_for(fake, "old-key")).stop_reason == "end_turn"
        with pytest.raises(anthropic.AuthenticationError):
            create(client_for(fake, "new-key"))
        assert fake.api_keys is not None
        fake.api_keys.clear()
        fake.api_keys.add("new-key")
        assert create(client_for(fake, "new-key")).stop_reason == "end_turn"
        with pytest.raises(anthropic.AuthenticationError):
            create(client_for(fake, "old-key"))
        assert [r.api_key for r in fake.requests] == ["old-key", "new-key", "new-key", "old-key"]


def test_drop_mid_stream_raises_after_partial_text(fake: FakeAnthropic) -> None:
    fake.enqueue(Fault("drop_mid_stream", after_chunks=2, text="one two three four"))
    received: list[str] = []
    # Earlier 2.x SDKs let the transport's own httpx2.RemoteProtocolError ("incomplete
    # chunked read") escape from the text_stream iteration; later ones wrap it.
    with pytest.raises((httpx2.RemoteProtocolError, anthropic.APIConnectionError)):
        stream_text(client_for(fake), received)
    assert received == ["one ", "two "]


def test_error_event_raises_api_status_error(fake: FakeAnthropic) -> None:
    fake.enqueue(Fault("error_event", after_chunks=1, text="alpha beta"))
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        stream_text(client_for(fake), received)
    assert received == ["alpha "]
    # The stream's HTTP status was 200, so the SDK raises the generic APIStatusError.
    assert "overloaded_error" in str(info.value)
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "overloaded_error"


def test_no_message_stop_ends_without_stop_reason(fake: FakeAnthropic) -> None:
    fake.enqueue(Fault("no_message_stop", after_chunks=3, text="a b c d e"))
    received: list[str] = []
    final = stream_text(client_for(fake), received)
    assert received == ["a ", "b ", "c "]
    assert final.stop_reason is None
    assert final.content[0].type == "text"
    assert final.content[0].text == "a b c "


def test_mid_stream_fault_on_non_stream_request_is_500(fake: FakeAnthropic) -> None:
    fake.enqueue(Fault("drop_mid_stream"))
    with pytest.raises(anthropic.InternalServerError):
        create(client_for(fake))


def test_count_tokens(fake: FakeAnthropic) -> None:
    result = client_for(fake).messages.count_tokens(model=MODEL, messages=USER, system="Be brief.")
    assert isinstance(result.input_tokens, int)
    assert result.input_tokens == (len("Be brief.") + len(PROMPT)) // 4
    assert fake.requests[0].path == "/v1/messages/count_tokens"


def test_timeout_fault_times_out_client_and_stop_ends_the_sleep() -> None:
    before = set(threading.enumerate())
    with running_fake() as fake:
        fake.enqueue(Fault("timeout", delay_s=30.0))
        client = client_for(fake, timeout=0.5)
        with pytest.raises(anthropic.APITimeoutError):
            create(client)
        assert create(client).stop_reason == "end_turn"  # the queue moved on
    deadline = time.monotonic() + 2.0  # the handler still sleeping in its 30 s must wake up
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not set(threading.enumerate()) - before


def outcome(client: anthropic.Anthropic) -> str:
    """``"ok"`` for a complete streamed reply, else the name of what went wrong."""
    try:
        final = stream_text(client, [])
    except Exception as exc:
        return type(exc).__name__
    return "ok" if final.stop_reason == "end_turn" else f"stop_reason={final.stop_reason}"


def test_random_faults_at_rate_one_always_fail() -> None:
    with running_fake(fault_rate=1.0, seed=3) as fake:
        client = client_for(fake, timeout=0.3)
        results = [outcome(client) for _ in range(8)]
    assert "ok" not in results, results
    assert len(set(results)) > 1, results  # several different kinds were drawn


def test_random_faults_at_rate_zero_never_fail() -> None:
    with running_fake(fault_rate=0.0) as fake:
        client = client_for(fake)
        assert [outcome(client) for _ in range(10)] == ["ok"] * 10


def test_api_key_from_x_api_key_header_too() -> None:
    assert RecordedRequest("POST", "/", {"x-api-key": "k1"}, None).api_key == "k1"
    assert RecordedRequest("POST", "/", {"authorization": "Bearer k2"}, None).api_key == "k2"
    assert RecordedRequest("POST", "/", {}, None).api_key is None


def test_unknown_fault_kind_is_rejected() -> None:
    with pytest.raises(ValueError):
        FakeAnthropic(fault_kinds=["nope"])
