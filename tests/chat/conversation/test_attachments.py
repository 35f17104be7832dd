"""Files sent with a message: private documents of the sender, read by that question,
refused with a sentence (and nothing stored) when they cannot be taken."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from parley.chat.documents.library import MAX_FILES_PER_MESSAGE
from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.domain import Principal
from parley.core.errors import InvalidInput, NotFound, QuotaExceeded
from parley.retrieval.document_index import DocumentIndex
from parley.retrieval.documents import MAX_FILE_BYTES
from parley.retrieval.embeddings import HashingEmbedder
from parley.retrieval.vector_store import VectorStore
from parley.store.models import Conversation, Document, Message
from parley.wiring.services import Services, build_services

NOTES = b"# Field notes\n\nThe lighthouse keeper logged 41 storms in the winter of 1911.\n"


@pytest.fixture
def local(services: Services, scripted: ScriptedProvider, tmp_path: Path) -> Services:
    index = DocumentIndex(embedder=HashingEmbedder(), store=VectorStore.persistent(tmp_path / "d"))
    return build_services(
        services.settings, provider=scripted, background=services.background, document_index=index
    )


def counts(services: Services) -> tuple[int, int, int]:
    with services._database.session() as session:
        return (
            int(session.scalar(select(func.count(Document.id))) or 0),
            int(session.scalar(select(func.count(Message.id))) or 0),
            int(session.scalar(select(func.count(Conversation.id))) or 0),
        )


def test_a_file_sent_with_a_question_is_read_for_it_and_stays_private(
    local: Services, scripted: ScriptedProvider, alice: Principal, bob: Principal
) -> None:
    reply = local.chat.send(alice, None, "What does this say?", files=[("notes.md", NOTES)])
    list(reply)
    prompt = " ".join(m.content for m in scripted.requests[-1].messages)
    # "What does this say?" matches no passage well; the file sent with it is read anyway.
    assert "41 storms" in prompt
    question = local.conversations.thread(alice, reply.conversation_id).messages[0]
    assert [a.name for a in question.attachments] == ["notes.md"]
    (document,) = local.documents.list_for(alice)
    assert document.name == "notes.md" and not document.public and not document.groups
    assert local.documents.list_for(bob) == []  # the sender's alone
    assert reply.result is not None and reply.result.ok
    # The answer cites nothing ("OK"), so the page shows the passages it read.
    answer = local.conversations.thread(alice, reply.conversation_id).messages[1]
    assert not answer.citations and [s.name for s in answer.sources] == ["notes.md"]
    # Answering it again, or an edit of the question, reads the file again.
    list(local.chat.regenerate(alice, reply.conversation_id, answer.id))
    assert "41 storms" in " ".join(m.content for m in scripted.requests[-1].messages)
    list(local.chat.edit(alice, reply.conversation_id, question.id, "Sum it up."))
    assert "41 storms" in " ".join(m.content for m in scripted.requests[-1].messages)
    edited = local.conversations.thread(alice, reply.conversation_id).messages[0]
    assert [a.document_id for a in edited.attachments] == [document.id]


def test_a_conversation_that_draws_on_chosen_documents_takes_the_file_in(
    local: Services, alice: Principal
) -> None:
    local.documents.add(alice, "other.md", b"# Other\n\nNothing about storms here.\n")
    (other,) = local.documents.list_for(alice)
    reply = local.chat.send(alice, None, "Hello", documents=[other.id])
    list(reply)
    list(local.chat.send(alice, reply.conversation_id, "Read this", files=[("n.md", NOTES)]))
    chosen = local.conversations.documents_of(alice, reply.conversation_id)
    assert chosen is not None and len(chosen) == 2 and other.id in chosen


@pytest.mark.parametrize(
    ("files", "sentence"),
    [
        ([("run.exe", b"MZ")], "run.exe: this kind of file is not supported"),
        ([("big.txt", b"x" * (MAX_FILE_BYTES + 1))], "big.txt: the file has 20.0 MB"),
        ([(f"f{i}.txt", b"x") for i in range(MAX_FILES_PER_MESSAGE + 1)], "at most 5 files"),
        ([("ok.md", NOTES), ("broken.pdf", b"%PDF-1.4 not really")], "broken.pdf"),
        ([("ok.md", NOTES), ("empty.txt", b"  ")], "empty.txt: the file is empty"),
    ],
)
def test_a_file_that_cannot_be_taken_gets_a_sentence_and_nothing_is_kept(
    local: Services, alice: Principal, files: list[tuple[str, bytes]], sentence: str
) -> None:
    before = counts(local)
    with pytest.raises(InvalidInput) as refused:
        local.chat.send(alice, None, "Read these", files=files)
    assert sentence in refused.value.user_message
    assert "Error" not in refused.value.user_message  # a sentence, not an exception's name
    assert counts(local) == before
    assert local.documents.list_for(alice) == []


def test_a_file_sent_to_anothers_conversation_is_refused_before_it_is_read(
    local: Services, alice: Principal, bob: Principal
) -> None:
    mine = local.chat.send(alice, None, "Hello")
    list(mine)
    with pytest.raises(NotFound):
        local.chat.send(bob, mine.conversation_id, "Mine now", files=[("n.md", NOTES)])
    assert local.documents.list_for(bob) == []
    assert counts(local)[0] == 0


def test_a_quota_refusal_keeps_no_file(
    local: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}

    def refuse_once_files_are_in(*_args: object, **_kwargs: object) -> int | None:
        calls["n"] += 1
        raise QuotaExceeded("tokens", resets_at=datetime.now(UTC))

    monkeypatch.setattr(local.quotas, "reserve", refuse_once_files_are_in)
    with pytest.raises(QuotaExceeded):
        local.chat.send(alice, None, "Read this", files=[("n.md", NOTES)])
    assert calls["n"] == 1  # refused after the file was read and stored
    assert local.documents.list_for(alice) == [] and counts(local) == (0, 0, 0)


def test_a_deleted_file_leaves_its_name_nowhere_in_the_conversation(
    local: Services, alice: Principal
) -> None:
    reply = local.chat.send(alice, None, "Read this", files=[("secret-plan.md", NOTES)])
    list(reply)
    (document,) = local.documents.list_for(alice)
    local.documents.delete(alice, document.id)
    question, answer = local.conversations.thread(alice, reply.conversation_id).messages
    assert [a.document_id for a in question.attachments] == [document.id]
    assert "secret-plan" not in repr(question) + repr(answer)
    with local._database.session() as session:
        stored = session.get(Message, answer.id)
        assert stored is not None and "secret-plan" not in repr(stored.context)


def test_a_file_sent_again_is_the_same_document_and_a_refusal_keeps_it(
    local: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    list(local.chat.send(alice, None, "Read this", files=[("notes.md", NOTES)]))
    again = local.chat.send(alice, None, "And again", files=[("copy-of-notes.md", NOTES)])
    list(again)
    (document,) = local.documents.list_for(alice)
    question = local.conversations.thread(alice, again.conversation_id).messages[0]
    assert [a.document_id for a in question.attachments] == [document.id]

    def refuse(*_args: object, **_kwargs: object) -> int | None:
        raise QuotaExceeded("tokens", resets_at=datetime.now(UTC))

    monkeypatch.setattr(local.quotas, "reserve", refuse)
    with pytest.raises(QuotaExceeded):
        local.chat.send(alice, None, "Once more", files=[("notes.md", NOTES)])
    assert [d.id for d in local.documents.list_for(alice)] == [document.id]  # not taken back
