"""Titles as validated structured output: regenerate with the error, then fall back."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from parley.chat.conversation.titles import TITLE_CHARS, fallback_title, generate_title, parse_title
from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.background import BackgroundWork
from parley.core.domain import Principal, Purpose
from parley.core.errors import Overloaded
from parley.core.llm import CallMeta
from parley.wiring.services import Services, build_services

TITLE = CallMeta(Purpose.TITLE, user_id=1, conversation_id=1)


def test_valid_json_is_accepted_and_cleaned() -> None:
    assert parse_title('{"title": "  Trip to   Lisbon. "}').title == "Trip to Lisbon"
    assert parse_title('```json\n{"title": "Fenced"}\n```').title == "Fenced"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "Trip to Lisbon",
        '{"name": "x"}',
        '{"title": "ab"}',
        '{"title": "# Heading"}',
        '{"title": "x", "extra": 1}',
        '{"title": "' + "long " * 30 + '"}',
        "[1, 2]",
        "{",
    ],
)
def test_invalid_output_is_rejected(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_title(raw)


def test_invalid_output_is_regenerated_with_the_error_fed_back() -> None:
    provider = ScriptedProvider()
    provider.enqueue("Sure! Here is a title: Lisbon")
    provider.enqueue('{"title": "Weekend in Lisbon"}')
    title, calls = generate_title(
        provider,
        meta=TITLE,
        question="Plan my weekend",
        answer="Go to Lisbon",
        temperature=0,
        attempts=3,
    )
    assert (title, calls) == ("Weekend in Lisbon", 2)
    second = provider.requests[1]
    assert second.json_schema is not None and "title" in str(second.json_schema)
    assert second.messages[-2].content == "Sure! Here is a title: Lisbon"
    assert "not valid" in second.messages[-1].content and "JSON" in second.messages[-1].content


def test_after_the_attempts_the_deterministic_title_is_used() -> None:
    provider = ScriptedProvider(default_answer="not json")
    question = "What should I cook tonight with leeks, potatoes and a little cream?"
    title, calls = generate_title(
        provider, meta=TITLE, question=question, answer="Soup.", temperature=0, attempts=3
    )
    assert calls == 3 and len(provider.requests) == 3
    assert title == fallback_title(question) and len(title) <= TITLE_CHARS


def test_provider_failure_falls_back_without_raising() -> None:
    provider = ScriptedProvider()
    provider.enqueue_error(Overloaded())
    title, _ = generate_title(
        provider, meta=TITLE, question="Hello there", answer="Hi", temperature=0, attempts=3
    )
    assert title == "Hello there"


def test_first_answer_titles_the_conversation(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    settings = services.settings.model_copy(update={"model_titles": True})
    services = build_services(settings, provider=scripted, background=BackgroundWork(workers=0))
    scripted.enqueue("Lisbon is lovely in spring.")
    scripted.enqueue('{"title": "Spring in Lisbon"}')
    reply = services.chat.send(alice, None, "Where should I go in April?")
    list(reply)
    assert services.conversations.get(alice, reply.conversation_id).title == "Spring in Lisbon"
    scripted.enqueue("Pack a jacket.")
    list(services.chat.send(alice, reply.conversation_id, "What should I pack?"))
    assert len(scripted.requests) == 3  # no second title call


class HeldWork(BackgroundWork):
    """Background work that waits until the test runs it: as on a busy server, where the
    next question can be answered before the first answer's upkeep has run."""

    def __init__(self) -> None:
        super().__init__(workers=0)
        self.held: list[Callable[[], None]] = []

    def submit(self, task: Callable[[], None], *, name: str) -> bool:  # noqa: ARG002
        self.held.append(task)
        return True

    def run_held(self) -> None:
        while self.held:
            self.held.pop(0)()


def test_a_quick_second_question_does_not_cost_the_conversation_its_title(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    settings = services.settings.model_copy(update={"model_titles": True})
    work = HeldWork()
    services = build_services(settings, provider=scripted, background=work)
    scripted.enqueue("Lisbon is lovely in spring.")
    scripted.enqueue("Pack a jacket.")
    scripted.enqueue('{"title": "Spring in Lisbon"}')
    reply = services.chat.send(alice, None, "Where should I go in April?")
    list(reply)
    list(services.chat.send(alice, reply.conversation_id, "What should I pack?"))
    work.run_held()  # the first answer's title job runs after the second answer is stored
    assert services.conversations.get(alice, reply.conversation_id).title == "Spring in Lisbon"
    assert len(scripted.requests) == 3  # two answers and one title call, not two
    title_prompt = scripted.requests[-1].messages[0].content
    assert "Where should I go in April?" in title_prompt and "Lisbon is lovely" in title_prompt


def test_a_title_is_made_from_the_answer_and_the_question_it_answers(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    settings = services.settings.model_copy(update={"model_titles": True})
    services = build_services(settings, provider=scripted, background=BackgroundWork(workers=0))
    scripted.enqueue_error(Overloaded())  # the first answer fails
    first = services.chat.send(alice, None, "Where should I go in April?")
    list(first)
    scripted.enqueue("Pack a jacket.")  # the user asks something else instead of Retry
    scripted.enqueue('{"title": "Packing for spring"}')
    list(services.chat.send(alice, first.conversation_id, "What should I pack?"))
    title_prompt = scripted.requests[-1].messages[0].content
    assert "What should I pack?" in title_prompt and "Pack a jacket." in title_prompt
    assert "Where should I go" not in title_prompt  # not a question the answer is not to
    assert services.conversations.get(alice, first.conversation_id).title == "Packing for spring"
