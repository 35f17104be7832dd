"""Conversations: ownership inside every query, order, rename, delete."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from parley.chat.conversation.conversations import ConversationService
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
