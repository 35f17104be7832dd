"""Conversations: ownership inside every query, order, rename, delete."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.domain import Principal
from parley.errors import InvalidInput, NotFound
from wiring.services import Services


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
