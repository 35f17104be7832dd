"""AnthropicProvider through the real SDK against the local fake server."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image as PILImage
from pydantic import SecretStr

from parley.chat.conversation.images import prepare_image
from parley.chat.gateway.admission import ConcurrencyGate, RateLimiter
from parley.chat.gateway.limited_provider import LimitedProvider
from parley.chat.gateway.providers.anthropic import AnthropicProvider
from parley.chat.gateway.providers.keys import FileKey, KeySource, StaticKey
from parley.core.domain import CallOutcome
from parley.core.errors import (
    AuthenticationFailed,
    ContextTooLong,
    InvalidRequest,
    Overloaded,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    StreamInterrupted,
)
from parley.core.llm import (
    CallRecord,
    ChatRequest,
    PromptMessage,
    SearchSource,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
    UsageSoFar,
)
from parley.core.tokens import count_tokens
from parley.fakes.anthropic_script import rough_tokens
from parley.fakes.anthropic_server import FakeAnthropic, Fault, Reply

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


def provider(
    fake: FakeAnthropic,
    *,
    keys: KeySource | None = None,
    max_retries: int = 0,
    timeout_s: float = 5,
    max_retry_wait_s: float = 20,
    fallback_model: str | None = None,
    send_temperature: bool = False,
    on_headers: Callable[[Mapping[str, str]], None] | None = None,
) -> AnthropicProvider:
    return AnthropicProvider(
        keys=keys or StaticKey(SecretStr("sk-ant-test")),
        model="claude-test",
        base_url=fake.base_url,
        max_retries=max_retries,
        timeout_s=timeout_s,
        max_retry_wait_s=max_retry_wait_s,
        fallback_model=fallback_model,
        send_temperature=send_temperature,
        on_headers=on_headers,
    )


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def test_streams_text_then_usage(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.enqueue(
        Reply(
            text="Paris is the capital.",
            chunks=["Paris", " is", " the capital."],
            input_tokens=42,
            output_tokens=5,
            cache_read_input_tokens=7,
            cache_creation_input_tokens=3,
        )
    )
    events = list(provider(fake_anthropic).stream(REQUEST))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Paris", " is", " the capital."]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.model == "claude-test"
    usage = end.usage
    assert (usage.input_tokens, usage.output_tokens) == (42, 5)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (7, 3)
    assert end.stop_reason == "end_turn"
    body = fake_anthropic.requests[-1].body
    assert body["max_tokens"] == 100 and body["stream"] is True
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert "temperature" not in body


def test_system_prompt_is_marked_for_prompt_caching(fake_anthropic: FakeAnthropic) -> None:
    list(provider(fake_anthropic).stream(REQUEST))
    system = fake_anthropic.requests[-1].body["system"]
    assert system == [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]


def test_the_summary_message_is_the_second_cache_breakpoint(
    fake_anthropic: FakeAnthropic,
) -> None:
    summary = (
        "<conversation_summary_0123456789abcdef>\n...\n</conversation_summary_0123456789abcdef>"
    )
    request = ChatRequest(
        system="Be brief.",
        messages=(
            PromptMessage("user", summary, cache=True),
            PromptMessage("user", "Hello"),
        ),
        max_tokens=100,
        temperature=0.5,
    )
    list(provider(fake_anthropic).stream(request))
    messages = fake_anthropic.requests[-1].body["messages"]
    assert messages[0] == {
        "role": "user",
        "content": [{"type": "text", "text": summary, "cache_control": {"type": "ephemeral"}}],
    }
    assert messages[1] == {"role": "user", "content": "Hello"}


def test_json_schema_becomes_structured_output(fake_anthropic: FakeAnthropic) -> None:
    schema: dict[str, object] = {"type": "object", "properties": {"title": {"type": "string"}}}
    request = ChatRequest(
        system="",
        messages=[PromptMessage("user", "x")],
        max_tokens=10,
        temperature=0,
        json_schema=schema,
    )
    list(provider(fake_anthropic).stream(request))
    body = fake_anthropic.requests[-1].body
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


def test_temperature_is_sent_only_when_asked(fake_anthropic: FakeAnthropic) -> None:
    list(provider(fake_anthropic, send_temperature=True).stream(REQUEST))
    assert fake_anthropic.requests[-1].body["temperature"] == 0.3


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault("auth"), AuthenticationFailed),
        (Fault("rate_limit", retry_after=5), RateLimited),
        (Fault("overloaded"), Overloaded),
        (Fault("server_error"), ProviderUnavailable),
        (Fault("invalid_request"), InvalidRequest),
        (Fault("context_too_long"), ContextTooLong),
        (Fault("error_event", after_chunks=0), Overloaded),
    ],
)
def test_each_failure_maps_to_one_error_with_a_sentence(
    fake_anthropic: FakeAnthropic, fault: Fault, expected: type[ProviderError]
) -> None:
    fake_anthropic.enqueue(fault)
    with pytest.raises(ProviderError) as caught:
        list(provider(fake_anthropic).stream(REQUEST))
    assert type(caught.value) is expected
    assert caught.value.user_message.endswith(".")
    assert "sk-ant-test" not in str(caught.value) + caught.value.user_message


def test_fatal_errors_are_not_retried_and_transient_ones_are(
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_anthropic.error_headers = {"retry-after-ms": "1"}
    fake_anthropic.enqueue(Fault("invalid_request"))
    with pytest.raises(InvalidRequest):
        list(provider(fake_anthropic, max_retries=2).stream(REQUEST))
    assert len(fake_anthropic.requests) == 1
    fake_anthropic.enqueue(Fault("server_error"), Fault("overloaded"), Reply(text="fine"))
    events = list(provider(fake_anthropic, max_retries=2).stream(REQUEST))
    assert text_of(events) == "fine"
    assert len(fake_anthropic.requests) == 4


def test_timeout_is_provider_unavailable(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.enqueue(Fault("timeout", delay_s=3))
    with pytest.raises(ProviderUnavailable):
        list(provider(fake_anthropic, timeout_s=0.3).stream(REQUEST))


def test_long_retry_after_is_not_waited_for(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.enqueue(Fault("rate_limit", retry_after=3600), Reply(text="too late"))
    started = time.monotonic()
    with pytest.raises(RateLimited) as caught:
        list(provider(fake_anthropic, max_retries=2, max_retry_wait_s=20).stream(REQUEST))
    assert time.monotonic() - started < 5
    assert len(fake_anthropic.requests) == 1  # the SDK did not sleep for an hour and retry
    assert caught.value.retry_after == pytest.approx(3600)
    assert "try again at" in caught.value.user_message


def test_short_retry_after_is_honoured_by_the_sdk(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.enqueue(Fault("rate_limit", retry_after=0.2), Reply(text="after a pause"))
    events = list(provider(fake_anthropic, max_retries=2).stream(REQUEST))
    assert text_of(events) == "after a pause"
    assert len(fake_anthropic.requests) == 2


def test_fallback_model_answers_when_the_main_one_is_overloaded(
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_anthropic.enqueue(Fault("overloaded"), Reply(text="from the fallback"))
    events = list(provider(fake_anthropic, fallback_model="claude-fallback").stream(REQUEST))
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.model == "claude-fallback"
    assert [r.body["model"] for r in fake_anthropic.requests] == ["claude-test", "claude-fallback"]


def test_rotated_key_file_is_used_without_restart(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-ant-old\n")
    with FakeAnthropic(api_keys={"sk-ant-old"}) as fake:
        claude = provider(fake, keys=FileKey(key_file))
        assert text_of(list(claude.stream(REQUEST)))
        # The operator rotates the key: the file changes and the API accepts only the new one.
        fake.api_keys = {"sk-ant-new"}
        key_file.write_text("sk-ant-new\n")
        assert text_of(list(claude.stream(REQUEST)))
        assert [r.api_key for r in fake.requests] == ["sk-ant-old", "sk-ant-new"]


def test_auth_failure_reloads_the_key_once_and_retries() -> None:
    class RotatingSource:
        def __init__(self) -> None:
            self.keys = ["sk-ant-stale", "sk-ant-fresh"]
            self.refreshes = 0

        def get(self) -> str:
            return self.keys[0]

        def refresh(self) -> str:
            self.refreshes += 1
            self.keys = self.keys[1:] or self.keys
            return self.keys[0]

    source = RotatingSource()
    with FakeAnthropic(api_keys={"sk-ant-fresh"}) as fake:
        assert text_of(list(provider(fake, keys=source).stream(REQUEST)))
        assert source.refreshes == 1
        fake.api_keys = {"sk-ant-other"}
        with pytest.raises(AuthenticationFailed):
            list(provider(fake, keys=source).stream(REQUEST))
        assert source.refreshes == 2  # one reload per call, then the error stands


def test_rate_limit_headers_reach_the_observer(fake_anthropic: FakeAnthropic) -> None:
    seen: list[Mapping[str, str]] = []
    fake_anthropic.enqueue(
        Reply(text="ok", headers={"anthropic-ratelimit-requests-remaining": "7"})
    )
    list(provider(fake_anthropic, on_headers=seen.append).stream(REQUEST))
    assert seen[-1].get("anthropic-ratelimit-requests-remaining") == "7"


def test_images_go_first_as_base64_blocks_each_after_its_name(
    fake_anthropic: FakeAnthropic,
) -> None:
    png = prepare_image("cat.png", _png((60, 40)))
    photo = prepare_image("dog.jpg", _png((30, 30), "JPEG"))
    question = PromptMessage(
        "user",
        "Which is bigger?",
        sources=(SearchSource("parley:document/1#0-0", "notes.md", ("Cats are small.",)),),
        images=(replace(png.prompt(7), earlier=True), photo.prompt(8)),
    )
    request = ChatRequest(
        system="Be brief.",
        messages=(PromptMessage("user", "Hi"), PromptMessage("assistant", "Hello"), question),
        max_tokens=100,
        temperature=0.5,
    )
    assert text_of(list(provider(fake_anthropic).stream(request)))
    content = fake_anthropic.requests[-1].body["messages"][-1]["content"]
    assert [b["type"] for b in content] == [
        "text",
        "image",
        "text",
        "image",
        "search_result",
        "text",
    ]
    assert content[0]["text"] == "Image 1: cat.png (sent with an earlier question)"
    assert content[2]["text"] == "Image 2: dog.jpg"
    assert content[1]["source"]["media_type"] == "image/png"
    assert base64.b64decode(content[1]["source"]["data"]) == png.data
    assert content[3]["source"]["media_type"] == "image/jpeg"
    assert base64.b64decode(content[3]["source"]["data"]) == photo.data
    assert content[-1] == {"type": "text", "text": "Which is bigger?"}
    # The API's count includes the image (width × height / 750 for the fake's PNG).
    without = provider(fake_anthropic).count_tokens(replace(request, messages=request.messages[:2]))
    assert provider(fake_anthropic).count_tokens(request) > without + png.tokens - 1


def test_the_fake_refuses_an_image_whose_data_is_not_what_it_claims(
    fake_anthropic: FakeAnthropic,
) -> None:
    """As the API does: the fake is only a fair test if it refuses what the API refuses."""
    png = prepare_image("cat.png", _png((20, 20)))
    liar = replace(png.prompt(1), media_type="image/jpeg")
    request = replace(REQUEST, messages=(PromptMessage("user", "What?", images=(liar,)),))
    with pytest.raises(InvalidRequest):
        list(provider(fake_anthropic).stream(request))


def _png(size: tuple[int, int], kind: str = "PNG") -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", size, "navy").save(out, kind)
    return out.getvalue()


def test_count_tokens_uses_the_api(fake_anthropic: FakeAnthropic) -> None:
    assert provider(fake_anthropic).count_tokens(REQUEST) > 0
    assert fake_anthropic.requests[-1].path == "/v1/messages/count_tokens"


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


# ---------------------------------------------------------------- metering what the API reported


class ListMeter:
    def __init__(self) -> None:
        self.calls: list[CallRecord] = []

    def record(self, call: CallRecord) -> None:
        self.calls.append(call)


def metered(fake: FakeAnthropic, meter: ListMeter) -> LimitedProvider:
    limiter = RateLimiter(
        requests_per_minute=1e9,
        input_tokens_per_minute=1e9,
        output_tokens_per_minute=1e9,
        max_wait_s=0,
    )
    return LimitedProvider(provider(fake), gate=ConcurrencyGate(2), limiter=limiter, meter=meter)


def test_usage_so_far_is_reported_at_message_start(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.enqueue(Reply(text="one two", input_tokens=321))
    events = list(provider(fake_anthropic).stream(REQUEST))
    reports = [e.usage for e in events if isinstance(e, UsageSoFar)]
    assert reports and reports[0].input_tokens == 321
    assert isinstance(events[-1], StreamEnd) and events[-1].usage.input_tokens == 321


def test_a_dropped_stream_is_metered_with_the_reported_input(
    fake_anthropic: FakeAnthropic,
) -> None:
    meter = ListMeter()
    fake_anthropic.enqueue(Fault("drop_mid_stream", text="one two three four", after_chunks=2))
    received: list[str] = []
    with pytest.raises(StreamInterrupted):
        for event in metered(fake_anthropic, meter).stream(REQUEST):
            assert not isinstance(event, UsageSoFar)  # kept inside the limited provider
            if isinstance(event, TextDelta):
                received.append(event.text)
    (call,) = meter.calls
    assert call.outcome is CallOutcome.INTERRUPTED
    assert call.usage.input_tokens == rough_tokens(fake_anthropic.requests[-1].json) > 0
    assert call.usage.output_tokens == count_tokens("".join(received)) > 0


def test_a_refused_call_is_metered_as_failed_with_nothing_used(
    fake_anthropic: FakeAnthropic,
) -> None:
    meter = ListMeter()
    fake_anthropic.enqueue(Fault("server_error"))
    with pytest.raises(ProviderError):
        list(metered(fake_anthropic, meter).stream(REQUEST))
    (call,) = meter.calls
    assert (call.outcome, call.usage) == (CallOutcome.FAILED, Usage())
