"""Erasure leaves no byte behind: after a user deletes a conversation or a document, or an
admin erases a user, the raw files of the data directory (the database and its write-ahead
log, the vector store, the logs) are searched for a marker the erased text carried, and
for the erased text's vectors.

Real parts throughout: SQLite in WAL mode, embedded Chroma on disk (its SQLite file, its
write-ahead queue, its HNSW index files), recall vectors, rolling summaries (the scripted
model answers every call, summaries too, with the marker), documents chunked and indexed.
The embedder is the hashing test double, so the vector of every erased text is known.
Chroma's metadata holds no text (ids, owner and group ids, dates, "User"/"Assistant"):
of a row, its vector is what tells of the text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.background import BackgroundWork
from parley.core.config import Settings
from parley.core.domain import Principal
from parley.core.errors import AuthError
from parley.retrieval.documents import chunk, parse
from parley.retrieval.embeddings import HashingEmbedder
from parley.retrieval.vector_store import VectorStore
from parley.store.db import Database
from parley.store.models import DocumentSync, Summary, VectorErasure
from parley.store.shared import release_lease, try_lease
from parley.wiring.services import Services, build_services
from tests.retrieval.test_vector_store import files_holding_vectors
from tests.support import ROOT, audit_records, verify_audit

PADDING = "We spoke about the garden, the weather, the harbour and the long walk home. " * 3


def files_holding(root: Path, marker: str) -> list[str]:
    """Every file under `root` whose raw bytes contain the marker."""
    needle = marker.encode("utf-8")
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and needle in path.read_bytes()
    )


class RecordingEmbedder(HashingEmbedder):
    """The hashing test double, remembering every text it embedded."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.texts.extend(texts)
        return super().embed(texts)


def turn_vectors(embedder: RecordingEmbedder, marker: str) -> list[np.ndarray]:
    """The vectors the recall index stored for turns carrying `marker` (embedded as
    "User (date): text"; a question is embedded as it is, to search, and never stored),
    computed afresh: the hashing embedder gives a text the same vector every time."""
    texts = {t for t in embedder.texts if marker in t and t.startswith(("User (", "Assistant ("))}
    assert texts, f"no turn carrying {marker} was embedded"
    return list(HashingEmbedder().embed(sorted(texts)))


def chunk_vectors(name: str, data: bytes) -> list[np.ndarray]:
    """The vectors a document's chunks are indexed with, computed afresh."""
    return list(HashingEmbedder().embed([c.text for c in chunk(parse(name, data))]))


@pytest.fixture
def embedder(monkeypatch: pytest.MonkeyPatch) -> RecordingEmbedder:
    recording = RecordingEmbedder()
    # Recall and documents both embed with the wiring's shared embedder.
    monkeypatch.setattr("parley.wiring.factories.shared_embedder", lambda _settings: recording)
    return recording


@pytest.fixture
def real(
    settings: Settings, database: Database, scripted: ScriptedProvider, embedder: RecordingEmbedder
) -> Services:
    del database, embedder
    memory = settings.model_copy(update={"memory_strategy": "hybrid", "memory_fold_tokens": 200})
    return build_services(memory, provider=scripted, background=inline())


def inline() -> BackgroundWork:
    return BackgroundWork(workers=0)  # upkeep and the start-up sweep run in the caller


def converse(services: Services, user: Principal, scripted: ScriptedProvider, marker: str) -> int:
    scripted.default_answer = f"I will remember {marker}. {PADDING}"
    conversation_id = None
    for turn in range(8):
        reply = services.chat.send(user, conversation_id, f"Note {marker} number {turn}. {PADDING}")
        list(reply)
        conversation_id = reply.conversation_id
    assert conversation_id is not None
    logging.getLogger("parley.test").warning("conversation %s done", conversation_id)
    return conversation_id


def test_a_deleted_conversation_leaves_no_byte_of_its_text_or_vectors(
    real: Services,
    scripted: ScriptedProvider,
    alice: Principal,
    settings: Settings,
    embedder: RecordingEmbedder,
) -> None:
    marker = "ZEBRA-QUILL-7731"
    conversation_id = converse(real, alice, scripted, marker)
    kept = converse(real, alice, scripted, "OTTER-LANTERN-2207")  # another, left alone
    with real._database.session() as session:
        folded = session.scalar(
            select(func.count(Summary.id)).where(Summary.conversation_id == conversation_id)
        )
    assert folded, "the conversation was long enough to be summarized"
    erased, other = turn_vectors(embedder, marker), turn_vectors(embedder, "OTTER-LANTERN-2207")
    assert files_holding(settings.data_dir, marker)  # the search finds what is there
    for vector in erased:  # each of them, in the vector store's files
        assert files_holding_vectors(settings.data_dir / "chroma", [vector])
    real.conversations.delete(alice, conversation_id)
    assert files_holding(settings.data_dir, marker) == []
    assert files_holding_vectors(settings.data_dir, erased) == []
    assert files_holding(settings.data_dir, "OTTER-LANTERN-2207")  # the other one stays
    assert files_holding_vectors(settings.data_dir, other[:1])
    assert [c.id for c in real.conversations.list_for(alice)] == [kept]
    assert verify_audit(real._database).broken is None


def test_an_erased_user_leaves_no_byte_of_their_text_and_cannot_sign_in(
    real: Services,
    scripted: ScriptedProvider,
    alice: Principal,
    bob: Principal,
    settings: Settings,
    embedder: RecordingEmbedder,
) -> None:
    marker, document_marker = "MARBLE-FINCH-5519", "COPPER-HERON-8842"
    # The document's name carries the marker too: the answers' provenance names the
    # passages they used, and the audit trail must keep them by id only.
    name = f"{document_marker}.md"
    data = f"# Notes\nThe vault code is {document_marker}.\n{PADDING}".encode()
    real.documents.add(alice, name, data, public=True)  # bob's answers will quote it too
    converse(real, alice, scripted, marker)
    cited = [r for r in audit_records(real._database) if r["kind"] == "answer"]
    assert any(r["data"]["prompt"]["sources"] for r in cited), "the document fed an answer"
    scripted.default_answer = f"As the notes say [1]. {PADDING}"
    reply = real.chat.send(bob, None, f"What is the vault code? {PADDING}")
    list(reply)
    (quoted,) = [m for m in real.conversations.messages(bob, reply.conversation_id) if m.citations]
    assert document_marker in quoted.citations[0].cited_text  # bob's answer quotes it
    converse(real, bob, scripted, "SPRUCE-KITE-3310")
    assert files_holding(settings.data_dir, marker)
    assert files_holding(settings.data_dir, document_marker)
    erased = [*turn_vectors(embedder, marker), *chunk_vectors(name, data)]
    for vector in erased:
        assert files_holding_vectors(settings.data_dir / "chroma", [vector])
    counts = real.erasure.erase_user(ROOT, "alice")
    assert counts == {"conversations": 1, "messages": 16, "documents": 1}
    (kept,) = [m for m in real.conversations.messages(bob, reply.conversation_id) if m.citations]
    assert kept.citations[0].cited_text == "" and kept.content.startswith("As the notes")
    assert files_holding(settings.data_dir, marker) == []
    assert files_holding(settings.data_dir, document_marker) == []
    assert files_holding_vectors(settings.data_dir, erased) == []
    assert files_holding(settings.data_dir, "SPRUCE-KITE-3310")  # bob's are untouched
    assert files_holding_vectors(settings.data_dir, turn_vectors(embedder, "SPRUCE-KITE-3310"))
    with pytest.raises(AuthError):
        real.accounts.authenticate(name="alice", password="alice-password")
    verified = verify_audit(real._database)
    assert verified.broken is None
    (tombstone,) = [r for r in audit_records(real._database) if r["kind"] == "user_erased"]
    assert tombstone["about_id"] == alice.user_id and tombstone["data"]["messages"] == 16
    # The ledger keeps what the calls cost (metadata, for the accounts), by id, not by name.
    ledger = {row.user for row in real.usage.by_user_and_day(ROOT, days=1)}
    assert f"user #{alice.user_id}" in ledger and "alice" not in ledger


def test_a_deleted_document_leaves_no_byte_of_its_text_or_vectors(
    real: Services, alice: Principal, settings: Settings
) -> None:
    """The deleted document's vectors were written into the scope's HNSW index files (a
    thousand rows came after them) before it was deleted: the files go too."""
    marker = "AMBER-FALCON-6604"
    name, data = "minutes.md", f"# Minutes\nThe password is {marker}.\n{PADDING}".encode()
    doomed = real.documents.add(alice, name, data)
    bulk = "".join(f"# Item {i}\nLedger line {i} of the archive.\n" for i in range(1000)).encode()
    kept = real.documents.add(alice, "archive.md", bulk)
    assert kept.chunks == 1000
    erased = chunk_vectors(name, data)
    assert files_holding(settings.data_dir, marker)
    for vector in erased:
        assert files_holding_vectors(settings.data_dir / "chroma", [vector])
    real.documents.delete(alice, doomed.id)
    assert files_holding(settings.data_dir, marker) == []
    assert files_holding_vectors(settings.data_dir, erased) == []
    survivors = chunk_vectors("archive.md", bulk)
    assert files_holding_vectors(settings.data_dir / "chroma", survivors[:1] + survivors[-1:])
    hits = real.documents.search(alice, "Ledger line 537 of the archive", k=1)
    assert [(h.document_id, h.chunk) for h in hits] == [(kept.id, 537)]


def test_a_purge_that_fails_is_done_by_the_start_up_sweep(
    real: Services,
    scripted: ScriptedProvider,
    alice: Principal,
    settings: Settings,
    embedder: RecordingEmbedder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = "HAZEL-BRIDGE-4410"
    conversation_id = converse(real, alice, scripted, marker)
    name, data = "memo.md", f"# Memo\nThe locker code is {marker}.\n{PADDING}".encode()
    document = real.documents.add(alice, name, data)
    erased = [*turn_vectors(embedder, marker), *chunk_vectors(name, data)]

    def broken(self: VectorStore, collections: object) -> None:
        raise OSError(f"no space left to purge {self} of {collections}")

    with monkeypatch.context() as patched:
        patched.setattr(VectorStore, "purge", broken)
        real.conversations.delete(alice, conversation_id)
        real.documents.delete(alice, document.id)
    assert files_holding(settings.data_dir, marker) == []  # the database's part is done
    assert files_holding_vectors(settings.data_dir, erased)  # the vector store's is not...
    with real._database.session() as session:  # ...and stays pending
        assert session.scalars(select(VectorErasure.conversation_id)).all() == [conversation_id]
        assert session.scalars(select(DocumentSync.document_id)).all() == [document.id]
    real.close()
    # Another process is sweeping (it holds the lease): a restart leaves the work to it.
    other = try_lease(real._database, "sweep", 60)  # as another process would
    assert other is not None
    restarted = build_services(real.settings, provider=scripted, background=inline())
    assert files_holding_vectors(settings.data_dir, erased)
    with restarted._database.session() as session:
        assert session.scalars(select(VectorErasure.conversation_id)).all() == [conversation_id]
    restarted.close()
    release_lease(real._database, "sweep", other)
    # A restart once nobody sweeps: its start-up sweep (run inline here) purges it all.
    restarted = build_services(real.settings, provider=scripted, background=inline())
    assert files_holding_vectors(settings.data_dir, erased) == []
    with restarted._database.session() as session:
        assert session.scalars(select(VectorErasure.conversation_id)).all() == []
        assert session.scalars(select(DocumentSync.document_id)).all() == []


def test_erasing_from_the_command_line_asks_first(services: Services, alice: Principal) -> None:
    from tests.cli.test_main import run

    declined = run("user", "erase", "alice", stdin="alicia\n")
    assert declined.returncode == 1 and "Nothing was erased" in declined.stdout
    assert services.accounts.find_principal(ROOT, "alice") == alice
    erased = run("user", "erase", "alice", "--yes")
    assert erased.returncode == 0 and "Erased 'alice'" in erased.stdout
    assert services.accounts.find_principal(ROOT, "alice") is None
    missing = run("user", "erase", "nobody", "--yes")
    assert missing.returncode != 0 and "no user named" in missing.stderr
    assert "Traceback" not in missing.stderr
