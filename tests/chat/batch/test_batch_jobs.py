"""Batch jobs end to end: through the fake server's Message Batches API with the real SDK,
and on the local path (a scripted model on the background pool)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select, update

from parley.chat.batch.jobs import DOCUMENT_SYSTEM, Applied, Target
from parley.chat.batch.state import Lost
from parley.chat.gateway.providers.anthropic import AnthropicProvider
from parley.chat.gateway.providers.anthropic_batches import AnthropicBatches
from parley.chat.gateway.providers.keys import StaticKey
from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.background import BackgroundWork
from parley.core.config import BatchSettings, PiiSettings, Settings
from parley.core.domain import Principal, Purpose
from parley.core.errors import InvalidInput, Overloaded, PermissionDenied, ProviderUnavailable
from parley.core.llm import BatchOutcome, BatchProgress, ChatRequest
from parley.fakes.anthropic_server import FakeAnthropic, Fault, Reply
from parley.memory.summaries import SummaryStore
from parley.retrieval.document_index import DocumentIndex
from parley.retrieval.embeddings import HashingEmbedder
from parley.retrieval.vector_store import VectorStore
from parley.store.db import Database
from parley.store.models import AuditRecord, BatchItem, BatchJob, Document, UsageEntry
from parley.wiring.services import Services, build_services
from tests.support import ROOT, audit_records

MODEL = "claude-sonnet-test"  # priced as Sonnet: $3 in, $15 out per million


@pytest.fixture(autouse=True)
def _migrated(database: Database) -> None:
    del database  # upgraded by its fixture


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(batch_polls=1) as server:
        yield server


def make(
    settings: Settings,
    tmp_path: Path,
    fake: FakeAnthropic | None,
    scripted: ScriptedProvider,
    **changes: object,
) -> Services:
    scripted.model = MODEL if fake is not None else scripted.model
    client = (
        AnthropicBatches(
            AnthropicProvider(
                keys=StaticKey(SecretStr("sk-ant-batch-test")),
                model=MODEL,
                base_url=fake.base_url,
                max_retries=0,
            )
        )
        if fake is not None
        else None
    )
    index = DocumentIndex(
        embedder=HashingEmbedder(), store=VectorStore.persistent(tmp_path / "chroma")
    )
    return build_services(
        settings.model_copy(update=changes),
        provider=scripted,
        background=BackgroundWork(workers=0),
        document_index=index,
        batch_client=client,
    )


def ledger(services: Services) -> list[UsageEntry]:
    with services._database.session() as session:
        return list(session.scalars(select(UsageEntry).order_by(UsageEntry.id)))


def test_a_batch_of_document_summaries_completes_through_the_batch_endpoints(
    settings: Settings, tmp_path: Path, fake: FakeAnthropic, scripted: ScriptedProvider
) -> None:
    services = make(settings, tmp_path, fake, scripted)
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    bob = services.accounts.create_user(ROOT, name="bob", password="bob-password")
    lake = services.documents.add(alice, "lake.md", b"# Lake\nThe lake froze in January.\n")
    plan = services.documents.add(alice, "plan.txt", b"The launch is on the fifth of June.")
    memo = services.documents.add(bob, "memo.txt", b"Bob's memo: the budget is 40,000 euros.")
    fake.enqueue(
        Reply(text="A note on the frozen lake.", input_tokens=1000, output_tokens=100),
        Reply(text="The launch date.", input_tokens=1000, output_tokens=100),
        Reply(text="Bob's budget memo.", input_tokens=2000, output_tokens=200),
    )

    job = services.batches.submit(ROOT, "documents")
    assert job is not None and (job.runner, job.state, job.items) == ("api", "running", 3)
    (batch_id,) = fake.batches.ids
    sent = fake.batches.requests_of(batch_id)
    assert [r["custom_id"] for r in sent] == [
        f"documents-{lake.id}",
        f"documents-{plan.id}",
        f"documents-{memo.id}",
    ]
    system = sent[0]["params"]["system"][0]["text"]
    assert system.split("<")[0] == DOCUMENT_SYSTEM.split("<")[0]
    assert "The lake froze in January." in sent[0]["params"]["messages"][0]["content"]

    assert services.batches.collect(ROOT, job.id).state == "running"  # still processing
    done = services.batches.collect(ROOT, job.id)
    assert (done.state, done.done, done.failed) == ("done", 3, 0)

    with services._database.session() as session:
        summaries = dict(session.execute(select(Document.id, Document.summary)).all())
    assert summaries == {
        lake.id: "A note on the frozen lake.",
        plan.id: "The launch date.",
        memo.id: "Bob's budget memo.",
    }
    rows = ledger(services)
    # Results come in any order (the fake sends them backwards): matched by custom id.
    assert sorted((r.purpose, r.user_id) for r in rows) == [
        (Purpose.BATCH, alice.user_id),
        (Purpose.BATCH, alice.user_id),
        (Purpose.BATCH, bob.user_id),
    ]
    # Half the standard price: 1000 × $3 + 100 × $15 per million is $0.0045 at full price.
    assert sorted(r.cost_usd for r in rows) == pytest.approx([0.00225, 0.00225, 0.0045])
    assert done.cost_usd == pytest.approx(0.00225 * 4)
    calls = [r for r in audit_records(services._database) if r["kind"] == "ai_call"]
    assert [c["data"]["purpose"] for c in calls] == ["batch"] * 3
    assert services.quotas.today(alice).tokens == 0  # the operator's work, not alice's use
    kinds = [
        r["data"].get("action")
        for r in audit_records(services._database)
        if r["kind"] == "batch_job"
    ]
    assert kinds == ["submitted", "ended"]
    # Nothing is left to summarise: a second job is not made.
    assert services.batches.submit(ROOT, "documents") is None


def test_errored_and_invalid_items_go_again_until_their_tries_run_out(
    settings: Settings, tmp_path: Path, fake: FakeAnthropic, scripted: ScriptedProvider
) -> None:
    services = make(settings, tmp_path, fake, scripted, batch=BatchSettings(attempts=2))
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    ids = []
    for question in ("Where shall we go in May?", "What is our budget?", "Tell me a joke"):
        scripted.enqueue("An answer.")
        list(services.chat.send(alice, None, question))
        ids.append(services.conversations.list_for(alice)[0].id)
    fake.enqueue(
        Reply(text="not json at all"),  # invalid: asked again, told why
        Fault("overloaded"),  # errored: sent again
        Reply(text='{"title": "x"}'),  # too short: invalid
    )
    job = services.batches.submit(ROOT, "titles")
    assert job is not None and job.items == 3
    services.batches.collect(ROOT, job.id)  # in progress
    fake.enqueue(
        Reply(text='{"title": "Travel plans for May"}'),
        Reply(text='{"title": "Budget question"}'),
        Reply(text="still not json"),
    )
    second = services.batches.collect(ROOT, job.id)
    assert second.round == 2 and second.state == "running"
    first_id, second_id = fake.batches.ids
    again = fake.batches.requests_of(second_id)
    assert len(again) == 3
    told = again[0]["params"]["messages"]
    assert "not valid" in str(told[-1]["content"])
    assert "not valid" not in str(again[1]["params"]["messages"])  # it errored, it was not wrong
    services.batches.collect(ROOT, job.id)
    final = services.batches.collect(ROOT, job.id)
    assert (final.state, final.done, final.failed) == ("done", 2, 1)
    titles = {c.id: c.title for c in services.conversations.list_for(alice)}
    assert titles[ids[0]] == "Travel plans for May"
    assert titles[ids[1]] == "Budget question"
    assert titles[ids[2]] == "Tell me a joke"  # its tries ran out: the stand-in stays
    assert len(ledger(services)) - 3 == 5  # the chat turns, then five answered batch calls


def test_a_target_changed_meanwhile_is_left_alone(
    settings: Settings, tmp_path: Path, fake: FakeAnthropic, scripted: ScriptedProvider
) -> None:
    services = make(settings, tmp_path, fake, scripted)
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    list(services.chat.send(alice, None, "Plan the picnic"))
    conversation = services.conversations.list_for(alice)[0].id
    job = services.batches.submit(ROOT, "titles")
    assert job is not None
    services.conversations.rename(alice, conversation, "Alice's own name")
    services.batches.collect(ROOT, job.id)
    final = services.batches.collect(ROOT, job.id)
    assert (final.done, final.skipped) == (0, 1)
    assert services.conversations.list_for(alice)[0].title == "Alice's own name"
    assert len([r for r in ledger(services) if r.purpose is Purpose.BATCH]) == 1  # still paid


def test_several_collectors_at_once_apply_each_result_once(
    settings: Settings, tmp_path: Path, fake: FakeAnthropic, scripted: ScriptedProvider
) -> None:
    services = make(settings, tmp_path, fake, scripted)
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    for n in range(6):
        services.documents.add(alice, f"d{n}.txt", f"Document number {n} is here.".encode())
    job = services.batches.submit(ROOT, "documents")
    assert job is not None
    fake.batches.polls = 0
    services.batches.collect(ROOT, job.id)  # its one poll in progress
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def collect() -> None:
        try:
            start.wait()
            services.batches.collect(ROOT, job.id)
            services.batches.poll()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=collect) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    final = services.batches.job(ROOT, job.id)
    assert (final.state, final.done, final.skipped, final.failed) == ("done", 6, 0, 0)
    batch_rows = [r for r in ledger(services) if r.purpose is Purpose.BATCH]
    assert len(batch_rows) == 6
    assert final.cost_usd == pytest.approx(sum(r.cost_usd for r in batch_rows))
    assert len(fake.batches.ids) == 1  # no second round was sent by anyone
    records = audit_records(services._database)
    assert len([r for r in records if r["kind"] == "ai_call"]) == 6
    assert [r["data"]["action"] for r in records if r["kind"] == "batch_job"] == [
        "submitted",
        "ended",
    ]


def test_a_long_conversations_summary_is_written_again_from_its_turns(
    settings: Settings, tmp_path: Path, fake: FakeAnthropic, scripted: ScriptedProvider
) -> None:
    services = make(settings, tmp_path, fake, scripted)
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    conversation = services.conversations.create(alice).id
    for question in ("My sister Ann lives in Lyon.", "She has two cats.", "What do I know?"):
        list(services.chat.send(alice, conversation, question))
    store = SummaryStore(services._database)
    thread = services.conversations.thread(alice, conversation)
    turn_ids = [m.id for m in thread.messages]
    store.save(
        conversation,
        text="Ann: sister.",
        first_turn_id=turn_ids[0],
        last_turn_id=turn_ids[3],
        method="extractive",
        model=None,
    )
    fake.enqueue(Reply(text="Alice's sister Ann lives in Lyon and has two cats."))
    job = services.batches.submit(ROOT, "summaries")
    assert job is not None and job.items == 1
    (batch_id,) = fake.batches.ids
    prompt = fake.batches.requests_of(batch_id)[0]["params"]["messages"][0]["content"]
    assert "She has two cats." in prompt and "What do I know?" not in prompt
    services.batches.collect(ROOT, job.id)
    assert services.batches.collect(ROOT, job.id).done == 1
    newest = store.latest(conversation, on_path=set(turn_ids))
    assert newest is not None and newest.method == "batch" and newest.version == 2
    assert (newest.first_turn_id, newest.last_turn_id) == (turn_ids[0], turn_ids[3])
    assert "Lyon" in newest.text
    assert services.batches.submit(ROOT, "summaries") is None  # written this way already


def test_personal_values_leave_as_placeholders_and_come_back_in_the_summary(
    settings: Settings, tmp_path: Path, fake: FakeAnthropic, scripted: ScriptedProvider
) -> None:
    services = make(settings, tmp_path, fake, scripted, pii=PiiSettings(enabled=True))
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    document = services.documents.add(alice, "c.txt", b"Write to ann.lee@example.com by Friday.")
    token = services.redactor.placeholder("EMAIL", "ann.lee@example.com", str(alice.user_id))
    fake.enqueue(Reply(text=f"Asks for a reply to {token} by Friday."))
    job = services.batches.submit(ROOT, "documents")
    assert job is not None
    (batch_id,) = fake.batches.ids
    assert "ann.lee@example.com" not in str(fake.batches.requests_of(batch_id))
    assert token in str(fake.batches.requests_of(batch_id))
    services.batches.collect(ROOT, job.id)
    services.batches.collect(ROOT, job.id)
    with services._database.session() as session:
        summary = session.scalar(select(Document.summary).where(Document.id == document.id))
        stored = str(session.scalars(select(AuditRecord.data)).all())
    assert summary == "Asks for a reply to ann.lee@example.com by Friday."
    assert "ann.lee@example.com" not in stored


def test_without_a_key_the_job_runs_on_the_local_model_in_the_background(
    settings: Settings, tmp_path: Path, scripted: ScriptedProvider
) -> None:
    services = make(settings, tmp_path, None, scripted, batch=BatchSettings(attempts=2))
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    list(services.chat.send(alice, None, "Where shall we go in May?"))
    calls = len(scripted.requests)
    scripted.enqueue("no json here")
    scripted.enqueue('{"title": "May travel plans"}')
    job = services.batches.submit(ROOT, "titles")  # inline pool: it has run
    assert job is not None and job.runner == "local"
    final = services.batches.job(ROOT, job.id)
    assert (final.state, final.done) == ("done", 1)
    assert services.conversations.list_for(alice)[0].title == "May travel plans"
    asked = scripted.requests[calls:]
    assert [r.meta.purpose for r in asked] == [Purpose.BATCH, Purpose.BATCH]
    assert "not valid" in asked[1].messages[-1].content
    assert [r.purpose for r in ledger(services)][-2:] == [Purpose.BATCH, Purpose.BATCH]


def test_only_admins_run_batch_jobs_and_unknown_kinds_get_a_sentence(
    settings: Settings, tmp_path: Path, scripted: ScriptedProvider
) -> None:
    services = make(settings, tmp_path, None, scripted)
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    for call in (
        lambda p: services.batches.submit(p, "titles"),
        lambda p: services.batches.jobs(p),
    ):
        with pytest.raises(PermissionDenied):
            call(alice)
    with pytest.raises(InvalidInput, match="choose one of documents, summaries, titles"):
        services.batches.submit(ROOT, "everything")
    with services._database.session() as session:
        assert session.scalar(select(func.count(BatchJob.id))) == 0


def documents_of(services: Services, owner: Principal, n: int) -> None:
    for i in range(n):
        services.documents.add(owner, f"d{i}.txt", f"Document number {i} says {i * 7}.".encode())


def summaries(services: Services) -> list[str | None]:
    with services._database.session() as session:
        return list(session.scalars(select(Document.summary).order_by(Document.id)))


def batch_actions(services: Services) -> list[str]:
    records = audit_records(services._database)
    return [r["data"]["action"] for r in records if r["kind"] == "batch_job"]


def test_a_cancelled_batch_keeps_what_it_had_answered_and_sends_no_more(
    settings: Settings, tmp_path: Path, scripted: ScriptedProvider
) -> None:
    with FakeAnthropic(batch_polls=3, batch_answered_on_cancel=1) as fake:
        services = make(settings, tmp_path, fake, scripted)
        alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
        documents_of(services, alice, 3)
        fake.enqueue(Reply(text="First."), Fault("overloaded"), Reply(text="Third."))
        job = services.batches.submit(ROOT, "documents")
        assert job is not None
        asked = services.batches.cancel(ROOT, job.id)
        assert asked.shown_state == "canceling"
        with pytest.raises(InvalidInput, match="already being canceled"):
            services.batches.cancel(ROOT, job.id)
        final = services.batches.collect(ROOT, job.id)
    assert (final.state, final.done, final.failed) == ("canceled", 1, 2)
    assert summaries(services) == ["First.", None, None]  # answered before the cancel: billed
    assert len([r for r in ledger(services) if r.purpose is Purpose.BATCH]) == 1
    assert len(fake.batches.ids) == 1  # the errored item did not go again
    assert batch_actions(services) == ["submitted", "canceled", "ended"]
    with pytest.raises(InvalidInput, match="already ended"):
        services.batches.cancel(ROOT, job.id)


def test_a_cancel_while_the_batch_is_being_sent_still_stops_it(
    settings: Settings, tmp_path: Path, fake: FakeAnthropic, scripted: ScriptedProvider
) -> None:
    services = make(settings, tmp_path, fake, scripted)
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    documents_of(services, alice, 2)
    client = services._batch_client()
    assert client is not None
    submit = client.submit

    def cancel_meanwhile(requests: object) -> str:
        (job,) = services.batches.jobs(ROOT)
        assert job.state == "sending"
        services.batches.cancel(ROOT, job.id)  # another admin, while the upload runs
        return submit(requests)  # type: ignore[arg-type]

    client.submit = cancel_meanwhile  # type: ignore[method-assign]
    job = services.batches.submit(ROOT, "documents")
    assert job is not None and job.shown_state == "canceling"
    services.batches.poll()  # cancels it at the API; it ends at the next look
    final = services.batches.collect(ROOT, job.id)
    assert (final.state, final.done) == ("canceled", 0)
    assert summaries(services) == [None, None]
    assert len(fake.batches.ids) == 1


def test_a_refused_send_is_tried_again_and_a_request_the_api_rejects_fails_the_job(
    settings: Settings, tmp_path: Path, fake: FakeAnthropic, scripted: ScriptedProvider
) -> None:
    services = make(settings, tmp_path, fake, scripted)
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    documents_of(services, alice, 2)
    fake.batches.refuse("overloaded")
    job = services.batches.submit(ROOT, "documents")
    assert job is not None and job.state == "planned"
    assert job.note.startswith("The next poll sends it again. (The model service is overloaded")
    assert fake.batches.ids == []
    services.batches.poll()
    assert services.batches.job(ROOT, job.id).state == "running"
    services.batches.collect(ROOT, job.id)
    assert services.batches.collect(ROOT, job.id).state == "done"

    services.documents.add(alice, "new.txt", b"A new document arrives later.")
    fake.batches.refuse("invalid_request")
    refused = services.batches.submit(ROOT, "documents")
    assert refused is not None
    assert (refused.state, refused.failed) == ("failed", 1)
    assert refused.note == (
        "Not sent: The model service refused Parley's request. This is a bug and has been logged."
    )
    assert batch_actions(services)[-2:] == ["submitted", "failed"]
    # A failed job holds nothing back: the document can go in the next job.
    assert services.batches.submit(ROOT, "documents") is not None


def test_targets_an_open_job_holds_are_not_planned_again(
    settings: Settings, tmp_path: Path, fake: FakeAnthropic, scripted: ScriptedProvider
) -> None:
    services = make(settings, tmp_path, fake, scripted)
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    documents_of(services, alice, 2)
    first = services.batches.submit(ROOT, "documents")
    assert first is not None and first.items == 2
    assert services.batches.submit(ROOT, "documents") is None  # a double click
    services.documents.add(alice, "late.txt", b"Uploaded after the first job.")
    second = services.batches.submit(ROOT, "documents")
    assert second is not None and second.items == 1


def test_a_silent_collector_is_taken_over_and_no_item_is_applied_twice(
    settings: Settings, tmp_path: Path, fake: FakeAnthropic, scripted: ScriptedProvider
) -> None:
    services = make(settings, tmp_path, fake, scripted)
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    documents_of(services, alice, 3)
    job = services.batches.submit(ROOT, "documents")
    assert job is not None
    fake.batches.polls = 0
    services.batches.collect(ROOT, job.id)  # in progress
    (batch_id,) = fake.batches.ids
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    with services._database.session() as session:  # a collector claimed it, then went silent
        session.execute(
            update(BatchJob)
            .where(BatchJob.id == job.id)
            .values(state="collecting", claim="silent", updated_at=long_ago)
        )
        first = session.scalar(select(BatchItem).where(BatchItem.job_id == job.id).limit(1))
        assert first is not None
        first.state, first.claim = "settling", "silent"  # mid-way through its first item
        silent = BatchItem(**{c.key: getattr(first, c.key) for c in BatchItem.__table__.columns})
    services.batches.poll()  # taken back, and collected by this process
    final = services.batches.job(ROOT, job.id)
    assert (final.state, final.done, final.skipped) == ("done", 3, 0)
    # The silent collector wakes up and goes on: it holds neither the job nor its item.
    store, rounds = services.batches._store, services.batches._rounds
    outcome = next(o for o in fake_outcomes(services, batch_id) if o.custom_id == silent.custom_id)
    kind = store.kind_of(job.id)
    rounds.settle(kind, job.id, silent, outcome, batch_id, long_ago, "silent")
    with pytest.raises(Lost):  # its write of the item it was applying
        store.end_item(silent.id, job.id, "skipped", "", claim="silent")
    with pytest.raises(Lost):
        rounds.next_round(job.id, services._batch_client(), "silent")  # type: ignore[arg-type]
    again = services.batches.job(ROOT, job.id)
    assert (again.done, again.skipped, again.cost_usd) == (3, 0, final.cost_usd)
    assert len([r for r in ledger(services) if r.purpose is Purpose.BATCH]) == 3
    with services._database.session() as session:  # as if sent again in a later round
        session.execute(update(BatchItem).where(BatchItem.id == silent.id).values(state="sent"))
    assert not store.claim_item(silent.id, "sent", "settling", "silent", job_id=job.id)


def fake_outcomes(services: Services, batch_id: str) -> list[BatchOutcome]:
    client = services._batch_client()
    assert client is not None
    return list(client.outcomes(batch_id))


def test_a_long_summary_cut_to_nothing_is_asked_for_again(
    settings: Settings, tmp_path: Path, fake: FakeAnthropic, scripted: ScriptedProvider
) -> None:
    services = make(settings, tmp_path, fake, scripted)
    kind = services.batches._kinds["summaries"]
    applied = kind.apply(Target(1, "1", None), "word " * 2000, "claude-test")
    assert applied.outcome == "invalid" and "past its budget" in applied.reason


def test_the_embedded_model_is_not_asked_to_write_conversation_summaries_again(
    settings: Settings,
) -> None:
    services = build_services(settings, provider=None, background=BackgroundWork(workers=0))
    with pytest.raises(InvalidInput, match="The summaries job needs Claude"):
        services.batches.submit(ROOT, "summaries")


def test_a_local_item_that_breaks_uses_its_tries_and_the_job_ends_failed(
    settings: Settings, tmp_path: Path, scripted: ScriptedProvider
) -> None:
    services = make(settings, tmp_path, None, scripted, batch=BatchSettings(attempts=2))
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    documents_of(services, alice, 1)

    def broken(request: ChatRequest) -> None:
        raise RuntimeError(f"a bug in one item ({request.meta.purpose})")

    scripted.on_request = broken
    job = services.batches.submit(ROOT, "documents")
    assert job is not None
    final = services.batches.job(ROOT, job.id)
    assert (final.state, final.failed) == ("failed", 1)
    assert final.errors == ("1 × an internal error (see the log)",)
    assert len(scripted.requests) == 2  # two tries, then no more


def test_an_item_whose_process_died_while_it_ran_is_resumed_within_its_tries(
    settings: Settings, tmp_path: Path, scripted: ScriptedProvider
) -> None:
    services = make(settings, tmp_path, None, scripted, batch=BatchSettings(attempts=2))
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    documents_of(services, alice, 2)
    with services._database.session() as session:  # planned, as a process that then died
        job = BatchJob(
            kind="documents",
            runner="local",
            state="running",
            model="scripted",
            round=1,
            note="",
            cancel_requested=False,
            send_failures=0,
        )
        session.add(job)
        session.flush()
        for n, (document_id, sha) in enumerate(
            session.execute(select(Document.id, Document.sha256).order_by(Document.id))
        ):
            session.add(
                BatchItem(
                    job_id=job.id,
                    custom_id=f"documents-{document_id}",
                    target_id=document_id,
                    owner_id=alice.user_id,
                    fingerprint=sha,
                    state="running",
                    attempts=2 if n == 0 else 1,
                    error="",
                    input_tokens=0,
                    output_tokens=0,
                    cost_usd=0.0,
                )
            )
        job_id = job.id
    scripted.enqueue("The second document, summarised.")
    services.batches.poll()
    final = services.batches.job(ROOT, job_id)
    assert (final.state, final.done, final.failed) == ("done", 1, 1)
    assert final.errors == ("1 × its process stopped while it ran",)
    assert summaries(services) == [None, "The second document, summarised."]


def test_a_poller_with_an_old_look_at_the_job_collects_nothing_twice(
    settings: Settings, tmp_path: Path, fake: FakeAnthropic, scripted: ScriptedProvider
) -> None:
    """While one poller waits for the API's answer about round 1, another collects round
    1 and sends round 2: the first may not claim the job for its old batch."""
    services = make(settings, tmp_path, fake, scripted)
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    documents_of(services, alice, 2)
    fake.enqueue(Reply(text="One."), Fault("overloaded"))
    job = services.batches.submit(ROOT, "documents")
    assert job is not None
    fake.batches.polls = 0
    services.batches.collect(ROOT, job.id)  # in progress: ends at the next look
    client = services._batch_client()
    assert client is not None
    progress = client.progress
    inside = []

    def slow_progress(batch_id: str) -> BatchProgress:
        seen = progress(batch_id)
        if not inside:  # the other poller, while this one waits for its answer
            inside.append(batch_id)
            services.batches.poll()
        return seen

    client.progress = slow_progress  # type: ignore[method-assign]
    services.batches.advance(job.id)
    first, second = fake.batches.ids  # round 2 went once; no third batch
    now = services.batches.job(ROOT, job.id)
    assert (now.state, now.round, now.done) == ("running", 2, 1)
    with services._database.session() as session:
        assert session.scalar(select(BatchJob.provider_batch_id)) == second


def test_a_cancel_during_a_refused_send_ends_the_job_unsent(
    settings: Settings, tmp_path: Path, fake: FakeAnthropic, scripted: ScriptedProvider
) -> None:
    services = make(settings, tmp_path, fake, scripted)
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    documents_of(services, alice, 2)
    client = services._batch_client()
    assert client is not None
    submit = client.submit

    def cancel_then_refused(requests: object) -> str:
        (job,) = services.batches.jobs(ROOT)
        services.batches.cancel(ROOT, job.id)
        fake.batches.refuse("overloaded")
        return submit(requests)  # type: ignore[arg-type]

    client.submit = cancel_then_refused  # type: ignore[method-assign]
    job = services.batches.submit(ROOT, "documents")
    assert job is not None and (job.state, job.failed) == ("canceled", 2)
    services.batches.poll()
    assert fake.batches.ids == []  # never sent, not even at the next poll
    assert batch_actions(services) == ["submitted", "canceled", "ended"]


def test_a_send_whose_answer_was_lost_is_found_and_not_sent_again(
    settings: Settings, tmp_path: Path, fake: FakeAnthropic, scripted: ScriptedProvider
) -> None:
    services = make(settings, tmp_path, fake, scripted)
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    documents_of(services, alice, 2)
    client = services._batch_client()
    assert client is not None
    submit = client.submit
    lost = []

    def made_but_timed_out(requests: object) -> str:
        batch_id = submit(requests)  # type: ignore[arg-type]
        if not lost:
            lost.append(batch_id)
            raise ProviderUnavailable("ReadTimeout")
        return batch_id

    client.submit = made_but_timed_out  # type: ignore[method-assign]
    fake.enqueue(Reply(text="One."), Reply(text="Two."))
    job = services.batches.submit(ROOT, "documents")
    assert job is not None and job.state == "planned"
    services.batches.poll()  # finds the batch the API had made, and runs on it
    assert fake.batches.ids == lost
    services.batches.collect(ROOT, job.id)
    final = services.batches.collect(ROOT, job.id)
    assert (final.state, final.done) == ("done", 2)
    assert summaries(services) == ["One.", "Two."]


def test_an_item_that_breaks_while_applied_fails_alone(
    settings: Settings,
    tmp_path: Path,
    fake: FakeAnthropic,
    scripted: ScriptedProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = make(settings, tmp_path, fake, scripted)
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    documents_of(services, alice, 2)
    kind = services.batches._kinds["documents"]
    apply = kind.apply

    def broken_once(target: Target, text: str, model: str) -> Applied:
        if text == "Breaks.":
            raise RuntimeError("a bug in one item")
        return apply(target, text, model)

    monkeypatch.setattr(kind, "apply", broken_once)
    fake.enqueue(Reply(text="Breaks."), Reply(text="Fine."))
    job = services.batches.submit(ROOT, "documents")
    assert job is not None
    services.batches.collect(ROOT, job.id)
    final = services.batches.collect(ROOT, job.id)
    assert (final.state, final.done, final.failed) == ("done", 1, 1)
    assert final.errors == ("1 × an internal error (see the log)",)


def test_a_lost_send_never_adopts_another_jobs_batch(
    settings: Settings, tmp_path: Path, fake: FakeAnthropic, scripted: ScriptedProvider
) -> None:
    services = make(settings, tmp_path, fake, scripted)
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    documents_of(services, alice, 1)
    scripted.enqueue("An answer.")
    list(services.chat.send(alice, None, "Where shall we go in May?"))
    fake.batches.refuse("server_error")  # its fate unknown to the sender
    documents = services.batches.submit(ROOT, "documents")
    assert documents is not None and documents.state == "planned"
    titles = services.batches.submit(ROOT, "titles")  # one request too, made meanwhile
    assert titles is not None and titles.state == "running"
    (theirs,) = fake.batches.ids
    services.batches.poll()
    with services._database.session() as session:
        ours = session.scalar(select(BatchJob.provider_batch_id).where(BatchJob.id == documents.id))
    assert ours is not None and ours != theirs and fake.batches.ids == [theirs, ours]


def test_a_busy_local_model_pauses_the_job_without_spending_tries(
    settings: Settings, tmp_path: Path, scripted: ScriptedProvider
) -> None:
    services = make(settings, tmp_path, None, scripted, batch=BatchSettings(attempts=1))
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    documents_of(services, alice, 1)
    scripted.enqueue_error(Overloaded("the queue is full"))
    scripted.enqueue("A summary after the wait.")
    job = services.batches.submit(ROOT, "documents")
    assert job is not None
    paused = services.batches.job(ROOT, job.id)
    assert (paused.state, paused.done, paused.failed) == ("running", 0, 0)
    services.batches.poll()  # the next poll goes on with it: its one try is still there
    final = services.batches.job(ROOT, job.id)
    assert (final.state, final.done) == ("done", 1)
    assert summaries(services) == ["A summary after the wait."]
