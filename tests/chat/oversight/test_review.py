"""The admins' conversation review: filters, pagination, break-glass with a reason the
owner sees, grants that expire, and the audit trail's history and exports."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import update

import parley.chat.conversation.grants
from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.chat.oversight.review import ReviewFilter
from parley.core.domain import MessageStatus, Principal, Rating, Role
from parley.core.errors import InvalidInput, NotFound, PermissionDenied, ProviderError
from parley.store.audit import text_hash
from parley.store.models import Message
from parley.wiring.services import Services
from tests.support import ROOT


@pytest.fixture
def admin(services: Services) -> Principal:
    return services.accounts.create_user(
        ROOT, name="root", password="root-password", role=Role.ADMIN
    )


def ask(services: Services, user: Principal, question: str, conversation: int | None = None) -> int:
    reply = services.chat.send(user, conversation, question)
    list(reply)
    return reply.conversation_id


def backdate(services: Services, conversation_id: int, days: int) -> None:
    """Move a conversation's messages `days` into the past (as if asked then)."""
    with services._database.session() as session:
        session.execute(
            update(Message)
            .where(Message.conversation_id == conversation_id)
            .values(created_at=datetime.now(UTC) - timedelta(days=days))
        )


def test_filters_find_a_users_conversation_from_yesterday(
    services: Services,
    scripted: ScriptedProvider,
    admin: Principal,
    alice: Principal,
    bob: Principal,
) -> None:
    yesterday = ask(services, alice, "What about the budget for the harbour?")
    backdate(services, yesterday, 1)
    today = ask(services, alice, "Plan the picnic")
    scripted.model = "claude-other"
    scripted.enqueue_error(ProviderError("down", user_message="The model is down."))
    failed = ask(services, bob, "Is the harbour open?")
    review = services.review

    def ids(**where: object) -> list[int]:
        return [r.id for r in review.find(admin, ReviewFilter(**where)).rows]  # type: ignore[arg-type]

    day = date.today() - timedelta(days=1)
    assert ids(user="alice", since=day, until=day) == [yesterday]
    assert ids(user="alice") == [today, yesterday]
    assert ids(text="harbour") == [failed, yesterday]
    assert ids(text="HARBOUR", user="bob") == [failed]
    assert ids(status=MessageStatus.ERROR) == [failed]
    assert ids(model="scripted") == [today, yesterday]
    assert ids(model="claude-other") == [failed]
    assert review.models(admin) == ["claude-other", "scripted"]
    assert ids(text="100%") == []  # wildcards are taken literally
    with pytest.raises(NotFound):
        review.find(admin, ReviewFilter(user="nobody"))
    with pytest.raises(InvalidInput):
        review.find(admin, ReviewFilter(since=date.today(), until=day))
    searched = services.audit.history(admin, kinds=["conversations_searched"]).records
    # Every search that read someone's conversations is theirs to see, matched or not:
    # alice's were read by "harbour" (a match) and "100%" (none); bob's by all three.
    alice_saw = [a for a in services.review.looks(alice) if a.kind == "conversations_searched"]
    assert [(a.admin, a.matched) for a in alice_saw] == [("root", False), ("root", True)]
    bob_saw = [a for a in services.review.looks(bob) if a.kind == "conversations_searched"]
    assert [a.matched for a in bob_saw] == [False, True, True]
    keys = services._database.audit_keys
    assert keys is not None
    assert {json.loads(r.data)["text_hmac"] for r in searched} == {
        keys.keyed_hash("admin search", t) for t in ("harbour", "HARBOUR", "100%")
    }
    assert "harbour" not in json.dumps([r.exported() for r in searched])
    assert text_hash("harbour") not in json.dumps(
        [r.exported() for r in searched]
    )  # keyed: no guessing without it


def test_answers_are_found_by_their_users_thumbs_and_shown_with_them(
    services: Services, admin: Principal, alice: Principal, bob: Principal
) -> None:
    liked = ask(services, alice, "A good answer, please")
    disliked = ask(services, bob, "A bad one")
    unrated = ask(services, alice, "No opinion")
    for who, conversation, rating, comment in (
        (alice, liked, Rating.UP, None),
        (bob, disliked, Rating.DOWN, "It missed the point"),
    ):
        answer = services.conversations.thread(who, conversation).messages[1]
        services.feedback.give(who, answer.id, rating, comment)

    def ids(rating: Rating | None) -> list[int]:
        return [r.id for r in services.review.find(admin, ReviewFilter(rating=rating)).rows]

    assert ids(Rating.DOWN) == [disliked]
    assert ids(Rating.UP) == [liked]
    assert ids(None) == [unrated, disliked, liked]
    review = services.review.open(admin, disliked, reason="Checking a thumbs-down")
    rated = [(m.rating, m.comment) for m in review.messages]
    assert rated == [(None, None), (Rating.DOWN, "It missed the point")]


def test_pages_split_the_rows_and_count_them_all(
    services: Services, admin: Principal, alice: Principal
) -> None:
    made = [ask(services, alice, f"question {n}") for n in range(7)]
    first = services.review.find(admin, ReviewFilter(), per_page=3)
    third = services.review.find(admin, ReviewFilter(), page=2, per_page=3)
    assert first.total == third.total == 7
    assert [r.id for r in first.rows] == made[::-1][:3]
    assert [r.id for r in third.rows] == made[:1]
    assert first.rows[0].messages == 2 and first.rows[0].owner == "alice"


def test_break_glass_needs_a_reason_is_recorded_and_shown_to_the_owner(
    services: Services, admin: Principal, alice: Principal, bob: Principal
) -> None:
    conversation = ask(services, alice, "My private worry")
    with pytest.raises(PermissionDenied):  # no reason given yet
        services.review.read(admin, conversation)
    with pytest.raises(PermissionDenied):
        services.conversations.messages_of(admin, conversation)
    with pytest.raises(InvalidInput):
        services.review.open(admin, conversation, "   because ")
    assert services.review.looks(alice) == []
    opened = services.review.open(admin, conversation, "Support ticket 4411: wrong answer")
    assert opened.owner == "alice" and opened.messages[0].message.content == "My private worry"
    answer = opened.messages[1]
    assert answer.prompt is not None and answer.prompt.strategy == "token_window"
    assert services.review.read(admin, conversation).id == conversation
    (access,) = services.review.looks(alice)
    assert (access.admin, access.reason, access.conversation_id) == (
        "root",
        "Support ticket 4411: wrong answer",
        conversation,
    )
    assert access.title is not None
    assert services.review.looks(bob) == []  # bob sees only accesses to his own
    with pytest.raises(PermissionDenied):
        services.review.open(alice, conversation, "I am curious about this")


def test_a_grant_expires(
    services: Services, admin: Principal, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversation = ask(services, alice, "Hello")
    services.review.open(admin, conversation, "Checking a reported bug")
    assert services.review.granted(admin, conversation)
    monkeypatch.setattr(parley.chat.conversation.grants, "GRANT_LIFETIME", timedelta(0))
    assert not services.review.granted(admin, conversation)
    with pytest.raises(PermissionDenied):
        services.review.read(admin, conversation)


def test_an_admins_own_conversation_needs_no_reason(services: Services, admin: Principal) -> None:
    conversation = ask(services, admin, "My own notes")
    assert services.review.open(admin, conversation, "").id == conversation
    assert services.audit.history(admin, kinds=["conversation_opened"]).total == 0


def test_history_and_exports(services: Services, admin: Principal, alice: Principal) -> None:
    ask(services, alice, "One")
    services.quotas.set_quota(admin, alice.user_id, messages_per_day=3, tokens_per_day=None)
    page = services.audit.history(admin, user_id=alice.user_id, per_page=2)
    assert page.total == 4  # nothing of root's own
    assert [r.kind for r in page.records] == ["quota_set", "answer"]
    kinds = {r.kind for r in services.audit.history(admin, user_id=alice.user_id).records}
    assert kinds == {"user_created", "ai_call", "answer", "quota_set"}
    lines = services.audit.export(admin, format="jsonl", user_id=alice.user_id).splitlines()
    assert [json.loads(line)["kind"] for line in lines][-1] == "audit_exported"
    table = services.audit.export(admin, format="csv").splitlines()
    assert table[0].startswith("id,at,actor_id,actor,about_id,kind")
    assert services.audit.verify(admin).broken is None
    with pytest.raises(PermissionDenied):
        services.audit.history(alice)
