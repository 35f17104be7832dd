"""Export a conversation as Markdown or JSON; import Parley's JSON back, or refuse with a
sentence and write nothing."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.domain import Principal
from parley.core.errors import InvalidInput, NotFound, Overloaded
from parley.store.models import Conversation, Image, Message
from parley.wiring.services import Services
from tests.support import audit_records, verify_audit


def rows(services: Services) -> tuple[int, int]:
    with services._database.session() as session:
        return (
            int(session.scalar(select(func.count(Conversation.id))) or 0),
            int(session.scalar(select(func.count(Message.id))) or 0),
        )


def conversation(services: Services, alice: Principal, scripted: ScriptedProvider) -> int:
    scripted.enqueue("Herons wade; **egrets** too.")
    first = services.chat.send(alice, None, "Tell me about herons")
    list(first)
    scripted.enqueue_error(Overloaded("busy"), chunks=["Half an"])
    list(services.chat.send(alice, first.conversation_id, "And storks?"))
    scripted.enqueue("Storks nest on roofs.")
    list(services.chat.retry(alice, first.conversation_id))
    return first.conversation_id


def test_a_conversation_goes_out_as_json_and_comes_back_the_same(
    services: Services, scripted: ScriptedProvider, alice: Principal, bob: Principal
) -> None:
    original = conversation(services, alice, scripted)
    exported = services.transfer.export(alice, original, "json")
    data = json.loads(exported)
    assert (data["parley"], data["version"]) == ("parley.conversation", 3)
    assert [m["status"] for m in data["messages"]] == [
        "complete",
        "complete",
        "complete",
        "superseded",  # the failed attempt, kept
        "complete",
    ]
    assert data["messages"][1]["usage"]["output_tokens"] is not None

    made = services.transfer.import_(bob, exported.encode())
    assert made.title == services.conversations.get(alice, original).title
    again = json.loads(services.transfer.export(bob, made.id, "json"))
    kept = ("role", "content", "status", "model", "usage", "error", "created_at")
    assert [{k: m[k] for k in kept} for m in again["messages"]] == [
        {k: m[k] for k in kept} for m in data["messages"]
    ]  # the same messages, now bob's
    assert data["messages"][1]["cost_usd"] is not None
    assert all(m["cost_usd"] is None for m in again["messages"])  # not paid here
    assert [m.content for m in services.conversations.messages(bob, made.id)][-1] == (
        "Storks nest on roofs."
    )
    assert [h.conversation_id for h in services.search.search(bob, "storks")][0] == made.id
    (record,) = [
        r for r in audit_records(services._database) if r["kind"] == "conversation_imported"
    ]
    assert record["data"]["message_count"] == 5
    assert verify_audit(services._database).broken is None


def test_branches_go_out_and_come_back_with_the_branch_shown(
    services: Services, scripted: ScriptedProvider, alice: Principal, bob: Principal
) -> None:
    original = conversation(services, alice, scripted)
    first = services.conversations.thread(alice, original).messages[0]
    scripted.enqueue("Cranes dance.")
    list(services.chat.edit(alice, original, first.id, "Tell me about cranes"))
    services.conversations.show_branch(alice, original, first.id)  # the herons again
    shown = [m.content for m in services.conversations.thread(alice, original).messages]
    data = json.loads(services.transfer.export(alice, original, "json"))
    assert [m["parent"] for m in data["messages"]] == [None, 0, 1, 2, 2, None, 5]
    assert data["shown"] == 4
    made = services.transfer.import_(bob, json.dumps(data).encode())
    thread = services.conversations.thread(bob, made.id)
    assert [m.content for m in thread.messages] == shown
    first_again = thread.messages[0]
    assert thread.branching[first_again.id].count == 2
    services.conversations.show_branch(bob, made.id, thread.branching[first_again.id].next or 0)
    assert [m.content for m in services.conversations.thread(bob, made.id).messages] == [
        "Tell me about cranes",
        "Cranes dance.",
    ]
    text = services.transfer.export(alice, original, "markdown")
    assert "Storks nest on roofs." in text and "cranes" not in text
    assert "and 2 messages on other branches" in text


def test_images_go_out_with_their_question_and_come_back_checked(
    services: Services, scripted: ScriptedProvider, alice: Principal, bob: Principal
) -> None:
    scripted.takes_images = True
    out = io.BytesIO()
    PILImage.new("RGB", (40, 30), "olive").save(out, "PNG")
    reply = services.chat.send(alice, None, "What is it?", files=[("leaf.png", out.getvalue())])
    list(reply)
    (sent,) = services.conversations.thread(alice, reply.conversation_id).messages[0].images
    exported = services.transfer.export(alice, reply.conversation_id, "json")
    (image,) = json.loads(exported)["messages"][0]["images"]
    assert (image["name"], image["media_type"]) == ("leaf.png", "image/png")
    with services._database.session() as session:
        stored = session.scalar(select(Image.data).where(Image.id == sent.image_id))
    assert base64.b64decode(image["data"]) == stored
    assert "- image: leaf.png" in services.transfer.export(alice, reply.conversation_id, "markdown")
    made = services.transfer.import_(bob, exported)
    (question, _answer) = services.conversations.thread(bob, made.id).messages
    (kept,) = question.images
    assert kept.image_id != sent.image_id and (kept.width, kept.height) == (40, 30)
    assert services.conversations.thumbnail(bob, kept.image_id)[0] == "image/png"
    # An edited question shares its question's image: imported once, shared again.
    list(services.chat.edit(alice, reply.conversation_id, sent_question(services, alice), "Hm?"))
    again = services.transfer.import_(
        bob, services.transfer.export(alice, reply.conversation_id, "json")
    )
    with services._database.session() as session:
        copies = session.scalars(select(Image.id).where(Image.conversation_id == again.id)).all()
    assert len(copies) == 1
    shared = {i.image_id for m in services.conversations.messages(bob, again.id) for i in m.images}
    assert shared == set(copies)
    # An export whose image is not one: a sentence, and nothing written.
    broken = json.loads(exported)
    broken["messages"][0]["images"][0]["data"] = base64.b64encode(b"not a picture").decode()
    before = rows(services)
    with pytest.raises(InvalidInput, match=r"damaged: message 0: leaf.png: this is not a PNG"):
        services.transfer.import_(bob, json.dumps(broken))
    assert rows(services) == before


def sent_question(services: Services, user: Principal) -> int:
    (conversation,) = services.conversations.list_for(user)
    return services.conversations.thread(user, conversation.id).messages[0].id


def test_an_export_from_before_branches_is_one_branch(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    data = json.loads(
        services.transfer.export(alice, conversation(services, alice, scripted), "json")
    )
    for message in data["messages"]:
        del message["parent"]
    del data["shown"]
    made = services.transfer.import_(alice, json.dumps(data).encode())
    assert [m.content for m in services.conversations.thread(alice, made.id).messages] == [
        "Tell me about herons",
        "Herons wade; **egrets** too.",
        "And storks?",
        "Storks nest on roofs.",
    ]


def test_markdown_reads_as_the_conversation_without_replaced_attempts(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    text = services.transfer.export(alice, conversation(services, alice, scripted), "markdown")
    assert text.startswith("# Tell me about herons\n")
    assert "4 messages" in text and "Half an" not in text
    assert text.index("## You") < text.index("Herons wade; **egrets** too.")
    assert "*model: scripted*" in text


def test_only_the_owner_exports(
    services: Services, scripted: ScriptedProvider, alice: Principal, bob: Principal
) -> None:
    original = conversation(services, alice, scripted)
    for fmt in ("json", "markdown"):
        with pytest.raises(NotFound):
            services.transfer.export(bob, original, fmt)  # type: ignore[arg-type]


GOOD = {
    "parley": "parley.conversation",
    "version": 1,
    "title": "t",
    "created_at": "2026-01-01T00:00:00Z",
    "updated_at": "2026-01-01T00:00:00Z",
    "messages": [
        {
            "role": "user",
            "content": "hi",
            "status": "complete",
            "created_at": "2026-01-01T00:00:00Z",
        }
    ],
}


@pytest.mark.parametrize(
    ("data", "sentence"),
    [
        (b"\xff\xfe not json", "not JSON"),
        (b"[1, 2]", "not a conversation exported from Parley"),
        (json.dumps({"messages": []}).encode(), "not a conversation exported from Parley"),
        (json.dumps({**GOOD, "version": 9}).encode(), "another version"),
        (json.dumps({**GOOD, "messages": [{"role": "system"}]}).encode(), "damaged"),
        (
            json.dumps({**GOOD, "messages": [{**GOOD["messages"][0], "status": "x"}]}).encode(),  # type: ignore[dict-item]
            "damaged",
        ),
        (json.dumps({**GOOD, "title": "x" * 201}).encode(), "damaged"),
        (json.dumps({**GOOD, "extra": 1}).encode(), "damaged"),
        (
            json.dumps(
                {**GOOD, "messages": [{**GOOD["messages"][0], "content": "a\x00b"}]}  # type: ignore[dict-item]
            ).encode(),
            "NUL",
        ),
        (b" " * (20 * 1024 * 1024 + 1), "20 MB"),
        (b"[" * 100_000, "not JSON"),
        (json.dumps({**GOOD, **{f"k{i}": 1 for i in range(30)}}).encode(), "not a conversation"),
        (json.dumps({**GOOD, "cost": 1}).encode(), "fields are not Parley's"),
        (
            json.dumps(GOOD).replace('"hi"', '"hi", "cost_usd": NaN').encode(),
            "not JSON",
        ),
        (json.dumps({**GOOD, "title": "a\x00b"}).encode(), "NUL"),
        (
            json.dumps({**GOOD, "messages": [{**GOOD["messages"][0], "parent": 0}]}).encode(),  # type: ignore[dict-item]
            "message 0 follows a later one",
        ),
        (json.dumps({**GOOD, "shown": 1}).encode(), "the branch shown ends at no message"),
        (json.dumps({**GOOD, "created_at": "2026-01-01T00:00:00"}).encode(), "created_at"),
        (
            json.dumps(
                {**GOOD, "messages": [{**GOOD["messages"][0], "usage": {"output_tokens": 10**30}}]}  # type: ignore[dict-item]
            ).encode(),
            "messages.0.usage.output_tokens",
        ),
    ],
)
def test_a_malformed_or_foreign_file_gets_a_sentence_and_writes_nothing(
    services: Services, alice: Principal, data: bytes, sentence: str
) -> None:
    before = rows(services)
    with pytest.raises(InvalidInput) as refused:
        services.transfer.import_(alice, data)
    assert sentence in refused.value.user_message
    assert rows(services) == before
    assert services.transfer.import_(alice, json.dumps(GOOD).encode()).title == "t"  # still


def test_imported_times_are_utc_and_never_in_the_future(
    services: Services, alice: Principal
) -> None:
    future = {
        **GOOD,
        "created_at": "2099-01-01T00:00:00+00:00",
        "messages": [{**GOOD["messages"][0], "created_at": "2026-06-01T23:30:00-10:00"}],  # type: ignore[dict-item]
    }
    made = services.transfer.import_(alice, json.dumps(future).encode())
    assert made.created_at <= made.updated_at  # clamped to now
    (message,) = services.conversations.messages(alice, made.id)
    assert message.created_at.replace(tzinfo=None).isoformat() == "2026-06-02T09:30:00"
