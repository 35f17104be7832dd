"""Answers while they stream: checkpointed, and kept as interrupted when their process dies."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from parley.chat.conversation.drafts import BROKE_OFF, KEEP_SETTLED_S, STALE_S
from parley.chat.conversation.replies import ReplyStream
from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.background import BackgroundWork
from parley.core.config import Settings, get_settings
from parley.core.domain import CallOutcome, MessageRole, MessageStatus, Principal
from parley.core.errors import NotFound
from parley.fakes.anthropic_server import FakeAnthropic, Reply
from parley.memory import message_tokens
from parley.store.db import Database
from parley.store.models import (
    AnswerDraft,
    Message,
    QuotaReservation,
    UsageEntry,
    utcnow,
)
from parley.wiring.services import Services, build_services
from tests.support import ROOT, audit_records, verify_audit

PARLEY = str(Path(sys.executable).with_name("parley"))
LATER = timedelta(seconds=STALE_S + 1)  # when a draft not checkpointed since now is stale


def drafts(services: Services) -> list[AnswerDraft]:
    with services._database.session() as session:
        return list(session.scalars(select(AnswerDraft).order_by(AnswerDraft.id)))


def answers(services: Services, conversation_id: int) -> list[Message]:
    with services._database.session() as session:
        return list(
            session.scalars(
                select(Message)
                .where(
                    Message.conversation_id == conversation_id,
                    Message.role == MessageRole.ASSISTANT,
                )
                .order_by(Message.id)
            )
        )


def test_a_streaming_answer_is_checkpointed_and_its_draft_goes_with_the_answer(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue("One ", "two ", "three ", "four.")
    reply = services.chat.send(alice, None, "Count to four")
    chunks = iter(reply)
    assert [next(chunks), next(chunks)] == ["One ", "two "]
    assert services.drafts.checkpoint() == 1
    (draft,) = drafts(services)
    assert (draft.content, draft.owner) == ("One two ", services.drafts.token)
    assert draft.context is not None  # what went into the prompt, kept from the start
    assert list(chunks) == ["three ", "four."]
    assert drafts(services) == []  # stored with the answer, in one transaction
    assert [a.status for a in answers(services, reply.conversation_id)] == [MessageStatus.COMPLETE]
    assert services.drafts.checkpoint() == 0  # nothing left to keep


def test_a_fresh_draft_is_left_alone_and_a_stale_one_is_kept_as_interrupted(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue("Half ", "an ", "answer ", "and more.")
    reply = services.chat.send(alice, None, "Tell me")
    chunks = iter(reply)
    next(chunks), next(chunks)
    services.drafts.checkpoint()
    services.drafts.forget(reply.draft_id)  # its process stops checkpointing: as if dead
    assert services.draft_settler.settle() == 0  # checkpointed a moment ago: alive
    assert services.draft_settler.settle(now=utcnow() + LATER) == 1
    (kept,) = answers(services, reply.conversation_id)
    assert (kept.status, kept.content, kept.error) == (
        MessageStatus.INTERRUPTED,
        "Half an ",
        BROKE_OFF,
    )
    assert kept.context is not None
    (recorded,) = [r for r in audit_records(services._database) if r["kind"] == "answer"]
    assert recorded["data"]["status"] == "interrupted"
    assert recorded["data"]["prompt"]["turn_ids"] is not None  # what went into the prompt
    with services._database.session() as session:
        (entry,) = session.scalars(select(UsageEntry))
    assert entry.outcome is CallOutcome.INTERRUPTED and entry.output_tokens > 0
    assert kept.estimated_input_tokens and entry.input_tokens == kept.estimated_input_tokens
    assert verify_audit(services._database).broken is None
    # The owner was only slow: its answer supersedes the kept one (a stored turn's text
    # never changes), and the call is metered once.
    assert list(chunks) == ["answer ", "and more."]
    superseded, done = answers(services, reply.conversation_id)
    assert (superseded.id, superseded.status) == (kept.id, MessageStatus.SUPERSEDED)
    assert (done.status, done.content) == (MessageStatus.COMPLETE, "Half an answer and more.")
    assert drafts(services) == []
    with services._database.session() as session:
        assert len(session.scalars(select(UsageEntry)).all()) == 1  # the same call id


def test_a_draft_the_conversation_went_on_without_is_kept_out_of_the_way(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue("Lost ", "words")
    reply = services.chat.send(alice, None, "First question")
    chunks = iter(reply)
    next(chunks)
    services.drafts.checkpoint()
    services.drafts.forget(reply.draft_id)
    scripted.enqueue("A new answer.")  # the user asks again before the draft is stale
    assert "".join(services.chat.send(alice, reply.conversation_id, "Second")) == "A new answer."
    assert services.draft_settler.settle(now=utcnow() + LATER) == 1
    newer, kept = answers(services, reply.conversation_id)  # kept later, with a later id
    assert (kept.status, kept.content) == (MessageStatus.SUPERSEDED, "Lost ")
    assert kept.id > newer.id and newer.status is MessageStatus.COMPLETE
    shown = services.conversations.messages(alice, reply.conversation_id)
    assert [m.content for m in shown if m.status is not MessageStatus.SUPERSEDED] == [
        "First question",
        "Second",
        "A new answer.",
    ]
    reply.close()  # the owner wakes up: its answer stays out of the way too
    assert [a.status for a in answers(services, reply.conversation_id)] == [
        MessageStatus.COMPLETE,
        MessageStatus.SUPERSEDED,
        MessageStatus.SUPERSEDED,
    ]


def test_a_dead_answer_asked_for_again_is_kept_beside_the_first_and_shown(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    """ "Answer again" while the first answer is there: the question has an answer from
    before, which is no reason to put the new one out of the way."""
    scripted.enqueue("The first answer.")
    first = services.chat.send(alice, None, "Question")
    list(first)
    conversation = first.conversation_id
    old = services.conversations.thread(alice, conversation).messages[1]
    scripted.enqueue("Second ", "try ", "here.")
    again = services.chat.regenerate(alice, conversation, old.id)
    chunks = iter(again)
    next(chunks)
    services.drafts.checkpoint()
    services.drafts.forget(again.draft_id)  # its process dies mid-answer
    assert services.draft_settler.settle(now=utcnow() + LATER) == 1
    thread = services.conversations.thread(alice, conversation)
    assert [m.content for m in thread.messages] == ["Question", "Second "]
    assert thread.messages[1].status is MessageStatus.INTERRUPTED
    assert thread.branching[thread.messages[1].id].previous == old.id
    assert services.chat.needs_retry(alice, conversation)  # a broken answer: Retry offered
    # The owner was only slow: its whole answer replaces the kept part, and shows.
    assert list(chunks) == ["try ", "here."]
    thread = services.conversations.thread(alice, conversation)
    assert [m.content for m in thread.messages] == ["Question", "Second try here."]
    assert thread.messages[1].status is MessageStatus.COMPLETE


def test_a_draft_of_an_erased_conversation_goes_with_it(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue("Secret ", "words")
    reply = services.chat.send(alice, None, "Something private")
    chunks = iter(reply)
    next(chunks)
    services.drafts.checkpoint()
    services.drafts.forget(reply.draft_id)
    services.conversations.delete(alice, reply.conversation_id)
    assert drafts(services) == []
    assert services.draft_settler.settle(now=utcnow() + LATER) == 0


def test_an_answer_whose_process_is_killed_is_kept_and_retry_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real `parley chat` process streams from the fake API and is killed mid-answer;
    this process keeps what it had checkpointed as interrupted, and Retry answers."""
    words = [f"word{i} " for i in range(60)]
    with FakeAnthropic(default_reply=Reply(chunks=words, chunk_delay_s=0.1)) as fake:
        for name, value in {
            "ANTHROPIC_API_KEY": "sk-ant-test",
            "ANTHROPIC_BASE_URL": fake.base_url,
            "PARLEY_ANTHROPIC_MAX_RETRIES": "0",
            "PARLEY_MODEL_TITLES": "false",
        }.items():
            monkeypatch.setenv(name, value)
        assert subprocess.run([PARLEY, "db", "upgrade"], check=False).returncode == 0
        services = build_services(get_settings(), eager=False)
        services.accounts.create_user(ROOT, name="alice", password="alice-password")
        child = subprocess.Popen(
            [PARLEY, "chat", "--user", "alice", "Say sixty words"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # until a checkpoint holds some words
                found = drafts(services)
                if found and found[0].content.count("word") >= 5:
                    break
                assert child.poll() is None, "the child ended before it was killed"
                time.sleep(0.1)
            else:
                raise AssertionError("the child never checkpointed its answer")
        finally:
            child.send_signal(signal.SIGKILL)
            child.communicate(timeout=10)  # reaps it and closes its pipes
        (draft,) = drafts(services)
        assert services.draft_settler.settle() == 0  # too soon to call it dead
        assert services.draft_settler.settle(now=draft.heartbeat_at + LATER) == 1
        (kept,) = answers(services, draft.conversation_id)
        assert kept.status is MessageStatus.INTERRUPTED
        assert kept.content.startswith("word0 word1 word2 word3 word4")
        assert "".join(words).startswith(kept.content)
        principal = services.accounts.authenticate(name="alice", password="alice-password")
        assert services.chat.needs_retry(principal, draft.conversation_id)
        retried = services.chat.retry(principal, draft.conversation_id)
        assert "".join(retried) == "".join(words)
        statuses = [a.status for a in answers(services, draft.conversation_id)]
        assert statuses == [MessageStatus.SUPERSEDED, MessageStatus.COMPLETE]
        with services._database.session() as session:
            outcomes = sorted(str(e.outcome) for e in session.scalars(select(UsageEntry)))
        assert outcomes == ["complete", "interrupted"]  # the killed call is metered
        assert verify_audit(services._database).broken is None
        services.close()


def dead_after_some_text(services: Services, reply: ReplyStream, chunks: int = 1) -> Iterator[str]:
    """Read `chunks` chunks, checkpoint them, and stop keeping the draft: as if its
    process had died (the stream itself is left for a test to finish, as a late owner)."""
    reading = iter(reply)
    for _ in range(chunks):
        next(reading)
    services.drafts.checkpoint()
    services.drafts.forget(reply.draft_id)
    return reading


def visible(services: Services, principal: Principal, conversation_id: int) -> list[str]:
    return [
        m.content
        for m in services.conversations.messages(principal, conversation_id)
        if m.status is not MessageStatus.SUPERSEDED
    ]


def test_counting_tokens_through_the_api_leaves_the_chat_call_metered(
    settings: Settings, database: Database, scripted: ScriptedProvider
) -> None:
    del database
    services = build_services(
        settings.model_copy(update={"anthropic_count_tokens": True}),
        provider=scripted,
        background=BackgroundWork(workers=0),
    )
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    scripted.enqueue("Counted.")
    assert "".join(services.chat.send(alice, None, "Count me")) == "Counted."
    with services._database.session() as session:
        rows = session.execute(select(UsageEntry.purpose, UsageEntry.call_id)).all()
    assert sorted(str(purpose) for purpose, _ in rows) == ["chat", "count_tokens"]
    assert len({call_id for _, call_id in rows}) == 2


def test_a_late_owner_after_a_newer_question_is_kept_out_of_the_way(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue("Half ", "an answer.")
    reply = services.chat.send(alice, None, "Q1")
    late = dead_after_some_text(services, reply)
    services.draft_settler.settle(now=utcnow() + LATER)
    assert visible(services, alice, reply.conversation_id) == ["Q1", "Half "]
    scripted.enqueue("Answer two.")
    assert "".join(services.chat.send(alice, reply.conversation_id, "Q2")) == "Answer two."
    assert "".join(late) == "an answer."  # the owner was only stuck; it stores now
    assert visible(services, alice, reply.conversation_id) == ["Q1", "Half ", "Q2", "Answer two."]


def test_a_retry_before_the_dead_draft_is_stale_leaves_one_answer(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue("Dead ", "words")
    reply = services.chat.send(alice, None, "Q1")
    dead_after_some_text(services, reply)
    assert services.chat.needs_retry(alice, reply.conversation_id)  # nothing stored yet
    scripted.enqueue("Full ", "answer.")
    retried = services.chat.retry(alice, reply.conversation_id)
    first = next(iter(retried))  # the retry streams while the dead draft goes stale
    with services._database.session() as session:
        session.execute(
            update(AnswerDraft)
            .where(AnswerDraft.id == reply.draft_id)
            .values(heartbeat_at=utcnow() - LATER)
        )
    assert services.draft_settler.settle() == 1  # the dead one; the retry's is alive
    assert first + "".join(retried) == "Full answer."
    assert visible(services, alice, reply.conversation_id) == ["Q1", "Full answer."]


def test_a_late_owner_replaces_the_estimate_in_the_ledger_with_its_real_figures(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue("Half ", "an ", "answer.")
    reply = services.chat.send(alice, None, "Q1")
    late = dead_after_some_text(services, reply, chunks=2)
    services.draft_settler.settle(now=utcnow() + LATER)
    with services._database.session() as session:
        (estimate,) = session.scalars(select(UsageEntry))
    assert estimate.estimated and estimate.output_tokens == message_tokens("Half an ")
    "".join(late)
    with services._database.session() as session:
        (real,) = session.scalars(select(UsageEntry))
    assert (real.id, real.estimated, real.outcome) == (estimate.id, False, CallOutcome.COMPLETE)
    assert real.output_tokens == 3  # the scripted API's own count: one per chunk
    assert verify_audit(services._database).broken is None


def test_another_user_cannot_make_a_conversation_settle(
    services: Services, scripted: ScriptedProvider, alice: Principal, bob: Principal
) -> None:
    scripted.enqueue("Alice's ", "words")
    reply = services.chat.send(alice, None, "Q1")
    dead_after_some_text(services, reply)
    with services._database.session() as session:  # the draft is stale already
        session.execute(update(AnswerDraft).values(heartbeat_at=utcnow() - LATER))
    for attempt in (
        lambda: services.conversations.messages(bob, reply.conversation_id),
        lambda: services.chat.needs_retry(bob, reply.conversation_id),
        lambda: services.chat.retry(bob, reply.conversation_id),
    ):
        with pytest.raises(NotFound):
            attempt()
    assert [d.settled_message_id for d in drafts(services)] == [None]  # untouched
    assert visible(services, alice, reply.conversation_id) == ["Q1", "Alice's "]


def test_settling_frees_the_dead_process_quota_hold(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    services.quotas.set_quota(ROOT, alice.user_id, messages_per_day=2, tokens_per_day=None)
    scripted.enqueue("Held ", "words")
    reply = services.chat.send(alice, None, "Q1")
    dead_after_some_text(services, reply)
    with services._database.session() as session:
        assert session.scalar(select(func.count(QuotaReservation.id))) == 1
    services.draft_settler.settle(now=utcnow() + LATER)
    with services._database.session() as session:
        assert session.scalar(select(func.count(QuotaReservation.id))) == 0
    scripted.enqueue("Second.")  # one message used of two: the next one is allowed
    assert "".join(services.chat.retry(alice, reply.conversation_id)) == "Second."


def test_a_settled_draft_waits_an_hour_for_its_owner_then_goes(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue("Half ", "an answer.")
    reply = services.chat.send(alice, None, "Q1")
    late = dead_after_some_text(services, reply)
    services.draft_settler.settle(now=utcnow() + LATER)
    (tombstone,) = drafts(services)
    assert tombstone.content == "" and tombstone.settled_message_id is not None
    assert services.draft_settler.settle(now=utcnow() + LATER * 20) == 0
    assert len(drafts(services)) == 1  # a few minutes on: still there for the owner
    "".join(late)
    assert visible(services, alice, reply.conversation_id) == ["Q1", "Half an answer."]
    assert drafts(services) == []

    scripted.enqueue("Gone ", "owner")
    other = services.chat.send(alice, None, "Q2")
    dead_after_some_text(services, other)
    services.draft_settler.settle(now=utcnow() + LATER)
    services.draft_settler.settle(now=utcnow() + LATER + timedelta(seconds=KEEP_SETTLED_S))
    assert drafts(services) == []
