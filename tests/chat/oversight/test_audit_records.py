"""What the services write to the audit trail: every model call and answer (with the
prompt's provenance and the messages' hashes, never their text), sign-ins, sessions,
admin and document actions, tombstones; and what `verify` then finds when a message
is edited or removed by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.domain import Principal, Role
from parley.core.errors import AuthError
from parley.retrieval.document_index import DocumentIndex
from parley.retrieval.embeddings import HashingEmbedder
from parley.retrieval.vector_store import VectorStore
from parley.store.audit import redact_user_in, text_hash
from parley.store.models import Message, UsageEntry
from parley.wiring.services import Services, build_services
from tests.support import ROOT, audit_records, verify_audit


def records(services: Services, kind: str | None = None) -> list[dict[str, Any]]:
    found = list(audit_records(services._database))
    return [r for r in found if kind is None or r["kind"] == kind]


def test_an_answer_is_recorded_with_its_calls_provenance_and_hashes(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue("The ", "lake froze.")
    reply = services.chat.send(alice, None, "When did the lake freeze?")
    assert "".join(reply) == "The lake froze."
    assert reply.result is not None
    (call,) = records(services, "ai_call")
    assert (call["actor"], call["actor_id"]) == ("alice", alice.user_id)
    assert call["data"]["purpose"] == "chat" and call["data"]["outcome"] == "complete"
    assert call["data"]["conversation_id"] == reply.conversation_id
    assert call["data"]["latency_ms"] >= 0 and "ledger_id" in call["data"]
    (answer,) = records(services, "answer")
    refs = answer["data"]["messages"]
    assert [r["id"] for r in refs] == [reply.user_message_id, reply.result.message_id]
    with services._database.session() as session:
        salts = [session.get(Message, r["id"]).salt for r in refs]  # type: ignore[union-attr]
    assert all(salts) and salts[0] != salts[1]  # random, one per message
    assert refs[0]["sha256"] == text_hash(f"{salts[0]}When did the lake freeze?")
    assert refs[1]["sha256"] == text_hash(f"{salts[1]}The lake froze.")
    assert refs[0]["sha256"] != text_hash("When did the lake freeze?")  # no guessing
    prompt = answer["data"]["prompt"]
    assert prompt["strategy"] == "token_window" and "turn_ids" in prompt
    assert "summary_version" in prompt and "recalled" in prompt and "sources" in prompt
    everything = json.dumps(records(services))
    assert "lake" not in everything  # hashes and ids only: the text lives in the messages
    assert verify_audit(services._database).broken is None


def test_a_message_edited_or_removed_by_hand_breaks_verification(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue("Fine, thanks.")
    first = services.chat.send(alice, None, "How are you?")
    list(first)
    scripted.enqueue("Still fine.")
    second = services.chat.send(alice, first.conversation_id, "And now?")
    list(second)
    assert verify_audit(services._database).broken is None
    answer_records = records(services, "answer")
    with services._database.session() as session:
        session.execute(
            update(Message).where(Message.id == first.user_message_id).values(content="Edited")
        )
    broken = verify_audit(services._database).broken
    assert broken is not None and broken.record_id == answer_records[0]["id"]
    assert f"message {first.user_message_id} was changed" in broken.reason
    with services._database.session() as session:
        session.execute(
            update(Message)
            .where(Message.id == first.user_message_id)
            .values(content="How are you?")
        )
        assert second.result is not None
        session.execute(delete(Message).where(Message.id == second.result.message_id))
    broken = verify_audit(services._database).broken
    assert broken is not None and broken.record_id == answer_records[1]["id"]
    assert "removed with no erasure record" in broken.reason


def test_an_erased_conversation_leaves_a_tombstone_and_the_chain_verifies(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue("Noted.")
    reply = services.chat.send(alice, None, "Remember the combination 4-8-15")
    list(reply)
    services.conversations.delete(alice, reply.conversation_id)
    (tombstone,) = records(services, "conversation_erased")
    assert tombstone["data"] == {"conversation_ids": [reply.conversation_id], "message_count": 2}
    assert tombstone["about_id"] == alice.user_id
    assert verify_audit(services._database).broken is None
    assert "4-8-15" not in json.dumps(records(services))


def test_sign_ins_refusals_and_sessions_are_recorded(services: Services, alice: Principal) -> None:
    services.accounts.authenticate(name="alice", password="alice-password", client="10.0.0.1")
    with pytest.raises(AuthError):
        services.accounts.authenticate(name="alice", password="not-her-password!")
    with pytest.raises(AuthError):
        services.accounts.authenticate(name="nobody", password="whatever-password")
    (signed_in,) = records(services, "sign_in")
    assert signed_in["actor"] == "alice" and signed_in["data"]["client"] == "10.0.0.1"
    failed = records(services, "sign_in_failed")
    assert [(r["actor"], r["about_id"]) for r in failed] == [
        ("alice", alice.user_id),
        ("?", None),  # no such account: the typed name only by its hash
    ]
    # Only by a keyed hash: a password typed into the name box cannot be guessed from it.
    keys = services._database.audit_keys
    assert keys is not None
    assert failed[1]["data"]["typed_hmac"] == keys.keyed_hash("typed name", "nobody")
    assert text_hash("nobody") not in json.dumps(failed)
    assert "not-her-password" not in json.dumps(records(services))
    session_id, _ = services.sessions.start(alice)
    services.sessions.end(session_id)
    services.sessions.start(alice)
    services.sessions.start(alice)
    services.accounts.set_password(ROOT, "alice", "a-new-password")
    (ended,) = records(services, "session_ended")
    assert ended["data"]["reason"] == "signed out" and ended["actor"] == "alice"
    assert ended["subject"] == f"session {ended['data']['session_id']}"
    (revoked,) = records(services, "sessions_revoked")
    assert revoked["actor"] == "(operator)" and revoked["about_id"] == alice.user_id
    assert revoked["data"] == {"reason": "new password", "sessions": 2, "user_id": alice.user_id}
    assert revoked["subject"] == f"user {alice.user_id}"  # ids, never names
    (password_set,) = records(services, "password_set")
    assert password_set["about_id"] == alice.user_id


def test_admin_and_document_actions_are_recorded(
    services: Services, alice: Principal, bob: Principal, tmp_path: Path
) -> None:
    docs = build_services(
        services.settings,
        provider=None,
        background=services.background,
        document_index=DocumentIndex(
            embedder=HashingEmbedder(), store=VectorStore.persistent(tmp_path / "vectors")
        ),
    )
    docs.groups.create(ROOT, "team")
    docs.groups.assign(ROOT, "team", "alice")
    docs.groups.remove(ROOT, "team", "alice")
    docs.groups.assign(ROOT, "team", "alice")
    docs.quotas.set_quota(ROOT, bob.user_id, messages_per_day=5, tokens_per_day=None)
    docs.accounts.set_disabled(ROOT, "bob", disabled=True)
    info = docs.documents.add(alice, "plan.txt", b"The launch is on the fifth of June.")
    docs.documents.share(alice, info.id, group="team")
    docs.documents.unshare(alice, info.id, group="team")
    docs.documents.delete(alice, info.id)
    kinds = [(r["kind"], r["actor"], r["about_id"]) for r in records(docs)]
    assert kinds == [
        ("user_created", "(operator)", alice.user_id),
        ("user_created", "(operator)", bob.user_id),
        ("group_created", "(operator)", None),
        ("group_member_added", "(operator)", alice.user_id),
        ("group_member_removed", "(operator)", alice.user_id),
        ("group_member_added", "(operator)", alice.user_id),
        ("quota_set", "(operator)", bob.user_id),
        ("user_disabled", "(operator)", bob.user_id),
        ("document_added", "alice", None),
        ("document_shared", "alice", alice.user_id),
        ("document_unshared", "alice", alice.user_id),
        ("document_deleted", "alice", alice.user_id),
    ]
    assert "launch" not in json.dumps(records(docs))
    assert verify_audit(docs._database).broken is None


def test_an_erased_users_names_leave_the_trail_and_the_ledger_and_it_still_verifies(
    services: Services, scripted: ScriptedProvider
) -> None:
    """An OIDC user with an e-mail name, an issuer and groups chats, fails a sign-in and
    is erased: none of those strings stays in any record or ledger row, the records
    keep their place (by id), and the chain verifies."""
    issuer = "https://idp.erase-me.example"
    user = services.oidc.sign_in(
        {"iss": issuer, "sub": "s-9", "email": "zoe.secret@example.com", "groups": ["zoeteam"]}
    )
    with pytest.raises(AuthError):
        services.accounts.authenticate(
            name=user.name, password="not-her-password", client="10.1.2.3"
        )
    scripted.enqueue("Noted.")
    list(services.chat.send(user, None, "Hello there"))
    before = json.dumps(records(services))
    assert "zoe.secret@example.com" in before and "idp.erase-me.example" in before
    services.erasure.erase_user(ROOT, user.name)
    after = records(services)
    # Every record by or about them (a group's own records are the organisation's:
    # `group_created` keeps the group's name, which others share).
    mine = [r for r in after if user.user_id in (r["actor_id"], r["about_id"])]
    dumped = json.dumps(mine)
    for secret in ("zoe.secret@example.com", "idp.erase-me.example", "zoeteam", "10.1.2.3"):
        assert secret not in dumped, [r for r in mine if secret in json.dumps(r)]
    assert "zoe.secret@example.com" not in json.dumps(after)
    assert {r["kind"] for r in mine} >= {"user_created", "sign_in", "ai_call", "user_erased"}
    # By id, or Parley's own words; the refused sign-in named her: "[erased]". Only the
    # erasure record itself, written after, names the operator who erased her.
    assert {r["actor"] for r in mine} == {f"user #{user.user_id}", "oidc", "[erased]", ROOT.name}
    with services._database.session() as session:
        names = session.scalars(select(UsageEntry.user_name)).all()
    assert names and set(names) == {f"user #{user.user_id}"}
    assert verify_audit(services._database).broken is None


def test_a_redaction_with_no_erasure_on_record_breaks_verification(
    services: Services, alice: Principal
) -> None:
    services.accounts.set_password(ROOT, "alice", "a-new-password")
    with services._database.session() as session:  # an insider "redacts" to hide an action
        redact_user_in(session, alice.user_id)
    broken = verify_audit(services._database).broken
    assert broken is not None and "no later erasure of its user" in broken.reason


@pytest.mark.usefixtures("alice")
def test_erasing_the_admin_who_erased_someone_keeps_the_trail_whole(services: Services) -> None:
    """The erasure record of alice names its admin; erasing that admin later redacts
    it, and alice's redacted records still have their erasure on record."""
    services.accounts.create_user(ROOT, name="eraser", password="eraser-password", role=Role.ADMIN)
    eraser = services.accounts.find_principal(ROOT, "eraser")
    assert eraser is not None
    services.accounts.set_password(ROOT, "alice", "a-new-password")  # a record about her
    services.erasure.erase_user(eraser, "alice")
    services.erasure.erase_user(ROOT, "eraser")
    assert verify_audit(services._database).broken is None
