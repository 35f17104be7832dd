"""The same code on PostgreSQL: migrations, chat, usage, quotas and summaries.

A throwaway cluster is started on 127.0.0.1 for this module (initdb + pg_ctl from
Debian's postgresql package, which `make test` installs when missing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event, text, update
from sqlalchemy.orm import Session as OrmSession

from parley.chat.conversation.drafts import STALE_S
from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.background import BackgroundWork
from parley.core.config import ProviderChoice, Settings
from parley.core.domain import MessageRole, MessageStatus, Principal, Role
from parley.core.errors import QuotaExceeded
from parley.store import search_index
from parley.store.db import Database
from parley.store.keys import AuditKeys
from parley.store.migrate import upgrade
from parley.store.models import AnswerDraft, Base, Message, utcnow
from parley.wiring.services import Services, build_services
from tests.support import ROOT, admitted_by_processes, audit_records, free_port, verify_audit

PG_BIN = Path("/usr/lib/postgresql/15/bin")
INITDB = shutil.which("initdb") or str(PG_BIN / "initdb")
PG_CTL = shutil.which("pg_ctl") or str(PG_BIN / "pg_ctl")

pytestmark = pytest.mark.skipif(
    not Path(INITDB).exists(), reason="needs PostgreSQL's initdb (make system-deps installs it)"
)


def _as_postgres(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI runs as root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


# The module's tests share one PostgreSQL database, so they share its audit key too.
PG_AUDIT_KEY = "postgres-tests-audit-key-0123456789"
PG_KEYS = AuditKeys.from_secrets(PG_AUDIT_KEY)
PG_SESSION_SECRET = "postgres-tests-session-secret-0123456789"


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    # Not under pytest's temporary root: that is private to root, and postgres must enter it.
    folder = Path(tempfile.mkdtemp(prefix="parley-pg-"))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    port = free_port()
    subprocess.run(
        _as_postgres(
            [
                INITDB,
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ]
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        _as_postgres(
            [
                PG_CTL,
                "-D",
                str(data),
                "-l",
                str(folder / "log"),
                "-w",
                "-o",
                f"-h 127.0.0.1 -p {port} -k {folder}",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "-c",
                "CREATE DATABASE parley",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/parley"
    finally:
        subprocess.run(
            _as_postgres([PG_CTL, "-D", str(data), "-m", "fast", "stop"]),
            capture_output=True,
            timeout=60,
            check=False,
        )


def test_migrations_match_the_models_on_postgres(postgres_url: str) -> None:
    database = Database(postgres_url, audit_keys=PG_KEYS)
    upgrade(database)
    with database.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_name": search_index.include_name}
        )
        assert compare_metadata(context, Base.metadata) == []
    database.dispose()


def test_chat_usage_quotas_and_summaries_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=postgres_url,
        audit_key=PG_AUDIT_KEY,  # one server for the module's tests: one audit key
        session_secret=PG_SESSION_SECRET,  # and one session secret
        provider=ProviderChoice.LOCAL,
        model_titles=False,
        memory_strategy="summary_buffer",
        memory_fold_tokens=200,
    )
    database = Database(postgres_url, audit_keys=PG_KEYS)
    upgrade(database)
    database.dispose()
    provider = ScriptedProvider(model="claude-sonnet-test", default_answer="An answer " * 20)
    services = build_services(settings, provider=provider, background=BackgroundWork(workers=0))
    try:
        exercise(services)
    finally:
        services._database.dispose()


def exercise(services: Services) -> None:
    alice = services.accounts.create_user(ROOT, name="pg-alice", password="alice-password")
    conversation = None
    for turn in range(12):
        reply = services.chat.send(
            alice, conversation, f"Question {turn} about \u00e9t\u00e9 \U0001f31e"
        )
        list(reply)
        conversation = reply.conversation_id
        assert reply.result is not None and reply.result.ok
    assert conversation is not None
    messages = services.conversations.messages(alice, conversation)
    assert len(messages) == 24 and messages[0].content.endswith("\U0001f31e")
    rows = services.usage.by_user_and_day(ROOT, days=1)
    assert [(r.user, r.messages) for r in rows] == [("pg-alice", 12)]
    assert rows[0].cost_usd > 0
    summary = services.memory.deps.summaries.latest(conversation)
    assert summary is not None and summary.version >= 1
    search_on_postgres(services, alice, conversation)
    services.quotas.set_quota(ROOT, alice.user_id, messages_per_day=12, tokens_per_day=None)
    with pytest.raises(QuotaExceeded):
        services.chat.send(alice, conversation, "one too many")
    services.conversations.delete(alice, conversation)
    assert services.memory.deps.summaries.latest(conversation) is None  # cascaded


def search_on_postgres(services: Services, alice: Principal, conversation: int) -> None:
    """Full-text search through the GIN indexes: words, prefixes, stems, titles, the
    match marked, and nothing of another user's."""
    services.conversations.rename(alice, conversation, "Summer questions")
    hits = services.search.search(alice, "question 11")
    assert [(h.conversation_id, h.role) for h in hits] == [(conversation, MessageRole.USER)]
    assert [hits[0].snippet[a:b] for a, b in hits[0].marks] == ["Question", "11"]
    assert len(services.search.search(alice, "quest")) >= 12  # prefixes, stems
    (titled,) = services.search.search(alice, "summer")
    assert (titled.conversation_id, titled.message_id) == (conversation, None)
    assert services.search.search(alice, "answ")  # the start of a word: "An answer …"
    assert services.search.search(alice, "about")  # no stop words dropped
    bob = services.accounts.create_user(ROOT, name="pg-bob", password="bob-password")
    assert services.search.search(bob, "question") == []
    with services._database.session() as session:
        session.execute(text("SET LOCAL enable_seqscan = off"))  # a small table: ask
        plan = "\n".join(
            session.execute(
                text(
                    "EXPLAIN SELECT id FROM messages WHERE "
                    f"to_tsvector('{search_index.POSTGRES_CONFIG}', content) "
                    f"@@ to_tsquery('{search_index.POSTGRES_CONFIG}', 'question:*')"
                )
            ).scalars()
        )
    assert "ix_messages_search" in plan  # the index serves the query's expression


def test_shared_token_buckets_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    """Five processes at a barrier over one bucket row, locked `FOR UPDATE`."""
    database = Database(postgres_url, audit_keys=PG_KEYS)
    upgrade(database)
    with database.session() as session:
        session.execute(text("DELETE FROM rate_buckets"))
    database.dispose()
    granted, elapsed = admitted_by_processes(postgres_url, tmp_path, per_minute=300, tries=120)
    assert 300 <= sum(granted) <= 300 + elapsed * 300 / 60, (granted, elapsed)


def test_processes_append_to_one_audit_chain_on_postgres(postgres_url: str) -> None:
    """The audit head row is locked `FOR UPDATE`: four processes, one unbroken chain."""
    from tests.store.test_audit import APPENDER, ROOT_DIR

    database = Database(postgres_url, audit_keys=PG_KEYS)
    upgrade(database)
    before = verify_audit(database)
    assert before.broken is None
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, postgres_url, f"pg{p}", "30", PG_AUDIT_KEY],
            cwd=ROOT_DIR,
        )
        for p in range(4)
    ]
    assert [w.wait(timeout=120) for w in workers] == [0, 0, 0, 0]
    after = verify_audit(database)
    assert (after.records - before.records, after.broken) == (120, None)
    database.dispose()


def test_review_break_glass_and_erasure_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    """The admin paths' queries on PostgreSQL: text search (ILIKE with escapes), the
    grant read from the audit trail, quotes scrubbed from JSON columns, a user erased
    by cascade, usage facts, and a chain that still verifies."""
    from datetime import date

    from parley.chat.oversight.review import ReviewFilter
    from parley.retrieval.document_index import DocumentIndex
    from parley.retrieval.embeddings import HashingEmbedder
    from parley.retrieval.vector_store import VectorStore

    settings = Settings(
        data_dir=tmp_path,
        database_url=postgres_url,
        audit_key=PG_AUDIT_KEY,  # one server for the module's tests: one audit key
        session_secret=PG_SESSION_SECRET,  # and one session secret
        provider=ProviderChoice.LOCAL,
        model_titles=False,
        memory_strategy="token_window",
    )
    database = Database(postgres_url, audit_keys=PG_KEYS)
    upgrade(database)
    database.dispose()
    provider = ScriptedProvider(model="claude-sonnet-test", default_answer="See [1].")
    index = DocumentIndex(embedder=HashingEmbedder(), store=VectorStore.persistent(tmp_path / "v"))
    services = build_services(
        settings, provider=provider, background=BackgroundWork(workers=0), document_index=index
    )
    try:
        admin = services.accounts.create_user(
            ROOT, name="pg-root", password="root-password", role=Role.ADMIN
        )
        owner = services.accounts.create_user(ROOT, name="pg-owner", password="owner-password")
        reader = services.accounts.create_user(ROOT, name="pg-reader", password="reader-pass")
        services.documents.add(
            owner, "plan.txt", b"The launch is on the fifth of June, 100% sure.", public=True
        )
        reply = services.chat.send(reader, None, "When is the launch? 100% please")
        list(reply)
        cited = services.conversations.messages(reader, reply.conversation_id)[-1]
        assert cited.citations and "fifth of June" in cited.citations[0].cited_text
        found = services.review.find(admin, ReviewFilter(text="100%"))
        assert [r.id for r in found.rows] == [reply.conversation_id]
        assert services.review.find(admin, ReviewFilter(text="1_0")).rows == []
        services.review.open(admin, reply.conversation_id, "Checking the launch answer")
        assert services.review.read(admin, reply.conversation_id).owner == "pg-reader"
        # Newest first: the opening, then both searches (the one that matched nothing
        # read her conversations too).
        seen = [(a.admin, a.kind, a.matched) for a in services.review.looks(reader)]
        assert seen == [
            ("pg-root", "conversation_opened", None),
            ("pg-root", "conversations_searched", False),
            ("pg-root", "conversations_searched", True),
        ]
        facts = services.usage.facts(admin, since=date(2000, 1, 1), until=date(2100, 1, 1))
        assert "pg-reader" in {f.user for f in facts}
        services.erasure.erase_user(admin, "pg-owner")
        kept = services.conversations.messages(reader, reply.conversation_id)[-1]
        assert kept.citations and kept.citations[0].cited_text == ""
        assert services.accounts.find_principal(admin, "pg-owner") is None
        assert verify_audit(services._database).broken is None
    finally:
        services._database.dispose()


def test_a_concurrency_limit_shared_by_processes_on_postgres(
    postgres_url: str, tmp_path: Path
) -> None:
    """Slots taken `FOR UPDATE SKIP LOCKED`: four processes of three threads, three slots."""
    from tests.chat.gateway.test_shared_slots import calls_in_processes, most_at_once

    database = Database(postgres_url, audit_keys=PG_KEYS)
    upgrade(database)
    database.dispose()
    spans = calls_in_processes(postgres_url, tmp_path, processes=4, threads=3, slots=3, calls=4)
    assert len(spans) == 48 and most_at_once(spans) == 3


def test_a_dead_answer_settled_while_its_user_asks_again_stays_in_order_on_postgres(
    postgres_url: str, tmp_path: Path
) -> None:
    """A process died mid-answer; another settles its draft while the user's next question
    is written but not yet committed. The conversation must still read in order: question,
    question, answer — never the kept answer after the newer question (the settler waits
    for the question's transaction on the conversation's row lock)."""
    settings = Settings(
        data_dir=tmp_path,
        database_url=postgres_url,
        audit_key=PG_AUDIT_KEY,
        session_secret=PG_SESSION_SECRET,
        provider=ProviderChoice.LOCAL,
        model_titles=False,
    )
    database = Database(postgres_url, audit_keys=PG_KEYS)
    upgrade(database)
    database.dispose()
    provider = ScriptedProvider(model="claude-sonnet-test", default_answer="A new answer.")
    services = build_services(settings, provider=provider, background=BackgroundWork(workers=0))
    written, settler_done = threading.Event(), threading.Event()

    def settler_waits_on_a_lock() -> bool:
        with psycopg.connect(postgres_url.replace("postgresql+psycopg", "postgresql")) as pg:
            waiting = pg.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            ).fetchone()
        return bool(waiting and waiting[0])

    def hold_the_question_open(session: OrmSession) -> None:
        if any(isinstance(o, Message) and o.content == "Second" for o in session.new):
            written.set()  # flushed, not committed: the settler runs now
            # Held until the settler is seen waiting for this transaction (the lock), or
            # has finished without waiting (what the test must catch): no fixed sleep.
            deadline = time.monotonic() + 20
            while not (settler_done.is_set() or settler_waits_on_a_lock()):
                assert time.monotonic() < deadline, "the settler neither waited nor ended"
                time.sleep(0.02)

    def after_flush(session: OrmSession, _context: object) -> None:
        hold_the_question_open(session)

    event.listen(OrmSession, "after_flush", after_flush)
    try:
        alice = services.accounts.create_user(ROOT, name="pg-racer", password="racer-password")
        provider.enqueue("Half ", "an ", "answer.")
        dead = services.chat.send(alice, None, "First question")
        chunks = iter(dead)
        next(chunks)
        services.drafts.checkpoint()
        services.drafts.forget(dead.draft_id)  # its process stops: as if killed
        with services._database.session() as session:  # and was last heard of long ago
            session.execute(
                update(AnswerDraft)
                .where(AnswerDraft.id == dead.draft_id)
                .values(heartbeat_at=utcnow() - timedelta(seconds=STALE_S + 5))
            )

        def settle() -> int:
            assert written.wait(30)
            try:  # now: the new question's own draft is fresh, and is left alone
                return services.draft_settler.settle()
            finally:
                settler_done.set()

        def ask_again() -> str:
            return "".join(services.chat.send(alice, dead.conversation_id, "Second"))

        with ThreadPoolExecutor(2) as pool:
            settled, answered = pool.submit(settle), pool.submit(ask_again)
            assert settled.result(30) == 1 and answered.result(30) == "A new answer."
        shown = services.conversations.messages(alice, dead.conversation_id)
        visible = [(m.role, m.content) for m in shown if m.status is not MessageStatus.SUPERSEDED]
        assert visible == [
            (MessageRole.USER, "First question"),
            (MessageRole.USER, "Second"),
            (MessageRole.ASSISTANT, "A new answer."),
        ]
        kept = [m for m in shown if m.content == "Half "]
        assert [m.status for m in kept] == [MessageStatus.SUPERSEDED]  # kept for the record
        chunks.close()  # a process that really died never comes back
        assert verify_audit(services._database).broken is None
    finally:
        event.remove(OrmSession, "after_flush", after_flush)
        services.close()


def test_summary_folds_by_several_processes_at_once_all_land_on_postgres(
    postgres_url: str, tmp_path: Path
) -> None:
    """Eight processes fold the same conversation at the same moment: each reads the same
    last version; every fold is kept, under versions one apart, none refused."""
    from parley.memory.summaries import SummaryStore

    settings = Settings(
        data_dir=tmp_path,
        database_url=postgres_url,
        audit_key=PG_AUDIT_KEY,
        session_secret=PG_SESSION_SECRET,
        provider=ProviderChoice.LOCAL,
        model_titles=False,
    )
    database = Database(postgres_url, audit_keys=PG_KEYS)
    upgrade(database)
    services = build_services(
        settings, provider=ScriptedProvider(), background=BackgroundWork(workers=0)
    )
    alice = services.accounts.create_user(ROOT, name="fold-alice", password="alice-password")
    reply = services.chat.send(alice, None, "Hello there")
    list(reply)
    conversation = reply.conversation_id
    barrier = threading.Barrier(8)

    def fold(n: int) -> int:
        own = Database(postgres_url, audit_keys=PG_KEYS)  # a process of its own
        try:
            barrier.wait()
            return (
                SummaryStore(own)
                .save(
                    conversation,
                    text=f"fold {n}",
                    first_turn_id=1,
                    last_turn_id=2,
                    method="extractive",
                    model=None,
                )
                .version
            )
        finally:
            own.dispose()

    try:
        with ThreadPoolExecutor(8) as pool:
            versions = sorted(pool.map(fold, range(8)))
        assert versions == list(range(1, 9))
    finally:
        services._database.dispose()
        database.dispose()


def test_a_batch_job_polled_by_several_processes_at_once_is_collected_once_on_postgres(
    postgres_url: str, tmp_path: Path
) -> None:
    """Six processes (each its own engine, as the app's processes are) poll the same
    ended batch at the same moment: one collects it; each title is applied, metered and
    audited once, and no second round is sent."""
    from pydantic import SecretStr
    from sqlalchemy import func, select

    from parley.chat.gateway.providers.anthropic import AnthropicProvider
    from parley.chat.gateway.providers.anthropic_batches import AnthropicBatches
    from parley.chat.gateway.providers.keys import StaticKey
    from parley.core.domain import Purpose
    from parley.fakes.anthropic_server import FakeAnthropic, Reply
    from parley.store.models import BatchJob, Conversation, UsageEntry

    settings = Settings(
        data_dir=tmp_path,
        database_url=postgres_url,
        audit_key=PG_AUDIT_KEY,
        session_secret=PG_SESSION_SECRET,
        provider=ProviderChoice.LOCAL,
        model_titles=False,
    )
    database = Database(postgres_url, audit_keys=PG_KEYS)
    upgrade(database)
    with FakeAnthropic(batch_polls=1) as fake:

        def process() -> Services:
            client = AnthropicBatches(
                AnthropicProvider(
                    keys=StaticKey(SecretStr("sk-ant-batch-test")),
                    model="claude-sonnet-test",
                    base_url=fake.base_url,
                    max_retries=0,
                )
            )
            return build_services(
                settings,
                provider=ScriptedProvider(model="claude-sonnet-test"),
                background=BackgroundWork(workers=0),
                batch_client=client,
                eager=False,
            )

        first = process()
        alice = first.accounts.create_user(ROOT, name="batch-alice", password="alice-password")
        conversations = []
        for n in range(5):
            reply = first.chat.send(alice, None, f"Question number {n} about the harbour")
            list(reply)
            conversations.append(reply.conversation_id)
        with database.session() as session:  # the module's other tests' conversations
            session.execute(
                update(Conversation)
                .where(Conversation.id.not_in(conversations))
                .values(title="Named by its user")
            )
        fake.enqueue(*(Reply(text=f'{{"title": "Harbour question {n}"}}') for n in range(5)))
        job = first.batches.submit(ROOT, "titles")
        assert job is not None and job.items == 5
        first.batches.collect(ROOT, job.id)  # its one poll in progress: it ends at the next
        others = [process() for _ in range(5)]
        barrier = threading.Barrier(6)

        def poll(services: Services) -> None:
            barrier.wait()
            services.batches.poll()

        try:
            with ThreadPoolExecutor(6) as pool:
                list(pool.map(poll, [first, *others]))
            final = first.batches.job(ROOT, job.id)
            assert (final.state, final.done, final.skipped, final.failed) == ("done", 5, 0, 0)
            assert len(fake.batches.ids) == 1
            with database.session() as session:
                titles = session.scalars(
                    select(Conversation.title)
                    .where(Conversation.id.in_(conversations))
                    .order_by(Conversation.id)
                ).all()
                batch_calls = session.scalar(
                    select(func.count(UsageEntry.id)).where(UsageEntry.purpose == Purpose.BATCH)
                )
                state = session.scalar(select(BatchJob.state).where(BatchJob.id == job.id))
            assert titles == [f"Harbour question {n}" for n in range(5)]
            ended = [
                r
                for r in audit_records(database)
                if r["kind"] == "batch_job" and r["data"]["action"] == "ended"
            ]
            assert (batch_calls, len(ended), state) == (5, 1, "done")
        finally:
            for services in (first, *others):
                services._database.dispose()
            database.dispose()
