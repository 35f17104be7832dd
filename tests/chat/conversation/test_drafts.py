"""Answers while they stream: checkpointed, and kept as interrupted when their process dies."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from parley.chat.conversation.drafts import BROKE_OFF, STALE_S
from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.config import get_settings
from parley.core.domain import CallOutcome, MessageRole, MessageStatus, Principal
from parley.fakes.anthropic_server import FakeAnthropic, Reply
from parley.store.models import AnswerDraft, Message, UsageEntry, utcnow
from parley.wiring.services import Services, build_services
from tests.support import ROOT, verify_audit

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
