"""Conversations: ownership inside every query, order, rename, delete."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from parley.chat.conversation.conversations import ConversationInfo, ConversationService
from parley.chat.conversation.listing import date_groups
from parley.core.domain import Principal
from parley.core.errors import InvalidInput, NotFound
from parley.store.models import Message, Summary, VectorErasure
from parley.wiring.services import Services


def test_list_is_newest_first_and_only_mine(
    services: Services, alice: Principal, bob: Principal
) -> None:
    first = services.conversations.create(alice, title="first")
    second = services.conversations.create(alice, title="second")
    services.conversations.create(bob, title="bob's")
    assert [c.id for c in services.conversations.list_for(alice)] == [second.id, first.id]
    list(services.chat.send(alice, first.id, "bump"))  # activity moves it to the top
    assert [c.id for c in services.conversations.list_for(alice)] == [first.id, second.id]


def test_rename_cleans_the_title(services: Services, alice: Principal) -> None:
    conversation = services.conversations.create(alice)
    renamed = services.conversations.rename(alice, conversation.id, "  Trip \n to   Rome ")
    assert renamed.title == "Trip to Rome"
    with pytest.raises(InvalidInput):
        services.conversations.rename(alice, conversation.id, "   ")


def test_delete_removes_messages_too(services: Services, alice: Principal) -> None:
    reply = services.chat.send(alice, None, "hello")
    list(reply)
    services.conversations.delete(alice, reply.conversation_id)
    assert services.conversations.list_for(alice) == []
    with pytest.raises(NotFound):
        services.conversations.messages(alice, reply.conversation_id)


def test_first_message_titles_a_new_conversation(services: Services, alice: Principal) -> None:
    list(services.chat.send(alice, None, "  Plan a   weekend in Lisbon " + "please " * 20))
    (conversation,) = services.conversations.list_for(alice)
    assert conversation.title.startswith("Plan a weekend in Lisbon please")
    assert len(conversation.title) <= 60 and conversation.title.endswith("…")


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operation=st.sampled_from(["get", "messages", "rename", "delete"]), offset=st.integers(0, 3))
def test_no_operation_reaches_another_users_conversation(
    services: Services, alice: Principal, bob: Principal, operation: str, offset: int
) -> None:
    owned = services.conversations.create(alice, title="alice only")
    target = owned.id + offset  # alice's, or an id that does not exist: bob can't tell them apart
    with pytest.raises(NotFound):
        if operation == "get":
            services.conversations.get(bob, target)
        elif operation == "messages":
            services.conversations.messages(bob, target)
        elif operation == "rename":
            services.conversations.rename(bob, target, "mine now")
        else:
            services.conversations.delete(bob, target)
    assert services.conversations.get(alice, owned.id).title == "alice only"


# ---------------------------------------------------------------- erasing


class FlakyVectors:
    """Stands in for the vector store's erase: fails while `down`, records what it dropped."""

    def __init__(self) -> None:
        self.down = False
        self.dropped: list[int] = []

    def __call__(self, conversation_id: int) -> None:
        if self.down:
            raise ConnectionError("vector store unreachable")
        self.dropped.append(conversation_id)


def pending(services: Services) -> list[int]:
    with services._database.session() as session:
        return list(session.scalars(select(VectorErasure.conversation_id)))


def test_erasing_drops_messages_summaries_and_vectors(services: Services, alice: Principal) -> None:
    vectors = FlakyVectors()
    conversations = ConversationService(services._database, on_delete=vectors)
    reply = services.chat.send(alice, None, "hello")
    list(reply)
    cid = reply.conversation_id
    with services._database.session() as session:
        session.add(
            Summary(
                conversation_id=cid,
                version=1,
                first_turn_id=1,
                last_turn_id=2,
                content="s",
                method="extractive",
            )
        )
    conversations.delete(alice, cid)
    with services._database.session() as session:
        assert session.scalars(select(Message).where(Message.conversation_id == cid)).all() == []
        assert session.scalars(select(Summary).where(Summary.conversation_id == cid)).all() == []
    assert vectors.dropped == [cid] and pending(services) == []


def test_a_failed_vector_erase_is_kept_and_retried(
    services: Services, alice: Principal, caplog: pytest.LogCaptureFixture
) -> None:
    vectors = FlakyVectors()
    conversations = ConversationService(services._database, on_delete=vectors)
    first = conversations.create(alice, title="one")
    vectors.down = True
    conversations.delete(alice, first.id)  # the user's deletion stands
    assert conversations.list_for(alice) == []
    assert pending(services) == [first.id]
    assert "will retry at start-up" in caplog.text
    assert conversations.sweep_erasures() == 1  # still down: still pending
    vectors.down = False
    assert conversations.sweep_erasures() == 0
    assert vectors.dropped == [first.id] and pending(services) == []


def test_ids_are_never_reused(services: Services, alice: Principal) -> None:
    older = services.conversations.create(alice, title="older")
    newest = services.conversations.create(alice, title="newest")
    services.conversations.delete(alice, newest.id)
    again = services.conversations.create(alice, title="again")
    assert again.id > newest.id > older.id


# ---------------------------------------------------------------- the sidebar's list


def test_the_sidebar_lists_pinned_first_then_a_page_of_the_rest_and_archived_apart(
    services: Services, alice: Principal, bob: Principal
) -> None:
    made = [services.conversations.create(alice, title=f"c{n}").id for n in range(7)]
    services.conversations.create(bob, title="bob's")
    services.conversations.set_pinned(alice, made[0], True)  # the oldest, pinned
    services.conversations.set_archived(alice, made[1], True)
    page = services.conversations.listing(alice, limit=3)
    assert [c.id for c in page.pinned] == [made[0]] and page.pinned[0].pinned
    newest_first = [i for i in reversed(made) if i not in (made[0], made[1])]
    assert [c.id for c in page.recent] == newest_first[:3] and page.more
    everything = services.conversations.listing(alice, limit=10)
    assert [c.id for c in everything.recent] == newest_first and not everything.more
    archived = services.conversations.listing(alice, archived=True)
    assert ([c.id for c in archived.recent], archived.pinned) == ([made[1]], [])
    assert archived.recent[0].archived
    services.conversations.set_archived(alice, made[1], False)
    services.conversations.set_pinned(alice, made[0], False)
    assert len(services.conversations.listing(alice, limit=10).recent) == 7
    for change in (services.conversations.set_pinned, services.conversations.set_archived):
        with pytest.raises(NotFound):
            change(bob, made[2], True)  # not bob's
    assert not services.conversations.get(alice, made[2]).pinned


def test_conversations_are_grouped_by_the_day_they_were_last_active() -> None:
    today = date(2026, 12, 3)

    def at(day: date, n: int) -> ConversationInfo:
        when = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
        return ConversationInfo(n, f"c{n}", when, when)

    rows = [at(today, 1), at(today - timedelta(days=1), 2), at(today - timedelta(days=7), 3)]
    rows.append(at(today - timedelta(days=8), 4))
    assert [(name, [c.id for c in group]) for name, group in date_groups(rows, today)] == [
        ("Today", [1]),
        ("Previous 7 days", [2, 3]),
        ("Older", [4]),
    ]
    assert [name for name, _ in date_groups(rows[3:], today)] == ["Older"]  # none empty
