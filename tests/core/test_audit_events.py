"""Audit events: one typed model per kind, subjects by id, stored data read back by kind."""

from __future__ import annotations

import json

import pytest

from parley.core.audit_events import (
    EVENTS,
    AuditEvent,
    AuditKind,
    ConversationOpened,
    DocumentShared,
    GroupMemberAdded,
    MemoryOptionsSet,
    RoleChanged,
    Subject,
    SubjectKind,
    UserErased,
    read_event,
)
from parley.store.audit_chain import redacted_content


def test_every_kind_has_exactly_one_model() -> None:
    assert set(EVENTS) == set(AuditKind)
    assert all(model.kind is kind for kind, model in EVENTS.items())


@pytest.mark.parametrize("kind", list(SubjectKind))
def test_a_subject_reads_back_as_it_was_written(kind: SubjectKind) -> None:
    subject = Subject(kind, 42)
    assert Subject.parse(str(subject)) == subject


@pytest.mark.parametrize("text", ["", "user alice", "user [erased]", "planet 4", "document 4x"])
def test_a_subject_by_name_or_of_no_kind_is_not_one(text: str) -> None:
    assert Subject.parse(text) is None


def test_an_event_reads_back_from_its_stored_data() -> None:
    event = DocumentShared(document_id=7, group="finance", public=False)
    assert str(event.subject()) == "document 7"
    assert read_event(AuditKind.DOCUMENT_SHARED, json.dumps(event.data())) == event


def test_stored_keys_keep_their_names_so_redaction_keeps_parleys_words() -> None:
    changed = RoleChanged(user_id=3, previous="user", role="admin")
    assert changed.data() == {"user_id": 3, "from": "user", "to": "admin"}
    _, subject, data = redacted_content(
        None, "oidc", str(changed.subject()), json.dumps(changed.data())
    )
    assert subject == "user 3"
    assert read_event(AuditKind.ROLE_CHANGED, data) == changed  # nothing of it was personal


def test_an_erased_record_still_reads_its_ids() -> None:
    opened = ConversationOpened(conversation_id=9, reason="a complaint about billing")
    _, _, data = redacted_content(5, "root", str(opened.subject()), json.dumps(opened.data()))
    event = read_event(AuditKind.CONVERSATION_OPENED, data)
    assert isinstance(event, ConversationOpened)
    assert (event.conversation_id, event.reason) == (9, "[erased]")


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("no_such_kind", "{}"),
        (AuditKind.CONVERSATION_OPENED, '{"conversation_id": "nine"}'),
        (AuditKind.CONVERSATION_OPENED, '{"conversation_id": 9}'),  # no reason
        (AuditKind.DOCUMENT_DELETED, "not json"),
    ],
)
def test_data_that_is_not_its_kinds_model_reads_as_none(kind: str, data: str) -> None:
    assert read_event(kind, data) is None


def test_an_erasure_keeps_its_counts() -> None:
    erased = UserErased(user_id=4, conversation_ids=[1, 2], document_ids=[], messages=6)
    event = read_event(AuditKind.USER_ERASED, json.dumps(erased.data()))
    assert isinstance(event, UserErased) and event.conversation_ids == [1, 2]
    assert event.data()["messages"] == 6


def test_events_are_frozen() -> None:
    event: AuditEvent = DocumentShared(document_id=1, group=None, public=True)
    with pytest.raises(ValueError, match="frozen"):
        event.document_id = 2  # type: ignore[attr-defined]


# Each kind's data as the version before typed events wrote it (commit c28fe5d): every
# record ever written must still read, or the verifier and "who looked" misread it.
OLDER_SHAPES = {
    AuditKind.USER_CREATED: {"role": "user", "sign_in": "local"},
    AuditKind.USER_DISABLED: {},
    AuditKind.USER_ENABLED: {"via": "cli"},
    AuditKind.PASSWORD_SET: {},
    AuditKind.ROLE_CHANGED: {"from": "user", "to": "admin"},
    AuditKind.ACCOUNT_UNLOCKED: {"had_failures": True},
    AuditKind.SIGN_IN: {"method": "oidc", "issuer": "https://id.example", "groups": ["a"]},
    AuditKind.SIGN_IN_FAILED: {"method": "oidc", "issuer": "https://id.example", "reason": None},
    AuditKind.SESSION_ENDED: {"reason": "expired"},
    AuditKind.SESSIONS_REVOKED: {"sessions": 2, "reason": "disabled"},
    AuditKind.GROUP_CREATED: {},
    AuditKind.GROUP_MEMBER_ADDED: {"group_id": 1, "user": "bob"},
    AuditKind.GROUP_MEMBER_REMOVED: {"group_id": 1, "user": "bob"},
    AuditKind.QUOTA_SET: {"messages_per_day": 3, "tokens_per_day": None},
    AuditKind.MEMORY_STRATEGY_SET: {"conversation_id": 4, "strategy": None},
    AuditKind.USER_ERASED: {
        "conversations": 1, "messages": 2, "documents": 0,
        "conversation_ids": [4], "document_ids": [],
    },
    AuditKind.ANSWER: {
        "conversation_id": 4, "messages": [{"id": 9, "sha256": "ab"}], "status": "complete",
        "model": "m", "input_tokens": 1, "output_tokens": 2, "cost_usd": 0.0,
        "prompt": {
            "strategy": "hybrid", "turn_ids": [1], "summary_version": None,
            "summary_covers": None, "recalled": [{"turn_id": 1, "score": 0.5}],
            "sources": [{"n": 1, "document_id": 3, "chunks": [0], "page": None,
                         "score": 0.4, "allowed_as": "owner"}],
            "section_tokens": {"question": 5}, "total_tokens": 5,
        },
        "cited": [{"n": 1, "document_id": 3, "chunks": [0]}],
    },
}  # fmt: skip


@pytest.mark.parametrize("kind", list(OLDER_SHAPES))
def test_records_of_the_older_shapes_still_read(kind: AuditKind) -> None:
    assert read_event(kind, json.dumps(OLDER_SHAPES[kind])) is not None


def test_an_older_membership_record_still_names_its_group() -> None:
    event = read_event(AuditKind.GROUP_MEMBER_ADDED, json.dumps({"group_id": 1, "user": "b"}))
    assert isinstance(event, GroupMemberAdded) and event.group_id == 1


def test_memory_options_are_erased_whole() -> None:
    """A plug-in's option names are its own (`role`, `model`…): the options are kept as
    one text, so erasure keeps none of them."""
    event = MemoryOptionsSet(conversation_id=1, strategy="mine", options='{"role":"Alice"}')
    _, _, data = redacted_content(2, "alice", str(event.subject()), json.dumps(event.data()))
    assert "Alice" not in data and json.loads(data)["strategy"] == "mine"
