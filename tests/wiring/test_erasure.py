"""Erasure leaves no byte behind: after a user deletes a conversation, or an admin erases
a user, the raw files of the data directory (the database and its write-ahead log, the
vector store, the logs) are searched for a marker the erased text carried.

Real parts throughout: SQLite in WAL mode, embedded Chroma on disk, MiniLM recall
vectors, rolling summaries (the scripted model answers every call, summaries too, with
the marker), documents chunked and indexed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import func, select

from chat.providers.scripted import ScriptedProvider
from parley.background import BackgroundWork
from parley.config import Settings
from parley.domain import Principal
from parley.errors import AuthError
from store.audit import AuditLog
from store.db import Database
from store.models import Summary
from tests.support import ROOT
from wiring.services import Services, build_services

PADDING = "We spoke about the garden, the weather, the harbour and the long walk home. " * 3


def files_holding(root: Path, marker: str) -> list[str]:
    """Every file under `root` whose raw bytes contain the marker."""
    needle = marker.encode("utf-8")
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and needle in path.read_bytes()
    )


@pytest.fixture
def real(settings: Settings, database: Database, scripted: ScriptedProvider) -> Services:
    del database
    memory = settings.model_copy(update={"memory_strategy": "hybrid", "memory_fold_tokens": 200})
    return build_services(memory, provider=scripted, background=BackgroundWork(workers=0))


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


def test_a_deleted_conversation_leaves_no_byte_of_its_text(
    real: Services, scripted: ScriptedProvider, alice: Principal, settings: Settings
) -> None:
    marker = "ZEBRA-QUILL-7731"
    conversation_id = converse(real, alice, scripted, marker)
    kept = converse(real, alice, scripted, "OTTER-LANTERN-2207")  # another, left alone
    with real.database.session() as session:
        folded = session.scalar(
            select(func.count(Summary.id)).where(Summary.conversation_id == conversation_id)
        )
    assert folded, "the conversation was long enough to be summarized"
    assert files_holding(settings.data_dir, marker)  # the search finds what is there
    real.conversations.delete(alice, conversation_id)
    assert files_holding(settings.data_dir, marker) == []
    assert files_holding(settings.data_dir, "OTTER-LANTERN-2207")  # the other one stays
    assert [c.id for c in real.conversations.list_for(alice)] == [kept]
    assert AuditLog(real.database).verify().broken is None


def test_an_erased_user_leaves_no_byte_of_their_text_and_cannot_sign_in(
    real: Services, scripted: ScriptedProvider, alice: Principal, bob: Principal, settings: Settings
) -> None:
    marker, document_marker = "MARBLE-FINCH-5519", "COPPER-HERON-8842"
    # The document's name carries the marker too: the answers' provenance names the
    # passages they used, and the audit trail must keep them by id only.
    real.documents.add(
        alice,
        f"{document_marker}.md",
        f"# Notes\nThe vault code is {document_marker}.\n{PADDING}".encode(),
        public=True,  # bob's answers will quote it too
    )
    converse(real, alice, scripted, marker)
    cited = [r for r in AuditLog(real.database).records() if r["kind"] == "answer"]
    assert any(r["data"]["prompt"]["sources"] for r in cited), "the document fed an answer"
    scripted.default_answer = f"As the notes say [1]. {PADDING}"
    reply = real.chat.send(bob, None, f"What is the vault code? {PADDING}")
    list(reply)
    (quoted,) = [m for m in real.conversations.messages(bob, reply.conversation_id) if m.citations]
    assert document_marker in quoted.citations[0]["cited_text"]  # bob's answer quotes it
    converse(real, bob, scripted, "SPRUCE-KITE-3310")
    assert files_holding(settings.data_dir, marker)
    assert files_holding(settings.data_dir, document_marker)
    counts = real.erasure.erase_user(ROOT, "alice")
    assert counts == {"conversations": 1, "messages": 16, "documents": 1}
    (kept,) = [m for m in real.conversations.messages(bob, reply.conversation_id) if m.citations]
    assert kept.citations[0]["cited_text"] == "" and kept.content.startswith("As the notes")
    assert files_holding(settings.data_dir, marker) == []
    assert files_holding(settings.data_dir, document_marker) == []
    assert files_holding(settings.data_dir, "SPRUCE-KITE-3310")  # bob's are untouched
    with pytest.raises(AuthError):
        real.accounts.authenticate(name="alice", password="alice-password")
    verified = AuditLog(real.database).verify()
    assert verified.broken is None
    (tombstone,) = [r for r in AuditLog(real.database).records() if r["kind"] == "user_erased"]
    assert tombstone["about_id"] == alice.user_id and tombstone["data"]["messages"] == 16
    # The ledger keeps what the calls cost (metadata, for the accounts).
    assert "alice" in {row.user for row in real.usage.by_user_and_day(ROOT, days=1)}


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
