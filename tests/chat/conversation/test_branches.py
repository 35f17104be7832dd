"""Edit and regenerate: branches that keep every attempt, and a prompt that sees only its own."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from parley.chat.conversation.history import HistoryCache, path_turns
from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.background import BackgroundWork
from parley.core.config import Settings
from parley.core.domain import MessageRole, MessageStatus, Principal, Purpose
from parley.core.errors import InvalidInput, NotFound
from parley.core.llm import ChatRequest, StreamEnd, StreamEvent, TextDelta, Usage
from parley.store.db import Database
from parley.store.models import Conversation, Summary, UsageEntry
from parley.wiring.services import Services, build_services
from tests.support import audit_records


def said(services: Services, who: Principal, conversation_id: int) -> list[str]:
    return [m.content for m in services.conversations.thread(who, conversation_id).messages]


def start(services: Services, who: Principal, *questions: str) -> int:
    conversation_id: int | None = None
    for question in questions:
        reply = services.chat.send(who, conversation_id, question)
        list(reply)
        conversation_id = reply.conversation_id
    assert conversation_id is not None
    return conversation_id


def test_editing_a_question_starts_a_branch_and_keeps_the_old_one(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue("Paris.")
    scripted.enqueue("Ask me more.")
    scripted.enqueue("Rome.")
    conversation = start(services, alice, "Capital of France?", "And then?")
    first = services.conversations.thread(alice, conversation).messages[0]
    list(services.chat.edit(alice, conversation, first.id, "Capital of Italy?"))
    thread = services.conversations.thread(alice, conversation)
    assert [m.content for m in thread.messages] == ["Capital of Italy?", "Rome."]
    edited = thread.messages[0]
    assert thread.branching[edited.id].position == 2 and thread.branching[edited.id].count == 2
    assert thread.branching[edited.id].previous == first.id
    # The prompt of the edited question held nothing of the old branch.
    prompt = scripted.requests[-1]
    text = " ".join(m.content for m in prompt.messages)
    assert "France" not in text and "Paris" not in text and "Italy" in text
    # Step back: the old branch, whole, with its own answers.
    services.conversations.show_branch(alice, conversation, first.id)
    assert said(services, alice, conversation) == [
        "Capital of France?",
        "Paris.",
        "And then?",
        "Ask me more.",
    ]
    # A question sent now follows the branch shown.
    scripted.enqueue("Lyon is second.")
    list(services.chat.send(alice, conversation, "Second city?"))
    assert said(services, alice, conversation)[-2:] == ["Second city?", "Lyon is second."]
    assert "Paris." in " ".join(m.content for m in scripted.requests[-1].messages)


def test_regenerating_keeps_both_answers_as_siblings_and_counts_every_attempt(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue("One answer.")
    scripted.enqueue("Another answer.")
    conversation = start(services, alice, "Tell me something.")
    old = services.conversations.thread(alice, conversation).messages[1]
    list(services.chat.regenerate(alice, conversation, old.id))
    thread = services.conversations.thread(alice, conversation)
    assert [m.content for m in thread.messages] == ["Tell me something.", "Another answer."]
    new = thread.messages[1]
    assert new.parent_id == old.parent_id == thread.messages[0].id
    assert (thread.branching[new.id].position, thread.branching[new.id].count) == (2, 2)
    assert thread.branching[new.id].previous == old.id
    services.conversations.show_branch(alice, conversation, old.id)
    assert said(services, alice, conversation)[-1] == "One answer."
    # Both calls are in the ledger and both answers in the audit trail, by id.
    with services._database.session() as session:
        calls = session.scalars(
            select(UsageEntry).where(
                UsageEntry.conversation_id == conversation, UsageEntry.purpose == Purpose.CHAT
            )
        ).all()
    answered = [r["data"] for r in audit_records(services._database) if r["kind"] == "answer"]
    assert len(calls) == 2
    assert [[m["id"] for m in a["messages"]] for a in answered] == [
        [thread.messages[0].id, old.id],
        [thread.messages[0].id, new.id],
    ]


def test_only_the_owner_edits_regenerates_or_switches_and_only_their_messages(
    services: Services, alice: Principal, bob: Principal
) -> None:
    conversation = start(services, alice, "Mine.")
    other = start(services, bob, "Bob's.")
    question, answer = services.conversations.thread(alice, conversation).messages
    bobs_question = services.conversations.thread(bob, other).messages[0]
    with pytest.raises(NotFound):
        services.chat.edit(bob, conversation, question.id, "hijack")
    with pytest.raises(NotFound):
        services.chat.regenerate(bob, conversation, answer.id)
    with pytest.raises(NotFound):
        services.conversations.show_branch(bob, conversation, question.id)
    with pytest.raises(InvalidInput):  # a message of another conversation
        services.chat.edit(alice, conversation, bobs_question.id, "hijack")
    with pytest.raises(InvalidInput):
        services.conversations.show_branch(alice, conversation, bobs_question.id)
    with pytest.raises(InvalidInput):  # an answer is regenerated, a question edited
        services.chat.edit(alice, conversation, answer.id, "text")
    with pytest.raises(InvalidInput):
        services.chat.regenerate(alice, conversation, question.id)
    with pytest.raises(InvalidInput):  # an empty edit is refused before anything is stored
        services.chat.edit(alice, conversation, question.id, "   ")
    assert said(services, alice, conversation) == ["Mine.", "OK"]
    assert len(services.conversations.messages(alice, conversation)) == 2


def test_retry_replaces_a_failed_answer_but_regenerate_keeps_a_good_one(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    from parley.core.errors import ProviderUnavailable

    scripted.enqueue_error(ProviderUnavailable("down"))
    conversation = start(services, alice, "Hello?")
    assert services.chat.needs_retry(alice, conversation)
    scripted.enqueue("Hi.")
    list(services.chat.retry(alice, conversation))
    thread = services.conversations.thread(alice, conversation)
    assert [m.content for m in thread.messages] == ["Hello?", "Hi."]
    assert thread.branching == {}  # the failed one is out of the way, not a sibling
    assert not services.chat.needs_retry(alice, conversation)
    with pytest.raises(InvalidInput):
        services.chat.retry(alice, conversation)


class EchoingSummaries(ScriptedProvider):
    """Answers summary requests with everything they were given, so a summary holds
    every word of the turns folded into it (a marker in them shows up)."""

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        if request.meta.purpose is not Purpose.SUMMARY:
            yield from super().stream(request)
            return
        self.requests.append(request)
        text = " ".join(m.content for m in request.messages)
        yield TextDelta(text)
        yield StreamEnd(
            model=self.model, usage=Usage(input_tokens=1, output_tokens=1), stop_reason="end_turn"
        )


PADDING = (
    "The committee met again to go through the long list of routine items on the agenda, "
    "none of them urgent, and agreed to come back to each of them next week. "
)


@pytest.mark.parametrize("strategy", ["hybrid", "summary_buffer", "vector_recall"])
def test_a_marker_on_one_branch_never_reaches_another_branchs_prompt_or_summary(
    settings: Settings, database: Database, alice: Principal, strategy: str
) -> None:
    del database
    provider = EchoingSummaries(context_window=4096)
    provider.default_answer = "Noted. " + PADDING
    tuned = settings.model_copy(
        update={"memory_strategy": strategy, "memory_fold_tokens": 300, "max_output_tokens": 200}
    )
    services = build_services(tuned, provider=provider, background=BackgroundWork(workers=0))
    marker = "QUARTZ-PELICAN-4417"
    conversation = start(services, alice, "Let us begin. " + PADDING)
    fork = services.conversations.thread(alice, conversation).messages[-1].id  # first answer
    # Branch A: the marker early on, then enough turns to fold it into a summary.
    list(services.chat.send(alice, conversation, f"Remember the code {marker}. " + PADDING))
    for n in range(6):
        list(services.chat.send(alice, conversation, f"Item {n} on branch A. " + PADDING))
    with services._database.session() as session:
        summaries = session.scalars(
            select(Summary.content).where(Summary.conversation_id == conversation)
        ).all()
    if strategy != "vector_recall":
        assert any(marker in s for s in summaries), "branch A's summary holds the marker"
    # Branch B: edit the question that carried the marker; ask about it for a while.
    carrier = next(
        m
        for m in services.conversations.thread(alice, conversation).messages
        if marker in m.content
    )
    asked_before = len(provider.requests)
    list(services.chat.edit(alice, conversation, carrier.id, "What was the code? " + PADDING))
    for n in range(6):
        list(services.chat.send(alice, conversation, f"Which code, item {n}? " + PADDING))
    on_b = provider.requests[asked_before:]
    assert len([r for r in on_b if r.meta.purpose is Purpose.CHAT]) == 7
    for request in on_b:
        prompt = request.system + " ".join(m.content for m in request.messages)
        assert marker not in prompt, f"a {request.meta.purpose} prompt on branch B held it"
    with services._database.session() as session:
        newer = session.scalars(
            select(Summary.content).where(
                Summary.conversation_id == conversation, Summary.id > len(summaries)
            )
        ).all()
    assert all(marker not in s for s in newer)
    if strategy != "vector_recall":
        assert newer, "branch B folded summaries of its own"
    # Back on branch A, its summary and the marker come back.
    services.conversations.show_branch(alice, conversation, carrier.id)
    list(services.chat.send(alice, conversation, "And the code was? " + PADDING))
    last = provider.requests[-1]
    assert marker in last.system + " ".join(m.content for m in last.messages)
    assert fork in {m.parent_id for m in services.conversations.messages(alice, conversation)}


def test_the_cached_history_matches_a_fresh_read_through_any_branching(
    services: Services, alice: Principal
) -> None:
    """Random sends, edits, regenerations and switches: the cache, reading only what is
    new, always equals a whole read of the branch."""
    cache = HistoryCache()
    rng = random.Random(20261203)
    conversation = start(services, alice, "q0")

    def compare() -> None:
        with services._database.session() as session:
            row = session.get(Conversation, conversation)
            assert row is not None
            fresh = [(t.id, t.content) for t in path_turns(session, row.active_leaf_id)]
            got = [(t.id, t.content) for t in cache.turns(session, row, row.active_leaf_id)]
        assert got == fresh

    compare()
    for step in range(40):
        thread = services.conversations.thread(alice, conversation).messages
        questions = [m for m in thread if m.role is MessageRole.USER]
        answers = [m for m in thread if m.role is MessageRole.ASSISTANT]
        every = services.conversations.messages(alice, conversation)
        action = rng.choice(["send", "send", "edit", "regenerate", "switch"])
        if action == "send":
            list(services.chat.send(alice, conversation, f"q{step}"))
        elif action == "edit":
            list(services.chat.edit(alice, conversation, rng.choice(questions).id, f"e{step}"))
        elif action == "regenerate" and answers:
            list(services.chat.regenerate(alice, conversation, rng.choice(answers).id))
        else:
            shown = [m for m in every if m.status is not MessageStatus.SUPERSEDED]
            services.conversations.show_branch(alice, conversation, rng.choice(shown).id)
        compare()
