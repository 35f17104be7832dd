"""The chat service: order of commits, how answers end, and what bad input does."""

from __future__ import annotations

import logging
import time

import pytest
from sqlalchemy import select

import parley.chat.conversation.answer
from parley.chat.conversation.answer import NOT_SAVED, STOPPED_BEFORE, AnswerRow, AnswerStore
from parley.chat.conversation.replies import ReplyStream
from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.background import BackgroundWork
from parley.core.config import get_settings
from parley.core.domain import CallOutcome, MessageRole, MessageStatus, Principal, Purpose
from parley.core.errors import (
    InvalidInput,
    NotFound,
    ProviderError,
    StorageUnavailable,
    StreamInterrupted,
)
from parley.core.llm import ChatRequest
from parley.fakes.anthropic_server import FakeAnthropic, Reply
from parley.store.db import Database
from parley.store.models import Message, UsageEntry
from parley.wiring.services import Services, build_services
from tests.support import ROOT


def stored(services: Services, conversation_id: int) -> list[Message]:
    with services._database.session() as session:
        return list(
            session.scalars(
                select(Message)
                .where(Message.conversation_id == conversation_id)
                .order_by(Message.id)
            )
        )


def test_user_message_is_committed_before_the_provider_is_called(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    seen: list[list[tuple[str, str]]] = []

    def check_database(request: ChatRequest) -> None:
        del request
        # A separate session: only committed rows are visible.
        with services._database.session() as session:
            rows = session.scalars(select(Message).order_by(Message.id)).all()
            seen.append([(m.role.value, m.content) for m in rows])

    scripted.on_request = check_database
    scripted.enqueue("Hi ", "Alice")
    reply = services.chat.send(alice, None, "Hello there")
    assert "".join(reply) == "Hi Alice"
    assert seen == [[("user", "Hello there")]]


def test_complete_answer_is_stored_with_model_and_usage(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue("Paris", " is the capital.")
    reply = services.chat.send(alice, None, "Capital of France?")
    assert list(reply) == ["Paris", " is the capital."]
    assert reply.result is not None and reply.result.ok
    user, answer = stored(services, reply.conversation_id)
    assert (user.role, user.content) == (MessageRole.USER, "Capital of France?")
    assert answer.role is MessageRole.ASSISTANT
    assert answer.content == "Paris is the capital."
    assert answer.status is MessageStatus.COMPLETE
    assert answer.model == "scripted"
    assert answer.output_tokens == 2 and answer.input_tokens and answer.input_tokens > 0
    assert answer.stop_reason == "end_turn"


def test_stream_that_breaks_keeps_partial_text_as_interrupted(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue_error(StreamInterrupted(partial_text="Once upon"), chunks=["Once ", "upon"])
    scripted.enqueue_error(StreamInterrupted(partial_text=""), chunks=[])  # the continuation fails
    reply = services.chat.send(alice, None, "Tell me a story")
    assert "".join(reply) == "Once upon"  # no exception reaches the caller
    assert reply.result is not None and not reply.result.ok
    assert reply.result.error == StreamInterrupted.user_message
    answer = stored(services, reply.conversation_id)[-1]
    assert (answer.status, answer.content) == (MessageStatus.INTERRUPTED, "Once upon")
    assert answer.error == StreamInterrupted.user_message


def test_broken_stream_is_continued_once_with_the_partial_answer_as_prefill(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue_error(StreamInterrupted(), chunks=["Once upon ", "a "])
    scripted.enqueue(" time.")
    reply = services.chat.send(alice, None, "Tell me a story")
    assert "".join(reply) == "Once upon a time."
    continuation = scripted.requests[-1].messages
    assert (continuation[-1].role, continuation[-1].content) == ("assistant", "Once upon a")
    assert continuation[-2].content == "Tell me a story"
    answer = stored(services, reply.conversation_id)[-1]
    assert (answer.status, answer.content) == (MessageStatus.COMPLETE, "Once upon a time.")


def test_a_second_break_is_not_continued(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue_error(StreamInterrupted(), chunks=["one"])
    scripted.enqueue_error(StreamInterrupted(), chunks=[" two"])
    scripted.enqueue("never asked for")
    reply = services.chat.send(alice, None, "Count")
    assert "".join(reply) == "one two"
    assert len(scripted.requests) == 2
    answer = stored(services, reply.conversation_id)[-1]
    assert (answer.status, answer.content) == (MessageStatus.INTERRUPTED, "one two")


def test_failure_before_any_text_is_stored_as_error(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue_error(ProviderError("down", user_message="The model is down."))
    reply = services.chat.send(alice, None, "Anyone there?")
    assert list(reply) == []
    user, answer = stored(services, reply.conversation_id)
    assert user.content == "Anyone there?"
    assert (answer.status, answer.content, answer.error) == (
        MessageStatus.ERROR,
        "",
        "The model is down.",
    )


def test_unexpected_provider_bug_is_contained(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    def explode(request: ChatRequest) -> None:
        del request
        raise RuntimeError("bug in provider")

    scripted.on_request = explode
    reply = services.chat.send(alice, None, "Hi")
    assert list(reply) == []
    assert reply.result is not None and reply.result.status is MessageStatus.ERROR


def test_stopping_keeps_the_text_so_far_as_a_stopped_answer_with_its_usage(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue("one ", "two ", "three")
    reply = services.chat.send(alice, None, "Count")
    chunks = iter(reply)
    assert next(chunks) == "one "
    reply.close()
    answer = stored(services, reply.conversation_id)[-1]
    assert (answer.status, answer.content, answer.error) == (MessageStatus.STOPPED, "one ", None)
    with services._database.session() as session:
        (entry,) = session.scalars(select(UsageEntry))
    assert entry.outcome is CallOutcome.ABORTED  # metered, and the answer says what it used
    assert (answer.input_tokens, answer.output_tokens) == (entry.input_tokens, entry.output_tokens)
    assert entry.output_tokens > 0 and entry.input_tokens > 0
    # The user meant it: no Retry is asked for, and the conversation goes on.
    assert not services.chat.needs_retry(alice, reply.conversation_id)
    scripted.enqueue("Four.")
    assert "".join(services.chat.send(alice, reply.conversation_id, "Go on")) == "Four."


def test_stopping_before_the_first_word_leaves_the_question_to_retry(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue("never read")
    reply = services.chat.send(alice, None, "Count")
    reply.close()  # the page reran before the stream began
    answer = stored(services, reply.conversation_id)[-1]
    assert (answer.status, answer.error) == (MessageStatus.ERROR, STOPPED_BEFORE)
    assert services.chat.needs_retry(alice, reply.conversation_id)


def test_stop_closes_the_providers_stream_within_a_second(
    claude_env: FakeAnthropic, database: Database
) -> None:
    del database  # migrated by its fixture, in the data directory the environment names
    services = build_services(get_settings(), background=BackgroundWork(workers=0))
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    words = " ".join(f"w{i}" for i in range(300))
    claude_env.enqueue(Reply(text=words, chunk_delay_s=0.03, input_tokens=123))
    reply = services.chat.send(alice, None, "Talk for a while")
    chunks = iter(reply)
    for _ in range(5):
        next(chunks)
    stopped_at = time.monotonic()
    reply.close()
    took = time.monotonic() - stopped_at
    deadline = time.monotonic() + 1
    while not claude_env.hangups and time.monotonic() < deadline:
        time.sleep(0.01)
    assert claude_env.hangups, "the fake server never saw the connection end"
    assert claude_env.hangups[0] - stopped_at < 1.0
    assert took < 1.0
    assert reply.result is not None and reply.result.status is MessageStatus.STOPPED
    answer = stored(services, reply.conversation_id)[-1]
    assert answer.content == reply.result.text and answer.content.startswith("w0 w1 w2 w3 w4")
    assert answer.input_tokens == 123  # as the API reported at message_start
    assert answer.output_tokens is not None and answer.output_tokens >= 5
    with services._database.session() as session:
        (entry,) = session.scalars(select(UsageEntry).where(UsageEntry.purpose == Purpose.CHAT))
    assert (entry.outcome, entry.input_tokens) == (CallOutcome.ABORTED, 123)
    assert answer.cost_usd == entry.cost_usd and entry.cost_usd > 0
    services.close()


def test_retry_answers_again_and_keeps_the_failed_attempt(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue_error(ProviderError("down"))
    first = services.chat.send(alice, None, "Question")
    list(first)
    assert services.chat.needs_retry(alice, first.conversation_id)
    scripted.enqueue("Answer")
    second = services.chat.retry(alice, first.conversation_id)
    assert "".join(second) == "Answer"
    assert not services.chat.needs_retry(alice, first.conversation_id)
    rows = stored(services, first.conversation_id)
    assert [(m.role, m.status) for m in rows] == [
        (MessageRole.USER, MessageStatus.COMPLETE),
        (MessageRole.ASSISTANT, MessageStatus.SUPERSEDED),
        (MessageRole.ASSISTANT, MessageStatus.COMPLETE),
    ]
    # The retried request asked the same question once.
    assert [m.content for m in scripted.requests[-1].messages] == ["Question"]
    with pytest.raises(InvalidInput):
        services.chat.retry(alice, first.conversation_id)


def test_history_goes_into_the_next_prompt(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue("Nice to meet you, Ann.")
    first = services.chat.send(alice, None, "My name is Ann.")
    list(first)
    scripted.enqueue("Ann.")
    list(services.chat.send(alice, first.conversation_id, "What is my name?"))
    request = scripted.requests[-1]
    assert [(m.role, m.content) for m in request.messages] == [
        ("user", "My name is Ann."),
        ("assistant", "Nice to meet you, Ann."),
        ("user", "What is my name?"),
    ]
    # The operator's text, and the output guard's line after it: nothing of the user's.
    assert request.system == services.gateway.marked_system(
        services.settings.system_prompt, alice.user_id
    )


@pytest.mark.parametrize("text", ["", "   ", "\n\t  \n", "\x00\x00"])
def test_empty_messages_are_refused_and_nothing_is_stored(
    services: Services, scripted: ScriptedProvider, alice: Principal, text: str
) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        services.chat.send(alice, None, text)
    assert scripted.requests == []
    assert services.conversations.list_for(alice) == []


def test_over_long_message_is_refused_with_the_limit(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    limit = services.settings.max_message_chars
    with pytest.raises(InvalidInput, match=f"{limit:,}"):
        services.chat.send(alice, None, "x" * (limit + 1))
    assert scripted.requests == []
    assert services.conversations.list_for(alice) == []


def test_message_too_long_for_the_context_window_is_refused(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.context_window = 1500  # budget of a few hundred tokens after the answer's reserve
    with pytest.raises(InvalidInput, match="context window"):
        services.chat.send(alice, None, "word " * 2000)
    assert scripted.requests == []


def test_odd_encodings_are_cleaned_not_rejected(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    reply = services.chat.send(alice, None, "caf\u0065\u0301 \ud800broken\x00 line\r\nnext")
    list(reply)
    user = stored(services, reply.conversation_id)[0]
    assert user.content == "café ?broken line\nnext"
    assert scripted.requests[0].messages[-1].content == user.content


def test_other_users_conversation_is_not_found(
    services: Services, alice: Principal, bob: Principal
) -> None:
    reply = services.chat.send(alice, None, "private")
    list(reply)
    with pytest.raises(NotFound):
        services.chat.send(bob, reply.conversation_id, "let me in")
    with pytest.raises(NotFound):
        services.chat.retry(bob, reply.conversation_id)
    assert len(stored(services, reply.conversation_id)) == 2


def test_a_queued_turn_hears_its_position(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    import threading

    from parley.core.background import BackgroundWork
    from parley.wiring.services import build_services

    one_slot = services.settings.model_copy(update={"max_concurrent_calls": 1})
    services = build_services(one_slot, provider=scripted, background=BackgroundWork(workers=0))
    positions: list[int] = []
    release = threading.Event()
    holding = threading.Event()

    def hold_the_only_slot() -> None:
        with services.gate.slot():
            holding.set()
            release.wait(5)

    holder = threading.Thread(target=hold_the_only_slot)
    holder.start()
    assert holding.wait(5)
    reply = services.chat.send(alice, None, "queued question")

    def note(position: int) -> None:
        positions.append(position)
        release.set()  # the slot frees once the page has shown the position

    reply.on_queue = note
    assert "".join(reply) == "OK"
    holder.join(5)
    assert positions == [1]


def test_a_full_queue_ends_the_turn_with_a_sentence_and_keeps_the_message(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    from parley.core.background import BackgroundWork
    from parley.wiring.services import build_services

    no_line = services.settings.model_copy(
        update={"max_concurrent_calls": 1, "max_queued_calls": 0}
    )
    services = build_services(no_line, provider=scripted, background=BackgroundWork(workers=0))
    with services.gate.slot():  # someone else is being answered
        reply = services.chat.send(alice, None, "is anyone free?")
        assert list(reply) == []
    assert reply.result is not None and reply.result.status is MessageStatus.ERROR
    assert reply.result.error is not None and "very busy" in reply.result.error
    assert stored(services, reply.conversation_id)[0].content == "is anyone free?"
    assert scripted.requests == []


def flaky_insert(monkeypatch: pytest.MonkeyPatch, *, failures: int | None) -> list[AnswerRow]:
    """Make storing an answer fail `failures` times (None: always), then call through."""
    attempts: list[AnswerRow] = []
    insert = AnswerStore._insert

    def fail_then_insert(self: AnswerStore, row: AnswerRow, stream: ReplyStream) -> int:
        attempts.append(row)
        if failures is None or len(attempts) <= failures:
            raise StorageUnavailable("database error: OperationalError")
        return insert(self, row, stream)

    monkeypatch.setattr(AnswerStore, "_insert", fail_then_insert)
    monkeypatch.setattr(
        parley.chat.conversation.answer, "STORE_RETRY_DELAYS_S", (0.001, 0.001, 0.001)
    )
    return attempts


def test_storing_the_answer_survives_a_passing_database_error(
    services: Services,
    scripted: ScriptedProvider,
    alice: Principal,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts = flaky_insert(monkeypatch, failures=1)
    scripted.enqueue("Still ", "here.")
    reply = services.chat.send(alice, None, "Are you there?")
    assert "".join(reply) == "Still here."
    assert len(attempts) == 2
    assert reply.result is not None and reply.result.ok and reply.result.error is None
    _, answer = stored(services, reply.conversation_id)
    assert reply.result.message_id == answer.id
    assert (answer.status, answer.content) == (MessageStatus.COMPLETE, "Still here.")
    assert "trying again" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_an_answer_the_database_never_takes_ends_with_a_sentence_not_an_exception(
    services: Services,
    scripted: ScriptedProvider,
    alice: Principal,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts = flaky_insert(monkeypatch, failures=None)
    scripted.enqueue("Lost ", "words.")
    reply = services.chat.send(alice, None, "Remember this")
    assert "".join(reply) == "Lost words."  # the reader saw the text, and no exception
    assert len(attempts) == len(parley.chat.conversation.answer.STORE_RETRY_DELAYS_S) + 1
    assert reply.result is not None
    assert reply.result.message_id is None
    assert reply.result.status is MessageStatus.ERROR
    assert reply.result.error == NOT_SAVED
    assert reply.result.text == "Lost words."
    (user,) = stored(services, reply.conversation_id)  # the question was kept, no answer
    assert user.content == "Remember this"
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1
    assert failures[0].name == "parley.chat.conversation.answer"
    assert "Could not store the answer" in failures[0].getMessage()
    assert f"conversation {reply.conversation_id}" in failures[0].getMessage()
    assert failures[0].exc_info is not None  # the database error is in the log
    assert services.chat.needs_retry(alice, reply.conversation_id)


def test_an_answer_to_a_conversation_deleted_meanwhile_is_not_retried(
    services: Services,
    scripted: ScriptedProvider,
    alice: Principal,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: list[AnswerRow] = []
    insert = AnswerStore._insert

    def counted(self: AnswerStore, row: AnswerRow, stream: ReplyStream) -> int:
        attempts.append(row)
        return insert(self, row, stream)

    monkeypatch.setattr(AnswerStore, "_insert", counted)
    first = services.chat.send(alice, None, "Hello")
    list(first)
    attempts.clear()
    scripted.enqueue("A long ", "answer")
    reply = services.chat.send(alice, first.conversation_id, "Tell me more")
    chunks = iter(reply)
    assert next(chunks) == "A long "
    services.conversations.delete(alice, first.conversation_id)  # from another tab
    assert list(chunks) == ["answer"]  # never raises into the reader
    assert len(attempts) == 1  # a conflict is final: no retry
    assert reply.result is not None and reply.result.message_id is None
    assert reply.result.error == NOT_SAVED
