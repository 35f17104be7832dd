"""Feedback on answers: one's own answers only, changed in place, audited, read by admins."""

from __future__ import annotations

import pytest

from parley.chat.conversation.feedback import MAX_COMMENT_CHARS
from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.domain import MessageRole, Principal, Rating, Role
from parley.core.errors import InvalidInput, NotFound, PermissionDenied, StreamInterrupted
from parley.wiring.services import Services
from tests.support import ROOT, audit_records


def answered(services: Services, who: Principal, scripted: ScriptedProvider) -> tuple[int, int]:
    scripted.enqueue("Herons wade in shallow water.")
    reply = services.chat.send(who, None, "Tell me about herons")
    list(reply)
    assert reply.result is not None and reply.result.message_id is not None
    return reply.conversation_id, reply.result.message_id


def test_a_rating_is_kept_changed_and_taken_back_with_an_audit_record_each_time(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    conversation, answer = answered(services, alice, scripted)
    services.feedback.give(alice, answer, Rating.UP)
    assert services.feedback.of_conversation(alice, conversation)[answer].rating is Rating.UP
    services.feedback.give(alice, answer, Rating.DOWN, "  Too short.  ")
    given = services.feedback.of_conversation(alice, conversation)[answer]
    assert (given.rating, given.comment) == (Rating.DOWN, "Too short.")
    services.feedback.give(alice, answer, Rating.DOWN, "Too short.")  # unchanged: no record
    services.feedback.give(alice, answer, None)
    assert services.feedback.of_conversation(alice, conversation) == {}
    records = [r for r in audit_records(services._database) if r["kind"] == "feedback_given"]
    assert [r["data"]["rating"] for r in records] == ["up", "down", None]
    assert all("Too short" not in str(r) for r in records)  # the comment by hash only
    assert records[1]["data"]["comment_sha256"]


def test_only_ones_own_finished_answers_can_be_rated(
    services: Services, scripted: ScriptedProvider, alice: Principal, bob: Principal
) -> None:
    conversation, answer = answered(services, alice, scripted)
    admin = services.accounts.create_user(
        ROOT, name="ada", password="ada-password", role=Role.ADMIN
    )
    for stranger in (bob, admin):
        with pytest.raises(NotFound):
            services.feedback.give(stranger, answer, Rating.UP)
        assert services.feedback.of_conversation(stranger, conversation) == {}
    question = answer - 1
    messages = services.conversations.messages(alice, conversation)
    assert [m.id for m in messages if m.role is MessageRole.USER] == [question]
    with pytest.raises(NotFound):
        services.feedback.give(alice, question, Rating.UP)  # a question is no answer
    scripted.enqueue_error(StreamInterrupted("cut"), chunks=[])
    failed = services.chat.send(alice, conversation, "And egrets?")
    list(failed)
    assert failed.result is not None and failed.result.message_id is not None
    with pytest.raises(NotFound):
        services.feedback.give(alice, failed.result.message_id, Rating.DOWN)  # an error
    with pytest.raises(NotFound):
        services.feedback.give(alice, 10**9, Rating.UP)
    assert services.feedback.of_conversation(alice, conversation) == {}


def test_comments_are_checked(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    _, answer = answered(services, alice, scripted)
    with pytest.raises(InvalidInput, match="limit"):
        services.feedback.give(alice, answer, Rating.UP, "x" * (MAX_COMMENT_CHARS + 1))
    with pytest.raises(InvalidInput, match="thumbs"):
        services.feedback.give(alice, answer, None, "a comment without a rating")
    services.feedback.give(alice, answer, Rating.UP, "   ")  # blank: no comment
    (row,) = services.feedback.find(ROOT)
    assert row.comment is None


def test_admins_read_feedback_with_the_answers_provenance_and_it_goes_with_the_answer(
    services: Services, scripted: ScriptedProvider, alice: Principal, bob: Principal
) -> None:
    mine, up = answered(services, alice, scripted)
    _, down = answered(services, bob, scripted)
    services.feedback.give(alice, up, Rating.UP, "Helpful")
    services.feedback.give(bob, down, Rating.DOWN)
    rows = services.feedback.find(ROOT)
    assert [(r.user, r.message_id, r.rating) for r in rows] == [
        ("bob", down, Rating.DOWN),
        ("alice", up, Rating.UP),
    ]
    assert rows[1].comment == "Helpful" and rows[1].model == "scripted"
    assert rows[1].prompt is not None and rows[1].prompt.total_tokens > 0
    assert [r.user for r in services.feedback.find(ROOT, rating=Rating.UP)] == ["alice"]
    assert [r.user for r in services.feedback.find(ROOT, before_id=rows[0].id)] == ["alice"]
    with pytest.raises(PermissionDenied):
        services.feedback.find(alice)
    services.conversations.delete(alice, mine)
    assert [r.user for r in services.feedback.find(ROOT)] == ["bob"]
