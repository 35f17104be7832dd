"""AnthropicBatches through the real SDK against the fake server's Message Batches API."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from parley.chat.gateway.providers.anthropic import AnthropicProvider
from parley.chat.gateway.providers.anthropic_batches import AnthropicBatches
from parley.chat.gateway.providers.keys import FileKey, StaticKey
from parley.core.errors import AuthenticationFailed, InvalidRequest
from parley.core.llm import ChatRequest, PromptMessage
from parley.fakes.anthropic_server import FakeAnthropic, Fault, Reply


def request(text: str, schema: dict[str, object] | None = None) -> ChatRequest:
    return ChatRequest(
        system="Summarise.",
        messages=[PromptMessage("user", text)],
        max_tokens=50,
        temperature=0.0,
        json_schema=schema,
    )


def batches(fake: FakeAnthropic, key: str = "sk-ant-batch-test") -> AnthropicBatches:
    return AnthropicBatches(
        AnthropicProvider(
            keys=StaticKey(SecretStr(key)),
            model="claude-test",
            base_url=fake.base_url,
            max_retries=0,
        )
    )


def test_a_batch_is_created_polled_until_it_ends_and_its_results_matched_by_custom_id() -> None:
    with FakeAnthropic(batch_polls=2) as fake:
        fake.enqueue(
            Reply(text="first summary", input_tokens=40, output_tokens=3),
            Fault("overloaded"),
            Fault("timeout"),
            Reply(text="fourth"),
        )
        client = batches(fake)
        batch_id = client.submit(
            [
                ("a-1", request("one")),
                ("b-2", request("two")),
                ("c-3", request("three")),
                ("d-4", request("four")),
            ]
        )
        sent = fake.batches.requests_of(batch_id)
        assert [r["custom_id"] for r in sent] == ["a-1", "b-2", "c-3", "d-4"]
        assert sent[0]["params"]["model"] == "claude-test"
        assert sent[0]["params"]["system"][0]["text"] == "Summarise."
        assert "stream" not in sent[0]["params"]

        assert client.progress(batch_id).ended is False  # two polls in progress
        second = client.progress(batch_id)
        assert (second.ended, second.processing) == (False, 4)
        done = client.progress(batch_id)
        assert done.ended and (done.succeeded, done.errored, done.expired) == (2, 1, 1)

        outcomes = {o.custom_id: o for o in client.outcomes(batch_id)}
    assert outcomes["a-1"].text == "first summary"
    assert (outcomes["a-1"].usage.input_tokens, outcomes["a-1"].usage.output_tokens) == (40, 3)
    assert outcomes["a-1"].model == "claude-test"
    assert outcomes["b-2"].text is None and outcomes["b-2"].error == "overloaded_error"
    assert outcomes["c-3"].error == "expired"
    assert outcomes["d-4"].text == "fourth"


def test_a_structured_request_in_a_batch_gets_an_object_of_its_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}},
        "required": ["title"],
    }
    with FakeAnthropic(batch_polls=0) as fake:
        client = batches(fake)
        batch_id = client.submit([("t-1", request("name it", schema))])
        assert fake.batches.requests_of(batch_id)[0]["params"]["output_config"]["format"] == {
            "type": "json_schema",
            "schema": schema,
        }
        assert client.progress(batch_id).ended
        (outcome,) = client.outcomes(batch_id)
    assert outcome.text is not None and '"title"' in outcome.text


def test_a_cancelled_batch_ends_with_every_request_canceled() -> None:
    with FakeAnthropic(batch_polls=5) as fake:
        client = batches(fake)
        batch_id = client.submit([("x-1", request("one")), ("x-2", request("two"))])
        client.cancel(batch_id)
        progress = client.progress(batch_id)
        assert progress.ended and progress.canceled == 2
        assert {o.error for o in client.outcomes(batch_id)} == {"canceled"}


def test_a_bad_batch_is_refused_with_the_apis_invalid_request() -> None:
    with FakeAnthropic() as fake:
        client = batches(fake)
        with pytest.raises(InvalidRequest):
            client.submit([("same", request("one")), ("same", request("two"))])


def test_a_rotated_key_is_reloaded_once_and_the_batch_goes(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("old")
    with FakeAnthropic(api_keys={"new"}) as fake:
        client = AnthropicBatches(
            AnthropicProvider(
                keys=FileKey(key_file), model="claude-test", base_url=fake.base_url, max_retries=0
            )
        )
        with pytest.raises(AuthenticationFailed):
            client.submit([("a", request("one"))])
        key_file.write_text("new")  # rotated while the process runs
        batch_id = client.submit([("a", request("one"))])
    assert batch_id.startswith("msgbatch_")
