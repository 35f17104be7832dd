"""`parley/chat/documents/access.py`: a deleted document leaves no quote behind, in typed
records and in rows whose JSON no longer reads as one."""

from __future__ import annotations

import json

from sqlalchemy import text

from parley.chat.documents.access import DELETED_DOCUMENT, scrub_quotes
from parley.core.domain import MessageRole, Principal
from parley.core.records import CitedPassage, DocumentSource, Provenance
from parley.store.models import Conversation, Message
from parley.wiring.services import Services


def a_message(services: Services, owner: Principal) -> int:
    with services._database.session() as session:
        conversation = Conversation(user_id=owner.user_id, title="t")
        session.add(conversation)
        session.flush()
        message = Message(
            conversation_id=conversation.id,
            role=MessageRole.ASSISTANT,
            content="As the notes say [1].",
            citations=[CitedPassage(n=1, document_id=7, name="notes.md", cited_text="SECRET")],
            context=Provenance(
                strategy="hybrid", sources=[DocumentSource(n=1, document_id=7, name="notes.md")]
            ),
        )
        session.add(message)
        session.flush()
        return message.id


def raw(services: Services, message_id: int) -> tuple[str | None, str | None]:
    with services._database.session() as session:
        row = session.execute(
            text("SELECT citations, context FROM messages WHERE id = :i"), {"i": message_id}
        ).one()
        return row[0], row[1]


def test_quotes_and_names_of_a_deleted_document_go(services: Services, alice: Principal) -> None:
    message_id = a_message(services, alice)
    with services._database.session() as session:
        assert scrub_quotes(session, [7]) == 1
    citations, context = raw(services, message_id)
    assert citations is not None and context is not None
    assert "SECRET" not in citations and "notes.md" not in citations + context
    assert DELETED_DOCUMENT in citations and DELETED_DOCUMENT in context
    with services._database.session() as session:
        stored = session.get(Message, message_id)
        assert stored is not None and stored.citations is not None
        assert stored.citations[0].document_id == 7  # typed on the way out


def test_another_documents_quotes_stay(services: Services, alice: Principal) -> None:
    message_id = a_message(services, alice)
    with services._database.session() as session:
        assert scrub_quotes(session, [8]) == 0
    assert "SECRET" in (raw(services, message_id)[0] or "")


def test_a_row_that_no_longer_reads_loses_its_quote_whole(
    services: Services, alice: Principal
) -> None:
    message_id = a_message(services, alice)
    unreadable = json.dumps([{"n": 1, "document_id": 7, "name": None, "cited_text": "SECRET"}])
    with services._database.session() as session:
        session.execute(
            text("UPDATE messages SET citations = :c WHERE id = :i"),
            {"c": unreadable, "i": message_id},
        )
    with services._database.session() as session:
        assert scrub_quotes(session, [7]) >= 1
    citations, _ = raw(services, message_id)
    assert citations is None or "SECRET" not in citations
