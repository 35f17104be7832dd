"""Roles everywhere, for the admin services (review, audit trail, erasure): a user, a
ghost or a borrowed id is refused and nothing changes, not even the audit trail; an
admin without a recorded reason cannot read another user's conversation; and the same
refusals hold at the command line and on the chat page, whatever id is tried."""

from __future__ import annotations

import inspect
import json

import pytest

from parley.chat.oversight.audit_trail import AuditTrail
from parley.chat.oversight.erasure import ErasureService
from parley.chat.oversight.review import ReviewFilter, ReviewService
from parley.core.domain import Principal, Role
from parley.core.errors import PermissionDenied
from tests.support import audit_records
from tests.wiring.test_authorization import (
    Guarded,
    World,
    assert_refused,
)

GUARDED: tuple[Guarded, ...] = (
    Guarded(
        "review.find",
        PermissionDenied,
        lambda a: a.services.review.find(a.principal, ReviewFilter()),
    ),
    Guarded(
        "review.find (text)",
        PermissionDenied,
        lambda a: a.services.review.find(a.principal, ReviewFilter(text="secrets")),
    ),
    Guarded("review.models", PermissionDenied, lambda a: a.services.review.models(a.principal)),
    Guarded(
        "review.open",
        PermissionDenied,
        lambda a: a.services.review.open(a.principal, a.data.answered, "I would like to look"),
    ),
    Guarded(
        "review.read",
        PermissionDenied,
        lambda a: a.services.review.read(a.principal, a.data.answered),
    ),
    Guarded("audit.history", PermissionDenied, lambda a: a.services.audit.history(a.principal)),
    Guarded(
        "audit.history (user)",
        PermissionDenied,
        lambda a: a.services.audit.history(a.principal, user_id=a.data.owner.user_id),
    ),
    Guarded("audit.kinds", PermissionDenied, lambda a: a.services.audit.kinds(a.principal)),
    Guarded(
        "audit.export",
        PermissionDenied,
        lambda a: a.services.audit.export(a.principal, user_id=a.data.owner.user_id),
    ),
    Guarded(
        "audit.export_lines",
        PermissionDenied,
        lambda a: a.services.audit.export_lines(a.principal, actor=a.data.owner.name),
    ),
    Guarded("audit.verify", PermissionDenied, lambda a: a.services.audit.verify(a.principal)),
    Guarded(
        "audit.verify_against",
        PermissionDenied,
        lambda a: a.services.audit.verify_against(a.principal, "not a checkpoint"),
    ),
    Guarded(
        "audit.checkpoint", PermissionDenied, lambda a: a.services.audit.checkpoint(a.principal)
    ),
    Guarded(
        "audit.last_checkpoint",
        PermissionDenied,
        lambda a: a.services.audit.last_checkpoint(a.principal),
    ),
    Guarded(
        "erasure.erase_user",
        PermissionDenied,
        lambda a: a.services.erasure.erase_user(a.principal, a.data.owner.name),
    ),
)
# Answer only about the principal's own data: `accesses` lists who opened *their*
# conversations; `granted` is False for anyone but an admin with a recorded reason.
OWN_DATA_ONLY = {"review.looks", "review.who_looked", "review.granted"}
CLASSES = {"review": ReviewService, "audit": AuditTrail, "erasure": ErasureService}
PRINCIPAL_NAMES = {"principal", "admin"}


def test_the_table_names_every_method_that_takes_a_principal() -> None:
    taking = {
        f"{service}.{name}"
        for service, cls in CLASSES.items()
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_") and PRINCIPAL_NAMES & set(inspect.signature(member).parameters)
    }
    assert taking == {g.name.split(" ")[0] for g in GUARDED} | OWN_DATA_ONLY


@pytest.mark.parametrize("method", GUARDED, ids=repr)
def test_users_ghosts_and_borrowed_ids_are_refused(world: World, method: Guarded) -> None:
    alice_data, bob_data = world.owners
    bob = bob_data.owner
    for principal in (
        bob,
        world.carol,
        Principal(user_id=10**6, name="ghost", role=Role.USER),
        Principal(user_id=bob.user_id, name="root", role=Role.USER),  # bob's id, an admin's name
    ):
        assert_refused(world, method, principal, alice_data)


def test_a_user_sees_only_accesses_to_their_own_conversations(world: World) -> None:
    alice_data, bob_data = world.owners
    world.services.review.open(world.admin, alice_data.answered, "Checking a reported answer")
    assert [a.conversation_id for a in world.services.review.looks(alice_data.owner)] == [
        alice_data.answered
    ]
    for other in (bob_data.owner, world.carol):
        assert world.services.review.looks(other) == []
        assert not world.services.review.granted(other, alice_data.answered)
    borrowed = Principal(user_id=bob_data.owner.user_id, name="alice", role=Role.USER)
    assert world.services.review.looks(borrowed) == []


def test_an_admin_needs_a_reason_for_each_conversation(world: World) -> None:
    alice_data, bob_data = world.owners
    services, admin = world.services, world.admin
    services.review.open(admin, alice_data.answered, "Checking a reported answer")
    assert services.review.read(admin, alice_data.answered).owner == "alice"
    for read in (
        lambda: services.review.read(admin, bob_data.answered),  # a reason for alice's only
        lambda: services.conversations.messages_of(admin, bob_data.answered),
        lambda: services.lab.replay_context(admin, bob_data.answered, bob_data.question_id, "full"),
    ):
        with pytest.raises(PermissionDenied):
            read()
    other_admin = services.accounts.create_user(
        admin, name="root2", password="root2-password", role=Role.ADMIN
    )
    with pytest.raises(PermissionDenied):  # a grant is the admin's own, not every admin's
        services.review.read(other_admin, alice_data.answered)


# ----------------------------------------------------------------- the command line


def test_the_command_line_refuses_another_users_conversation(world: World) -> None:
    from tests.cli.test_main import run

    alice_data, _ = world.owners
    conversation = str(alice_data.answered)
    sent = run("chat", "--user", "bob", "--conversation", conversation, "let me in")
    assert sent.returncode != 0 and "Traceback" not in sent.stderr
    removed = run("conversation", "rm", conversation, "--user", "bob")
    assert removed.returncode != 0 and "Traceback" not in removed.stderr
    listed = run("conversation", "list", "--user", "bob", "--json")
    ids = {c["id"] for c in json.loads(listed.stdout.splitlines()[-1])}
    assert alice_data.answered not in ids
    mine = run("conversation", "list", "--user", "alice", "--json")
    assert alice_data.answered in {c["id"] for c in json.loads(mine.stdout.splitlines()[-1])}
    run("chat", "--user", "bob", "hello from the operator")
    records = list(audit_records(world.services._database))
    answered = [r for r in records if r["kind"] == "answer" and r["actor"] == "bob"]
    assert answered[-1]["data"]["via"] == "cli"  # the operator, acting for bob
    assert all("via" not in r["data"] for r in records if r["kind"] == "user_created")
    still = world.services.conversations.messages(alice_data.owner, alice_data.answered)
    assert [m.content for m in still][0] == "alice's private question"
    assert "let me in" not in [m.content for m in still]


# ----------------------------------------------------------------- the chat page


def test_the_chat_page_shows_nothing_of_a_conversation_id_that_is_not_yours(
    world: World,
) -> None:
    from streamlit.testing.v1 import AppTest

    from parley.app_pages.state import Login, UiState
    from tests.app_pages.support import APP, page_text

    alice_data, bob_data = world.owners
    session_id, _ = world.services.sessions.start(bob_data.owner)
    at = AppTest.from_file(APP, default_timeout=30)
    at.session_state["parley_ui"] = UiState(
        login=Login(session_id, bob_data.owner), conversation_id=alice_data.answered
    )
    at.run()
    assert not at.exception
    text = page_text(at)
    assert "alice's private question" not in text and "alice's secrets" not in text
    assert "New conversation" in text
