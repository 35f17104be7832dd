"""Break-glass grants (`parley/chat/conversation/grants.py`): a grant is a recorded
`ConversationOpened` event, found by its typed conversation id, for its admin only."""

from __future__ import annotations

import pytest

from parley.core.audit_events import ConversationOpened
from parley.core.domain import Principal, Role
from parley.core.errors import GrantRequired, NotFound
from parley.store.audit import append_in
from parley.store.models import Conversation
from parley.wiring.services import Services
from tests.support import ROOT


@pytest.fixture
def admins(services: Services) -> tuple[Principal, Principal]:
    return tuple(  # type: ignore[return-value]
        services.accounts.create_user(ROOT, name=n, password=f"{n}-password", role=Role.ADMIN)
        for n in ("root", "second")
    )


def conversation_of(services: Services, user: Principal) -> int:
    reply = services.chat.send(user, None, "Hello")
    list(reply)
    return reply.conversation_id


def test_a_grant_opens_that_conversation_for_that_admin_only(
    services: Services, admins: tuple[Principal, Principal], alice: Principal
) -> None:
    first, other = conversation_of(services, alice), conversation_of(services, alice)
    root, second = admins
    services.review.open(root, first, "A reported billing problem")
    assert services.review.read(root, first).id == first
    with pytest.raises(GrantRequired):
        services.review.read(root, other)  # another conversation of the same owner
    with pytest.raises(GrantRequired):
        services.review.read(second, first)  # another admin


def test_a_record_naming_another_conversation_in_its_text_is_no_grant(
    services: Services, admins: tuple[Principal, Principal], alice: Principal
) -> None:
    """The grant is the event's conversation id, not text that looks like one."""
    first, other = conversation_of(services, alice), conversation_of(services, alice)
    root, _ = admins
    with services._database.session(write_lock=True) as session:
        append_in(
            session,
            ConversationOpened(conversation_id=first, reason=f"conversation {other}"),
            actor_id=root.user_id,
            actor=root.name,
            about_id=alice.user_id,
        )
    assert services.review.granted(root, first)
    assert not services.review.granted(root, other)


def test_a_grant_about_another_owner_opens_nothing_of_this_one(
    services: Services, admins: tuple[Principal, Principal], alice: Principal, bob: Principal
) -> None:
    """A record about bob that names alice's conversation (made by hand) is no grant:
    the owner is part of the lookup."""
    alices = conversation_of(services, alice)
    root, _ = admins
    with services._database.session(write_lock=True) as session:
        append_in(
            session,
            ConversationOpened(conversation_id=alices, reason="Looking at something else"),
            actor_id=root.user_id,
            actor=root.name,
            about_id=bob.user_id,
        )
        assert session.get(Conversation, alices) is not None
    assert not services.review.granted(root, alices)


def test_a_user_is_told_nothing_exists(
    services: Services, alice: Principal, bob: Principal
) -> None:
    with pytest.raises(NotFound):
        services.conversations.messages(bob, conversation_of(services, alice))
